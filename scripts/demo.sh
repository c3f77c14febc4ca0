#!/usr/bin/env bash
# Installs what is missing, builds psync (Release) and runs the policy comparison.
#   scripts/demo.sh            paper-like time-to-accuracy table in virtual time (psync::sim):
#                              sequential SGD, BSP, ASP, SSP, OSP, LOSP at 4 workers, target 0.80 (~1 min)
#   scripts/demo.sh --full     the benchmark harness in virtual time: paper-like at 4 and 8 workers,
#                              target 0.85 (~10 min on 2 cores)
#   scripts/demo.sh --example  the example: five policies side by side on real threads (~15 s)
#   scripts/demo.sh --native   any of the above built with -march=native
# Results go to build-demo/results (docs/results is scripts/compare.sh's).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=quick
native=OFF
for arg in "$@"; do
  case "$arg" in
    --full) mode=full ;;
    --example) mode=example ;;
    --native) native=ON ;;
    *) echo "demo: unknown option '$arg' (use --full, --example, --native)" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
dir=build-demo
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_NATIVE="$native" -DPSYNC_BUILD_TESTS=OFF >/dev/null
case "$mode" in
  quick)
    cmake --build "$dir" -j "$(nproc)" --target bench.compare_policies
    exec "$dir/bench/compare_policies" --quick --scenario paper-like --out "$dir/results"
    ;;
  full)
    cmake --build "$dir" -j "$(nproc)" --target bench.compare_policies
    exec "$dir/bench/compare_policies" --scenario paper-like,paper-like-p8 --out "$dir/results"
    ;;
  example)
    cmake --build "$dir" -j "$(nproc)" --target compare_policies
    exec "$dir/examples/compare_policies"
    ;;
esac
