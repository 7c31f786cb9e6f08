#!/usr/bin/env bash
# What one connection costs keel-lb, quickly and without HAProxy (tests/bench/lb.sh is the full
# comparison): syscalls per connection (strace -c during wrk -c10 2s with `Connection: close`, nginx
# behind) and resident memory per idle connection ((RSS with IDLE idle connections - RSS idle) / IDLE,
# nginx holding them as in lb.sh). Neither figure depends on the machine being quiet.
#
#   tests/bench/lb_conn_cost.sh [keel-lb binary]     # default: builds and uses the release keel-lb
#
# Needs: nginx, wrk, strace, python3, ss. Ports 39201-39205 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

KEEL=${1:-}
if [ -z "$KEEL" ]; then
  cargo build --release -p keel-lb --quiet
  KEEL=${CARGO_TARGET_DIR:-target}/release/keel-lb
fi
IDLE=${IDLE:-9500}
NGINX=39201 PORT=39202 ADMIN=39203 IPORT=39204 IADMIN=39205
WORK=$(mktemp -d /tmp/keel-conn-cost.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do ss -Htln "( sport = :$1 )" | grep -q . && return 0; sleep 0.1; done
  echo "nothing listens on $1" >&2
  return 1
}
lb_config() { # port admin backend-port -> config path
  cat >"$WORK/lb-$1.yaml" <<EOF
admin:
  listen: 127.0.0.1:$2
shutdown:
  drain: 1s
frontends:
  - name: web
    listen: 127.0.0.1:$1
    pool: p
    max_connections: 9900
pools:
  p:
    health: { type: tcp, interval: 5s }
    backends: [{ address: "127.0.0.1:$3" }]
EOF
  echo "$WORK/lb-$1.yaml"
}

# --- syscalls per connection ------------------------------------------------------------------
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1; worker_rlimit_nofile 20000; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events { worker_connections 19000; }
http { access_log off; server { listen 127.0.0.1:$NGINX; location / { return 200 "ok\n"; } } }
EOF
nginx -c "$WORK/nginx.conf" & PIDS+=($!)
RUST_LOG=warn "$KEEL" run --workers 1 --config "$(lb_config $PORT $ADMIN $NGINX)" 2>"$WORK/keel.log" & K=$!
PIDS+=($K)
wait_port $NGINX
wait_port $PORT
strace -c -f -p "$K" -o "$WORK/strace" 2>/dev/null & ST=$!
sleep 0.5
out=$(wrk -t1 -c10 -d2s -H "Connection: close" "http://127.0.0.1:$PORT/")
sleep 0.3
kill -INT "$ST" 2>/dev/null || true
wait "$ST" 2>/dev/null || true
n=$(awk '/requests in/ {print $1}' <<<"$out")
total=$(awk -v n="$n" '$NF == "total" { printf "%.2f", $4 / n }' "$WORK/strace")
top=$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" && $4 / n >= 0.05 { printf "%.2f %s\n", $4 / n, $NF }' "$WORK/strace" |
  sort -gr | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')
kill "$K"

# --- memory per idle connection -----------------------------------------------------------------
RUST_LOG=warn "$KEEL" run --workers 1 --config "$(lb_config $IPORT $IADMIN $NGINX)" 2>>"$WORK/keel.log" & K=$!
PIDS+=($K)
wait_port $IPORT
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$K/status"; }
base=$(rss)
coproc IDLER { python3 tests/bench/lb_idle.py 127.0.0.1 "$IPORT" "$IDLE"; }
PIDS+=($IDLER_PID)
read -r line <&"${IDLER[0]}"
for _ in $(seq 100); do
  [ "$(ss -Htn state established "( sport = :$NGINX )" | wc -l)" -ge "$IDLE" ] && break
  sleep 0.2
done
proxied=$(ss -Htn state established "( sport = :$NGINX )" | wc -l)
sleep 1
loaded=$(rss)

echo "keel-lb: $KEEL ($(date -u +%Y-%m-%dT%H:%MZ))"
echo "syscalls per connection (Connection: close, $n requests): $total ($top)"
echo "RSS idle: $base KiB; with ${line#ready } idle connections ($proxied proxied): $loaded KiB;" \
  "per connection: $(( (loaded - base) * 1024 / IDLE )) bytes"
