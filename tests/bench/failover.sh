#!/usr/bin/env bash
# VRRP failover benchmark (issue 4): client-observed outage when the master's link is cut, and
# failed connections during a planned handover (SIGTERM), keel-lb vs keepalived, same topology,
# same advert interval (1 s and 0.1 s); optionally spurious transitions under data-plane load.
#
#   sudo tests/bench/failover.sh [--load | --load-only] [--load-secs N] [--fast-busy [N] | --fast-busy-only [N]]
#       (needs root, keel-lb built: cargo build -p keel-lb; KEEL=path/to/keel-lb to choose the build)
#
# Topology: network namespaces on one bridge: lb1 (priority 200), lb2 (priority 100), client.
# The service on the VIP answers "ok": keel-lb proxies VIP:8080 to a socat on its own host;
# with keepalived, socat listens on *:8080 on each LB host. The client connects every 10 ms.
# Load run: a backend host runs nginx; the master proxies wrk's HTTP load to it for --load-secs
# (default 60) with 50 ms adverts; VRRP transitions are counted on both LBs. For comparison the
# same run with keepalived (VRRP) + haproxy (data plane), transitions counted from their logs.
# Fast-busy run (issue 16, --fast-busy N, 10 runs by default): 10 ms adverts while every core is
# saturated (one busy loop per CPU at the LBs' priority, plus wrk through the master to nginx); per
# run, 3 s of load, then the master's link is cut and the client measures the outage (probe every
# 5 ms, 20 ms connect timeout, so the resolution is ~25 ms; the probe runs at nice -10 so that it
# does not measure its own scheduling delay). Spurious transitions = every transition on either LB
# except lb2's one expected BACKUP->MASTER after the cut. Then the same with keepalived at
# advert_int 0.01 (VRRPv3 centiseconds), if it accepts it.
set -euo pipefail
cd "$(dirname "$0")/../.."
KEEL=${KEEL:-${CARGO_TARGET_DIR:-target}/debug/keel-lb}
[ -x "$KEEL" ] || { echo "keel-lb not found at $KEEL (set KEEL=...)"; exit 1; }
PROBE=tests/bench/failover_probe.py
LOAD=0; ONLY_LOAD=0; LOAD_SECS=60; FAST=0
num_or() { case "${1:-}" in ''|*[!0-9]*) echo "$2" ;; *) echo "$1" ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --load) LOAD=1 ;;
    --load-only) LOAD=1; ONLY_LOAD=1 ;;
    --fast-busy) FAST=$(num_or "${2:-}" 10); [ "$FAST" = "${2:-}" ] && shift ;;
    --fast-busy-only) FAST=$(num_or "${2:-}" 10); [ "$FAST" = "${2:-}" ] && shift; ONLY_LOAD=1 ;;
    --load-secs) LOAD_SECS=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
