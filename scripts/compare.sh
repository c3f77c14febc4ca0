#!/usr/bin/env bash
# Builds the policy comparison (Release) and runs it, then draws the plots and
# refreshes the README's comparison block. Every figure comes from this run.
#   scripts/compare.sh                         paper-like scenario, default budget
#   scripts/compare.sh --native                same, built with -march=native (build-bench-native/)
#   scripts/compare.sh --scenario all --budget 20 --trace docs/results/traces
# Arguments other than --native go to compare_policies (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

native=OFF
dir=build-bench
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
scenario=paper-like
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) out="${args[$((i + 1))]:-$out}" ;;
    --scenario) scenario="${args[$((i + 1))]:-$scenario}" ;;
    --help|-h|--list) ;;
  esac
done

scripts/setup.sh
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPSYNC_NATIVE="$native" \
      -DPSYNC_BUILD_TESTS=OFF -DPSYNC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$dir" --target bench.compare_policies -j "$(nproc)"

"$dir/bench/compare_policies" --out "$out" "${args[@]}"
for a in "${args[@]}"; do
  case "$a" in --help|-h|--list) exit 0 ;; esac
done

if [ "$scenario" = all ]; then
  scenarios=(paper-like fast-network heavy-straggler)
else
  scenarios=("$scenario")
fi
tables=()
for s in "${scenarios[@]}"; do
  target=$(awk -F, 'NR == 2 { print $5 }' "$out/$s.csv")
  gnuplot -e "dir='$out'; scen='$s'; target=$target" scripts/plot.gp
  echo "compare: plots $out/$s-accuracy.png $out/$s-time.png"
  tables+=("$out/$s.md")
done
/usr/bin/python3 scripts/update_readme.py "${tables[@]}"
