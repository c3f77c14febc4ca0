#!/usr/bin/env bash
# Compile time and preprocessed size of a translation unit that includes only
# <psync/psync.hpp>, this tree against an earlier commit (default 727bf37, the last
# commit before the umbrella stopped pulling in Asio and zlib), interleaved, N runs
# each (default 5), median. The compiler and flags are the same for both:
#   ${CXX:-g++} -std=c++20 -O2 -c, Eigen from /usr/include/eigen3.
#   scripts/umbrella_compile_time.sh [REV] [N]
#   scripts/umbrella_compile_time.sh --headers
#       instead: the CPU seconds (user) of a translation unit that includes only one of
#       the umbrella's headers (with what it includes), for each, largest first, and
#       of <Eigen/Core> alone: where the umbrella's time goes. CPU time, not wall time,
#       so a busy machine changes it less.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --headers ]; then
  cxx=${CXX:-g++}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cpu() {
    printf '#include <%s>\nint main() { return 0; }\n' "$1" > "$work/one.cpp"
    /usr/bin/time -f %U -o "$work/t" "$cxx" -std=c++20 -O2 -isystem /usr/include/eigen3 -Iinclude -c "$work/one.cpp" -o "$work/one.o"
    cat "$work/t"
  }
  echo "CPU seconds of a TU including only the header ($cxx -std=c++20 -O2 -c):"
  {
    printf '%s Eigen/Core (alone)\n' "$(cpu Eigen/Core)"
    printf '%s psync/psync.hpp (the umbrella)\n' "$(cpu psync/psync.hpp)"
    for h in $(sed -n 's|^#include "\(psync/[^"]*\)"|\1|p' include/psync/psync.hpp); do
      printf '%s %s\n' "$(cpu "$h")" "$h"
    done
  } | sort -rn
  exit 0
fi
rev=${1:-727bf37}
runs=${2:-5}
cxx=${CXX:-g++}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/before"
git archive "$rev" include | tar -x -C "$work/before"
printf '#include <psync/psync.hpp>\nint main() { return 0; }\n' > "$work/umbrella.cpp"
flags=(-std=c++20 -O2 -isystem /usr/include/eigen3)
lines() { "$cxx" "${flags[@]}" -I"$1" -E "$work/umbrella.cpp" | wc -l; }
one() {
  local t0 t1
  t0=$(date +%s.%N)
  "$cxx" "${flags[@]}" -I"$1" -c "$work/umbrella.cpp" -o "$work/u.o"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
before=()
after=()
for ((i = 0; i < runs; i++)); do
  before+=("$(one "$work/before/include")")
  after+=("$(one include)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${before[@]}")
ma=$(median "${after[@]}")
echo "umbrella TU ($cxx ${flags[*]}; $runs runs each, interleaved; load average $(cut -d' ' -f1 /proc/loadavg) at the end)"
printf '| | preprocessed lines | compile time, median (s) |\n|---|---:|---:|\n'
printf '| before (%s) | %s | %.2f |\n' "$rev" "$(lines "$work/before/include")" "$mb"
printf '| after (%s) | %s | %.2f |\n' "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include || echo +changes)" "$(lines include)" "$ma"
printf 'ratio before/after: %.2fx\n' "$(echo "$mb / $ma" | bc -l)"
