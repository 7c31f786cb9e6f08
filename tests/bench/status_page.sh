#!/usr/bin/env bash
# The status page's cost with 1,000 backends: bytes of `/` and `/v1/status`, keel-lb's time to
# answer them, and chromium's time to load the page and to re-render it from `/v1/status`.
#
#   tests/bench/status_page.sh          # ~1 minute after the release build
#
# Layout: one keel-lb (release, --workers 1) on loopback with 10 pools x 100 backends. Every backend
# is a distinct 127.0.x.y address on one port that a listener on 0.0.0.0 answers; every tenth
# points at a closed port, so 100 backends are DOWN with a reason (the widest rows). Server time is
# curl's time to the first byte, median of REQS requests. Chromium (median of ROUNDS): the
# page measures itself in real time (no virtual time, which would stop its clock): `data-load-ms`
# (navigation start to the load event: the server-rendered page fetched, parsed, laid out) and
# `data-render-ms` (one re-render from /v1/status by its script). Needs: curl, chromium, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

REQS=${REQS:-21}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-28080}
ADMIN=${ADMIN:-28081}
BE_PORT=${BE_PORT:-28099}
CLOSED_PORT=${CLOSED_PORT:-28098}

for t in curl chromium python3; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

TARGET=${CARGO_TARGET_DIR:-target}
echo "building keel-lb (release)..." >&2
cargo build --release -p keel-lb --quiet
KEEL="$TARGET/release/keel-lb"

WORK=$(mktemp -d /tmp/keel-status-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One process that accepts and closes: a forking server would cost a process per check.
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
' "$BE_PORT" &
PIDS+=($!)

python3 - "$WORK/lb.yaml" "$PORT" "$ADMIN" "$BE_PORT" "$CLOSED_PORT" <<'EOF'
import sys
path, port, admin, be, closed = sys.argv[1], *map(int, sys.argv[2:])
out = [f"admin:\n  listen: 127.0.0.1:{admin}\nfrontends:\n"]
for p in range(10):
    out.append(f"  - name: fe{p}\n    listen: 127.0.0.1:{port + 100 + p}\n    pool: pool{p}\n")
out.append("pools:\n")
for p in range(10):
    out.append(f"  pool{p}:\n    health:\n      type: tcp\n      interval: 2s\n      timeout: 1s\n    backends:\n")
    for b in range(100):
        n = p * 100 + b
        port_b = closed if n % 10 == 9 else be
        out.append(f"      - address: 127.0.{1 + n // 250}.{1 + n % 250}:{port_b}\n")
open(path, "w").write("".join(out))
EOF

"$KEEL" run --workers 1 --config "$WORK/lb.yaml" 2>"$WORK/lb.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$ADMIN/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# Let the checks run and the 100 closed ports go DOWN (fall 2 x 2 s).
sleep 7

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() { # path -> "bytes ttfb_ms_median"
  local path=$1 bytes
  bytes=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$ADMIN$path")
  local t
  t=$(for _ in $(seq 1 "$REQS"); do
    curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://127.0.0.1:$ADMIN$path"
  done | awk '{printf "%.2f\n", $1 * 1000}' | median)
  echo "$bytes $t"
}

read -r page_bytes page_ms < <(measure /)
read -r json_bytes json_ms < <(measure /v1/status)
read -r csv_bytes csv_ms < <(measure /v1/status.csv)
gz_page=$(curl -s "http://127.0.0.1:$ADMIN/" | gzip -c | wc -c)
gz_json=$(curl -s "http://127.0.0.1:$ADMIN/v1/status" | gzip -c | wc -c)

PROFILE="$WORK/chromium"
chrome() { # real time: the page's own clock measures it
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --user-data-dir="$PROFILE" --timeout=8000 --dump-dom "$1" 2>/dev/null
}
chrome "http://127.0.0.1:$ADMIN/" > /dev/null # warm the profile
: > "$WORK/load"; : > "$WORK/render"
for _ in $(seq 1 "$ROUNDS"); do
  chrome "http://127.0.0.1:$ADMIN/" > "$WORK/dom.html"
  grep -o 'data-load-ms="[0-9.]*"' "$WORK/dom.html" | grep -o '[0-9.]*' | head -1 >> "$WORK/load" || true
  grep -o 'data-render-ms="[0-9.]*"' "$WORK/dom.html" | grep -o '[0-9.]*' | head -1 >> "$WORK/render" || true
done
load=$(median < "$WORK/load")
refresh=$(median < "$WORK/render")
rows=$(grep -o 'data-pool="pool[0-9]*" data-backend=' "$WORK/dom.html" | wc -l || true)
down=$(grep -o 'class="st-DOWN" data-pool="pool' "$WORK/dom.html" | wc -l || true)
live=$(grep -c '>live<' "$WORK/dom.html" || true)

cat <<EOF
keel-lb status page, 10 pools x 100 backends ($rows backend rows in the last DOM, $down DOWN, script refreshed: $live), $(nproc) CPUs, load average $(cut -d' ' -f1 /proc/loadavg)
| what | bytes | gzip | keel-lb time to first byte (median of $REQS) |
|---|---|---|---|
| \`GET /\` (server-rendered page) | $page_bytes | $gz_page | $page_ms ms |
| \`GET /v1/status\` (JSON) | $json_bytes | $gz_json | $json_ms ms |
| \`GET /v1/status.csv\` | $csv_bytes | - | $csv_ms ms |
chromium (median of $ROUNDS): navigation to load event $load ms; one script re-render from /v1/status $refresh ms
EOF
