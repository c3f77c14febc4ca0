#!/usr/bin/env bash
# netns_crosscheck.sh: does the emulator agree with the kernel? (issue 4)
#
# Runs one psync-train configuration over real TCP with the server and each worker
# in its own network namespace, linked through a Linux bridge by veth pairs whose
# every egress is rate-shaped by the kernel (tbf; plus netem delay where the kernel
# has netem), then runs the same configuration in one process over
# psync::Emulated (bench/netns_reference), and writes a side-by-side table to
# docs/results/netns-crosscheck.md. See docs/netns-crosscheck.md.
#
# With --validate ACC it checks virtual time instead (issue 8): each policy runs as
# processes in the same namespaces, for --seconds per worker and --repeats seeds,
# and the server's accuracy series gives the time to ACC; bench/compare_policies
# simulates the same cluster (2 workers by default, same model, data, seeds, rates
# and evaluation) in virtual time: at the calibrated step with cores of its own per
# process (a real cluster), on this machine's shared cores with communication's CPU
# cost measured by a BSP calibration run (the warm-up), and at the step the processes
# measured; the table goes to docs/results/netns-validation.md.
#
# Needs root. Creates only namespaces named psx-* (refuses to start if any exist),
# nothing in the host namespace, no routes out: 10.77.0.0/24 exists only inside
# them. Removes all of it and stops every process it started on exit, error,
# Ctrl-C or TERM.
#
#   sudo scripts/netns_crosscheck.sh [--workers N] [--policies bsp,osp:20,asp]
#        [--model mlp:256,128] [--data fashion-mnist] [--steps 200] [--batch 64]
#        [--lr 0.1] [--seed 1] [--rate BYTES_PER_S] [--delay-ms 1] [--burst BYTES]
#        [--repeats N] [--build] [--train-bin PATH] [--ref-bin PATH]
#        [--out FILE] [--json-dir DIR] [--run-timeout S] [--trace]
#        [--validate ACC [--seconds S] [--compare-bin PATH] [--virtual-step MS]
#                        [--virtual-server-ns NS] [--reuse]]
#
# --trace has every process write its timeline (psync-train --trace) beside its
# metrics, as kernel-TAG-{server,wN}.trace.json in --json-dir.
#
# --validate --reuse --json-dir DIR reruns only the virtual side against the process
# runs a previous --validate kept in DIR (same options), e.g. after a change to the
# simulator; --virtual-step MS and --virtual-server-ns NS give the virtual step and
# the server's cost per float instead of calibrating them (a busy machine calibrates
# them slow, and under the asynchronous policies a shift of a fraction of a
# millisecond changes which message lands first, hence the trajectory).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

# ------------------------------------------------------------------ options
workers=4
policies="bsp,osp:20,asp"
model="mlp:256,128"
data="fashion-mnist"
steps=200
batch=64
lr=0.1
seed=1
rate=125000000      # bytes/s per link and per server-NIC direction (1 Gbit/s)
delay_ms=1          # one-way delay per worker link, applied only if the kernel has netem
burst=65536         # tbf bucket, bytes: one GSO packet; ~0.5 ms of a 1 Gbit/s link (see the doc)
tbf_limit=8388608   # tbf queue, bytes: large enough that the shaped links do not drop
repeats=1
build=0
train_bin=""
ref_bin=""
out="$repo/docs/results/netns-crosscheck.md"
json_dir=""
run_timeout=300     # seconds, per process of a run
validate=""         # --validate ACC: time to ACC, processes against virtual time
seconds=30          # --validate: each worker trains this long (wall clock)
cal_seconds=6       # --validate: the warm-up run (bsp) that measures communication's CPU trains this long
compare_bin=""
virtual_step=""     # --validate --virtual-step MS: compare_policies --step-ms MS for the calibrated column
virtual_server_ns="" # --validate --virtual-server-ns NS: compare_policies --server-ns NS for every virtual run
reuse=0             # --validate --reuse: the process runs are already in --json-dir
init_seed=42        # --validate: compare_policies' initial model
trace=0             # --trace: psync-train --trace for every process run
prefix="psx"
subnet="10.77.0"

