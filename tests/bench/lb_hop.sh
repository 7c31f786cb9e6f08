#!/usr/bin/env bash
# The LB as a separate hop: client, LB and backend in three network namespaces joined by veth pairs,
# the LB namespace routing between them (as an LB VM between a client network and a node network).
# Complements tests/bench/lb.sh (everything on loopback) for `mode: nat`, which forwards here where
# on loopback it only translates: does it keep its lead when every packet is routed through the LB?
#
#   sudo tests/bench/lb_hop.sh        # ~3 minutes after the release build
#
# Targets, all in the LB namespace, the same nginx and iperf3 behind them:
#   direct   the client talks to the backend's own address, routed through the LB namespace (the
#            hop every LB pays anyway, with nothing else: the anchor)
#   HAProxy  2.6, mode tcp, nbthread 1, on the VIP
#   keel-lb  the relay (mode: proxy, --workers 1), on the VIP
#   nat      keel-lb mode: nat on the VIP: a process of its own, running only for its own figures
#            (conntrack, which NAT switches on for the namespace, then costs the others nothing)
# Figures: requests/s (keep-alive, Connection: close), p99 latency, machine-wide CPU per request less
# the direct connection's in the same round (/proc/stat, all cores: softirq included), iperf3 bulk.
# Pinning: HAProxy and keel-lb on CPU 1; wrk, nginx, iperf3 on CPU 0 (forwarding runs in softirq
# wherever the packet was sent from, mostly CPU 0). Addresses from 198.18.0.0/15 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/common.sh

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, nft)" >&2; exit 1; }
for t in nginx haproxy wrk iperf3 python3 taskset curl nft ip; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
TARGET=${CARGO_TARGET_DIR:-target}
echo "building keel-lb (release)..." >&2
cargo build --release -p keel-lb --quiet
KEEL="$TARGET/release/keel-lb"

