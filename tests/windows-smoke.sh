#!/usr/bin/env bash
# Windows smoke test: cross-builds keel-agent for x86_64-pc-windows-gnu and runs it under Wine:
# `version`, `check --config` on the Windows example config, and one health pass (`health-once`),
# whose metrics must pass `promtool check metrics`. Wine 8 lacks bcryptprimitives.dll (Rust's std
# imports ProcessPrng from it), so a tiny stand-in DLL is built from tests/windows/processprng.c.
# Wine runs services' start/stop but never PRESHUTDOWN: that path needs a real Windows host.
set -euo pipefail
cd "$(dirname "$0")/.."
WINE=${WINE:-/usr/lib/wine/wine64}
[ -x "$WINE" ] || WINE=$(command -v wine64 || true)
if [ -z "$WINE" ]; then echo "skipped: wine64 not installed"; exit 0; fi
command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "skipped: MinGW not installed"; exit 0; }

cargo build -q -p keel-agent --target x86_64-pc-windows-gnu
target_dir=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
trap 'WINEPREFIX="$work/prefix" wineserver -k 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$target_dir/x86_64-pc-windows-gnu/debug/keel-agent.exe" "$work/"
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bcryptprimitives.dll" tests/windows/processprng.c -ladvapi32
cp configs/agent-health-windows.yaml "$work/agent.yaml"
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
cd "$work"

out=$(timeout 120 "$WINE" keel-agent.exe version 2>/dev/null)
echo "$out"
grep -q '^keel-agent ' <<<"$out"

timeout 60 "$WINE" keel-agent.exe check --config agent.yaml

timeout 60 "$WINE" keel-agent.exe health-once --config agent.yaml >health.txt 2>health.log || {
    cat health.log; exit 1; }
tr -d '\r' <health.txt >health.unix
grep -E '^(memory|system-disk|processes|runtime): ' health.unix
# The Windows platform code answered: memory and disk read, the SCM queried (no containerd here).
grep -q '^memory: Ok ' health.unix
grep -q '^system-disk: Ok ' health.unix
grep -q '^runtime: Problem ServiceNotRunning' health.unix
grep -v -E '^(memory|system-disk|processes|runtime): ' health.unix >metrics.txt
grep -q 'keel_agent_check_status{check="runtime",status="problem"} 1' metrics.txt
if command -v promtool >/dev/null; then promtool check metrics <metrics.txt; fi
echo "windows smoke: ok"
