#!/usr/bin/env bash
# keel-lb against HAProxy (TCP mode) and against a direct connection, in one run, same backend.
#
#   tests/bench/lb.sh            # ~4 minutes after the release build
#
# The rounds interleave the three targets so that load from anything else on the machine hits all of
# them alike; each figure in the table is the median over the rounds.
#
# keel-lb is measured three ways: its default relay, `splice: kernel` (a second pair of frontends in the
# same process, "keel-lb spliced"), and `mode: nat` ("keel-lb nat": the kernel forwards, DNAT +
# masquerade from keel-lb's nftables table; a separate keel-lb process that runs only while its own
# figures are taken, so that conntrack, which NAT switches on for the whole namespace, costs the other
# columns nothing). Needs root: nft for the nat column, CAP_BPF for the spliced one (without it that
# column measures the fallback; the footer prints how many connections were spliced).
#
# Everything runs over loopback: the LB is not a separate hop. That leaves out, for every LB alike, the
# device receive and transmit a real LB VM pays on its NIC for each packet in and out; what remains is
# each LB's own work: two TCP endpoints and the proxy for HAProxy and the relay, conntrack and NAT for
# mode: nat.
#
# Layout (2-core machine): each load balancer runs ONE worker thread pinned to CPU 1 (keel-lb
# `--workers 1`, HAProxy `nbthread 1`); nginx (1 worker), wrk (1 thread), iperf3 and the idle-connection
# opener share CPU 0. Figures: requests/s with keep-alive, connections/s with `Connection: close`, p99
# latency (wrk --latency), bulk throughput (iperf3), RSS with IDLE idle connections held open, CPU per
# request/connection (below), and syscalls per connection/request (strace -c, if present).
#
# CPU per request is reported twice. "LB process": the LB's own utime+stime over a wrk run / requests.
# "machine": the whole machine's busy time over the run (all cores, /proc/stat: every field but idle
# and iowait, so softirq and kernel threads count) / requests, minus the same figure for the direct
# connection in the same round. The process figure misses work the kernel does on the LB's behalf in
# softirq or kworkers (BPF sockmap redirects, io_uring), the machine figure does not; it also counts
# anything else running, so it is only meaningful on a quiet machine (the header prints the load
# average before the run).
# Not part of the default test suite. Needs: nginx, haproxy, wrk, iperf3, python3, taskset, ss, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/common.sh

DURATION=${DURATION:-6}          # seconds per wrk run
ROUNDS=${ROUNDS:-3}              # rounds of (direct, HAProxy, keel-lb); the table shows medians
CONNS=${CONNS:-50}               # wrk connections
IDLE=${IDLE:-9500}               # idle connections for the RSS figure (see the fd note below)
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

[ "$(id -u)" = 0 ] || { echo "run as root (nft for the nat column, CAP_BPF for the spliced one)" >&2; exit 1; }
for t in nginx haproxy wrk iperf3 python3 taskset ss curl nft; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-target}
echo "building keel-lb (release)..." >&2
cargo build --release -p keel-lb --quiet
KEEL="$TARGET/release/keel-lb"

FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)
WORK=$(mktemp -d /tmp/keel-lb-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # keel-lb removes its table at exit; this is for a keel-lb that could not.
  nft delete table inet keel_lb_nat 2>/dev/null || true
  # Loopback nat frontends need no forwarding and keel-lb leaves it alone; restored all the same.
  sysctl -qw "net.ipv4.ip_forward=$FORWARD_BEFORE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX=$(port); IPERF=$(port)
HA=$(port); HA_BULK=$(port); KEEL_P=$(port); KEEL_BULK=$(port); KEEL_ADMIN=$(port)
KSP=$(port); KSP_BULK=$(port)   # keel-lb's splice: kernel frontends
KN=$(port); KN_BULK=$(port); KN_ADMIN=$(port)   # keel-lb's mode: nat frontends (own process)

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- backend: nginx, one worker, tiny response -------------------------------------------------
nginx_conf "$WORK/nginx" "127.0.0.1:$NGINX"
taskset -c "$LOAD_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
PIDS+=($!)
taskset -c "$LOAD_CPU" iperf3 -s -p "$IPERF" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$NGINX"; wait_port "$IPERF"

# --- the load balancers -------------------------------------------------------------------------
# The container's hard RLIMIT_NOFILE is 20,000 and a proxied connection needs two fds, so both LBs
# are capped at 9,900 connections (hence IDLE=9500 rather than 10,000).
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
  bind 127.0.0.1:$HA
  default_backend nginx
frontend bulk
  bind 127.0.0.1:$HA_BULK
  default_backend iperf
backend nginx
  server n1 127.0.0.1:$NGINX
backend iperf
  server i1 127.0.0.1:$IPERF
EOF
cat > "$WORK/keel-lb.yaml" <<EOF
admin:
  listen: 127.0.0.1:$KEEL_ADMIN
shutdown:
  drain: 1s
frontends:
  - name: web
    listen: 127.0.0.1:$KEEL_P
    pool: nginx
    max_connections: 9900
  - name: bulk
    listen: 127.0.0.1:$KEEL_BULK
    pool: iperf
  - name: web-splice
    listen: 127.0.0.1:$KSP
    pool: nginx
    max_connections: 9900
    splice: kernel
  - name: bulk-splice
    listen: 127.0.0.1:$KSP_BULK
    pool: iperf
    splice: kernel
pools:
  nginx:
    health: { type: tcp, interval: 5s }
    backends: [{ address: "127.0.0.1:$NGINX" }]
  iperf:
    health: { type: tcp, interval: 5s }
    backends: [{ address: "127.0.0.1:$IPERF" }]
EOF
"$KEEL" check --config "$WORK/keel-lb.yaml" >/dev/null
cat > "$WORK/keel-lb-nat.yaml" <<EOF
admin:
  listen: 127.0.0.1:$KN_ADMIN
shutdown:
  drain: 1s
frontends:
  - name: web-nat
    listen: 127.0.0.1:$KN
    pool: nginx
    mode: nat
  - name: bulk-nat
    listen: 127.0.0.1:$KN_BULK
    pool: iperf
    mode: nat
pools:
  nginx:
    health: { type: tcp, interval: 5s }
    backends: [{ address: "127.0.0.1:$NGINX" }]
  iperf:
    health: { type: tcp, interval: 5s }
    backends: [{ address: "127.0.0.1:$IPERF" }]
EOF
"$KEEL" check --config "$WORK/keel-lb-nat.yaml" >/dev/null

start_haproxy() { taskset -c "$LB_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & HA_PID=$!; PIDS+=($HA_PID); wait_port "$HA"; }
start_keel() { RUST_LOG=warn taskset -c "$LB_CPU" "$KEEL" run --workers 1 --config "$WORK/keel-lb.yaml" 2>"$WORK/keel.log" & KEEL_PID=$!; PIDS+=($KEEL_PID); wait_port "$KEEL_P"; }
start_nat() {
  RUST_LOG=warn taskset -c "$LB_CPU" "$KEEL" run --workers 1 --config "$WORK/keel-lb-nat.yaml" 2>"$WORK/keel-nat.log" & NAT_PID=$!; PIDS+=($NAT_PID)
  for _ in $(seq 100); do
    curl -s "127.0.0.1:$KN_ADMIN/v1/status" | grep -q '"installed":true' && return 0
    sleep 0.1
  done
  echo "keel-lb mode: nat never installed its rules: $(curl -s "127.0.0.1:$KN_ADMIN/v1/status") $(cat "$WORK/keel-nat.log")" >&2; exit 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# Kernel memory of conntrack entries (mode: nat keeps one per connection): active objects x size.
ct_kb() { awk '$1 == "nf_conntrack" { printf "%d", $2 * $4 / 1024 } END { if (!NR) print 0 }' /proc/slabinfo; }

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
nginx_established() { ss -Htn state established "( sport = :$NGINX )" | wc -l; }

# --- RSS with idle connections (fresh processes) ------------------------------------------------
idle_rss() { # pid port -> "baseline_kb loaded_kb established proxied conntrack_kb_added"
  local pid=$1 p=$2 base ct0
  base=$(rss_kb "$pid"); ct0=$(ct_kb)
  coproc IDLER { taskset -c "$LOAD_CPU" python3 tests/bench/lb_idle.py 127.0.0.1 "$p" "$IDLE"; }
  local line; read -r line <&"${IDLER[0]}"
  for _ in $(seq 100); do [ "$(nginx_established)" -ge "$IDLE" ] && break; sleep 0.2; done
  local proxied; proxied=$(nginx_established)
  sleep 1
  echo "$base $(rss_kb "$pid") ${line#ready } $proxied $(( $(ct_kb) - ct0 ))"
  kill "$IDLER_PID" 2>/dev/null || true; wait "$IDLER_PID" 2>/dev/null || true
  sleep 1
}
echo "measuring RSS with $IDLE idle connections..." >&2
start_haproxy; read -r HA_RSS0 HA_RSS HA_IDLE_OK HA_IDLE_PROXIED _ < <(idle_rss "$HA_PID" "$HA"); stop "$HA_PID"
start_keel;    read -r K_RSS0 K_RSS K_IDLE_OK K_IDLE_PROXIED _ < <(idle_rss "$KEEL_PID" "$KEEL_P"); stop "$KEEL_PID"
start_keel;    read -r KS_RSS0 KS_RSS KS_IDLE_OK KS_IDLE_PROXIED _ < <(idle_rss "$KEEL_PID" "$KSP"); stop "$KEEL_PID"
start_nat;     read -r N_RSS0 N_RSS N_IDLE_OK N_IDLE_PROXIED N_CT < <(idle_rss "$NAT_PID" "$KN"); stop "$NAT_PID"

# --- throughput -----------------------------------------------------------------------------------
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
run_wrk() { # port close|keep pid-to-account -> "rps p99ms errors cpu_us_per_request machine_us_per_request"
  local extra=() out
  [ "$2" = close ] && extra=(-H "Connection: close")
  local t0 m0; t0=$(cpu_ticks "$3"); m0=$(machine_ticks)
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" "http://127.0.0.1:$1/")
  local t1 m1; t1=$(cpu_ticks "$3"); m1=$(machine_ticks)
  local rps p99 err n cpu mach
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  err=$(awk '/Socket errors|Non-2xx/ {gsub(/[^0-9 ]/," "); s=0; for(i=1;i<=NF;i++) s+=$i; t+=s} END {print t+0}' <<<"$out")
  per_req() { awk -v a="$1" -v b="$2" -v n="$n" -v hz="$TCK" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / hz * 1e6 / n; else print 0 }'; }
  cpu=$(per_req "$t0" "$t1"); mach=$(per_req "$m0" "$m1")
  echo "$rps $p99 $err $cpu $mach"
}
run_iperf() { # port -> Gbit/s (iperf3's server takes one test at a time: retry while it is busy)
  local out
  for _ in 1 2 3 4 5; do
    sleep 1
    if out=$(taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$1" -t 5 -J 2>/dev/null) &&
       python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out" 2>/dev/null; then
      return 0
    fi
  done
  echo 0
}

declare -A R
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
measure() { # name port bulkport round pid
  echo "round $4: $1..." >&2
  local ka ka99 kaerr kacpu kam cc cc99 ccerr cccpu ccm
  read -r ka ka99 kaerr kacpu kam < <(run_wrk "$2" keep "${5:-}")
  read -r cc cc99 ccerr cccpu ccm < <(run_wrk "$2" close "${5:-}")
  R[$1,ka]+="$ka "; R[$1,ka99]+="$ka99 "; R[$1,cc]+="$cc "; R[$1,cc99]+="$cc99 "
  R[$1,kacpu]+="$kacpu "; R[$1,cccpu]+="$cccpu "
  # Machine-wide, net of the direct connection measured just before in this round (direct runs first).
  if [ "$1" = direct ]; then
    DIRECT_KAM=$kam; DIRECT_CCM=$ccm
    R[$1,kam]+="$kam "; R[$1,ccm]+="$ccm "
  else
    R[$1,kam]+="$(awk -v a="$kam" -v b="$DIRECT_KAM" 'BEGIN { printf "%.2f", a - b }') "
    R[$1,ccm]+="$(awk -v a="$ccm" -v b="$DIRECT_CCM" 'BEGIN { printf "%.2f", a - b }') "
  fi
  R[$1,err]=$(( ${R[$1,err]:-0} + kaerr + ccerr ))
  R[$1,bulk]+="$(run_iperf "$3") "
}
start_haproxy; start_keel
for r in $(seq "$ROUNDS"); do
  measure direct "$NGINX" "$IPERF" "$r" ""
  measure haproxy "$HA" "$HA_BULK" "$r" "$HA_PID"
  measure keel "$KEEL_P" "$KEEL_BULK" "$r" "$KEEL_PID"
  measure keelsp "$KSP" "$KSP_BULK" "$r" "$KEEL_PID"
  start_nat; measure nat "$KN" "$KN_BULK" "$r" "$NAT_PID"; stop "$NAT_PID"
done
SPLICED=$(curl -s "127.0.0.1:$KEEL_ADMIN/metrics" | awk '/^keel_lb_frontend_spliced_total\{frontend="web-splice"\}/ {print $2}')
SPLICE_FALLBACKS=$(curl -s "127.0.0.1:$KEEL_ADMIN/metrics" | awk '/^keel_lb_frontend_splice_fallbacks_total\{frontend="web-splice"\}/ {print $2}')
# --- syscalls per request/connection (strace -c; steadier than any timing) ---------------------
syscalls() { # port close|keep pid -> syscalls per request, with the top calls
  command -v strace >/dev/null || { echo "- (no strace)"; return; }
  local extra=() out n st
  [ "$2" = close ] && extra=(-H "Connection: close")
  strace -c -f -p "$3" -o "$WORK/strace.$3.$2" 2>/dev/null & st=$!
  sleep 0.5
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c10 -d2s "${extra[@]}" "http://127.0.0.1:$1/")
  sleep 0.3; kill -INT "$st" 2>/dev/null; wait "$st" 2>/dev/null || true
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  local f="$WORK/strace.$3.$2" total top
  total=$(awk -v n="$n" '$NF == "total" { printf "%.2f", $4 / n }' "$f")
  top=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" && $4 / n >= 0.05 { printf "%.2f %s\n", $4 / n, $NF }' "$f" |
    sort -gr | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
  echo "$total ($top)"
}
echo "counting syscalls..." >&2
SC_HA_CC=$(syscalls "$HA" close "$HA_PID"); SC_K_CC=$(syscalls "$KEEL_P" close "$KEEL_PID")
SC_HA_KA=$(syscalls "$HA" keep "$HA_PID"); SC_K_KA=$(syscalls "$KEEL_P" keep "$KEEL_PID")
SC_KS_CC=$(syscalls "$KSP" close "$KEEL_PID"); SC_KS_KA=$(syscalls "$KSP" keep "$KEEL_PID")
stop "$HA_PID"; stop "$KEEL_PID"
start_nat; SC_N_CC=$(syscalls "$KN" close "$NAT_PID"); SC_N_KA=$(syscalls "$KN" keep "$NAT_PID"); stop "$NAT_PID"
RAW=""
for k in "${!R[@]}"; do
  case $k in *,err) continue;; esac
  RAW+="$k: ${R[$k]}"$'\n'
  R[$k]=$(median "${R[$k]}")
done

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k/1024 }'; }
R[haproxy,rss0]=$(mb "$HA_RSS0"); R[keel,rss0]=$(mb "$K_RSS0"); R[keelsp,rss0]=$(mb "$KS_RSS0"); R[nat,rss0]=$(mb "$N_RSS0")
R[haproxy,rss]=$(mb "$HA_RSS"); R[keel,rss]=$(mb "$K_RSS"); R[keelsp,rss]=$(mb "$KS_RSS"); R[nat,rss]=$(mb "$N_RSS")
# mode: nat keeps no socket: its per-connection state is a conntrack entry, kernel memory that RSS
# does not show (nor does it show the proxies' sockets, two per connection). Counted here beside it.
R[nat,rssct]=$(mb "$(( N_RSS + N_CT ))"); R[nat,ct]=$(mb "$N_CT")
row() { # label key direct-cell(yes|net|no)
  local k=$2 d=- dk=- dn=-
  case $3 in
    yes) d=${R[direct,$k]}; dk=$(ratio "${R[keel,$k]:--}" "$d"); dn=$(ratio "${R[nat,$k]:--}" "$d");;
    net) d="${R[direct,$k]} (not net)";;
  esac
  echo "| $1 | $d | ${R[haproxy,$k]:--} | ${R[keel,$k]:--} | ${R[keelsp,$k]:--} | ${R[nat,$k]:--} | $(ratio "${R[keel,$k]:--}" "${R[haproxy,$k]:--}") | $(ratio "${R[keelsp,$k]:--}" "${R[haproxy,$k]:--}") | $(ratio "${R[nat,$k]:--}" "${R[haproxy,$k]:--}") | $dk | $dn |"
}
table() {
  echo "| | direct | HAProxy | keel-lb | keel-lb spliced | keel-lb nat | keel-lb / HAProxy | spliced / HAProxy | nat / HAProxy | keel-lb / direct | nat / direct |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  row "requests/s, keep-alive" ka yes
  row "p99 latency, keep-alive (ms)" ka99 yes
  row "connections/s, Connection: close" cc yes
  row "p99 latency, Connection: close (ms)" cc99 yes
  row "machine CPU per request, keep-alive, minus direct (us)" kam net
  row "machine CPU per connection, close, minus direct (us)" ccm net
  row "LB process CPU per request, keep-alive (us)" kacpu no
  row "LB process CPU per connection, close (us)" cccpu no
  row "bulk, iperf3 (Gbit/s)" bulk yes
  row "RSS idle (MiB)" rss0 no
  row "RSS with $IDLE idle connections (MiB)" rss no
  row "nat: + conntrack entries' kernel memory (MiB)" ct no
  R[haproxy,rssct]=${R[haproxy,rss]}
  row "nat: RSS + conntrack, against HAProxy's RSS (MiB)" rssct no
}

