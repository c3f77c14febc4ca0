#!/usr/bin/env bash
# Builds the policy comparison (Release) and runs it, then draws the plots and
# refreshes the README's comparison block. Every figure comes from this run.
#   scripts/compare.sh                         virtual time (psync::sim): paper-like (4 workers), target 0.85
#                                              (~3 min on 2 cores)
#   scripts/compare.sh --scenario paper-like,paper-like-p8   also 8 workers (~10 min: OSP at 8 workers
#                                              needs tens of thousands of real gradient steps)
#   scripts/compare.sh --seeds 3               over 3 seeds: median and min-max (3x the time)
#   scripts/compare.sh --time real             threads over the emulated network, wall clock, paper-like
#   scripts/compare.sh --native                built with -march=native (build-bench-native/)
#   scripts/compare.sh --scenario all --time real --budget 20 --trace docs/results/traces
# Arguments other than --native go to compare_policies (see its --help).
# PSYNC_BUILD_DIR overrides the build directory (default build-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

native=OFF
dir=${PSYNC_BUILD_DIR:-build-bench}
args=()
for a in "$@"; do
  if [ "$a" = "--native" ]; then
    native=ON
    dir=build-bench-native
  else
    args+=("$a")
  fi
done
out=docs/results
scenario=
time_mode=virtual
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) out="${args[$((i + 1))]:-$out}" ;;
    --scenario) scenario="${args[$((i + 1))]:-$scenario}" ;;
    --time) time_mode="${args[$((i + 1))]:-$time_mode}" ;;
    --help|-h|--list) ;;
  esac
done
if [ -z "$scenario" ]; then
  scenario=paper-like
fi

scripts/setup.sh
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_NATIVE="$native" \
      -DPSYNC_BUILD_TESTS=OFF -DPSYNC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$dir" --target bench.compare_policies -j "$(nproc)"

"$dir/bench/compare_policies" --out "$out" "${args[@]}"
for a in "${args[@]}"; do
  case "$a" in --help|-h|--list) exit 0 ;; esac
done

if [ "$scenario" = all ]; then
  scenarios=(paper-like paper-like-p8 fast-network heavy-straggler)
else
  IFS=, read -r -a scenarios <<<"$scenario"
fi
if [ "$time_mode" = virtual ]; then
  labels="xunit='virtual seconds (psync::sim)'; accunit='test accuracy (Fashion-MNIST, 2k test samples)'; clock='virtual time'"
else
  labels=""
fi
tables=()
for s in "${scenarios[@]}"; do
  target=$(awk -F, 'NR == 2 { print $5 }' "$out/$s.csv")
  gnuplot -e "dir='$out'; scen='$s'; target=$target; $labels" scripts/plot.gp
  echo "compare: plots $out/$s-accuracy.png $out/$s-time.png"
  tables+=("$out/$s.md")
done
/usr/bin/python3 scripts/update_readme.py "${tables[@]}"
