#!/usr/bin/env bash
# Soak benchmark (issue 12): SECS (default 600) of client load through the VIP of a keel-lb pair while
#   - a failover happens every 30 s, alternating an unplanned one (the master's link cut for 5 s, then
#     restored: the master takes the VIP back) and a planned one (POST /handover, POST /resume 5 s later),
#   - a reload every 10 s alternates the pool between three backends and two (be3 in and out),
#   - every 20 s backend be2 dies for 5 s (its health check marks it down, then up),
#   - a host on the segment that is no peer sends 200 hostile VRRP packets/s (bad checksum, TTL 64,
#     wrong version, truncated, another VRID, lower-priority adverts that ask for healing),
#   - the same host floods the read-only metrics listener (held-open idle connections + scrapes), while
#     the client host scrapes it once a second as Prometheus would.
# It reports failed client connections by cause window (failover, backend death, other), VRRP
# transitions, and each keel-lb's fd count and RSS sampled every 10 s (they must stay flat).
#
#   sudo tests/bench/soak.sh [SECS]      (needs root; cargo build --release -p keel-lb;
#                                         KEEL=path/to/keel-lb to choose the build)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-600}
KEEL=${KEEL:-${CARGO_TARGET_DIR:-target}/release/keel-lb}
[ -x "$KEEL" ] || { echo "keel-lb not found at $KEEL (cargo build --release -p keel-lb, or set KEEL=...)"; exit 1; }
P="ks$$"; BR="${P}br"; VIP=198.18.1.100
DIR=$(mktemp -d)
cleanup() {
  for n in ${P}lb1 ${P}lb2 ${P}cl ${P}be1 ${P}be2 ${P}be3 ${P}atk $BR; do
    for p in $(ip netns pids $n 2>/dev/null); do kill -9 $p 2>/dev/null || true; done
    ip netns del $n 2>/dev/null || true
  done
  rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add $BR; ip -n $BR link add br0 type bridge mcast_snooping 0; ip -n $BR link set br0 up
declare -A ADDR=([lb1]=11 [lb2]=12 [cl]=20 [be1]=61 [be2]=62 [be3]=63 [atk]=90)
for h in lb1 lb2 cl be1 be2 be3 atk; do
  ip netns add $P$h
  ip -n $BR link add $h type veth peer name eth0 netns $P$h
  ip -n $BR link set $h master br0; ip -n $BR link set $h up
  ip -n $P$h link set lo up; ip -n $P$h addr add 198.18.1.${ADDR[$h]}/24 dev eth0; ip -n $P$h link set eth0 up
done
NS() { ip netns exec "$P$1" "${@:2}"; }
has_vip() { NS "$1" ip -o addr show dev eth0 | grep -q " $VIP/"; }
now() { date +%s.%N; }

backend() { NS $1 socat TCP-LISTEN:9000,bind=198.18.1.${ADDR[$1]},fork,reuseaddr SYSTEM:'echo ok' >/dev/null 2>&1 & }
for b in be1 be2 be3; do backend $b; done

conf() { # host priority with_be3
  local extra=""; [ "$3" = 1 ] && extra=", { address: \"198.18.1.63:9000\" }"
  cat <<Y
admin: { listen: "127.0.0.1:9100" }
metrics: { listen: "198.18.1.${ADDR[$1]}:9101" }
shutdown: { drain: 1s, handover_timeout: 3s }
frontends: [{ name: web, listen: "$VIP:8080", pool: web }]
pools:
  web:
    health: { type: tcp, interval: 300ms, timeout: 200ms, rise: 2, fall: 2 }
    backends: [{ address: "198.18.1.61:9000" }, { address: "198.18.1.62:9000" }$extra]
vrrp:
  routers:
    - { name: web, vrid: 51, interface: eth0, priority: $2, advert_interval: 100ms, vips: [$VIP/24] }
Y
}
conf lb1 200 1 > $DIR/lb1.yaml; conf lb2 100 1 > $DIR/lb2.yaml
NS lb1 "$KEEL" run -c $DIR/lb1.yaml >> $DIR/lb1.log 2>&1 &
NS lb2 "$KEEL" run -c $DIR/lb2.yaml >> $DIR/lb2.log 2>&1 &
for _ in $(seq 100); do has_vip lb1 && break; sleep 0.1; done
has_vip lb1 || { echo "lb1 never became master"; cat $DIR/lb1.log; exit 1; }
sleep 2

pid_of() { for p in $(ip netns pids $P$1); do [ "$(cat /proc/$p/comm 2>/dev/null)" = keel-lb ] && { echo $p; return; }; done; echo 0; }
metric_sum() { NS $1 curl -s --max-time 2 127.0.0.1:9100/metrics | awk -v m="$2" '$1 ~ "^"m {s+=$2} END {print s+0}'; }
admin_post() { NS $1 curl -s --max-time 5 -o /dev/null -w '%{http_code}' -X POST 127.0.0.1:9100$2; }

T0=$(now)
echo "# events (seconds since start)" > $DIR/events
ev() { printf '%s %s\n' "$(now)" "$1" >> $DIR/events; }
NS cl python3 tests/bench/soak_probe.py $VIP 8080 8 $SECS 0.01 $DIR/fails > $DIR/probe &
LOADPID=$!
NS atk python3 tests/bench/soak_hostile.py adverts 198.18.1.90 51 200 $SECS > $DIR/adverts &
ADVPID=$!
NS atk python3 tests/bench/soak_hostile.py admin 198.18.1.11 9101 200 $SECS > $DIR/admin &
FLOODPID=$!
NS cl python3 tests/bench/soak_hostile.py scrape 198.18.1.11 9101 $SECS > $DIR/scrape &
SCRAPEPID=$!
t1=$(pid_of lb1); t2=$(pid_of lb2)
TR0=$(( $(metric_sum lb1 keel_vrrp_transitions_total) + $(metric_sum lb2 keel_vrrp_transitions_total) ))
echo "t_s lb1_fds lb1_rss_kb lb2_fds lb2_rss_kb" > $DIR/samples
reload_ok=0; reload_fail=0; cycle=0
for tick in $(seq 1 $((SECS / 5))); do
  sleep 5
  t=$((tick * 5))
  # Failovers every 30 s, alternating unplanned and planned; the way back 5 s later.
  if [ $((t % 60)) = 30 ]; then ev failover-cut; ip -n $BR link set lb1 down; fi
  if [ $((t % 60)) = 35 ]; then ev failover-restore; ip -n $BR link set lb1 up; fi
  if [ $((t % 60)) = 0 ]; then ev failover-handover; [ "$(admin_post lb1 /handover)" = 200 ] || echo "handover refused at ${t}s" >&2; fi
  if [ $((t % 60)) = 5 ]; then ev failover-resume; [ "$(admin_post lb1 /resume)" = 200 ] || echo "resume refused at ${t}s" >&2; fi
  # Backend death every 20 s for 5 s.
  if [ $((t % 20)) = 10 ]; then ev backend-down; for p in $(ip netns pids ${P}be2); do kill -9 $p 2>/dev/null || true; done; fi
  if [ $((t % 20)) = 15 ]; then backend be2; fi
  # A reload every 10 s: be3 in or out of the pool.
  if [ $((t % 10)) = 0 ]; then
    cycle=$((cycle + 1)); with=$((cycle % 2))
    for h in lb1 lb2; do
      p=200; [ $h = lb2 ] && p=100
      conf $h $p $with > $DIR/$h.yaml
      if NS $h "$KEEL" reload -c $DIR/$h.yaml >/dev/null 2>>$DIR/reload.err; then reload_ok=$((reload_ok+1)); else reload_fail=$((reload_fail+1)); fi
    done
  fi
  if [ $((t % 10)) = 0 ]; then
    p1=$(pid_of lb1); p2=$(pid_of lb2)
    f1=$(ls /proc/$p1/fd 2>/dev/null | wc -l); r1=$(awk '/VmRSS/ {print $2}' /proc/$p1/status 2>/dev/null)
    f2=$(ls /proc/$p2/fd 2>/dev/null | wc -l); r2=$(awk '/VmRSS/ {print $2}' /proc/$p2/status 2>/dev/null)
    echo "$t $f1 ${r1:-0} $f2 ${r2:-0}" >> $DIR/samples
  fi
done
wait $LOADPID $ADVPID $FLOODPID $SCRAPEPID || true
TR1=$(( $(metric_sum lb1 keel_vrrp_transitions_total) + $(metric_sum lb2 keel_vrrp_transitions_total) ))
[ "$(pid_of lb1)" = "$t1" ] && [ "$(pid_of lb2)" = "$t2" ] || echo "WARNING: a keel-lb process was replaced during the run" >&2

python3 - "$DIR" "$T0" <<'PY'
import sys
d, t0 = sys.argv[1], float(sys.argv[2])
events = [(float(a), b) for a, b in (l.split() for l in open(f"{d}/events") if not l.startswith("#"))]
fails = [(float(l.split()[0]), l.split()[1]) for l in open(f"{d}/fails")]
attempts, failed = map(int, open(f"{d}/probe").read().split())
# A failure belongs to a window when it falls within 3 s after a failover event, or while be2 is down
# (its 5 s plus 1 s for the health check to notice it back).
def window(t):
    for et, kind in events:
        if kind.startswith("failover") and et <= t <= et + 3:
            return "failover"
    for et, kind in events:
        if kind == "backend-down" and et <= t <= et + 6:
            return "backend"
    return "other"
by = {"failover": 0, "backend": 0, "other": 0}
kinds = {}
for t, e in fails:
    w = window(t)
    by[w] += 1
    if w == "other":
        kinds[e] = kinds.get(e, 0) + 1
print(f"client attempts {attempts}, failed {failed}: within 3 s of a failover {by['failover']}, "
      f"while a backend was dying {by['backend']}, other {by['other']} {kinds or ''}")
print(f"events: {sum(1 for _, k in events if k.startswith('failover'))} failover steps, "
      f"{sum(1 for _, k in events if k == 'backend-down')} backend deaths")
rows = [l.split() for l in open(f"{d}/samples")][1:]
print("t_s  lb1_fds lb1_rss_kb  lb2_fds lb2_rss_kb")
for r in rows:
    print(f"{r[0]:>4} {r[1]:>8} {r[2]:>10} {r[3]:>8} {r[4]:>10}")
if rows:
    for i, n in ((1, "lb1 fds"), (2, "lb1 rss_kb"), (3, "lb2 fds"), (4, "lb2 rss_kb")):
        v = [int(r[i]) for r in rows]
        half = v[len(v) // 2:]
        print(f"{n}: first {v[0]} min {min(v)} max {max(v)} last {v[-1]} (second half {min(half)}-{max(half)})")
PY
echo "VRRP transitions (both LBs): $((TR1 - TR0)); reloads ok $reload_ok failed $reload_fail"
echo "hostile adverts sent: $(cat $DIR/adverts); metrics flood from the hostile host (idle opened, scrapes, answered): $(cat $DIR/admin)"
echo "scrapes from another host during the flood (tries, answered): $(cat $DIR/scrape)"
echo "keel_vrrp_packet_errors_total on lb1: $(metric_sum lb1 keel_vrrp_packet_errors_total), lb2: $(metric_sum lb2 keel_vrrp_packet_errors_total)"
[ -s $DIR/reload.err ] && { echo "reload errors:"; sort $DIR/reload.err | uniq -c | head; }
true
