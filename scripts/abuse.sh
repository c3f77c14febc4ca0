#!/usr/bin/env bash
# Runs the abuse test of issue 10 (tests/abuse/psync_abuse.py) against a Release
# psync-train and writes its table to docs/results/abuse.md and the README's
# `abuse` block. Extra arguments go to the script (e.g. --auth, --cases a,b).
#   scripts/abuse.sh [--auth] [psync_abuse.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
dir=${PSYNC_BUILD_DIR:-build}
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$dir" -j "$(nproc)" --target psync-train
mkdir -p docs/results
rc=0
python3 tests/abuse/psync_abuse.py --bin "$dir/tools/psync-train" --json docs/results/abuse.json \
  --markdown docs/results/abuse.md "$@" || rc=$?
if [ -s docs/results/abuse.md ]; then
  python3 scripts/update_readme.py docs/results/abuse.md --block abuse
fi
exit $rc
