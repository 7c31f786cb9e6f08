#!/usr/bin/env bash
# Fuzzes Keel's input parsers (fuzz/, cargo-fuzz + libFuzzer on nightly) for a given time per target
# and prints, per target: executions, executions/s, crashes, corpus size. Exits non-zero on a crash.
#
#   tests/bench/fuzz.sh <seconds-per-target> [target...]    # default: every target in fuzz/Cargo.toml
#   FUZZ_RUNS=10000000 tests/bench/fuzz.sh 14400 vrrp_ipv4  # stop after that many executions (or the time)
#   FUZZ_SANITIZER=none FUZZ_TARGET_DIR=fuzz/target-nosan tests/bench/fuzz.sh 3600 discovery  # no ASan (below)
#
# Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz`. One libFuzzer process at a
# time (no -jobs/-workers). Each target starts from its committed corpus (fuzz/corpus/<target>/) plus
# the seeds fuzz/seed.py makes from the repository's fixtures, and fuzzes a scratch copy
# ($FUZZ_WORK, kept afterwards: crashes are in $FUZZ_WORK/artifacts/<target>/). With UPDATE_CORPUS=1
# the minimised result (libFuzzer -merge=1, what `cargo fuzz cmin` runs) replaces the committed corpus.
# Crashes are not committed as they are found: fix the parser, then put the input in
# fuzz/artifacts/<target>/, which the stable replay (tests/fuzz_bodies/tests/corpora.rs) runs in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

secs=${1:?usage: tests/bench/fuzz.sh <seconds-per-target> [target...]}
shift
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^keel-fuzz$')
fi

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 \
  || { echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2; exit 1; }

triple=x86_64-unknown-linux-gnu
tdir=${FUZZ_TARGET_DIR:-$root/fuzz/target}
# Default cargo-fuzz build: optimised, debug assertions and overflow checks on, AddressSanitizer (the
# YAML parser is C translated to unsafe Rust). 16 codegen units: the dependency tree (kube,
# k8s-openapi) builds in minutes instead of tens of minutes on 2 cores, for a few % of speed.
# The targets named are built (one cargo run; they share all their dependencies).
# FUZZ_SANITIZER=none FUZZ_TARGET_DIR=fuzz/target-nosan: no AddressSanitizer, in a target dir of its
# own (the flags differ: sharing one would rebuild everything each time). For a target whose unsafe
# code is fuzzed under ASan by others (discovery: the YAML parser, which lb_config, agent_config and
# kubeconfig run under ASan), at 20x the speed; panics, overflows and debug assertions still fail.
(cd fuzz && cargo +nightly fuzz build ${FUZZ_SANITIZER:+-s "$FUZZ_SANITIZER"} --target-dir "$tdir" --codegen-units 16 \
  "${targets[@]}" 2>&1 \
  | grep -Ev '^\s+(Compiling|Fresh)' || true)
for t in "${targets[@]}"; do
  [ -x "$tdir/$triple/release/$t" ] || { echo "no fuzz target $t (build failed?)" >&2; exit 1; }
done

work=${FUZZ_WORK:-$(mktemp -d /tmp/keel-fuzz.XXXXXX)}
mkdir -p "$work/seeds"
python3 fuzz/seed.py "$work/seeds" >/dev/null

rows=()
crashed=0
for t in "${targets[@]}"; do
  bin=$tdir/$triple/release/$t
  corpus=$work/corpus/$t
  arts=$work/artifacts/$t
  rm -rf "$corpus" "$arts"
  mkdir -p "$corpus" "$arts"
  cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  cp "$work"/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  before=$(find "$corpus" -type f | wc -l)
  log=$work/$t.log
  echo "== $t: ${secs}s from $before inputs (log $log)" >&2
  # -timeout: one input taking 10 s is a finding (a hang), not a slow machine. It is wall-clock
  # time: a fuzzer stopped (SIGSTOP) for longer reports its current input as a timeout on resume.
  # Do not edit this script while it runs: bash reads it by offset after each command.
  set +e
  "$bin" "$corpus" -max_total_time="$secs" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$arts/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ -z "$execs" ]; then # no final stats (killed): the last status line
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  elapsed=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE '[0-9]+ second' | grep -oE '[0-9]+' || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=$(find "$arts" -type f | wc -l)
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1 # libFuzzer failed without writing an input (see the log)
  fi
  # Keep the inputs that add coverage (what `cargo fuzz cmin` does); edges only, not hit counts, so
  # the committed corpus stays at a few hundred files.
  min=$work/min/$t
  rm -rf "$min"
  mkdir -p "$min"
  "$bin" -merge=1 -use_counters=0 -artifact_prefix="$work/merge-" "$min" "$corpus" >"$work/$t.merge.log" 2>&1 || true
  after=$(find "$min" -type f | wc -l)
  size=$(du -sk "$min" | cut -f1)
  if [ "${UPDATE_CORPUS:-0}" = 1 ] && [ "$crashes" -eq 0 ] && [ "$after" -gt 0 ]; then
    rm -rf fuzz/corpus/"$t"
    mkdir -p fuzz/corpus/"$t"
    cp "$min"/* fuzz/corpus/"$t"/
  fi
  [ "$crashes" -eq 0 ] || crashed=1
  rows+=("$(printf '%-14s %7s %12s %9s %8s %8s %10s' "$t" "${elapsed:-$secs}" "${execs:-?}" "${rate:-?}" \
    "$crashes" "$after" "${size}K")")
done

printf '\n%-14s %7s %12s %9s %8s %8s %10s\n' target seconds executions exec/s crashes corpus "corpus KiB"
printf '%s\n' "${rows[@]}"
echo "work dir: $work"
if [ "$crashed" -ne 0 ]; then
  echo "crashes: $(find "$work/artifacts" -type f | tr '\n' ' ')" >&2
  exit 1
fi
