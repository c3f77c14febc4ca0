#!/usr/bin/env bash
# Builds the policy comparison (Release) and runs it, then draws the plots and
# refreshes the README's comparison block. Every figure comes from this run.
#   scripts/compare.sh                         virtual time (psync::sim): paper-like (4 workers), target 0.85
#                                              (~3 min on 2 cores)
#   scripts/compare.sh --scenario paper-like,paper-like-p8   also 8 workers (~10 min: OSP at 8 workers
#                                              needs tens of thousands of real gradient steps)
#   scripts/compare.sh --seeds 3               over 3 seeds: median and min-max (3x the time)
#   scripts/compare.sh --scenario cnn-paper-like   the LeNet-5-like CNN instead of the MLP, virtual time
#                                              (~7 min: the CNN step is 4-7x the MLP's)
#   scripts/compare.sh --time real             threads over the emulated network, wall clock, paper-like
#   scripts/compare.sh --native                built with -march=native (build-bench-native/)
#   scripts/compare.sh --scenario all --time real --budget 20 --trace docs/results/traces
#   scripts/compare.sh --sweep-bandwidth 0.1,0.3,1,3,10 --policies bsp,osp:20,losp:20
#                                              time to target vs bandwidth (plot: docs/results/paper-like-sweep-bandwidth.png)
#   scripts/compare.sh --sweep-workers 2,4,8,16,32 --policies bsp,osp:20,losp:20   ... vs worker count
#   scripts/compare.sh --scenario paper-like-p32 --sweep-shards 1,4 --policies bsp,osp:20,losp:20   ... vs server shards
#   scripts/compare.sh --sweep-staleness 5,10,20,40/1,3,8   ... vs OSP's and LOSP's S and SSP's s, BSP and ASP
#                                              as references (plot: docs/results/paper-like-sweep-staleness.png)
#   scripts/compare.sh --sweep-codec none,fp16,topk:0.01,qsgd8 --policies bsp,osp:20   ... per update codec
#                                              (plot: docs/results/paper-like-sweep-codec.png)
#   scripts/compare.sh --validate              real threads vs virtual time at 2 workers (docs/results/validation.md)
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
sweeps=()
validate=
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --out) out="${args[$((i + 1))]:-$out}" ;;
    --scenario) scenario="${args[$((i + 1))]:-$scenario}" ;;
    --time) time_mode="${args[$((i + 1))]:-$time_mode}" ;;
    --sweep-bandwidth) sweeps+=(bandwidth) ;;
    --sweep-workers) sweeps+=(workers) ;;
    --sweep-shards) sweeps+=(shards) ;;
    --sweep-staleness) sweeps+=(staleness) ;;
    --sweep-codec) sweeps+=(codec) ;;
    --validate) validate=1 ;;
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

# Exit status 3: --validate ran and some figure missed its goal (reported, and still written below).
rc=0
"$dir/bench/compare_policies" --out "$out" "${args[@]}" || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then exit "$rc"; fi
for a in "${args[@]}"; do
  case "$a" in --help|-h|--list) exit 0 ;; esac
done

if [ "$scenario" = all ]; then
  scenarios=(paper-like paper-like-p8 paper-like-p32 fast-network heavy-straggler)
else
  IFS=, read -r -a scenarios <<<"$scenario"
fi
if [ -n "$validate" ]; then
  echo "compare: validation written to $out/validation.md"
  /usr/bin/python3 scripts/update_readme.py --block validation "$out/validation.md"
  exit "$rc"
fi
if [ ${#sweeps[@]} -gt 0 ]; then
  for s in "${scenarios[@]}"; do
    for p in "${sweeps[@]}"; do
      dat="$out/$s-sweep-$p.dat"
      if [ "$p" = codec ]; then
        target=$(awk -F, 'NR == 2 { print $11 }' "$out/$s-sweep-$p.csv")
        gnuplot -e "dat='$dat'; target='$target'" scripts/plot_codec.gp
      else
        target=$(awk -F, 'NR == 2 { print $9 }' "$out/$s-sweep-$p.csv")
        gnuplot -e "dat='$dat'; param='$p'; target='$target'" scripts/plot_sweep.gp
      fi
      echo "compare: plot ${dat%.dat}.png"
      /usr/bin/python3 scripts/update_readme.py --block "sweep-$p" "$out/$s-sweep-$p.md"
    done
  done
  exit 0
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
  # The CNN scenario has a README block of its own; the MLP scenarios share "compare".
  if [ "$s" = cnn-paper-like ]; then
    /usr/bin/python3 scripts/update_readme.py --block cnn "$out/$s.md"
  else
    tables+=("$out/$s.md")
  fi
done
if [ ${#tables[@]} -gt 0 ]; then
  /usr/bin/python3 scripts/update_readme.py "${tables[@]}"
fi
