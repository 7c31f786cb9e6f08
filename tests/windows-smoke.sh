#!/usr/bin/env bash
# Windows smoke test: cross-builds keel-agent for x86_64-pc-windows-gnu and runs it under Wine:
# `version`, `check --config` on the Windows example config, and one health pass with metrics served
# (`health-once --serve-for`): /metrics is fetched with curl from the Wine-run agent and must pass
# `promtool check metrics`. The Wine setup (with the ProcessPrng stand-in DLL Wine 8 needs for Rust's
# std) is tests/windows/setup.sh, shared with windows-service.sh.
# Wine runs services' start/stop but never PRESHUTDOWN: that path needs a real Windows host.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/windows/setup.sh
. tests/windows/setup.sh
cp configs/agent-health-windows.yaml "$work/agent.yaml"
cd "$work"

out=$(timeout 120 "$WINE" keel-agent.exe version 2>/dev/null)
echo "$out"
grep -q '^keel-agent ' <<<"$out"

timeout 60 "$WINE" keel-agent.exe check --config agent.yaml

# A free loopback port for metrics.listen (the example config's 10258 may be in use here).
free_port port
sed -i "s/^  listen: 127.0.0.1:10258/  listen: 127.0.0.1:$port/" agent.yaml
grep -q "listen: 127.0.0.1:$port" agent.yaml

timeout 60 "$WINE" keel-agent.exe health-once --config agent.yaml --serve-for 5s \
    >health.txt 2>health.log &
agent=$!
# Fetch /metrics from the Wine-run agent while it serves (bounded: 40 tries, 0.5 s apart).
fetched=
for _ in $(seq 40); do
    if curl -sf --max-time 2 "http://127.0.0.1:$port/metrics" -o metrics.txt; then fetched=1; break; fi
    kill -0 "$agent" 2>/dev/null || break
    sleep 0.5
done
wait "$agent" || { cat health.log; exit 1; }
[ -n "$fetched" ] || { echo "no /metrics served on 127.0.0.1:$port"; cat health.log; exit 1; }
curl -sf --max-time 1 "http://127.0.0.1:$port/metrics" >/dev/null 2>&1 && {
    echo "still serving after --serve-for"; exit 1; }
tr -d '\r' <health.txt >health.unix
grep -E '^(memory|system-disk|processes|runtime) ' health.unix
# The Windows platform code answered: memory and disk read, the SCM queried (no containerd here).
grep -qE '^memory +Ok ' health.unix
# The disk was read through GetDiskFreeSpaceExW; Ok or Problem depends on the host's free space (Wine's
# C: is the host's file system), so only the reading itself is asserted.
grep -qE '^system-disk +(Ok|Problem) +[A-Za-z]+ +C:.*[0-9.]+[KMGT]i? of [0-9.]+[KMGT]i? free' health.unix
grep -qE '^runtime +Problem +ServiceNotRunning' health.unix
# The served metrics carry the pass's results.
grep -q 'keel_agent_check_status{check="runtime",status="problem"} 1' metrics.txt
grep -q 'keel_agent_check_status{check="memory",status="ok"} 1' metrics.txt
if command -v promtool >/dev/null; then promtool check metrics <metrics.txt; fi
echo "windows smoke: ok (metrics served on 127.0.0.1:$port)"
