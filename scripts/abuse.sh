#!/usr/bin/env bash
# Runs the abuse test of issue 10 (tests/abuse/psync_abuse.py) against a Release
# psync-train and writes its table to docs/results/abuse.md and the README's
# `abuse` block. Extra arguments go to the script (e.g. --auth, --cases a,b).
#   scripts/abuse.sh                 the three runs CTest makes, one table each
#   scripts/abuse.sh [--auth] [psync_abuse.py args...]   one run with these flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dir=${PSYNC_BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$dir" -j "$(nproc)" --target psync-train
mkdir -p docs/results
# Without arguments: the three runs CTest makes (tests/CMakeLists.txt: abuse,
# abuse-no-read, abuse-auth), one table each in docs/results/abuse.md.
if [ $# -eq 0 ]; then
  runs=("--cases flood-push,pull-huge-clock,stall,prejoin-partial,idle-conns,nan,sigstop,late-join,big-model"
        "--cases no-read --steps 2000"
        "--auth --cases overwrite,id-squat")
else
  runs=("$*")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rc=0
for i in "${!runs[@]}"; do
  # shellcheck disable=SC2086 # each run's flags are split on purpose
  python3 tests/abuse/psync_abuse.py --bin "$dir/tools/psync-train" --json "$tmp/$i.json" \
    --markdown "$tmp/$i.md" ${runs[$i]} || rc=$?
done
cat "$tmp"/*.md > docs/results/abuse.md
python3 - "$tmp" docs/results/abuse.json <<'PY'
import glob, json, os, sys
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json")))]
json.dump(runs if len(runs) > 1 else runs[0], open(sys.argv[2], "w"), indent=1)
PY
if [ -s docs/results/abuse.md ]; then
  python3 scripts/update_readme.py docs/results/abuse.md --block abuse
fi
exit $rc
