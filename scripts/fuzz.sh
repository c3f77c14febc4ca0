#!/usr/bin/env bash
# Fuzzes the wire decoder with libFuzzer (ASan+UBSan) for a fixed number of runs.
#   scripts/fuzz.sh [RUNS]     default 750000 runs: about 60 s of one core of the CI machine
#                              (1M runs took 80 s of CPU; inputs grow as the corpus does)
# Installs clang and its libFuzzer runtime if missing, builds only fuzz_wire in
# build-fuzz/, and runs it over a temporary copy of tests/fuzz/corpus/wire (the
# repository is never written). Exits non-zero on any crash, leak, UB, timeout or
# round-trip mismatch; a crashing input is kept in build-fuzz/artifacts/ and the
# libFuzzer log in build-fuzz/fuzz_wire.log.
# PSYNC_FUZZ_SEED (default 1) seeds libFuzzer: the same seed repeats the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-750000}"
case "$runs" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [RUNS]" >&2; exit 2 ;; esac
seed="${PSYNC_FUZZ_SEED:-1}"

# Debian's clang only recommends its compiler-rt (libclang_rt.fuzzer, .asan, ...);
# libclang-rt-dev pulls the one matching the default clang (libclang-rt-14-dev on Debian 12).
scripts/setup.sh clang libclang-rt-dev
if [ ! -f "$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then
  echo "fuzz.sh: libFuzzer's runtime (libclang_rt.fuzzer-x86_64.a) is missing; install libclang-rt-dev" >&2
  exit 1
fi

dir=build-fuzz
CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPSYNC_BUILD_FUZZ=ON \
      -DPSYNC_BUILD_EXAMPLES=OFF -DPSYNC_BUILD_BENCH=OFF -DPSYNC_BUILD_TOOLS=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)" --target fuzz_wire

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The committed seeds are what their generator writes (python3 is only needed for this check).
if command -v python3 >/dev/null 2>&1; then
  python3 tests/fuzz/make_corpus.py "$work/generated" >/dev/null
  if ! diff -r -q tests/fuzz/corpus/wire "$work/generated" >/dev/null; then
    echo "fuzz.sh: tests/fuzz/corpus/wire differs from what tests/fuzz/make_corpus.py writes; rerun it" >&2
    exit 1
  fi
fi
cp -r tests/fuzz/corpus/wire "$work/corpus"
mkdir -p "$dir/artifacts"
log="$dir/fuzz_wire.log"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# -max_len: the largest accepted frame is 20 + 2104 bytes (limits byte 255), and an
# input is 2 bytes of limits plus a stream of frames.
start=$(date +%s)
rc=0
"$dir/tests/fuzz_wire" "$work/corpus" -runs="$runs" -seed="$seed" -max_len=4096 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" >"$log" 2>&1 || rc=$?
secs=$(( $(date +%s) - start ))

grep -m1 'INITED' "$log" || true
last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
[ -n "$last" ] && echo "$last"
done_line=$(grep -E '^Done [0-9]+ runs' "$log" || true)
if [ "$rc" -ne 0 ] || [ -z "$done_line" ] || grep -qE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error:|fuzz_wire: check failed' "$log"; then
  # The report (sanitizer stack, failed check or uncaught exception), then the input.
  first=$(grep -n -m1 -E 'ERROR: |runtime error:|fuzz_wire: check failed|terminate called|==[0-9]+==' "$log" | cut -d: -f1 || true)
  echo "---- $log from line ${first:-1} (full log kept there) ----"
  tail -n +"${first:-1}" "$log" | grep -v -E '^  0x[0-9a-f]+: |^Shadow|^  [A-Z][a-zA-Z ]+: ' | head -n 45
  grep -E '^(MS: |Test unit written|Base64: )' "$log" || true
  echo "fuzz_wire: FAILED (exit $rc) after ${secs} s; the input is in $dir/artifacts/, rerun: $dir/tests/fuzz_wire $dir/artifacts/<file>"
  exit 1
fi
done_runs=$(echo "$done_line" | awk '{print $2}')
cov=$(echo "$last" | grep -oE 'cov: [0-9]+' | awk '{print $2}')
ft=$(echo "$last" | grep -oE 'ft: [0-9]+' | awk '{print $2}')
echo "fuzz_wire: $done_runs runs, 0 crashes (${secs} s, seed $seed, cov $cov, ft $ft)"