P="kb$$"; BR="${P}br"; VIP=198.18.1.100
DIR=$(mktemp -d)
cleanup() {
  for n in ${P}lb1 ${P}lb2 ${P}cl ${P}be $BR; do
    for p in $(ip netns pids $n 2>/dev/null); do kill -9 $p 2>/dev/null || true; done
    ip netns del $n 2>/dev/null || true
  done
  rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add $BR; ip -n $BR link add br0 type bridge mcast_snooping 0; ip -n $BR link set br0 up
i=10
for h in lb1 lb2 cl be; do
  i=$((i+1)); [ $h = be ] && i=60
  ip netns add $P$h
  ip netns exec $P$h sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  ip -n $BR link add $h type veth peer name eth0 netns $P$h
  ip -n $BR link set $h master br0; ip -n $BR link set $h up
  ip -n $P$h link set lo up; ip -n $P$h addr add 198.18.1.$i/24 dev eth0; ip -n $P$h link set eth0 up
done
NS() { ip netns exec "$P$1" "${@:2}"; }
has_vip() { NS "$1" ip -o addr show dev eth0 | grep -q " $VIP/"; }
wait_vip() { for _ in $(seq 200); do has_vip "$1" && return 0; sleep 0.05; done; echo "timeout waiting for VIP on $1" >&2; return 1; }
wait_no_vip() { for _ in $(seq 200); do has_vip "$1" || return 0; sleep 0.05; done; return 1; }

keel_conf() { # priority interval_ms [backend]
  cat <<Y
admin: { listen: "127.0.0.1:9100" }
shutdown: { drain: 1s, handover_timeout: 3s }
frontends: [{ name: web, listen: "$VIP:8080", pool: web }]
pools:
  web:
    backends: [{ address: "${3:-127.0.0.1:9000}" }]
vrrp:
  routers:
    - { name: web, vrid: 51, interface: eth0, priority: $1, advert_interval: ${2}ms, vips: [$VIP/24] }
Y
}
ka_conf() { # priority interval_s
  cat <<K
global_defs { router_id ka$1
  vrrp_version 3 }
vrrp_instance web { state BACKUP
  interface eth0
  virtual_router_id 51
  priority $1
  advert_int $2
  virtual_ipaddress { $VIP/24 } }
K
}
start() { # impl host priority interval_ms
  local impl=$1 h=$2 prio=$3 ms=$4
  if [ "$impl" = keel ]; then
    NS $h socat TCP-LISTEN:9000,bind=127.0.0.1,fork,reuseaddr SYSTEM:'echo ok' >/dev/null 2>&1 &
    keel_conf $prio $ms > $DIR/$h.yaml
    NS $h "$KEEL" run -c $DIR/$h.yaml >> $DIR/$h.log 2>&1 &
  else
    NS $h socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo ok' >/dev/null 2>&1 &
    ka_conf $prio $(python3 -c "print($ms/1000)") > $DIR/$h.conf
    NS $h keepalived -n -l -D -f $DIR/$h.conf -p $DIR/$h-a.pid -r $DIR/$h-v.pid -c $DIR/$h-c.pid >> $DIR/$h.log 2>&1 &
  fi
}
stop_all() {
  # Until the namespaces are empty (bounded): keepalived's children may fork after the first sweep,
  # and a leftover pid file makes the next keepalived refuse to start ("daemon is already running").
  for _ in $(seq 20); do
    local left=0
    for h in lb1 lb2; do for p in $(ip netns pids $P$h); do kill -9 $p 2>/dev/null || true; left=1; done; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  rm -f $DIR/lb1-*.pid $DIR/lb2-*.pid
  sleep 0.3
  for h in lb1 lb2; do NS $h ip addr del $VIP/24 dev eth0 2>/dev/null || true; done
  NS cl ip neigh flush dev eth0
}
master_pid() { # the VRRP process on lb1
  for p in $(ip netns pids ${P}lb1); do
    c=$(cat /proc/$p/comm); [ "$c" = keel-lb ] || [ "$c" = keepalived ] && { echo $p; return; }
  done
}

[ $ONLY_LOAD = 1 ] || printf "%-11s %-9s %-28s %-9s %-9s %-s\n" impl advert scenario attempts failed outage_ms
INTERVALS="1000 100"; [ $ONLY_LOAD = 1 ] && INTERVALS=""
for ms in $INTERVALS; do
  for impl in keel keepalived; do
    # Unplanned: cut the master's link.
    start $impl lb1 200 $ms; start $impl lb2 100 $ms
    wait_vip lb1; sleep $(python3 -c "print(max(1.0, 4*$ms/1000))")
    NS cl python3 $PROBE $VIP 8080 0.01 $(python3 -c "print(3 + 8*$ms/1000)") > $DIR/probe &
    PP=$!; sleep 1
    ip -n $BR link set lb1 down
    wait $PP; read a f o < $DIR/probe
    printf "%-11s %-9s %-28s %-9s %-9s %-s\n" $impl ${ms}ms "master link cut" $a $f $o
    ip -n $BR link set lb1 up
    wait_vip lb1; wait_no_vip lb2; sleep 1
    # Planned: SIGTERM the master.
    NS cl python3 $PROBE $VIP 8080 0.01 $(python3 -c "print(3 + 6*$ms/1000)") > $DIR/probe &
    PP=$!; sleep 1
    kill -TERM $(master_pid)
    wait $PP; read a f o < $DIR/probe
    printf "%-11s %-9s %-28s %-9s %-9s %-s\n" $impl ${ms}ms "planned handover (SIGTERM)" $a $f $o
    stop_all
  done
done

BE=198.18.1.60:80
NGINX_UP=0
start_nginx() { # once: the backend for the load runs
  [ $NGINX_UP = 1 ] && return
  NGINX_UP=1
  mkdir -p $DIR/nginx
  cat > $DIR/nginx/nginx.conf <<N
user root;
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $DIR/nginx/b; proxy_temp_path $DIR/nginx/p; fastcgi_temp_path $DIR/nginx/f;
  uwsgi_temp_path $DIR/nginx/u; scgi_temp_path $DIR/nginx/s;
  server { listen $BE; location / { return 200 "ok\n"; } } }
N
  NS be nginx -e $DIR/nginx/error.log -c $DIR/nginx/nginx.conf -g 'daemon off;' &
  sleep 1
}
trans() { NS $1 curl -s 127.0.0.1:9100/metrics | awk '/^keel_vrrp_transitions_total/ {s+=$2} END {print s+0}'; }
ka_trans() { grep -cE "Entering (MASTER|BACKUP|FAULT) STATE" $DIR/$1.log || true; }

