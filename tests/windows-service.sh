#!/usr/bin/env bash
# Windows service glue under Wine: `keel-agent.exe service install` creates the service (auto start,
# the config path, the preshutdown timeout, checked in the registry: Wine's sc.exe has no `qc`),
# `sc start` runs it until `sc query` says RUNNING and /metrics answers, `sc stop` stops it: STOPPED
# with exit code 0 and the agent's own log (keel-agent.log beside the .exe) shows the stop path.
# The node's API server is unreachable (a closed loopback port): the agent keeps retrying discovery,
# which is what a service must survive. Wine never sends PRESHUTDOWN and lacks the
# failure-actions flag level (install warns and goes on): those need a real Windows host.
# The Wine setup is tests/windows/setup.sh, shared with windows-smoke.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/windows/setup.sh
. tests/windows/setup.sh
free_port port
free_port closed
cat >"$work/agent.yaml" <<EOF
cluster:
  server: https://127.0.0.1:$closed
  token: abcdef.0123456789abcdef
  ca_pins: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
node:
  name: win-svc-$$
  pool: winpool
  os: windows
state_dir: 'C:\\keel-state'
metrics:
  listen: 127.0.0.1:$port
health:
  checks:
    - name: memory
      kind: memory
      min_available: 1%
EOF
winpath() { echo "Z:${1//\//\\}"; }
exe=$(winpath "$work/keel-agent.exe")
cfg=$(winpath "$work/agent.yaml")
log="$work/keel-agent.log"
cd "$work"

fail() { echo "FAIL: $*"; echo "--- keel-agent.log"; cat "$log" 2>/dev/null || true; exit 1; }
sc() { { timeout 30 "$WINE" sc "$@" 2>>sc.err || true; } | tr -d '\r'; }
state() { sc query keel-agent | awk '/STATE/ {print $4}'; }
# Bounded wait for a service state: 60 tries, 0.5 s apart.
wait_state() {
    for _ in $(seq 60); do [ "$(state)" = "$1" ] && return 0; sleep 0.5; done
    cat sc.err 2>/dev/null || true
    fail "service not $1 after 30 s (state: $(state))"
}

# A persistent wineserver keeps services.exe up between commands: otherwise each command boots
# the prefix again and services.exe auto-starts the (auto start) service behind the test's back.
mkdir -p "$WINEPREFIX"
wineserver -p
# Plain wineboot: `wineboot -i` on a fresh prefix leaves two services.exe answering in turn.
timeout 120 "$WINE" wineboot >/dev/null 2>&1
timeout 60 "$WINE" keel-agent.exe check --config "$cfg" >/dev/null

# 1. install: through the agent's own SCM calls.
timeout 60 "$WINE" keel-agent.exe service install --config "$cfg" --preshutdown-timeout 2m \
    >install.log 2>&1 || { cat install.log; fail "service install"; }
cat install.log
reg=$(timeout 30 "$WINE" reg query 'HKLM\System\CurrentControlSet\Services\keel-agent' 2>/dev/null | tr -d '\r')
echo "$reg"
grep -Eq 'Start +REG_DWORD +0x2$' <<<"$reg" || fail "start type is not auto (2)"
grep -Eq 'Type +REG_DWORD +0x10$' <<<"$reg" || fail "type is not own process (0x10)"
grep -Eq 'PreshutdownTimeout +REG_DWORD +0x1d4c0$' <<<"$reg" || fail "preshutdown timeout is not 120000 ms"
grep -Fq "ImagePath    REG_SZ    $exe service run --config $cfg" <<<"$reg" || fail "image path"
grep -Eq 'DependOnService +REG_MULTI_SZ +containerd$' <<<"$reg" || fail "no dependency on containerd"
wait_state STOPPED

# 2. start: RUNNING, and the agent serves /metrics while it retries the unreachable API server.
started=$(date +%s.%N)
sc start keel-agent >/dev/null || true   # Wine's sc returns 1 even when the start succeeded
wait_state RUNNING
fetched=
for _ in $(seq 60); do
    if curl -sf --max-time 2 "http://127.0.0.1:$port/metrics" -o metrics.txt; then fetched=1; break; fi
    sleep 0.5
done
[ -n "$fetched" ] || fail "no /metrics on 127.0.0.1:$port"
up=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
grep -q '^keel_agent_join_state' metrics.txt || fail "metrics lack keel_agent_join_state"
# This run's agent only (the temp dir's name is unique; '.' matches the backslash).
pid=$(pgrep -f "${work##*/}.keel-agent.exe service run" | head -1)
[ -n "$pid" ] || fail "no agent process"

# 3. stop: STOPPED with exit code 0, the process gone, the stop path in the agent's log.
stopping=$(date +%s.%N)
sc stop keel-agent >/dev/null || true
wait_state STOPPED
q=$(sc query keel-agent)
grep -Eq 'WIN32_EXIT_CODE +: 0 ' <<<"$q" || { echo "$q"; fail "non-zero exit code"; }
for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
kill -0 "$pid" 2>/dev/null && fail "agent process $pid still alive after STOPPED"
down=$(python3 -c "import time; print(f'{time.time() - $stopping:.1f}')")
curl -sf --max-time 1 "http://127.0.0.1:$port/metrics" >/dev/null 2>&1 && fail "still serving after stop"
# The log carries tracing's ANSI colours (main enables them unconditionally): strip them.
tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;]*m//g' >agent.unix
for line in "service running" "keel-agent starting" "service control STOP: stopping the agent" \
    "service stopped"; do
    grep -q "$line" agent.unix || fail "log lacks '$line'"
done
grep -q 'service stopped.*exit_code=0' agent.unix || fail "log lacks exit_code=0"
# The state dir's DACL: the agent sets a protected one (SYSTEM and Administrators) and reads it back.
# Wine keeps no DACL on its files and reports one made from the Unix mode, so here the agent must say
# that it could not verify it, never that the dir is protected (a real Windows host reports the set one).
acl=$(grep -E 'state dir (protected|NOT verified private)' agent.unix | head -1)
[ -n "$acl" ] || fail "log says nothing about the state dir's DACL"
grep -qF 'asked="D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"' <<<"$acl" || fail "unexpected DACL line: $acl"
grep -q 'state dir protected' <<<"$acl" && fail "claims a protected state dir that Wine does not report: $acl"
echo "$acl"
sleep 2
wait_state STOPPED   # not started again behind our back
grep -E 'service (running|control|stopped)' agent.unix
echo "windows service: ok (RUNNING with /metrics in ${up}s, STOPPED in ${down}s)"