cat <<EOF

keel-lb benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),
$(haproxy -v | head -1 | cut -d' ' -f1-3), nginx $(nginx -v 2>&1 | cut -d/ -f2), wrk -t1 -c$CONNS -d${DURATION}s; each LB one thread on CPU $LB_CPU; load on CPU $LOAD_CPU.

$(table)

Syscalls per connection (Connection: close), strace -c -f, wrk -c10 2s:
  HAProxy ${SC_HA_CC}
  keel-lb ${SC_K_CC}
  keel-lb spliced ${SC_KS_CC}
  keel-lb nat (the process; the kernel forwards) ${SC_N_CC}
Syscalls per request (keep-alive):
  HAProxy ${SC_HA_KA}
  keel-lb ${SC_K_KA}
  keel-lb spliced ${SC_KS_KA}
  keel-lb nat ${SC_N_KA}
Spliced connections on web-splice: ${SPLICED:-0}, relayed instead (fallbacks): ${SPLICE_FALLBACKS:-0}.

Medians of $ROUNDS interleaved rounds. On a 2-CPU machine the load CPU (wrk + nginx) saturates before
the LB's CPU does, so requests/s mostly measures the latency each LB adds; CPU per request is the
efficiency figure: "machine ... minus direct" (all cores' busy time from /proc/stat / requests, less
the direct connection's in the same round) counts kernel work in softirq and kworkers that "LB process"
(its utime+stime / requests) misses. Load average before the run: $LOAD_BEFORE (the machine figure
assumes nothing else ran). wrk errors (socket errors + non-2xx, all rounds): direct ${R[direct,err]}, HAProxy ${R[haproxy,err]}, keel-lb ${R[keel,err]}, spliced ${R[keelsp,err]}, nat ${R[nat,err]}.
Idle connections established/proxied to nginx: HAProxy $HA_IDLE_OK/$HA_IDLE_PROXIED, keel-lb $K_IDLE_OK/$K_IDLE_PROXIED, spliced $KS_IDLE_OK/$KS_IDLE_PROXIED, nat $N_IDLE_OK/$N_IDLE_PROXIED.

Per-round values:
$(sort <<<"$RAW")
EOF