[ $LOAD = 1 ] && [ $ONLY_LOAD = 1 ] && [ $FAST -gt 0 ] && LOAD=0  # --fast-busy-only
if [ $LOAD = 1 ]; then
  # Spurious transitions: 50 ms adverts while lb1 (master) proxies as much HTTP as wrk can push.
  start_nginx
  for impl in keel keepalived; do
    if [ $impl = keel ]; then
      for h in lb1 lb2; do
        p=200; [ $h = lb2 ] && p=100
        keel_conf $p 50 $BE > $DIR/$h.yaml
        NS $h "$KEEL" run -c $DIR/$h.yaml >> $DIR/$h.log 2>&1 &
      done
    else
      : > $DIR/lb1.log; : > $DIR/lb2.log
      for h in lb1 lb2; do
        p=200; [ $h = lb2 ] && p=100
        ka_conf $p 0.05 > $DIR/$h.conf
        NS $h sysctl -qw net.ipv4.ip_nonlocal_bind=1
        printf 'global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nlisten web\n  bind %s:8080\n  server n %s\n' $VIP $BE > $DIR/$h-haproxy.cfg
        NS $h haproxy -db -f $DIR/$h-haproxy.cfg >/dev/null 2>&1 &
        NS $h keepalived -n -l -D -f $DIR/$h.conf -p $DIR/$h-a.pid -r $DIR/$h-v.pid -c $DIR/$h-c.pid >> $DIR/$h.log 2>&1 &
      done
    fi
    wait_vip lb1; sleep 2
    if [ $impl = keel ]; then b1=$(trans lb1); b2=$(trans lb2); else b1=$(ka_trans lb1); b2=$(ka_trans lb2); fi
    NS cl timeout $((LOAD_SECS + 30)) wrk -t2 -c64 -d${LOAD_SECS}s --timeout 2s http://$VIP:8080/ > $DIR/wrk 2>&1 || true
    if [ $impl = keel ]; then a1=$(trans lb1); a2=$(trans lb2); else a1=$(ka_trans lb1); a2=$(ka_trans lb2); fi
    rps=$(awk '/Requests\/sec/ {print $2}' $DIR/wrk)
    printf "%-11s %-9s %-28s requests/s %-10s transitions lb1 %s lb2 %s\n" $impl 50ms "load ${LOAD_SECS}s (wrk -c64)" "${rps:-?}" $((a1-b1)) $((a2-b2))
    stop_all
  done
fi