P=khop$$
C=${P}c; L=${P}l; B=${P}b
WORK=$(mktemp -d /tmp/keel-lb-hop.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "$C" "$L" "$B"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
nsx() { local n=$1; shift; ip netns exec "$n" "$@"; }

for n in "$C" "$L" "$B"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add "${P}-c" netns "$C" type veth peer name "${P}-lc" netns "$L"
ip link add "${P}-b" netns "$B" type veth peer name "${P}-lb" netns "$L"
ip -n "$C" addr add 198.18.20.2/24 dev "${P}-c"; ip -n "$C" link set "${P}-c" up
ip -n "$C" route add default via 198.18.20.1
ip -n "$L" addr add 198.18.20.1/24 dev "${P}-lc"; ip -n "$L" link set "${P}-lc" up
ip -n "$L" addr add 198.18.21.1/24 dev "${P}-lb"; ip -n "$L" link set "${P}-lb" up
ip -n "$L" addr add 198.18.22.10/32 dev lo
ip -n "$B" addr add 198.18.21.2/24 dev "${P}-b"; ip -n "$B" link set "${P}-b" up
ip -n "$B" route add default via 198.18.21.1
nsx "$L" sysctl -qw net.ipv4.ip_forward=1
BACKEND=198.18.21.2; VIP=198.18.22.10

wait_tcp() { # ns addr port
  for _ in $(seq 100); do nsx "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0; sleep 0.1; done
  echo "$2:$3 never answered from $1" >&2; exit 1
}

nginx_conf "$WORK/nginx" "$BACKEND:80"
nsx "$B" taskset -c "$LOAD_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
PIDS+=($!)
nsx "$B" taskset -c "$LOAD_CPU" iperf3 -s -B "$BACKEND" -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
wait_tcp "$C" "$BACKEND" 80; wait_tcp "$C" "$BACKEND" 5201

cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9900
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend web
  bind $VIP:8080
  default_backend nginx
frontend bulk
  bind $VIP:5202
  default_backend iperf
backend nginx
  server n1 $BACKEND:80
backend iperf
  server i1 $BACKEND:5201
EOF
pools="pools:
  nginx:
    health: { type: tcp, interval: 5s }
    backends: [{ address: \"$BACKEND:80\" }]
  iperf:
    health: { type: tcp, interval: 5s }
    backends: [{ address: \"$BACKEND:5201\" }]"
cat > "$WORK/keel.yaml" <<EOF
admin: { listen: "127.0.0.1:9100" }
shutdown: { drain: 1s }
frontends:
  - { name: web, listen: "$VIP:8081", pool: nginx, max_connections: 9900 }
  - { name: bulk, listen: "$VIP:5203", pool: iperf }
$pools
EOF
cat > "$WORK/nat.yaml" <<EOF
admin: { listen: "127.0.0.1:9101" }
shutdown: { drain: 1s }
frontends:
  - { name: web, listen: "$VIP:8082", pool: nginx, mode: nat }
  - { name: bulk, listen: "$VIP:5204", pool: iperf, mode: nat }
$pools
EOF
"$KEEL" check --config "$WORK/keel.yaml" >/dev/null
"$KEEL" check --config "$WORK/nat.yaml" >/dev/null

nsx "$L" taskset -c "$LB_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn nsx "$L" taskset -c "$LB_CPU" "$KEEL" run --workers 1 --config "$WORK/keel.yaml" 2>"$WORK/keel.log" &
PIDS+=($!)
wait_tcp "$C" "$VIP" 8080; wait_tcp "$C" "$VIP" 8081
start_nat() {
  RUST_LOG=warn nsx "$L" taskset -c "$LB_CPU" "$KEEL" run --workers 1 --config "$WORK/nat.yaml" 2>"$WORK/nat.log" &
  NAT_PID=$!
  for _ in $(seq 100); do
    nsx "$L" curl -s 127.0.0.1:9101/v1/status | grep -q '"installed":true' && return 0
    sleep 0.1
  done
  echo "keel-lb mode: nat never installed its rules: $(cat "$WORK/nat.log")" >&2; exit 1
}
stop_nat() { kill "$NAT_PID" 2>/dev/null || true; wait "$NAT_PID" 2>/dev/null || true; }

run_wrk() { # addr:port close|keep -> "rps p99ms errors machine_us_per_request"
  local extra=() out m0 m1
  [ "$2" = close ] && extra=(-H "Connection: close")
  m0=$(machine_ticks)
  out=$(nsx "$C" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" "http://$1/")
  m1=$(machine_ticks)
  local n rps p99 err
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  err=$(awk '/Socket errors|Non-2xx/ {gsub(/[^0-9 ]/," "); s=0; for(i=1;i<=NF;i++) s+=$i; t+=s} END {print t+0}' <<<"$out")
  echo "$rps $p99 $err $(awk -v a="$m0" -v b="$m1" -v n="$n" -v hz="$TCK" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / hz * 1e6 / n; else print 0 }')"
}
run_iperf() { # addr port -> Gbit/s
  local out
  for _ in 1 2 3 4 5; do
    sleep 1
    if out=$(nsx "$C" taskset -c "$LOAD_CPU" iperf3 -c "$1" -p "$2" -t 5 -J 2>/dev/null) &&
       python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out" 2>/dev/null; then
      return 0
    fi
  done
  echo 0
}

declare -A R
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
measure() { # name addr:port bulk-addr bulk-port
  echo "round $r: $1..." >&2
  local ka ka99 kaerr kam cc cc99 ccerr ccm
  read -r ka ka99 kaerr kam < <(run_wrk "$2" keep)
  read -r cc cc99 ccerr ccm < <(run_wrk "$2" close)
  R[$1,ka]+="$ka "; R[$1,ka99]+="$ka99 "; R[$1,cc]+="$cc "; R[$1,cc99]+="$cc99 "
  if [ "$1" = direct ]; then
    DKAM=$kam; DCCM=$ccm; R[$1,kam]+="$kam "; R[$1,ccm]+="$ccm "
  else
    R[$1,kam]+="$(awk -v a="$kam" -v b="$DKAM" 'BEGIN { printf "%.2f", a - b }') "
    R[$1,ccm]+="$(awk -v a="$ccm" -v b="$DCCM" 'BEGIN { printf "%.2f", a - b }') "
  fi
  R[$1,err]=$(( ${R[$1,err]:-0} + kaerr + ccerr ))
  R[$1,bulk]+="$(run_iperf "$3" "$4") "
}
for r in $(seq "$ROUNDS"); do
  measure direct "$BACKEND:80" "$BACKEND" 5201
  measure haproxy "$VIP:8080" "$VIP" 5202
  measure keel "$VIP:8081" "$VIP" 5203
  start_nat; measure nat "$VIP:8082" "$VIP" 5204; stop_nat
done

RAW=""
for k in "${!R[@]}"; do
  case $k in *,err) continue;; esac
  RAW+="$k: ${R[$k]}"$'\n'
  R[$k]=$(median "${R[$k]}")
done
row() { # label key with-direct(yes|net)
  local k=$2 d dk=- dn=-
  if [ "$3" = yes ]; then d=${R[direct,$k]}; dk=$(ratio "${R[keel,$k]}" "$d"); dn=$(ratio "${R[nat,$k]}" "$d"); else d="${R[direct,$k]} (not net)"; fi
  echo "| $1 | $d | ${R[haproxy,$k]} | ${R[keel,$k]} | ${R[nat,$k]} | $(ratio "${R[keel,$k]}" "${R[haproxy,$k]}") | $(ratio "${R[nat,$k]}" "${R[haproxy,$k]}") | $dk | $dn |"
}
cat <<EOF

keel-lb as a hop — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),
$(haproxy -v | head -1 | cut -d' ' -f1-3), nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk -t1 -c$CONNS -d${DURATION}s; LBs on CPU $LB_CPU, load on CPU $LOAD_CPU.

| | direct (routed) | HAProxy | keel-lb | keel-lb nat | keel-lb / HAProxy | nat / HAProxy | keel-lb / direct | nat / direct |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
$(row "requests/s, keep-alive" ka yes)
$(row "p99 latency, keep-alive (ms)" ka99 yes)
$(row "connections/s, Connection: close" cc yes)
$(row "p99 latency, Connection: close (ms)" cc99 yes)
$(row "machine CPU per request, keep-alive, minus direct (us)" kam net)
$(row "machine CPU per connection, close, minus direct (us)" ccm net)
$(row "bulk, iperf3 (Gbit/s)" bulk yes)

Medians of $ROUNDS interleaved rounds. Load average before the run: $LOAD_BEFORE. wrk errors (all
rounds): direct ${R[direct,err]}, HAProxy ${R[haproxy,err]}, keel-lb ${R[keel,err]}, nat ${R[nat,err]}.

Per-round values:
$(sort <<<"$RAW")
EOF
