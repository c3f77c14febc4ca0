#!/usr/bin/env bash
# Installs what is missing, builds psync's tests and runs them all through ctest.
#   scripts/test.sh                 Release build in build/, full suite
#   scripts/test.sh --sanitize thread            ThreadSanitizer build in build-tsan/
#   scripts/test.sh --sanitize address,undefined ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=""
if [ "${1:-}" = "--sanitize" ]; then
  sanitize="${2:?--sanitize needs a value: thread or address,undefined}"
fi

extra=()
if [ -n "$sanitize" ] && [ "$sanitize" != thread ] && [ -z "${CXX:-}" ]; then
  # ASan+UBSan builds with clang unless CXX says otherwise: GCC 12 takes 3.7x the CPU
  # of clang 14 to compile a test with -fsanitize=address,undefined (test_wire: 65 s
  # vs 18 s), and psync-train alone over 11 CPU minutes. clang is what the fuzzer
  # (scripts/fuzz.sh) needs anyway; libclang-rt-dev holds its sanitizer runtimes.
  extra=(clang libclang-rt-dev)
  export CXX=clang++
fi
scripts/setup.sh "${extra[@]}"
jobs=$(nproc)
if [ -z "$sanitize" ]; then
  dir=build
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$dir" -j "$jobs"
else
  case "$sanitize" in thread) dir=build-tsan ;; *) dir=build-asan ;; esac
  # Sanitized runs exercise the library's concurrency and memory use; examples
  # and benches add nothing there but build time. -g1 (line tables) gives reports
  # their file:line at a quarter less compile time than -g (GCC TSan, test_faults).
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
        -DPSYNC_SANITIZE="$sanitize" -DPSYNC_BUILD_EXAMPLES=OFF -DPSYNC_BUILD_BENCH=OFF >/dev/null
  cmake --build "$dir" -j "$jobs"
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  export ASAN_OPTIONS="detect_leaks=1"
  export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1"
fi
exclude=()
# Under a sanitizer, skip what runs no concurrent or memory-unsafe code of ours:
# the install test and the abuse test (it judges timings and memory, which a sanitizer
# changes); the science test (and, under TSan, the tests that start no thread) are not
# even built in a sanitized build (tests/CMakeLists.txt).
if [ -n "$sanitize" ]; then exclude=(-E '^(science|package|abuse.*)$'); fi
ctest --test-dir "$dir" --output-on-failure -j "$jobs" "${exclude[@]}"
