#!/usr/bin/env bash
# Runs a whole psync cluster on this machine as separate processes over TCP
# (loopback): one psync-train server on 127.0.0.1 (a free port) and N workers.
#
#   scripts/launch_local.sh [--shards K] N POLICY [extra psync-train args...]
#   e.g. scripts/launch_local.sh 4 osp:20 --data fashion-mnist --model mlp:128 --steps 500
#        scripts/launch_local.sh --shards 2 4 bsp --data synthetic --steps 200
#
# --shards K (or PSYNC_SHARDS=K; default 1) starts K shard servers (psync-train
# --shard i/K, files server-i.*), each owning a slice of the model; every worker
# gets all K addresses (--server HOST:PORT,HOST:PORT,...). See docs/processes.md.
#
# The extra arguments go to the server and to every worker. Each process's stdout,
# stderr and metrics JSON are kept in a run directory (printed at the start and
# in the summary). Exits 0 only if every process exited 0.
#
# Environment:
#   PSYNC_TRAIN           psync-train binary (default: build-train/, build/ of this
#                         checkout, else build it in build/)
#   PSYNC_RUN_DIR         run directory (default: a new mktemp -d directory)
#   PSYNC_LAUNCH_TIMEOUT  seconds for the whole run before every process is killed (default 600)
#   PSYNC_START_TIMEOUT   seconds to wait for the server's port (default 60)
#
# On exit, error or interrupt, only the processes this script started are killed.
set -euo pipefail

