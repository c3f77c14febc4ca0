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
if [ -z "$sanitize" ]; then
  # Open MPI for the optional MPI transport (psync::mpi) and its test, run by the plain
  # build only (tests/CMakeLists.txt: Open MPI is too noisy under the sanitizers).
  extra=(libopenmpi-dev openmpi-bin)
fi
if [ "$sanitize" != thread ] && [ -z "${CXX:-}" ]; then
  # The plain and ASan+UBSan builds use clang unless CXX says otherwise; the TSan build
  # keeps the system's GCC, so CI compiles the library and its tests with both.
  # - ASan+UBSan: GCC 12 takes 3.7x the CPU of clang 14 to compile a test with
  #   -fsanitize=address,undefined (test_wire: 65 s vs 18 s).
  # - Plain: the whole build (tests, psync-train, examples, benches, header check)
  #   took 478 s of wall time with clang 14 against 770 s with GCC 12 (2 cores);
  #   test_cluster at -O0, 10.8 CPU s against 20.5.
  # clang is what the fuzzer (scripts/fuzz.sh) needs anyway; libclang-rt-dev holds its
  # sanitizer runtimes.
  extra+=(clang libclang-rt-dev)
  export CXX=clang++
fi
scripts/setup.sh "${extra[@]}"
jobs=$(nproc)
if [ -z "$sanitize" ]; then
  dir=build
  # Examples and benches are only compiled here (no test runs them): at -O0.
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_EXTRAS_COMPILE_CHECK=ON >/dev/null
  cmake --build "$dir" -j "$jobs"
else
  case "$sanitize" in thread) dir=build-tsan ;; *) dir=build-asan ;; esac
  # Sanitized runs exercise the library's concurrency and memory use; examples,
  # benches and the psync-train tool add nothing there but build time (the plain
  # suite runs the tool; tests/CMakeLists.txt lists what each sanitizer runs).
  # -O1, the sanitizers' recommended level, and -g1 (line tables: reports keep their
  # file:line) compile faster than -O2 -g; the tests then set their own level, -O1 for
  # the Eigen-heavy ones and -O0 for the rest (tests/CMakeLists.txt).
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
        -DPSYNC_SANITIZE="$sanitize" -DPSYNC_BUILD_EXAMPLES=OFF -DPSYNC_BUILD_BENCH=OFF -DPSYNC_BUILD_TOOLS=OFF >/dev/null
  cmake --build "$dir" -j "$jobs"
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  export ASAN_OPTIONS="detect_leaks=1"
  export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1"
fi
exclude=()
# Under a sanitizer, skip the install test (it builds a consumer without the
# sanitizer); the abuse tests need psync-train, which a sanitized build does not build.
if [ -n "$sanitize" ]; then exclude=(-E '^(package|abuse.*)$'); fi
ctest --test-dir "$dir" --output-on-failure -j "$jobs" "${exclude[@]}"
