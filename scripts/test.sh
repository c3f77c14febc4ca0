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

scripts/setup.sh
jobs=$(nproc)
if [ -z "$sanitize" ]; then
  dir=build
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$dir" -j "$jobs"
else
  case "$sanitize" in thread) dir=build-tsan ;; *) dir=build-asan ;; esac
  # Sanitized runs exercise the library's concurrency and memory use; examples
  # and benches add nothing there but build time.
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPSYNC_SANITIZE="$sanitize" \
        -DPSYNC_BUILD_EXAMPLES=OFF -DPSYNC_BUILD_BENCH=OFF >/dev/null
  cmake --build "$dir" -j "$jobs"
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  export ASAN_OPTIONS="detect_leaks=1"
  export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1"
fi
exclude=()
# Under a sanitizer, skip what runs no concurrent or memory-unsafe code of ours:
# the virtual-time science runs (one thread, minutes under TSan), the install test,
# and the abuse test (it judges timings and memory, which a sanitizer changes).
if [ -n "$sanitize" ]; then exclude=(-E '^(science|package|abuse.*)$'); fi
ctest --test-dir "$dir" --output-on-failure -j "$jobs" "${exclude[@]}"