usage() { sed -n '2,41p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "netns_crosscheck: $*" >&2; exit 1; }

given=" $* "
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --policies) policies="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --delay-ms) delay_ms="$2"; shift 2 ;;
    --burst) burst="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --build) build=1; shift ;;
    --train-bin) train_bin="$2"; shift 2 ;;
    --ref-bin) ref_bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --json-dir) json_dir="$2"; shift 2 ;;
    --run-timeout) run_timeout="$2"; shift 2 ;;
    --validate) validate="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --compare-bin) compare_bin="$2"; shift 2 ;;
    --virtual-step) virtual_step="$2"; shift 2 ;;
    --virtual-server-ns) virtual_server_ns="$2"; shift 2 ;;
    --reuse) reuse=1; shift ;;
    --trace) trace=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
done
if [ -n "$validate" ]; then
  "${py:-python3}" -c "import sys; t=float(sys.argv[1]); sys.exit(0 if 0 < t < 1 else 1)" "$validate" 2>/dev/null ||
    die "--validate needs a target accuracy between 0 and 1 (e.g. 0.85), got '$validate'"
  [[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] || die "--seconds must be a positive integer"
  # The validation's own defaults, for what was not given: compare_policies' paper-like
  # cluster at 2 workers (what fits 2 cores), every policy, 3 seeds, no delay.
  [[ "$given" == *" --workers "* ]] || workers=2
  [[ "$given" == *" --policies "* ]] || policies="bsp,asp,ssp:3,osp:20,losp:20"
  [[ "$given" == *" --repeats "* ]] || repeats=3
  [[ "$given" == *" --lr "* ]] || lr=0.15
  [[ "$given" == *" --delay-ms "* ]] || delay_ms=0
  [[ "$given" == *" --out "* ]] || out="$repo/docs/results/netns-validation.md"
  [ "$model" = "mlp:256,128" ] && [ "$data" = "fashion-mnist" ] ||
    die "--validate runs compare_policies' model and data: drop --model and --data"
  [ "$run_timeout" -gt $(( seconds + 60 )) ] || run_timeout=$(( seconds + 120 ))
  steps=100000000   # the --seconds budget ends the run
  if [ -n "$virtual_step" ]; then
    "${py:-python3}" -c "import sys; t=float(sys.argv[1]); sys.exit(0 if 0 < t <= 10000 else 1)" "$virtual_step" 2>/dev/null ||
      die "--virtual-step needs a step in milliseconds in (0, 10000], got '$virtual_step'"
  fi
  if [ -n "$virtual_server_ns" ]; then
    "${py:-python3}" -c "import sys; t=float(sys.argv[1]); sys.exit(0 if 0 <= t <= 1e6 else 1)" "$virtual_server_ns" 2>/dev/null ||
      die "--virtual-server-ns needs nanoseconds per float in [0, 1e6], got '$virtual_server_ns'"
  fi
  if [ "$reuse" -eq 1 ]; then
    [ -n "$json_dir" ] && [ -f "$json_dir/commands.txt" ] ||
      die "--reuse needs --json-dir DIR holding a previous --validate run (DIR/commands.txt not found)"
  fi
elif [ "$reuse" -eq 1 ] || [ -n "$virtual_step" ] || [ -n "$virtual_server_ns" ]; then
  die "--reuse, --virtual-step and --virtual-server-ns go with --validate"
fi
[[ "$workers" =~ ^[0-9]+$ ]] && [ "$workers" -ge 1 ] && [ "$workers" -le 200 ] || die "--workers must be 1..200"
[[ "$rate" =~ ^[0-9]+$ ]] && [ "$rate" -gt 0 ] || die "--rate must be a positive integer (bytes/s)"
[[ "$burst" =~ ^[0-9]+$ ]] && [ "$burst" -ge 2048 ] || die "--burst must be an integer >= 2048 (bytes)"
[[ "$repeats" =~ ^[0-9]+$ ]] && [ "$repeats" -ge 1 ] || die "--repeats must be >= 1"
[[ "$run_timeout" =~ ^[0-9]+$ ]] && [ "$run_timeout" -ge 10 ] || die "--run-timeout must be >= 10 (seconds)"
[[ "$delay_ms" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--delay-ms must be a non-negative number"

# ------------------------------------------------------------------ prerequisites
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and qdiscs); try: sudo $0 $*"
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
  "$repo/scripts/setup.sh" iproute2
fi
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || die "ip and tc (iproute2) are required"
command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) is required"
py=/usr/bin/python3
[ -x "$py" ] || py="$(command -v python3 || true)"
[ -n "$py" ] || die "python3 is required (JSON and the table)"

build_dir="$repo/build-netns"
if [ "$build" -eq 1 ]; then
  cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" --target psync-train bench.netns_reference bench.compare_policies bench.replay_rounds -j "$(nproc)"
fi
[ -n "$compare_bin" ] || compare_bin="$build_dir/bench/compare_policies"
if [ -n "$validate" ]; then
  [ -x "$compare_bin" ] || die "compare_policies not found at $compare_bin (build it: --build, or --compare-bin PATH)"
  ref_bin="$compare_bin"   # the emulated reference is not run in this mode
fi
if [ -z "$train_bin" ]; then
  for c in "$build_dir/tools/psync-train" "$repo/build-train/tools/psync-train"; do
    if [ -x "$c" ]; then train_bin="$c"; break; fi
  done
fi
[ -n "$ref_bin" ] || ref_bin="$build_dir/bench/netns_reference"
[ -n "$train_bin" ] && [ -x "$train_bin" ] || die "psync-train not found (build it: --build, or --train-bin PATH)"
[ -x "$ref_bin" ] || die "netns_reference not found at $ref_bin (build it: --build, or --ref-bin PATH)"

existing="$(ip netns list | awk '{print $1}' | grep -E "^${prefix}-" || true)"
[ -z "$existing" ] || die "namespaces named ${prefix}-* already exist (another run, or a crash?): $(echo $existing). Not touching them; remove them yourself if they are stale."

# ------------------------------------------------------------------ cleanup
created_ns=()   # namespaces this script created, in creation order
started=()      # PIDs this script started
work="$(mktemp -d /tmp/psx-crosscheck.XXXXXX)"
cleaned=0

stop_pid() {  # TERM, a bounded grace period, then KILL; only our own PIDs
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  [ "$cleaned" -eq 0 ] || return 0
  cleaned=1
  trap - EXIT INT TERM
  local pid ns i
  for pid in "${started[@]+"${started[@]}"}"; do stop_pid "$pid"; done
  for pid in "${started[@]+"${started[@]}"}"; do wait "$pid" 2>/dev/null || true; done
  for (( i=${#created_ns[@]}-1; i>=0; i-- )); do
    ns="${created_ns[$i]}"
    ip netns del "$ns" 2>/dev/null || echo "netns_crosscheck: warning: could not delete namespace $ns" >&2
  done
  if [ -z "$json_dir" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'echo "netns_crosscheck: interrupted, cleaning up" >&2; cleanup; exit 130' INT
trap 'echo "netns_crosscheck: terminated, cleaning up" >&2; cleanup; exit 143' TERM
if [ -n "$json_dir" ]; then mkdir -p "$json_dir"; work="$(cd "$json_dir" && pwd)"; fi

add_ns() {
  ip netns add "$1"
  created_ns+=("$1")
  ip -n "$1" link set lo up
}

log() { echo "netns_crosscheck: $*" >&2; }

# ------------------------------------------------------------------ netem probe
# The probe lives in its own namespace on a veth pair made for it: a failed or
# successful netem add touches nothing anyone else uses.
add_ns "${prefix}-probe"
ip -n "${prefix}-probe" link add "${prefix}-pa" type veth peer name "${prefix}-pb"
ip -n "${prefix}-probe" link set "${prefix}-pa" up
tc -n "${prefix}-probe" qdisc add dev "${prefix}-pa" root tbf rate 1gbit burst 32kb limit 1mb >/dev/null 2>&1 ||
  die "this kernel cannot add a tbf qdisc (sch_tbf): nothing to cross-check against"
tc -n "${prefix}-probe" qdisc del dev "${prefix}-pa" root >/dev/null 2>&1 || true
if tc -n "${prefix}-probe" qdisc add dev "${prefix}-pa" root netem delay 1ms >/dev/null 2>&1; then
  have_netem=1
else
  have_netem=0
fi
ip netns del "${prefix}-probe"
created_ns=()
if [ "$have_netem" -eq 1 ] && [ "$delay_ms" != "0" ]; then
  use_delay=1
  latency_us="$("$py" -c "print(round(float('$delay_ms')*1000))")"
  qdisc_desc="tbf (rate $rate B/s, burst $burst B) + netem delay ${delay_ms} ms on every worker-side link direction"
else
  use_delay=0
  latency_us=0
  if [ "$have_netem" -eq 0 ]; then
    qdisc_desc="tbf only (rate $rate B/s, burst $burst B); netem is NOT available in this kernel, so no delay was added on either side"
  else
    qdisc_desc="tbf only (rate $rate B/s, burst $burst B); --delay-ms 0, so no delay on either side"
  fi
fi
log "qdiscs: $qdisc_desc"

# ------------------------------------------------------------------ topology
# psx-sw holds the bridge; every host namespace has eth0, whose peer psx-p-<host>
# is a port of the bridge. Every veth end is shaped on egress:
#   host eth0           -> the host's uplink (server: its NIC out, shared by all replies)
#   bridge psx-p-<host> -> the host's downlink (server: its NIC in, shared by all pushes)
# Delay (netem) goes on the two ends of each worker's link, none on the server's,
# as the emulator adds latency per worker link and none at the server NIC.
sw="${prefix}-sw"
srv="${prefix}-srv"
rate_bits=$(( rate * 8 ))

shape() {  # shape NS DEV DELAY(0|1)
  local ns="$1" dev="$2" delay="$3"
  if [ "$delay" -eq 1 ]; then
    tc -n "$ns" qdisc add dev "$dev" root handle 1: netem delay "${delay_ms}ms" limit 100000
    tc -n "$ns" qdisc add dev "$dev" parent 1:1 handle 10: tbf rate "${rate_bits}bit" burst "$burst" limit "$tbf_limit"
  else
    tc -n "$ns" qdisc add dev "$dev" root handle 1: tbf rate "${rate_bits}bit" burst "$burst" limit "$tbf_limit"
  fi
}

add_host() {  # add_host NS PORTNAME ADDR DELAY
  local ns="$1" port="$2" addr="$3" delay="$4"
  add_ns "$ns"
  ip -n "$sw" link add "$port" type veth peer name eth0 netns "$ns"
  ip -n "$sw" link set "$port" master "${prefix}-br"
  ip -n "$sw" link set "$port" up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  shape "$ns" eth0 "$delay"
  shape "$sw" "$port" "$delay"
}

add_ns "$sw"
ip -n "$sw" link add "${prefix}-br" type bridge
ip -n "$sw" link set "${prefix}-br" up
add_host "$srv" "${prefix}-p-srv" "${subnet}.1" 0
worker_ns=()
for (( w=0; w<workers; w++ )); do
  add_host "${prefix}-w$w" "${prefix}-p-w$w" "${subnet}.$((10 + w))" "$use_delay"
  worker_ns+=("${prefix}-w$w")
done
# No default route anywhere: only the on-link 10.77.0.0/24 route exists.
for ns in "$srv" "${worker_ns[@]}"; do
  if ip -n "$ns" route show default | grep -q .; then die "unexpected default route in $ns"; fi
done
log "topology: bridge in $sw, server $srv (${subnet}.1), $workers worker namespace(s) (${subnet}.10..)"

# Reachability (bounded): every worker must see the server before any run.
if command -v ping >/dev/null 2>&1; then
  for ns in "${worker_ns[@]}"; do
    ip netns exec "$ns" ping -c 1 -W 2 "${subnet}.1" >/dev/null 2>&1 || die "$ns cannot reach the server at ${subnet}.1"
  done
  rtt="$(ip netns exec "${worker_ns[0]}" ping -c 5 -i 0.2 -W 2 "${subnet}.1" 2>/dev/null | awk -F'/' '/^rtt|^round-trip/ {print $5}')"
  log "ping ${worker_ns[0]} -> server: avg rtt ${rtt:-?} ms"
else
  rtt=""
fi

# ------------------------------------------------------------------ runs
timeout_ms=$(( (run_timeout > 60 ? 60 : run_timeout) * 1000 ))
cur_steps="$steps"
cur_lr="$lr"
cur_seed="$seed"
extra=()   # --validate: the series, the target, the budget, the initial model
common_args() { common=(--workers "$workers" --model "$model" --data "$data" --steps "$cur_steps" --batch "$batch" --lr "$cur_lr" --seed "$cur_seed"); }
port=17700
commands_file="$work/commands.txt"
if [ "$reuse" -eq 1 ]; then
  # Keep the process runs' commands; the virtual runs are redone below.
  grep -v -- "--time virtual" "$commands_file" > "$commands_file.tmp" || true
  mv "$commands_file.tmp" "$commands_file"
else
  : > "$commands_file"
fi

run_kernel() {  # run_kernel POLICY TAG -> $work/kernel-TAG-{server,w*}.json
  local policy="$1" tag="$2" spid wpids=() w pid rc=0 deadline addr=""
  common_args
  port=$(( port + 1 ))
  local slog="$work/kernel-$tag-server.log"
  local scmd=(timeout -k 5 "$run_timeout" "$train_bin" --role server --server "${subnet}.1:$port"
              --policy "$policy" "${common[@]}" --timeout-ms "$timeout_ms" --quiet
              --metrics "$work/kernel-$tag-server.json" "${extra[@]+"${extra[@]}"}")
  [ "$trace" -eq 0 ] || scmd+=(--trace "$work/kernel-$tag-server.trace.json")
  echo "ip netns exec $srv ${scmd[*]}" >> "$commands_file"
  ip netns exec "$srv" "${scmd[@]}" > "$slog" 2>&1 &
  spid=$!
  started+=("$spid")
  deadline=$(( $(date +%s) + 60 ))
  while :; do
    addr="$(sed -n 's/^psync-train: listening on //p' "$slog" | head -n 1)"
    [ -n "$addr" ] && break
    kill -0 "$spid" 2>/dev/null || { cat "$slog" >&2; die "server ($policy) exited before listening"; }
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$slog" >&2; die "server ($policy) did not listen within 60 s"; }
    sleep 0.05
  done
  for (( w=0; w<workers; w++ )); do
    local wcmd=(timeout -k 5 "$run_timeout" "$train_bin" --role worker --server "$addr" --id "$w"
                --policy "$policy" "${common[@]}" --timeout-ms "$timeout_ms" --quiet
                --metrics "$work/kernel-$tag-w$w.json" "${wextra[@]+"${wextra[@]}"}")
    [ "$trace" -eq 0 ] || wcmd+=(--trace "$work/kernel-$tag-w$w.trace.json")
    echo "ip netns exec ${prefix}-w$w ${wcmd[*]}" >> "$commands_file"
    ip netns exec "${prefix}-w$w" "${wcmd[@]}" > "$work/kernel-$tag-w$w.log" 2>&1 &
    pid=$!
    started+=("$pid")
    wpids+=("$pid")
  done
  # Each wait is bounded: every process runs under timeout(1).
  for pid in "${wpids[@]}"; do wait "$pid" || rc=$?; done
  wait "$spid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$slog" "$work"/kernel-"$tag"-w*.log >&2 || true
    die "kernel run $policy failed (exit $rc; 124 = timed out)"
  fi
}

run_emulated() {  # run_emulated POLICY TAG -> $work/emulated-TAG.json
  local policy="$1" tag="$2" pid rc=0
  common_args
  local cmd=(timeout -k 5 "$run_timeout" "$ref_bin" --policy "$policy" "${common[@]}"
             --bandwidth "$rate" --server-nic "$rate" --latency-us "$latency_us"
             --out "$work/emulated-$tag.json")
  echo "${cmd[*]}" >> "$commands_file"
  "${cmd[@]}" > "$work/emulated-$tag.log" 2>&1 &
  pid=$!
  started+=("$pid")
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 "$work/emulated-$tag.log" >&2; die "emulated run $policy failed (exit $rc)"; }
}

# ------------------------------------------------------------------ --validate
virtual_run() {  # virtual_run DIR [compare_policies options] -> DIR/paper-like.json
  local dir="$1" rc=0
  shift
  local cmd=(timeout -k 5 3600 "$compare_bin" --scenario paper-like --time virtual --workers "$workers"
             --straggler 1 --latency-ms "$latency_ms" --gbps "$gbps" --lr "$lr" --seed "$seed"
             --seeds "$repeats" --target "$validate" --budget "$seconds" --out "$dir" --quiet
             --replies step-end "$@")  # psync-train's workers are psync::Worker: replies at step ends
  [ -z "$virtual_server_ns" ] || cmd+=(--server-ns "$virtual_server_ns")
  echo "${cmd[*]}" >> "$commands_file"
  "${cmd[@]}" > "$dir.log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { tail -n 20 "$dir.log" >&2; die "compare_policies failed (exit $rc)"; }
}

validate_runs() {
  processes_when=""
  if [ "$reuse" -eq 1 ]; then
    processes_when="$(date -u -r "$work/kernel-${policy_list[0]//:/}-s$seed-server.json" '+%Y-%m-%d %H:%M:%S UTC')"
  fi
  latency_ms="$("$py" -c "print(int('$latency_us') / 1000)")"
  gbps="$("$py" -c "print(int('$rate') * 8 / 1e9)")"
  local vstep=()
  [ -z "$virtual_step" ] || vstep=(--step-ms "$virtual_step")
  log "validate: virtual time at the ${virtual_step:+given }${virtual_step:-calibrated} step ($policies, seeds $seed..$(( seed + repeats - 1 )))"
  virtual_run "$work/virtual-calibrated" --policies "$policies" "${vstep[@]+"${vstep[@]}"}"
  if [ "$reuse" -eq 0 ]; then
    # The warm-up doubles as the CPU calibration: BSP for a few seconds, not in the table.
    log "warm-up and CPU calibration: bsp for $cal_seconds s (not in the table)"
    wextra=(--seconds "$cal_seconds")
    run_kernel bsp warmup
  fi
  cur_steps="$steps"
  # What a byte of communication costs the CPU at each end, from the calibration run:
  # the machine's busy CPU while worker 0 trained (psync-train's run_machine_busy_s,
  # from /proc/stat: every process, the kernel and its soft interrupts, which do the
  # packet processing and which no process is charged for, each counted once), less
  # its steps at the virtual step, over the bytes it moved (every push answered by a
  # model of the same size), counted at both ends. The namespaces run nothing else,
  # and the machine must be otherwise idle, as for every figure here. The virtual
  # "shared host" run charges it on $(nproc) cores.
  cpu_ns_per_byte="$("$py" - "$work" "$workers" "$work/virtual-calibrated/paper-like.json" <<'PY'
import json, os, sys
work, workers, cal = sys.argv[1], int(sys.argv[2]), sys.argv[3]
step_s = json.load(open(cal))["step_s"]
ws = [json.load(open(os.path.join(work, f"kernel-warmup-w{i}.json"))) for i in range(workers)]
if ws[0].get("run_machine_busy_s") is None:
    print("")  # runs made before psync-train reported the machine's CPU
    sys.exit()
cpu = ws[0]["run_machine_busy_s"]
steps = sum(w["steps_done"] for w in ws)
moved = 2 * sum(w["pushed_bytes"] for w in ws)
print(f"{1e9 * max(0.0, cpu - steps * step_s) / (2 * moved):.4f}" if moved else "")
PY
)"
  if [ -n "$cpu_ns_per_byte" ]; then
    log "validate: communication costs $cpu_ns_per_byte ns of CPU per byte at each end (calibration run); virtual time on $(nproc) shared cores"
    # The same server cost as the own-cores run; the step is calibrated (unless given)
    # with every shared core computing, as the workers' steps run here.
    local host_costs=(--server-ns "$("$py" -c "import json,sys; print(repr(json.load(open(sys.argv[1]))['server_s_per_float'] * 1e9))" "$work/virtual-calibrated/paper-like.json")")
    virtual_run "$work/virtual-host" --policies "$policies" --host-cores "$(nproc)" --cpu-ns-per-byte "$cpu_ns_per_byte" \
      "${host_costs[@]}" "${vstep[@]+"${vstep[@]}"}"
  else
    log "validate: the calibration run has no CPU times (made by an older psync-train): no shared-host column"
  fi
  local p k tag step
  for p in "${policy_list[@]}"; do
    cur_lr="$("$py" - "$work/virtual-calibrated/paper-like.json" "$p" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(next(r["learning_rate"] for r in d["policies"] if r["policy"] == sys.argv[2]))
PY
)"
    for (( k=0; k<repeats; k++ )); do
      cur_seed=$(( seed + k ))
      tag="${p//:/}-s$cur_seed"
      extra=(--series-ms 250 --series-samples 2000 --target "$validate" --init-seed "$init_seed")
      wextra=(--seconds "$seconds" --init-seed "$init_seed")
      if [ "$reuse" -eq 1 ]; then
        [ -f "$work/kernel-$tag-server.json" ] || die "--reuse: $work/kernel-$tag-server.json not found"
        continue
      fi
      log "validate: $p, seed $cur_seed, lr $cur_lr: processes over kernel-shaped TCP for $seconds s"
      run_kernel "$p" "$tag"
    done
    cur_seed="$seed"
    step="$("$py" - "$work" "${p//:/}" "$seed" "$repeats" "$workers" <<'PY'
import json, os, statistics, sys
work, tag, seed, repeats, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
steps = []
for s in range(seed, seed + repeats):
    ws = [json.load(open(os.path.join(work, f"kernel-{tag}-s{s}-w{i}.json"))) for i in range(workers)]
    n = sum(w["steps_done"] for w in ws)
    steps.append(1000 * sum(w["compute_s"] for w in ws) / n)
print(f"{statistics.median(steps):.4f}")
PY
)"
    log "validate: $p: virtual time at the processes' step, $step ms"
    virtual_run "$work/virtual-step-${p//:/}" --policies "$p" --step-ms "$step"
  done
  validate_table
  log "wrote $out"
  if [ "$out" = "$repo/docs/results/netns-validation.md" ]; then
    "$py" "$repo/scripts/update_readme.py" "$out" --readme "$repo/README.md" --block netns-validation >&2
  fi
  if [ -n "$json_dir" ]; then log "raw JSON and logs kept in $work"; fi
  exit 0
}

validate_table() {
  mkdir -p "$(dirname "$out")"
  "$py" "$here/netns_validation_table.py" "$work" "$out" "$policies" "$seed" "$repeats" "$workers" "$validate" \
    "$seconds" "$rate" "$qdisc_desc" "$(uname -sr)" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(nproc)" \
    "$commands_file" "$init_seed" ${processes_when:+"$processes_when"}
}

IFS=',' read -r -a policy_list <<< "$policies"
wextra=()
if [ -n "$validate" ]; then
  validate_runs   # defined above; writes the table and exits
fi
# A short unmeasured kernel run first: page cache, sockets and the bridge's MAC
# learning warmed, so the first measured policy pays no more than the others.
log "warm-up (not measured)"
cur_steps=10
run_kernel bsp warmup
cur_steps="$steps"
for (( r=1; r<=repeats; r++ )); do
  for p in "${policy_list[@]}"; do
    tag="${p//:/}-r$r"
    log "run $r/$repeats, $p: kernel-shaped TCP"
    run_kernel "$p" "$tag"
    log "run $r/$repeats, $p: emulated"
    run_emulated "$p" "$tag"
  done
done

# ------------------------------------------------------------------ table
mkdir -p "$(dirname "$out")"
kernel="$(uname -sr)"
when="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
cpus="$(nproc)"
qdisc_dump="$(for ns in "$srv" "$sw" "${worker_ns[0]}"; do echo "# $ns"; tc -s -n "$ns" qdisc show | awk '/^qdisc noqueue/ {skip=2; next} skip > 0 {skip--; next} {print}' ; done)"
invocation="scripts/netns_crosscheck.sh $(printf '%q ' "${@}")"
"$py" - "$work" "$out" "$policies" "$repeats" "$workers" "$model" "$data" "$steps" "$batch" "$lr" "$seed" \
  "$rate" "$burst" "$latency_us" "$qdisc_desc" "$kernel" "$when" "$cpus" "${rtt:-n/a}" "$commands_file" \
  "$qdisc_dump" <<'PYEOF'
import json, os, statistics, sys
(work, out, policies, repeats, workers, model, data, steps, batch, lr, seed, rate, burst, latency_us,
 qdisc_desc, kernel, when, cpus, rtt, commands_file, qdisc_dump) = sys.argv[1:]
repeats, workers = int(repeats), int(workers)

def figures(ws):
    """ws: per-worker dicts with steps/samples/pushes/wall_s/comm_s/wait_s."""
    wall = max(w["wall_s"] for w in ws)
    samples = sum(w["samples"] for w in ws)
    pushes = sum(w["pushes"] for w in ws)
    comm = sum(w["comm_s"] for w in ws)
    steps = sum(w["steps"] for w in ws)
    compute = sum(w["compute_s"] for w in ws)
    return {
        "wall": wall,
        "thr": samples / wall if wall > 0 else 0.0,
        "comm_push_ms": 1000.0 * comm / pushes if pushes else 0.0,
        "wait_frac": statistics.mean(w["wait_s"] / w["wall_s"] if w["wall_s"] > 0 else 0.0 for w in ws),
        "pushes": pushes,
        "compute_step_ms": 1000.0 * compute / steps if steps else 0.0,
    }

def kernel_run(tag):
    ws = []
    for i in range(workers):
        d = json.load(open(os.path.join(work, f"kernel-{tag}-w{i}.json")))
        if not d.get("ok", True):
            raise SystemExit(f"worker {i} of {tag} reported an error: {d.get('error')}")
        d = dict(d)
        d["steps"] = d.get("steps_done", d.get("steps"))
        ws.append(d)
    srv = json.load(open(os.path.join(work, f"kernel-{tag}-server.json")))
    f = figures(ws)
    f["acc"] = srv.get("final_test_accuracy", float("nan"))
    return f

def emulated_run(tag):
    d = json.load(open(os.path.join(work, f"emulated-{tag}.json")))
    f = figures(d["workers"])
    f["acc"] = d.get("final_accuracy", float("nan"))
    return f

def mean_of(runs):
    return {k: statistics.mean(r[k] for r in runs) for k in runs[0]}

rows = []
for p in policies.split(","):
    kr = [kernel_run(f"{p.replace(':', '')}-r{r}") for r in range(1, repeats + 1)]
    er = [emulated_run(f"{p.replace(':', '')}-r{r}") for r in range(1, repeats + 1)]
    rows.append((p, mean_of(kr), mean_of(er), kr, er))

def ratio(e, k):
    return f"{e / k:.2f}" if k else "-"

lines = []
lines.append("| policy | figure | kernel (tbf, TCP) | emulated | emulated / kernel |")
lines.append("|---|---|---:|---:|---:|")
for p, k, e, _, _ in rows:
    lines.append(f"| {p} | wall time (s) | {k['wall']:.2f} | {e['wall']:.2f} | {ratio(e['wall'], k['wall'])} |")
    lines.append(f"| {p} | throughput (samples/s) | {k['thr']:.0f} | {e['thr']:.0f} | {ratio(e['thr'], k['thr'])} |")
    lines.append(f"| {p} | comm per push (ms) | {k['comm_push_ms']:.2f} | {e['comm_push_ms']:.2f} | {ratio(e['comm_push_ms'], k['comm_push_ms'])} |")
    lines.append(f"| {p} | compute per step (ms) | {k['compute_step_ms']:.2f} | {e['compute_step_ms']:.2f} | {ratio(e['compute_step_ms'], k['compute_step_ms'])} |")
    lines.append(f"| {p} | mean wait fraction | {k['wait_frac']:.3f} | {e['wait_frac']:.3f} | {ratio(e['wait_frac'], k['wait_frac'])} |")
    lines.append(f"| {p} | pushes (all workers) | {k['pushes']:.0f} | {e['pushes']:.0f} | {ratio(e['pushes'], k['pushes'])} |")
    lines.append(f"| {p} | final test accuracy | {k['acc']:.4f} | {e['acc']:.4f} | - |")
table = "\n".join(lines)

per_run = ["| policy | run | kernel wall (s) | emulated wall (s) | kernel comm/push (ms) | emulated comm/push (ms) |",
           "|---|---:|---:|---:|---:|---:|"]
for p, _, _, kr, er in rows:
    for i, (a, b) in enumerate(zip(kr, er), 1):
        per_run.append(f"| {p} | {i} | {a['wall']:.2f} | {b['wall']:.2f} | {a['comm_push_ms']:.2f} | {b['comm_push_ms']:.2f} |")

commands = open(commands_file).read().strip().splitlines()
shown = [c for c in commands if " warmup" not in c and "-warmup-" not in c]
doc = f"""# Cross-check: emulator vs kernel-shaped TCP

Generated by `scripts/netns_crosscheck.sh` (see `docs/netns-crosscheck.md`); every
figure below was measured by that run. Do not edit by hand.

- Date: {when}; kernel: {kernel}; CPUs: {cpus}
- Workload: {workers} workers, `--model {model} --data {data} --steps {steps} --batch {batch} --lr {lr} --seed {seed}`, {repeats} run(s) per policy (means shown)
- Links: every worker link and each direction of the server NIC at {int(rate):,} bytes/s ({int(rate) * 8 / 1e9:g} Gbit/s)
- Kernel side: {qdisc_desc}; {"ping worker 0 -> server avg RTT " + rtt + " ms" if rtt != "n/a" else "no ping installed, RTT not measured"}
- Emulated side: `psync::run_local` over `Emulated<InProcess>`, worker links and server NIC {int(rate):,} bytes/s, latency {int(latency_us)} us, no jitter, no straggler

Figures: wall time = slowest worker's `wall_s` (first step to leaving); throughput =
all workers' samples / that wall time; comm per push = sum of `comm_s` / sum of
pushes (push -> model round trip less the time the server held the read for the
policy); compute per step = sum of `compute_s` / sum of steps (a CPU figure, not a
network one: it shows how much the host's CPU contention differs between the two
sides); wait fraction = mean over workers of `wait_s / wall_s` (compute blocked).

{table}

Per run:

{chr(10).join(per_run)}

Qdiscs as installed, with counters cumulated over all runs incl. the warm-up (server, bridge, worker 0):

```
{qdisc_dump}
```

Commands (one run per policy shown; the script runs them in these namespaces):

```
{chr(10).join(shown[: (workers + 2) * len(rows)])}
```
"""
open(out, "w").write(doc)
print(table)
PYEOF
log "wrote $out"
if [ -n "$json_dir" ]; then log "raw JSON and logs kept in $work"; fi