if [ $FAST -gt 0 ]; then
  start_nginx
  start_lbs() { # impl advert_ms: lb1 (200) and lb2 (100), both proxying to nginx (in subshells: no job notices)
    local impl=$1 ms=$2 h p
    for h in lb1 lb2; do
      p=200; [ $h = lb2 ] && p=100
      if [ $impl = keel ]; then
        keel_conf $p $ms $BE > $DIR/$h.yaml
        (NS $h "$KEEL" run -c $DIR/$h.yaml >> $DIR/$h.log 2>&1 &)
      else
        ka_conf $p $(python3 -c "print($ms/1000)") > $DIR/$h.conf
        NS $h sysctl -qw net.ipv4.ip_nonlocal_bind=1
        printf 'global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nlisten web\n  bind %s:8080\n  server n %s\n' $VIP $BE > $DIR/$h-haproxy.cfg
        (NS $h haproxy -db -f $DIR/$h-haproxy.cfg >/dev/null 2>&1 &)
        (NS $h keepalived -n -l -D -f $DIR/$h.conf -p $DIR/$h-a.pid -r $DIR/$h-v.pid -c $DIR/$h-c.pid >> $DIR/$h.log 2>&1 &)
      fi
    done
  }
  # One busy loop per CPU, at the priority the LBs run at, in the backend's namespace (any would do:
  # namespaces share the CPUs). Killed with the namespace's processes in cleanup.
  hogs() { for _ in $(seq "$(nproc)"); do (NS be sh -c "while :; do :; done" &); done; }
  unhog() { for p in $(ip netns pids ${P}be); do [ "$(cat /proc/$p/comm 2>/dev/null)" = sh ] && kill -9 $p 2>/dev/null; done; true; }
  count() { if [ $1 = keel ]; then echo "$(trans lb1) $(trans lb2)"; else echo "$(ka_trans lb1) $(ka_trans lb2)"; fi; }
  echo "fast-busy: 10 ms adverts, $(nproc) busy loops + wrk -t1 -c32 through the master, $FAST runs per implementation"
  printf "%-11s %-4s %-9s %-7s %-10s %-s\n" impl run attempts failed outage_ms "spurious transitions (lb1 lb2)"
  for impl in keel keepalived; do
    outs=""; spur_total=0; ran=0
    for run in $(seq "$FAST"); do
      : > $DIR/lb1.log; : > $DIR/lb2.log
      start_lbs $impl 10
      if ! wait_vip lb1 2>/dev/null; then
        echo "$impl: lb1 never took the VIP at 10 ms adverts; log:"; tail -5 $DIR/lb1.log; stop_all; break
      fi
      sleep 1
      read -r b1 b2 < <(count $impl)
      hogs
      (NS cl timeout 30 wrk -t1 -c32 -d12s --timeout 2s http://$VIP:8080/ > /dev/null 2>&1 &)
      sleep 3
      NS cl nice -n -10 python3 $PROBE $VIP 8080 0.005 2.5 0.02 http > $DIR/probe &
      PP=$!; sleep 1
      read -r c1 c2 < <(count $impl)
      ip -n $BR link set lb1 down
      wait $PP; read -r a f o < $DIR/probe
      sleep 0.5
      read -r d1 d2 < <(count $impl)
      unhog; for p in $(ip netns pids ${P}cl); do [ "$(cat /proc/$p/comm 2>/dev/null)" = wrk ] && kill $p 2>/dev/null; done
      ip -n $BR link set lb1 up
      # Before the cut nothing may move; after it lb2 becomes master once (lb1, cut off, may go to FAULT).
      spur1=$((c1 - b1)); spur2=$((c2 - b2 + (d2 - c2 > 0 ? d2 - c2 - 1 : 0)))
      [ $((d2 - c2)) -ge 1 ] || echo "  (run $run: lb2 never became master)"
      printf "%-11s %-4s %-9s %-7s %-10s %s %s\n" $impl $run $a $f $o $spur1 $spur2
      outs+="$o "; spur_total=$((spur_total + spur1 + spur2)); ran=$((ran + 1))
      stop_all
    done
    [ $ran -gt 0 ] && echo "$impl: outage ms median $(tr ' ' '\n' <<<"$outs" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'), max $(tr ' ' '\n' <<<"$outs" | sort -n | tail -1); spurious transitions in $ran runs: $spur_total"
  done
fi
