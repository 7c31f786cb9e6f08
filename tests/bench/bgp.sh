#!/usr/bin/env bash
# Scale-out by BGP through FRR (docs/bgp.md), figures for BENCHMARKS.md, from the e2e tests in
# tests/tests/lb_bgp.rs run with KEEL_BGP_BENCH=1 (they print "BENCH ..." lines):
#
#   tests/bench/bgp.sh          # ~2 minutes after the build; root, FRR, iperf3, curl
#
# - outage a client sees when an LB dies (its link cut: the VM, keel-lb and FRR gone), with BFD
#   3 x 100 ms on the router and without BFD (BGP's hold time, FRR's datacenter defaults: 9 s);
# - connections lost on a planned leave (SIGTERM: withdraw first, serve on for bgp.withdraw_wait),
#   with bgp.handoff (the other LBs forward the leaving one's connections to it) and without
#   (KEEL_BGP_NO_HANDOFF=1); two LBs with FRR's plain route, three with a resilient group;
# - established connections broken when an LB joins: plain ECMP (FRR's route) and a resilient
#   nexthop group (made with `ip nexthop ... type resilient`: FRR 8.4's zebra does not make them);
# - bulk throughput through 1, 2 and 3 LBs (iperf3, 12 streams; CPU-bound on a small machine:
#   the ratio is the figure, not the Gbit/s).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in vtysh iperf3 curl; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
echo "building..." >&2
cargo build --workspace --bins --quiet
run() {
  KEEL_TESTS_STRICT=1 KEEL_BGP_BENCH=1 "$@" cargo test -p keel-e2e --test lb_bgp --quiet -- \
    --nocapture --test-threads 1 "$FILTER" 2>&1 | grep -E '^BENCH' | sed 's/^BENCH /  /' || true
}
echo "== two LBs: planned leave (SIGTERM)"
FILTER=vips_announced_by_bgp run env
FILTER=vips_announced_by_bgp run env KEEL_BGP_NO_HANDOFF=1
echo "== three LBs, BFD 3 x 100 ms on the router"
FILTER=three_lbs run env
echo "== three LBs, no BFD on the router"
FILTER=three_lbs run env KEEL_BGP_NO_BFD=1
echo "== three LBs, BFD, no handoff (the planned leave's figure without it)"
FILTER=three_lbs run env KEEL_BGP_NO_HANDOFF=1