usage() {
  sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

SHARDS=${PSYNC_SHARDS:-1}
if [[ ${1:-} == --shards ]]; then
  [[ $# -ge 2 ]] || usage
  SHARDS=$2
  shift 2
fi
[[ $# -ge 2 ]] || usage
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || { echo "launch_local.sh: the shard count must be a positive integer, got '$SHARDS'" >&2; exit 2; }
N=$1
POLICY=$2
shift 2
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "launch_local.sh: N must be a positive integer, got '$N'" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOTAL_TIMEOUT=${PSYNC_LAUNCH_TIMEOUT:-600}
START_TIMEOUT=${PSYNC_START_TIMEOUT:-60}
[[ $TOTAL_TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "launch_local.sh: PSYNC_LAUNCH_TIMEOUT must be a positive integer (seconds)" >&2; exit 2; }
[[ $START_TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "launch_local.sh: PSYNC_START_TIMEOUT must be a positive integer (seconds)" >&2; exit 2; }

# ---- the binary ----
BIN=${PSYNC_TRAIN:-}
if [[ -z $BIN ]]; then
  for candidate in "$ROOT/build-train/tools/psync-train" "$ROOT/build/tools/psync-train"; do
    if [[ -x $candidate ]]; then BIN=$candidate; break; fi
  done
fi
if [[ -z $BIN ]]; then
  echo "launch_local.sh: psync-train not found; building it in $ROOT/build" >&2
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build "$ROOT/build" --target psync-train >&2
  BIN=$ROOT/build/tools/psync-train
fi
[[ -x $BIN ]] || { echo "launch_local.sh: '$BIN' is not an executable (PSYNC_TRAIN?)" >&2; exit 2; }

# ---- the run directory ----
if [[ -n ${PSYNC_RUN_DIR:-} ]]; then
  RUN=$PSYNC_RUN_DIR
  mkdir -p "$RUN"
else
  RUN=$(mktemp -d "${TMPDIR:-/tmp}/psync-run.XXXXXX")
fi
echo "launch_local.sh: $N worker(s), $SHARDS server shard(s), policy $POLICY, run directory $RUN"

# ---- processes we started, and cleanup of exactly those ----
declare -a PIDS=() NAMES=()
declare -A DONE=() CODE=()

kill_ours() {
  local pid alive=()
  for pid in "${PIDS[@]}"; do
    if [[ -z ${DONE[$pid]:-} ]] && kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
  done
  [[ ${#alive[@]} -gt 0 ]] || return 0
  kill -TERM "${alive[@]}" 2>/dev/null || true
  # A second chance to flush, then no more.
  for _ in $(seq 20); do
    local any=0
    for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
    [[ $any -eq 1 ]] || return 0
    sleep 0.1
  done
  kill -KILL "${alive[@]}" 2>/dev/null || true
}
on_signal() {
  echo "launch_local.sh: interrupted; stopping the processes it started" >&2
  trap - EXIT
  kill_ours
  exit 130
}
trap kill_ours EXIT
trap on_signal INT TERM

start() {  # start NAME args...
  local name=$1
  shift
  # Created here, not by the child's redirection: the port loop below reads
  # server.out before the child may have opened it.
  : >"$RUN/$name.out"
  : >"$RUN/$name.err"
  "$BIN" "$@" >>"$RUN/$name.out" 2>>"$RUN/$name.err" </dev/null &
  PIDS+=("$!")
  NAMES+=("$name")
}

# Reaps `pid` if it has exited; returns 0 then.
reap() {
  local pid=$1 rc
  [[ -n ${DONE[$pid]:-} ]] && return 0
  kill -0 "$pid" 2>/dev/null && return 1
  rc=0
  wait "$pid" || rc=$?
  DONE[$pid]=1
  CODE[$pid]=$rc
  return 0
}

# ---- server(s) ----
# Starts server NAME with its extra args; waits for its port (in PORT).
start_server() {
  local name=$1 pid
  shift
  start "$name" --role server --server 127.0.0.1:0 --workers "$N" --policy "$POLICY" "$@"
  pid=${PIDS[$((${#PIDS[@]} - 1))]}
  PORT=
  local deadline=$((SECONDS + START_TIMEOUT))
  while [[ -z $PORT ]]; do
    # `|| true`: under set -e and pipefail a failed read must not end the script.
    PORT=$(sed -n 's/^psync-train: listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$RUN/$name.out" 2>/dev/null | head -n1) || true
    [[ -n $PORT ]] && break
    if reap "$pid"; then
      echo "launch_local.sh: $name exited with code ${CODE[$pid]} before listening:" >&2
      cat "$RUN/$name.err" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "launch_local.sh: $name did not print its port within ${START_TIMEOUT} s (see $RUN/$name.err)" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "launch_local.sh: $name pid $pid listening on 127.0.0.1:$PORT"
}
ADDRESSES=
SERVER_JSONS=
if [[ $SHARDS -eq 1 ]]; then
  start_server server "$@" --metrics "$RUN/server.json"
  ADDRESSES=127.0.0.1:$PORT
  SERVER_JSONS=" $RUN/server.json"
else
  for ((k = 0; k < SHARDS; k++)); do
    start_server "server-$k" --shard "$k/$SHARDS" "$@" --metrics "$RUN/server-$k.json"
    ADDRESSES=${ADDRESSES:+$ADDRESSES,}127.0.0.1:$PORT
    SERVER_JSONS="$SERVER_JSONS $RUN/server-$k.json"
  done
fi

# ---- workers ----
for ((i = 0; i < N; i++)); do
  start "worker-$i" --role worker --server "$ADDRESSES" --id "$i" --workers "$N" --policy "$POLICY" "$@" \
    --metrics "$RUN/worker-$i.json"
done

# ---- wait for everyone, within the overall deadline ----
deadline=$((SECONDS + TOTAL_TIMEOUT))
timed_out=0
while :; do
  pending=0
  for pid in "${PIDS[@]}"; do reap "$pid" || pending=1; done
  [[ $pending -eq 1 ]] || break
  if ((SECONDS >= deadline)); then
    timed_out=1
    echo "launch_local.sh: still running after ${TOTAL_TIMEOUT} s: stopping the rest" >&2
    kill_ours
    for pid in "${PIDS[@]}"; do
      if [[ -z ${DONE[$pid]:-} ]]; then
        wait "$pid" 2>/dev/null || true
        DONE[$pid]=1
        CODE[$pid]=124
      fi
    done
    break
  fi
  sleep 0.1
done
trap - EXIT

# ---- summary ----
failed=0
echo "launch_local.sh: summary (run directory $RUN)"
for idx in "${!PIDS[@]}"; do
  pid=${PIDS[$idx]}
  name=${NAMES[$idx]}
  rc=${CODE[$pid]}
  status="ok"
  if [[ $rc -ne 0 ]]; then
    failed=1
    status="FAILED (exit $rc)"
    [[ $rc -eq 124 && $timed_out -eq 1 ]] && status="FAILED (killed after ${TOTAL_TIMEOUT} s)"
  fi
  printf '  %-10s pid %-7s %s\n' "$name" "$pid" "$status"
  if [[ $rc -ne 0 && -s $RUN/$name.err ]]; then
    tail -n 3 "$RUN/$name.err" | sed 's/^/      /'
  fi
done
grep -h '^psync-train: \(server\|shard .*\) done' "$RUN"/server*.out | sed 's/^/  /' || true
grep -h '^psync-train: worker .*: final test accuracy' "$RUN"/worker-*.out | sed 's/^/  /' || true
echo "  metrics:$SERVER_JSONS $(for ((i = 0; i < N; i++)); do printf '%s ' "$RUN/worker-$i.json"; done)"
exit $failed
