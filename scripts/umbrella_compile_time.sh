#!/usr/bin/env bash
# Compile time and preprocessed size of a translation unit that includes only
# <psync/psync.hpp>, this tree against an earlier commit (default 727bf37, the last
# commit before the umbrella stopped pulling in Asio and zlib), interleaved, N runs
# each (default 5), median. This tree is measured twice: header-only (the default)
# and with PSYNC_SEPARATE_COMPILATION (psync/detail/config.hpp), plus, once, the
# translation unit such a program adds (psync/src.hpp, compiled once per program).
# The compiler and flags are the same for all:
#   ${CXX:-g++} -std=c++20 -O2 -c, Eigen from /usr/include/eigen3.
#   scripts/umbrella_compile_time.sh [REV] [N]
#   scripts/umbrella_compile_time.sh --headers
#       instead: the CPU seconds (user) of a translation unit that includes only one of
#       the umbrella's headers (with what it includes), for each, largest first, and
#       of <Eigen/Core> alone: where the umbrella's time goes. CPU time, not wall time,
#       so a busy machine changes it less.
#   scripts/umbrella_compile_time.sh --program FILE [N]
#       instead: the wall seconds of compiling FILE (a program's source, e.g.
#       tests/package/main.cpp) header-only and with PSYNC_SEPARATE_COMPILATION,
#       interleaved, N runs each (default 3), median: what separate compilation saves
#       a program's translation unit each time it is rebuilt (psync/src.hpp's own
#       compile time is paid once, and again only when psync changes).
set -euo pipefail
cd "$(dirname "$0")/.."
# elapsed CMD...: the wall seconds CMD took. median X...: the middle value.
elapsed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
if [ "${1:-}" = --program ]; then
  file=${2:?--program needs a source file}
  runs=${3:-3}
  cxx=${CXX:-g++}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  wall() { elapsed "$cxx" -std=c++20 -O2 -isystem /usr/include/eigen3 -Iinclude "$@" -c "$file" -o "$work/p.o"; }
  h=()
  s=()
  for ((i = 0; i < runs; i++)); do
    h+=("$(wall)")
    s+=("$(wall -DPSYNC_SEPARATE_COMPILATION)")
  done
  mh=$(median "${h[@]}")
  ms=$(median "${s[@]}")
  echo "$file ($cxx -std=c++20 -O2 -c; $runs runs each, interleaved; load average $(cut -d' ' -f1 /proc/loadavg) at the end)"
  printf '| %s | compile time, median (s) |\n|---|---:|\n' "$file"
  printf '| header-only | %.2f |\n| PSYNC_SEPARATE_COMPILATION | %.2f |\n' "$mh" "$ms"
  printf 'ratio header-only/separate: %.2fx\n' "$(echo "$mh / $ms" | bc -l)"
  exit 0
fi
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
lines() { "$cxx" "${flags[@]}" ${2:+"$2"} -I"$1" -E "${3:-$work/umbrella.cpp}" | wc -l; }
one() { elapsed "$cxx" "${flags[@]}" "${@:3}" -I"$1" -c "${2:-$work/umbrella.cpp}" -o "$work/u.o"; }
printf '#include <psync/src.hpp>\n' > "$work/src.cpp"
before=()
after=()
separate=()
for ((i = 0; i < runs; i++)); do
  before+=("$(one "$work/before/include")")
  after+=("$(one include)")
  separate+=("$(one include "$work/umbrella.cpp" -DPSYNC_SEPARATE_COMPILATION)")
done
src_once=$(one include "$work/src.cpp" -DPSYNC_SEPARATE_COMPILATION)
mb=$(median "${before[@]}")
ma=$(median "${after[@]}")
ms=$(median "${separate[@]}")
echo "umbrella TU ($cxx ${flags[*]}; $runs runs each, interleaved; load average $(cut -d' ' -f1 /proc/loadavg) at the end)"
printf '| | preprocessed lines | compile time, median (s) |\n|---|---:|---:|\n'
printf '| before (%s) | %s | %.2f |\n' "$rev" "$(lines "$work/before/include")" "$mb"
here="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- include || echo +changes)"
printf '| after (%s), header-only | %s | %.2f |\n' "$here" "$(lines include)" "$ma"
printf '| after (%s), PSYNC_SEPARATE_COMPILATION | %s | %.2f |\n' "$here" "$(lines include -DPSYNC_SEPARATE_COMPILATION)" "$ms"
printf '| psync/src.hpp, once per program (1 run) | %s | %.2f |\n' "$(lines include -DPSYNC_SEPARATE_COMPILATION "$work/src.cpp")" "$src_once"
printf 'ratio before/after: %.2fx header-only, %.2fx separate compilation\n' "$(echo "$mb / $ma" | bc -l)" "$(echo "$mb / $ms" | bc -l)"
