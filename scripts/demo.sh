#!/usr/bin/env bash
# Installs what is missing, builds psync (Release) and runs the policy comparison.
#   scripts/demo.sh            the example: five policies side by side (~15 s)
#   scripts/demo.sh --full     the benchmark harness: time-to-accuracy, plots, traces (minutes)
#   scripts/demo.sh --native   either of the above built with -march=native
set -euo pipefail
cd "$(dirname "$0")/.."

full=0
native=OFF
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    --native) native=ON ;;
    *) echo "demo: unknown option '$arg' (use --full, --native)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
dir=build-demo
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_NATIVE="$native" -DPSYNC_BUILD_TESTS=OFF >/dev/null
if [ "$full" = 1 ]; then
  cmake --build "$dir" -j "$(nproc)" --target bench.compare_policies
  exec "$dir/bench/compare_policies"
fi
cmake --build "$dir" -j "$(nproc)" --target compare_policies
exec "$dir/examples/compare_policies"
