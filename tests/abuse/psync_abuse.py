#!/usr/bin/env python3
"""psync abuse test: attacks a real psync-train server while two real workers train.

For every case it starts `psync-train --role server`, two real `psync-train`
workers (synthetic data, nothing to download) and an attacker that runs in this
process (Python standard library only), and reports whether the server survives:

  * the server's RSS before the attack and its peak (VmRSS polled every 50 ms,
    VmHWM read until it exits), against --rss-limit-mb;
  * each real worker's exit code and wall time, against an unattacked baseline run
    of the same settings measured first (limit: max(2 x baseline, baseline + 5 s));
  * whether the attacker was disconnected by the server (EOF, reset or a closed TCP
    state on its socket while training was still going on) and the Error frame it
    got first, if any;
  * the server's exit code (it must exit 0 by itself).

Usage:
  tests/abuse/psync_abuse.py [--bin build/tools/psync-train] [--cases a,b,c] [--json FILE]
  tests/abuse/psync_abuse.py --list

The last line is "N passed, M failed"; the exit code is 1 if any case failed
(a case whose unattacked baseline fails counts as failed), 2 on a usage error.
See tests/abuse/README.md for what each case checks.

The wire format is docs/wire-protocol.md (include/psync/transport/wire.hpp):
a 20-byte header "PSYN", version 4, type, reserved 0, sender u32, payload length
u64, then per-type fixed fields and a body; all little-endian.
"""

import argparse
import array
import json
import math
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# ---------------------------------------------------------------------------
# Wire protocol, version 4
# ---------------------------------------------------------------------------

MAGIC = b"PSYN"
PROTOCOL_VERSION = 4
HEADER = struct.Struct("<4sBBHIQ")  # magic, version, type, reserved, sender, payload length
assert HEADER.size == 20
T_JOIN, T_LEAVE, T_PUSH, T_PULL, T_MODEL, T_ERROR, T_CHALLENGE = range(7)
TYPE_NAMES = ["join", "leave", "push", "pull", "model", "error", "challenge"]
N_TYPES = len(TYPE_NAMES)
SERVER_PEER = 0xFFFFFFFF
JOIN_FIXED = struct.Struct("<IQIB32s")  # worker, dimension, policy length, MAC kind, MAC (49)
LEAVE_FIXED = struct.Struct("<B")      # reason (1)
PUSH_FIXED = struct.Struct("<QQIBQ")   # clock, base_version, steps, encoding (0 dense), count (29)
PULL_FIXED = struct.Struct("<QQ")      # clock, buffer size (16)
MODEL_FIXED = struct.Struct("<QQQIQ")  # version, min_clock, held_ns, worker, count (36)
ERROR_FIXED = struct.Struct("<BI")     # code, text length (5)
CHALLENGE_FIXED = struct.Struct("<B32s")  # flags (bit 0: auth required), nonce (33); the server's first frame
FIXED = {T_JOIN: 49, T_LEAVE: 1, T_PUSH: 29, T_PULL: 16, T_MODEL: 36, T_ERROR: 5, T_CHALLENGE: 33}
assert [JOIN_FIXED.size, LEAVE_FIXED.size, PUSH_FIXED.size, PULL_FIXED.size, MODEL_FIXED.size,
        ERROR_FIXED.size, CHALLENGE_FIXED.size] == [FIXED[t] for t in range(N_TYPES)]
ERROR_NAMES = {1: "bad_frame", 2: "wrong_dimension", 3: "duplicate_worker", 4: "policy_mismatch",
               5: "bad_clock", 6: "not_joined", 7: "shutting_down", 8: "internal", 9: "limit_exceeded",
               10: "unauthenticated"}
MAX_PAYLOAD_DEFAULT = 64 << 20  # WireLimits::max_payload_bytes

# Linux TCP states (include/net/tcp_states.h), first byte of struct tcp_info.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
TCP_INFO = getattr(socket, "TCP_INFO", 11)


def frame(ftype, sender, payload):
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, 0, sender, len(payload)) + payload


def join_frame(worker, dimension, policy):
    p = policy.encode()
    return frame(T_JOIN, worker, JOIN_FIXED.pack(worker, dimension, len(p), 0, bytes(32)) + p)  # no MAC


def push_frame(worker, clock, base_version, steps, floats_bytes):
    count = len(floats_bytes) // 4
    return frame(T_PUSH, worker, PUSH_FIXED.pack(clock, base_version, steps, 0, count) + floats_bytes)


def pull_frame(worker, clock, buffer_floats):
    return frame(T_PULL, worker, PULL_FIXED.pack(clock, buffer_floats))


def floats_le(values):
    a = array.array("f", values)
    assert a.itemsize == 4
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


class Frame:
    """A frame received from the server; bodies of models are skipped, not kept."""

    __slots__ = ("t", "type", "sender", "length", "fields", "text", "body")

    def __init__(self, t, ftype, sender, length):
        self.t, self.type, self.sender, self.length = t, ftype, sender, length
        self.fields = ()
        self.text = ""
        self.body = None  # a Model's floats (bytes), only when the parser keeps them

    def describe(self):
        if self.type == T_ERROR:
            code = self.fields[0]
            return "Error %d %s: %s" % (code, ERROR_NAMES.get(code, "?"), self.text)
        if self.type == T_MODEL:
            return "Model version %d min_clock %d (%d floats)" % (self.fields[0], self.fields[1], self.fields[4])
        return TYPE_NAMES[self.type] if self.type < N_TYPES else "type %d" % self.type


class FrameParser:
    """Incremental decoder of the server's byte stream; buffers a Model's floats only
    with keep_models (the overwrite attacker reads the model), other bodies never."""

    def __init__(self, keep_models=False):
        self.stage, self.need, self.buf, self.cur, self.bad = "head", HEADER.size, bytearray(), None, None
        self.keep_models = keep_models

    def feed(self, data, t):
        out = []
        mv = memoryview(data)
        i = 0
        while i < len(mv) and self.bad is None:
            take = min(self.need, len(mv) - i)
            if self.stage != "skip":
                self.buf += mv[i:i + take]
            i += take
            self.need -= take
            if self.need == 0:
                self._advance(out, t)
        return out

    def _reset(self):
        self.stage, self.need, self.cur = "head", HEADER.size, None
        self.buf.clear()

    def _advance(self, out, t):
        if self.stage == "head":
            magic, version, ftype, reserved, sender, length = HEADER.unpack(bytes(self.buf))
            if magic != MAGIC or version != PROTOCOL_VERSION or ftype >= N_TYPES or reserved != 0 or length < FIXED[ftype]:
                self.bad = "server sent an invalid header %r" % bytes(self.buf)
                return
            self.cur = Frame(t, ftype, sender, length)
            self.buf.clear()
            self.stage, self.need = "fixed", FIXED[ftype]
        elif self.stage == "fixed":
            ftype = self.cur.type
            st = {T_JOIN: JOIN_FIXED, T_LEAVE: LEAVE_FIXED, T_PUSH: PUSH_FIXED, T_PULL: PULL_FIXED,
                  T_MODEL: MODEL_FIXED, T_ERROR: ERROR_FIXED, T_CHALLENGE: CHALLENGE_FIXED}[ftype]
            self.cur.fields = st.unpack(bytes(self.buf))
            self.buf.clear()
            body = self.cur.length - FIXED[ftype]
            if body == 0:
                out.append(self.cur)
                self._reset()
            elif (ftype in (T_ERROR, T_JOIN) and body <= 65536) or (ftype == T_MODEL and self.keep_models):
                self.stage, self.need = "body", body
            else:
                self.stage, self.need = "skip", body
        elif self.stage == "body":
            if self.cur.type == T_MODEL:
                self.cur.body = bytes(self.buf)
            else:
                self.cur.text = bytes(self.buf).decode("utf-8", "replace")
            out.append(self.cur)
            self._reset()
        else:  # skip
            out.append(self.cur)
            self._reset()


# ---------------------------------------------------------------------------
# An attacker's connection
# ---------------------------------------------------------------------------

class Conn:
    """One attacker socket (non-blocking). Records every frame type received, the
    Error frames, and when and how the server disconnected it."""

    def __init__(self, host, port, label, connect_timeout=3.0, keep_models=False):
        self.label = label
        self.t_disc = None
        self.disc_how = None
        self.errors = []  # Frame
        self.received = [0] * N_TYPES
        self.bytes_sent = 0
        self.frames_sent = 0
        self.parser = FrameParser(keep_models)
        self.clock = 0
        self.version = 0
        self.join_reply = None
        self.sock = None
        self.eof = False  # EOF or reset read: nothing more will arrive
        self.t_connect = time.monotonic()
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            self._disc("connect failed: %s" % (e.strerror or e))
            return
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)

    @property
    def alive(self):
        return self.t_disc is None and self.sock is not None

    def _disc(self, how):
        if self.t_disc is None:
            self.t_disc = time.monotonic()
            self.disc_how = how

    def first_error(self):
        return self.errors[0] if self.errors else None

    def tcp_state(self):
        if self.sock is None:
            return None
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
            return info[0]
        except OSError:
            return None

    def poll_closed(self):
        """Notices a server-side close without reading (the receive buffer may be full)."""
        if not self.alive:
            return True
        st = self.tcp_state()
        if st is not None and st not in (1, 2, 3):
            self._disc("closed by the server (TCP %s)" % TCP_STATES.get(st, st))
            return True
        return False

    def send_all(self, data, stop=None, hard_deadline=None):
        """Sends all of `data`; False if disconnected, stopped (only before the first
        byte) or past hard_deadline. Never leaves a frame half sent unless the server
        stops reading past hard_deadline."""
        if not self.alive:
            return False
        view = memoryview(data)
        first = True
        p = select.poll()
        p.register(self.sock, select.POLLOUT)
        while view:
            if first and stop is not None and stop.is_set():
                return False
            if hard_deadline is not None and time.monotonic() > hard_deadline:
                return False
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                p.poll(50)
                if self.poll_closed():
                    return False
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                self._disc("send: %s" % e.strerror)
                return False
            except OSError as e:
                self._disc("send: %s" % (e.strerror or e))
                return False
            first = False
            view = view[n:]
            self.bytes_sent += n
        return True

    def _recv_into_parser(self, timeout_s):
        """One read (waiting up to timeout_s); returns the frames parsed. Works after
        a disconnect was noticed from the TCP state too: the frames the server sent
        before closing (its Error) are still in our receive buffer."""
        if self.sock is None or self.eof:
            return []
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        if not p.poll(max(0, int(timeout_s * 1000))):
            return []
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        except ConnectionResetError:
            self.eof = True
            self._disc("reset")
            return []
        except OSError as e:
            self.eof = True
            self._disc("recv: %s" % (e.strerror or e))
            return []
        now = time.monotonic()
        if not data:
            self.eof = True
            self._disc("EOF")
            return []
        frames = self.parser.feed(data, now)
        for f in frames:
            self.received[f.type] += 1
            if f.type == T_ERROR:
                self.errors.append(f)
        if self.parser.bad:
            self.eof = True
            self._disc(self.parser.bad)
        return frames

    def read_until(self, types, deadline):
        """Reads until a frame of one of `types` arrives; None on deadline or disconnect."""
        while self.sock is not None and not self.eof and time.monotonic() < deadline:
            for f in self._recv_into_parser(min(0.05, max(0, deadline - time.monotonic()))):
                if f.type in types:
                    return f
        return None

    def read_for(self, seconds):
        end = time.monotonic() + seconds
        while self.alive and time.monotonic() < end:
            self._recv_into_parser(min(0.05, max(0, end - time.monotonic())))

    def drain(self, deadline):
        """Reads (and mostly discards) until EOF/reset or the deadline."""
        while self.sock is not None and not self.eof and time.monotonic() < deadline:
            self._recv_into_parser(min(0.05, max(0, deadline - time.monotonic())))
        if self.alive:
            self.poll_closed()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def join(run, rep, worker_id, label, read_reply=True, keep_models=False):
    """Connects and joins as `worker_id` with the server's dimension and policy; reads
    the join reply (the Model whose min_clock is this peer's starting clock)."""
    c = Conn(run.host, run.port, label, keep_models=keep_models)
    rep.conns.append(c)
    if not c.alive:
        return c
    if not c.send_all(join_frame(worker_id, run.dim, run.policy)):
        return c
    c.frames_sent += 1
    if read_reply:
        f = c.read_until((T_MODEL, T_ERROR), time.monotonic() + run.ctx.args.join_reply_s)
        if f is not None and f.type == T_MODEL:
            c.join_reply = f
            c.version, c.clock = f.fields[0], f.fields[1]
            rep.note("join as worker %d accepted: %s" % (worker_id, f.describe()))
        elif f is not None:
            rep.note("join as worker %d refused: %s" % (worker_id, f.describe()))
        elif c.alive:
            rep.note("join as worker %d: no reply within %.1f s" % (worker_id, run.ctx.args.join_reply_s))
        else:
            rep.note("join as worker %d: disconnected (%s)" % (worker_id, c.disc_how))
    return c


class AttackReport:
    def __init__(self):
        self.conns = []
        self.notes = []
        self.lock = threading.Lock()
        self.t_start = None
        self.t_stop = None

    def note(self, text):
        with self.lock:
            self.notes.append(text)


# ---------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------

CHILDREN = []  # every Proc started, so that all of them are killed on exit
CHILDREN_LOCK = threading.Lock()


class Proc:
    def __init__(self, name, argv, run_dir, nofile):
        self.name = name
        self.out_path = os.path.join(run_dir, name + ".out")
        self.err_path = os.path.join(run_dir, name + ".err")
        self.t_start = time.monotonic()
        self.t_end = None
        self.rc = None
        self.killed = None  # why we killed it
        out = open(self.out_path, "wb")
        err = open(self.err_path, "wb")
        # The limit is set by a shell rather than preexec_fn (which is unsafe with threads).
        if nofile > 0:
            argv = ["/bin/sh", "-c", 'ulimit -S -n "$0" 2>/dev/null; exec "$@"', str(nofile)] + argv
        try:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          start_new_session=True)
        finally:
            out.close()
            err.close()
        self.pid = self.popen.pid
        with CHILDREN_LOCK:
            CHILDREN.append(self)

    def poll(self):
        if self.rc is None:
            rc = self.popen.poll()
            if rc is not None:
                self.rc = rc
                self.t_end = time.monotonic()
        return self.rc

    @property
    def running(self):
        return self.poll() is None

    @property
    def wall(self):
        return None if self.t_end is None else self.t_end - self.t_start

    def signal(self, sig):
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)  # our own unreaped child: the pid cannot have been reused
            except ProcessLookupError:
                pass

    def kill(self, why):
        if self.poll() is None:
            self.killed = why
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.poll()

    def terminate(self, why, grace=3.0):
        if self.poll() is None:
            self.killed = why
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and self.poll() is None:
                time.sleep(0.05)
            if self.poll() is None:
                self.kill(why)

    def out(self):
        return read_text(self.out_path)

    def err(self):
        return read_text(self.err_path)

    def tail(self, n=3):
        lines = [l for l in self.err().splitlines() if l.strip()]
        return lines[-n:]


def read_text(path, limit=4 << 20):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:  # keep the start (listening line, joins) and the end
                head = f.read(limit // 2)
                f.seek(size - limit // 2)
                return (head + b"\n...\n" + f.read()).decode("utf-8", "replace")
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def kill_all_children():
    with CHILDREN_LOCK:
        procs = list(CHILDREN)
    for p in procs:
        if p.poll() is None:
            p.kill("cleanup")


def proc_status(pid):
    """(VmRSS, VmHWM) in kB, or (None, None) once the process is gone."""
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


# ---------------------------------------------------------------------------
# One cluster run: server, workers, optional attack
# ---------------------------------------------------------------------------

def data_classes(data):
    return 4 if data == "synthetic" else 10


def model_dimension(model, data):
    inputs, classes = (20, 4) if data == "synthetic" else (784, 10)
    if model == "softmax":
        return inputs * classes + classes
    m = re.fullmatch(r"mlp:([0-9]+(?:,[0-9]+)*)", model)
    if not m:
        raise SystemExit("psync_abuse: cannot compute the dimension of model %r" % model)
    layers = [inputs] + [int(h) for h in m.group(1).split(",")] + [classes]
    return sum(layers[i] * layers[i + 1] + layers[i + 1] for i in range(len(layers) - 1))


class WorkerSpec:
    def __init__(self, wid, workers, steps, base_s, judged=True, start_after=0.0, extra_allow=0.0, hard_s=60.0,
                 step_delay_ms=None):
        self.wid, self.workers, self.steps, self.base_s = wid, workers, steps, base_s
        self.judged, self.start_after, self.extra_allow, self.hard_s = judged, start_after, extra_allow, hard_s
        self.step_delay_ms = step_delay_ms
        self.proc = None
        self.limit = None


class Run:
    def __init__(self, ctx, label, policy, model=None, steps=None, timeout_ms=None, server_workers=2,
                 server_extra=()):
        a = ctx.args
        self.ctx, self.label, self.policy = ctx, label, policy
        self.model = model or a.model
        self.steps = steps or a.steps
        self.timeout_ms = timeout_ms or a.timeout_ms
        self.server_workers = server_workers
        self.server_extra = list(server_extra)
        self.host = "127.0.0.1"
        self.port = None
        self.dim = model_dimension(self.model, a.data)
        self.dir = tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9_-]", "_", label) + ".", dir=ctx.run_dir)
        self.server = None
        self.specs = []
        self.peak_kb = 0
        self.hwm_kb = 0
        self.rss_before_kb = None
        self.notes = []
        self.t_train_end = None
        self.t_first_worker = None
        self.aborted = None

    # -- processes --
    def common(self):
        a = self.ctx.args
        return ["--policy", self.policy, "--model", self.model, "--data", a.data, "--timeout-ms",
                str(self.timeout_ms), "--seed", str(a.seed), "--lr", str(a.lr)]

    def start_server(self):
        a = self.ctx.args
        argv = [a.bin, "--role", "server", "--server", "127.0.0.1:0", "--workers", str(self.server_workers)]
        argv += self.common() + ["--metrics", os.path.join(self.dir, "server.json")] + self.server_extra
        argv += self.ctx.server_args
        self.server = Proc("server", argv, self.dir, a.child_nofile)
        end = time.monotonic() + a.start_timeout_s
        while time.monotonic() < end:
            m = re.search(r"listening on (\S+):([0-9]+)\s*$", self.server.out(), re.M)
            if m:
                self.port = int(m.group(2))
                break
            if not self.server.running:
                break
            time.sleep(0.02)
        if self.port is None:
            raise CaseError("server did not print its port (rc %s): %s" % (self.server.poll(),
                                                                          " | ".join(self.server.tail())))
        m = re.search(r"\(([0-9]+) parameters\)", self.server.out())
        if m and int(m.group(1)) != self.dim:
            self.notes.append("server reports %s parameters, computed %d; using the server's" % (m.group(1), self.dim))
            self.dim = int(m.group(1))

    def start_worker(self, spec):
        a = self.ctx.args
        argv = [a.bin, "--role", "worker", "--server", "%s:%d" % (self.host, self.port), "--id", str(spec.wid),
                "--workers", str(spec.workers)] + self.common()
        delay = a.step_delay_ms if spec.step_delay_ms is None else spec.step_delay_ms
        argv += ["--steps", str(spec.steps), "--step-delay-ms", str(delay), "--batch", str(a.batch),
                 "--metrics", os.path.join(self.dir, "worker-%d.json" % spec.wid)] + self.ctx.worker_args
        spec.proc = Proc("worker-%d" % spec.wid, argv, self.dir, a.child_nofile)
        if spec.base_s is not None:
            spec.limit = max(a.time_factor * spec.base_s, spec.base_s + a.floor_s) + spec.extra_allow
        if self.t_first_worker is None:
            self.t_first_worker = spec.proc.t_start

    def sample(self):
        if self.server is None or self.server.poll() is not None:
            return None
        rss, hwm = proc_status(self.server.pid)
        if rss is not None:
            self.peak_kb = max(self.peak_kb, rss)
        if hwm is not None:
            self.hwm_kb = max(self.hwm_kb, hwm)
        return rss

    def wait_joined(self, ids, seconds):
        """Waits until the server's event log shows every id in `ids` joined or,
        failing that, until every worker has printed its "connected" line and
        --connected-grace-s more have passed; after `seconds` the attack starts anyway."""
        end = time.monotonic() + seconds
        t_connected = None
        while time.monotonic() < end:
            self.sample()
            seen = {int(x) for x in re.findall(r"worker ([0-9]+) joined", self.server.err())}
            if set(ids) <= seen:
                return True
            if not self.server.running:
                return False
            if t_connected is None and all(re.search(r"\bconnected\b", s.proc.out())
                                           for s in self.specs if s.proc is not None and s.wid in ids):
                t_connected = time.monotonic()
            if t_connected is not None and time.monotonic() - t_connected >= self.ctx.args.connected_grace_s:
                self.notes.append("joins not in the server log; attacked %.1f s after the workers' connected lines"
                                  % self.ctx.args.connected_grace_s)
                return False
            time.sleep(0.02)
        self.notes.append("the server log did not show workers %s joining within %.1f s" % (ids, seconds))
        return False

    def server_json(self):
        try:
            with open(os.path.join(self.dir, "server.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def accuracy(self):
        j = self.server_json()
        if j and isinstance(j.get("final_test_accuracy"), (int, float)):
            return float(j["final_test_accuracy"])
        m = re.search(r"final test accuracy ([0-9.]+)", self.server.out() if self.server else "")
        return float(m.group(1)) if m else None


class CaseError(Exception):
    pass


def run_cluster(ctx, run, specs, attack=None, phase="post", tick=None, attack_s=None, server_exit_s=None):
    """Runs the server, the workers in `specs` and the attack; returns the AttackReport.

    attack(run, rep, stop, ready) runs on its own thread. phase "pre": started
    before the workers, which start once it sets `ready` (or after --pre-wait-s);
    "post": started once the workers have joined. The attack is told to stop when
    every worker has exited or attack_s has passed; it then checks for a disconnect
    (--disconnect-deadline-s) and closes its sockets."""
    a = ctx.args
    attack_s = a.attack_s if attack_s is None else attack_s
    run.specs = specs
    rep = AttackReport()
    stop = threading.Event()
    ready = threading.Event()
    thread = None

    def attack_main():
        try:
            attack(run, rep, stop, ready)
        except Exception as e:  # an attacker bug must not look like a server failure
            rep.note("attacker raised %s: %s" % (type(e).__name__, e))
            ready.set()
        finally:
            rep.t_stop = time.monotonic()
            dl = time.monotonic() + a.disconnect_deadline_s
            for c in rep.conns:
                c.drain(dl)
            for c in rep.conns:
                c.close()

    def start_attack():
        nonlocal thread
        run.rss_before_kb = run.sample()
        rep.t_start = time.monotonic()
        thread = threading.Thread(target=attack_main, name="attack", daemon=True)
        thread.start()

    run.start_server()
    if attack is not None and phase == "pre":
        start_attack()
        ready.wait(a.pre_wait_s)
    for s in specs:
        if s.start_after == 0:
            run.start_worker(s)
    if attack is not None and phase == "post":
        run.wait_joined([s.wid for s in specs if s.proc is not None], a.join_wait_s)
        if all(not s.proc.running for s in specs if s.proc is not None):
            run.notes.append("the workers finished before the attack began")
        start_attack()
    if attack is None:
        run.rss_before_kb = run.sample()

    t_begin = run.t_first_worker
    abort_kb = a.rss_abort_mb * 1024
    while True:
        now = time.monotonic()
        rss = run.sample()
        if tick is not None:
            tick(run, now)
        for s in specs:
            if s.proc is None and now - t_begin >= s.start_after and run.server.running:
                run.start_worker(s)
        for s in specs:
            if s.proc is not None and s.proc.running:
                kill_at = s.proc.t_start + (s.limit if s.limit is not None else s.hard_s) + a.grace_s
                if now > kill_at:
                    s.proc.kill("past its deadline (%.1f s)" % (kill_at - s.proc.t_start))
        # A worker not started yet never will be once the server is gone.
        workers_done = all((s.proc is not None and not s.proc.running) or (s.proc is None and not run.server.running)
                           for s in specs)
        if rss is not None and rss > abort_kb and run.aborted is None:
            run.aborted = rss
            run.notes.append("server RSS %.0f MB passed --rss-abort-mb %d: attack stopped" % (rss / 1024, a.rss_abort_mb))
            stop.set()
        if rss is not None and rss > 2 * abort_kb:
            run.notes.append("server RSS %.0f MB passed 2 x --rss-abort-mb: server killed" % (rss / 1024))
            run.server.kill("RSS above 2 x --rss-abort-mb")
        if thread is not None and not stop.is_set() and (workers_done or now - rep.t_start > attack_s):
            stop.set()
        if workers_done and run.t_train_end is None:
            run.t_train_end = max([s.proc.t_end for s in specs if s.proc is not None] or [now])
        if run.t_train_end is None and not run.server.running:
            # The server is gone while workers still run: training is over for the attacker too.
            run.t_train_end = run.server.t_end
        if workers_done and (thread is None or not thread.is_alive()):
            break
        if thread is not None and thread.is_alive() and stop.is_set() and \
                now - (rep.t_stop or now) > a.disconnect_deadline_s + 10:
            run.notes.append("attacker thread did not finish")
            break
        time.sleep(0.05)

    # The server should now finish on its own.
    end = time.monotonic() + (a.server_exit_s if server_exit_s is None else server_exit_s)
    while run.server.running and time.monotonic() < end:
        run.sample()
        time.sleep(0.05)
    if run.server.running:
        run.server.terminate("did not exit within --server-exit-s after the workers")
    if run.t_train_end is None or (run.server.t_end is not None and run.server.t_end < run.t_train_end):
        run.t_train_end = run.server.t_end if run.t_train_end is None else min(run.t_train_end, run.server.t_end)
    return rep


# ---------------------------------------------------------------------------
# Results and verdicts
# ---------------------------------------------------------------------------

def mb(kb):
    return None if kb is None else round(kb / 1024.0, 1)


def evaluate(ctx, case, run, rep, expect_disconnect, check_accuracy=False, rss_checked=True):
    """Builds the result record and the verdict of one run."""
    a = ctx.args
    reasons = []
    peak_kb = max(run.peak_kb, run.hwm_kb)
    res = {
        "case": case, "policy": run.policy, "model": run.model, "dimension": run.dim,
        "rss_before_mb": mb(run.rss_before_kb), "rss_peak_mb": mb(peak_kb),
        "server_rc": run.server.rc, "server_killed": run.server.killed,
        "workers": [], "notes": list(run.notes) + list(rep.notes if rep else []),
        "run_dir": run.dir,
    }
    if rss_checked and peak_kb >= a.rss_limit_mb * 1024:
        reasons.append("server RSS %.0f MB >= %d" % (peak_kb / 1024.0, a.rss_limit_mb))
    ratios = []
    for s in run.specs:
        p = s.proc
        w = {"id": s.wid, "judged": s.judged, "steps": s.steps, "started": p is not None}
        if p is not None:
            w.update({"rc": p.rc, "time_s": None if p.wall is None else round(p.wall, 3), "killed": p.killed,
                      "baseline_s": None if s.base_s is None else round(s.base_s, 3),
                      "limit_s": None if s.limit is None else round(s.limit, 3),
                      "stderr_tail": p.tail(2) if p.rc != 0 else []})
            if p.wall is not None and s.base_s:
                w["ratio"] = round(p.wall / s.base_s, 2)
                if s.judged:
                    ratios.append(p.wall / s.base_s)
            if s.judged:
                if p.killed:
                    reasons.append("worker %d killed (%s)" % (s.wid, p.killed))
                elif p.rc != 0:
                    reasons.append("worker %d rc %s" % (s.wid, p.rc))
                elif s.limit is not None and p.wall > s.limit:
                    reasons.append("worker %d took %.1f s > %.1f s" % (s.wid, p.wall, s.limit))
        elif s.judged:
            reasons.append("worker %d never started (server gone)" % s.wid)
        res["workers"].append(w)
    res["time_ratio"] = round(max(ratios), 2) if ratios else None

    # The attacker: disconnected by the server while training was still going on.
    att = {"expected": expect_disconnect}
    if rep is not None and rep.conns:
        margin = a.disconnect_margin_s
        t_end = run.t_train_end if run.t_train_end is not None else float("inf")
        disc = [c for c in rep.conns if c.t_disc is not None and c.t_disc <= t_end - margin]
        att["connections"] = len(rep.conns)
        att["disconnected"] = len(disc)
        att["all_disconnected"] = len(disc) == len(rep.conns)
        first = None
        for c in rep.conns:
            e = c.first_error()
            if e is not None and (first is None or e.t < first.t):
                first = e
        if first is not None:
            att["error"] = {"code": first.fields[0], "name": ERROR_NAMES.get(first.fields[0], "?"),
                            "text": first.text, "after_s": round(first.t - rep.t_start, 3)}
        if disc:
            c0 = min(disc, key=lambda c: c.t_disc)
            att["how"] = c0.disc_how
            att["after_s"] = round(c0.t_disc - rep.t_start, 3)
        late = [c for c in rep.conns if c.t_disc is not None and c not in disc]
        if late:
            att["closed_at_server_end"] = len(late)
        att["bytes_sent"] = sum(c.bytes_sent for c in rep.conns)
        if expect_disconnect and not att["all_disconnected"]:
            if len(rep.conns) == 1:
                reasons.append("attacker not disconnected")
            else:
                reasons.append("attacker: %d of %d connections disconnected" % (len(disc), len(rep.conns)))
    res["attacker"] = att

    if run.server.killed:
        reasons.append("server killed (%s)" % run.server.killed)
    elif run.server.rc != 0:
        reasons.append("server rc %s" % run.server.rc)

    acc = run.accuracy()
    res["accuracy"] = acc
    base_acc = ctx.baseline_accuracy.get((run.policy, run.model))
    res["baseline_accuracy"] = base_acc
    if check_accuracy:
        if acc is None:
            reasons.append("no final accuracy reported")
        elif base_acc is not None and acc < base_acc - a.accuracy_tolerance:
            reasons.append("accuracy %.3f < baseline %.3f - %.2f" % (acc, base_acc, a.accuracy_tolerance))
    if run.aborted:
        res["aborted_at_rss_mb"] = mb(run.aborted)
    res["reasons"] = reasons
    res["verdict"] = "PASS" if not reasons else "FAIL"
    return res


def disc_text(att):
    if "connections" not in att:
        return "-"
    if att["connections"] > 1:
        s = "%d/%d" % (att["disconnected"], att["connections"])
    else:
        s = "yes" if att["disconnected"] else "no"
    if "error" in att:
        s += " (Error %d %s)" % (att["error"]["code"], att["error"]["name"])
    if not att["expected"]:
        s += " [n/a]"
    return s


def print_case_line(res):
    ws = ", ".join("w%d rc=%s %s" % (w["id"], w.get("rc"), "%.2fs" % w["time_s"] if w.get("time_s") is not None
                                     else "-") + ("" if w["judged"] else "(not judged)") for w in res["workers"])
    line = "[%s] %s: server RSS %s -> peak %s MB; %s; %s; attacker disconnected: %s; server rc %s; %s" % (
        res["case"], res["policy"], res["rss_before_mb"], res["rss_peak_mb"], ws,
        "-" if res["time_ratio"] is None else "%.2fx baseline" % res["time_ratio"],
        disc_text(res["attacker"]), res["server_rc"], res["verdict"])
    if res["reasons"]:
        line += " (" + "; ".join(res["reasons"]) + ")"
    print(line, flush=True)
    att = res["attacker"]
    if "error" in att:
        e = att["error"]
        print("    attacker got (read %.2f s into the attack): Error %d %s: %s" % (e["after_s"], e["code"], e["name"],
                                                                                 e["text"]))
    if "how" in att:
        print("    disconnected after %.2f s: %s" % (att["after_s"], att["how"]))
    if att.get("closed_at_server_end"):
        print("    %d connection(s) closed only when the server finished" % att["closed_at_server_end"])
    if res.get("accuracy") is not None:
        print("    final accuracy %.4f (baseline %s)" % (res["accuracy"], res["baseline_accuracy"]))
    for n in res["notes"]:
        print("    " + n)
    for w in res["workers"]:
        for l in w.get("stderr_tail", []):
            print("    worker %d: %s" % (w["id"], l[:300]))


# ---------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------

def measure_baseline(ctx, policy, model):
    a = ctx.args
    key = (policy, model)
    name = policy if model == a.model else "%s, %s" % (policy, model)
    times, accs, peaks = [], [], []
    for i in range(a.baseline_runs):
        for attempt in range(2):
            run = Run(ctx, "baseline-%s-%s-%d" % (policy, model, i), policy, model=model)
            specs = [WorkerSpec(w, 2, a.steps, None) for w in range(2)]
            try:
                run_cluster(ctx, run, specs)
            except CaseError as e:
                err = str(e)
            else:
                ok = all(s.proc.rc == 0 for s in specs) and run.server.rc == 0
                if ok:
                    times.append(max(s.proc.wall for s in specs))
                    accs.append(run.accuracy())
                    peaks.append(max(run.peak_kb, run.hwm_kb))
                    break
                err = "rc server %s workers %s: %s" % (run.server.rc, [s.proc.rc for s in specs],
                                                       " | ".join(sum((s.proc.tail(1) for s in specs), [])))
            kill_all_children()
            print("baseline %s failed (%s)%s" % (name, err, ", retrying" if attempt == 0 else ""), flush=True)
        else:
            ctx.baseline_failed[key] = err
            raise CaseError("the unattacked baseline under %s failed: %s" % (name, err))
    base = min(times)  # the least disturbed run
    ctx.baseline[key] = base
    ctx.baseline_accuracy[key] = accs[times.index(base)]
    ctx.baseline_rss[key] = mb(max(peaks))
    print("baseline %s: workers %.2f s (runs: %s), accuracy %s, server peak RSS %s MB" % (
        name, base, ", ".join("%.2f" % t for t in times), ctx.baseline_accuracy[key], mb(max(peaks))), flush=True)
    return base


def baseline(ctx, policy, model=None):
    """The unattacked workers' time under `policy` (and `model`, default --model)."""
    key = (policy, model or ctx.args.model)
    if key in ctx.baseline_failed:
        raise CaseError("the unattacked baseline under %s failed: %s" % (policy, ctx.baseline_failed[key]))
    if key not in ctx.baseline:
        measure_baseline(ctx, *key)
    return ctx.baseline[key]


# ---------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------

def standard(ctx, case, policy, attack, phase="post", expect_disconnect=True, check_accuracy=False, model=None):
    """Two real workers (ids 0, 1) and one attack."""
    model = model or ctx.args.model
    base = baseline(ctx, policy, model)
    run = Run(ctx, "%s-%s-%s" % (case, policy, model), policy, model=model)
    specs = [WorkerSpec(w, 2, ctx.args.steps, base) for w in range(2)]
    rep = run_cluster(ctx, run, specs, attack=attack, phase=phase)
    label = case if model == ctx.args.model else "%s [%s]" % (case, model)
    return evaluate(ctx, label, run, rep, expect_disconnect and case not in ctx.disconnect_optional,
                    check_accuracy=check_accuracy)


def flood_models(ctx):
    """--model, then each of --flood-extra-models: message-count and byte-size attacks differ."""
    extra = [m for m in split_list(ctx.args.flood_extra_models) if m != ctx.args.model]
    return [ctx.args.model] + extra


def attack_flood_push(run, rep, stop, ready):
    """Joins as a fresh id, then sends valid Pushes (consecutive clocks, zero update)
    as fast as it can without reading."""
    a = run.ctx.args
    c = join(run, rep, a.attacker_id, "flood")
    if not c.alive:
        return
    update = bytes(4 * run.dim)
    one = push_frame(a.attacker_id, 0, c.version, 1, update)
    n = max(1, a.flood_batch)
    batch = bytearray(one * n)
    clock = c.clock
    hard = None
    while not stop.is_set() and c.alive:
        for k in range(n):
            struct.pack_into("<Q", batch, k * len(one) + HEADER.size, clock + k)
        hard = time.monotonic() + 5.0
        if not c.send_all(batch, stop, hard):
            break
        c.frames_sent += n
        clock += n
        if (clock // n) % 16 == 0:
            c.poll_closed()
    rep.note("flood: %d push frames (%.1f MB) sent" % (c.frames_sent - 1, c.bytes_sent / 1e6))


def attack_no_read(run, rep, stop, ready):
    """Joins, then pushes valid updates at consecutive clocks (answered at once under
    asp) and never reads the Model replies."""
    a = run.ctx.args
    c = join(run, rep, a.attacker_id, "no-read")
    if not c.alive:
        return
    update = bytes(4 * run.dim)
    one = push_frame(a.attacker_id, 0, c.version, 1, update)
    n = max(1, a.no_read_batch)
    batch = bytearray(one * n)
    clock = c.clock
    while not stop.is_set() and c.alive:
        for k in range(n):
            struct.pack_into("<Q", batch, k * len(one) + HEADER.size, clock + k)
        if not c.send_all(batch, stop, time.monotonic() + 5.0):
            break
        c.frames_sent += n
        clock += n
        c.poll_closed()
        if a.no_read_interval_ms > 0:
            stop.wait(a.no_read_interval_ms / 1000.0)
    rep.note("no-read: %d push frames (%.1f MB) sent, none of the replies read" % (c.frames_sent - 1,
                                                                                   c.bytes_sent / 1e6))


def attack_pull_huge_clock(run, rep, stop, ready):
    """Joins, then sends Pull{clock 2^60, buffer = dimension} in a loop without reading."""
    a = run.ctx.args
    c = join(run, rep, a.attacker_id, "pull")
    if not c.alive:
        return
    one = pull_frame(a.attacker_id, a.pull_clock, run.dim)
    n = max(1, a.pull_batch)
    batch = one * n
    while not stop.is_set() and c.alive:
        if not c.send_all(batch, stop, time.monotonic() + 5.0):
            break
        c.frames_sent += n
        c.poll_closed()
    rep.note("pull: %d Pull frames with clock %d (%.1f MB) sent" % (c.frames_sent - 1, a.pull_clock,
                                                                    c.bytes_sent / 1e6))


def attack_stall(run, rep, stop, ready):
    """One Join, one Pull with clock 2^60, then idle (reading, so a disconnect is seen)."""
    a = run.ctx.args
    c = join(run, rep, a.attacker_id, "stall")
    if not c.alive:
        return
    if c.send_all(pull_frame(a.attacker_id, a.pull_clock, run.dim)):
        c.frames_sent += 1
    while not stop.is_set() and c.alive:
        c.read_for(0.1)


def attack_prejoin_partial(run, rep, stop, ready):
    """N connections that never join: each sends a Push header announcing a large
    payload and all of it but the last byte, then idles."""
    a = run.ctx.args
    payload = min(a.prejoin_payload_mb << 20, MAX_PAYLOAD_DEFAULT)
    count = (payload - PUSH_FIXED.size) // 4
    payload = PUSH_FIXED.size + 4 * count
    chunk = bytes(1 << 20)
    for i in range(a.prejoin_conns):
        if stop.is_set():
            break
        c = Conn(run.host, run.port, "prejoin-%d" % i)
        rep.conns.append(c)
        sender = a.attacker_id + 100 + i
        head = HEADER.pack(MAGIC, PROTOCOL_VERSION, T_PUSH, 0, sender, payload) + PUSH_FIXED.pack(0, 0, 1, 0, count)
        if not c.send_all(head, None, time.monotonic() + 5):
            continue
        left = payload - PUSH_FIXED.size - 1
        deadline = time.monotonic() + 10
        while left > 0 and c.alive and not stop.is_set():
            k = min(left, len(chunk))
            if not c.send_all(memoryview(chunk)[:k], None, deadline):
                break
            left -= k
            c._recv_into_parser(0)  # an early Error frame, before a reset discards it
        c.frames_sent += 1
    rep.note("prejoin: %d connections, each announced a push of %d bytes and sent %.1f MB in all" % (
        len(rep.conns), payload, sum(c.bytes_sent for c in rep.conns) / 1e6))
    ready.set()
    while not stop.is_set() and any(c.alive for c in rep.conns):
        for c in rep.conns:
            if c.alive:
                c._recv_into_parser(0)
        stop.wait(0.05)


def attack_idle_conns(run, rep, stop, ready):
    """Opens N idle connections (half before the workers start, the rest while they do)."""
    a = run.ctx.args
    failed = 0
    first_failure = None
    for i in range(a.idle_conns):
        if stop.is_set():
            break
        c = Conn(run.host, run.port, "idle-%d" % i, connect_timeout=2.0)
        rep.conns.append(c)
        if not c.alive:
            failed += 1
            first_failure = first_failure or c.disc_how
        if i + 1 == int(a.idle_conns * a.idle_ready_fraction):
            ready.set()
    ready.set()
    rep.note("idle: %d connections opened (%d failed to connect%s)" % (
        len(rep.conns) - failed, failed, ": " + first_failure if first_failure else ""))
    p = select.poll()
    by_fd = {}
    for c in rep.conns:
        if c.alive:
            p.register(c.sock, select.POLLIN)
            by_fd[c.sock.fileno()] = c
    while not stop.is_set() and by_fd:
        for fd, _ in p.poll(100):
            c = by_fd.get(fd)
            if c is not None:
                c._recv_into_parser(0)
                if not c.alive:
                    p.unregister(fd)
                    del by_fd[fd]


def push_loop(run, rep, stop, label, make_update, keep_models=False):
    """Joins, then pushes make_update(i, latest Model frame) every --push-interval-ms,
    reading each reply."""
    a = run.ctx.args
    c = join(run, rep, a.attacker_id, label, keep_models=keep_models)
    if not c.alive:
        return c
    i = 0
    accepted = refused = 0
    latest = c.join_reply
    nxt = time.monotonic()
    while not stop.is_set() and c.alive:
        if not c.send_all(push_frame(a.attacker_id, c.clock, c.version, 1, make_update(i, latest))):
            break
        c.frames_sent += 1
        f = c.read_until((T_MODEL, T_ERROR), time.monotonic() + 2.0)
        if f is not None and f.type == T_MODEL:
            accepted += 1
            latest = f
            c.version = f.fields[0]
            c.clock += 1
        elif f is not None:
            refused += 1
        i += 1
        nxt += a.push_interval_ms / 1000.0
        stop.wait(max(0.0, nxt - time.monotonic()))
    rep.note("%s: %d pushes, %d answered with a Model, %d with an Error" % (label, i, accepted, refused))
    return c


def attack_overwrite(run, rep, stop, ready):
    """Joins, then every --push-interval-ms pushes `bad - current`, current being the
    parameters of its last Model reply: under asp (model += update) that replaces the
    model with `bad`, a dead network (all zero) whose last bias says class 0."""
    a = run.ctx.args
    bad = [0.0] * run.dim
    bad[run.dim - data_classes(a.data)] = a.overwrite_bias  # parameters end with the output bias

    def update(i, latest):
        if latest is None or latest.body is None or len(latest.body) != 4 * run.dim:
            return floats_le(bad)
        cur = array.array("f")
        cur.frombytes(latest.body)
        if sys.byteorder != "little":
            cur.byteswap()
        return floats_le([b - x if math.isfinite(x) else 0.0 for b, x in zip(bad, cur)])

    push_loop(run, rep, stop, "overwrite", update, keep_models=True)


def attack_nan(run, rep, stop, ready):
    n = run.dim
    nan, inf = float("nan"), float("inf")
    patterns = [floats_le([nan] * n), floats_le([inf] * n), floats_le([0.0] * (n - 1) + [nan]),
                floats_le([-inf] + [0.0] * (n - 1))]
    push_loop(run, rep, stop, "nan", lambda i, latest: patterns[i % len(patterns)])


def attack_id_squat(run, rep, stop, ready):
    """Connects before the real workers and joins as worker 0, then idles (reading)."""
    c = join(run, rep, 0, "id-squat", read_reply=False)
    if c.alive:
        c.read_for(0.3)  # let the server take the join before the real worker 0 arrives
    ready.set()
    while not stop.is_set() and c.alive:
        for f in c._recv_into_parser(0.1):
            if f.type == T_MODEL and c.join_reply is None:
                c.join_reply = f
                rep.note("squatter's join as worker 0 accepted: %s" % f.describe())


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def one_policy(ctx, default):
    return ctx.args.policy or default


def case_flood_push(ctx):
    return [standard(ctx, "flood-push", one_policy(ctx, "bsp"), attack_flood_push, model=m) for m in flood_models(ctx)]


def case_no_read(ctx):
    return [standard(ctx, "no-read", one_policy(ctx, ctx.args.no_read_policy), attack_no_read, model=m)
            for m in flood_models(ctx)]


def case_pull_huge_clock(ctx):
    return [standard(ctx, "pull-huge-clock", one_policy(ctx, "bsp"), attack_pull_huge_clock, model=m)
            for m in flood_models(ctx)]


def case_stall(ctx):
    return [standard(ctx, "stall", one_policy(ctx, "bsp"), attack_stall)]


def case_prejoin_partial(ctx):
    return [standard(ctx, "prejoin-partial", one_policy(ctx, "bsp"), attack_prejoin_partial, phase="pre")]


def case_idle_conns(ctx):
    return [standard(ctx, "idle-conns", one_policy(ctx, "bsp"), attack_idle_conns, phase="pre",
                     expect_disconnect=False)]


def case_overwrite(ctx):
    return [standard(ctx, "overwrite", one_policy(ctx, ctx.args.poison_policy), attack_overwrite,
                     check_accuracy=True)]


def case_nan(ctx):
    return [standard(ctx, "nan", one_policy(ctx, ctx.args.poison_policy), attack_nan, check_accuracy=True)]


def case_id_squat(ctx):
    return [standard(ctx, "id-squat", one_policy(ctx, "bsp"), attack_id_squat, phase="pre")]


def case_sigstop(ctx):
    a = ctx.args
    out = []
    for policy in split_list(a.sigstop_policies):
        base = baseline(ctx, policy)
        run = Run(ctx, "sigstop-" + policy, policy, timeout_ms=a.sigstop_timeout_ms)
        healthy = WorkerSpec(0, 2, a.steps, base, extra_allow=a.sigstop_timeout_ms / 1000.0 + a.sigstop_nudge_s)
        frozen = WorkerSpec(1, 2, a.steps, base, judged=False, extra_allow=a.sigstop_s + a.sigstop_timeout_ms / 1000.0)
        state = {"stopped": None, "continued": None, "nudged": None, "unnudged": None}
        # When the server drops the frozen worker (its last message + timeout, at most
        # `stopped` + timeout), the healthy worker is paused for --sigstop-nudge-s, far
        # below the timeout: its read was held until then, so it must not be judged by
        # its last message. Without the pause that bug shows only when the healthy
        # worker's next push loses a race of a few ms.
        nudge_at = a.sigstop_timeout_ms / 1000.0 - a.sigstop_nudge_s / 2

        def tick(run, now, state=state, frozen=frozen, healthy=healthy):
            p = frozen.proc
            h = healthy.proc
            if p is None:
                return
            if state["stopped"] is None and p.running and now - p.t_start >= a.sigstop_after_s:
                p.signal(signal.SIGSTOP)
                state["stopped"] = now
            elif state["stopped"] is not None and state["continued"] is None and now - state["stopped"] >= a.sigstop_s:
                p.signal(signal.SIGCONT)
                state["continued"] = now
            if a.sigstop_nudge_s > 0 and state["stopped"] is not None and h is not None and h.running:
                if state["nudged"] is None and now - state["stopped"] >= nudge_at:
                    h.signal(signal.SIGSTOP)
                    state["nudged"] = now
                elif state["nudged"] is not None and state["unnudged"] is None and \
                        now - state["nudged"] >= a.sigstop_nudge_s:
                    h.signal(signal.SIGCONT)
                    state["unnudged"] = now

        run_cluster(ctx, run, [healthy, frozen], tick=tick)
        if state["stopped"] is None:
            run.notes.append("worker 1 finished before it could be stopped")
        else:
            run.notes.append("worker 1 stopped %.2f s after its start for %.1f s (server timeout %d ms)" % (
                state["stopped"] - frozen.proc.t_start, a.sigstop_s, a.sigstop_timeout_ms))
        if state["nudged"] is not None:
            run.notes.append("healthy worker 0 paused %.2f s from %.2f s after worker 1 stopped" % (
                (state["unnudged"] or state["nudged"]) - state["nudged"], state["nudged"] - state["stopped"]))
        out.append(evaluate(ctx, "sigstop", run, None, False))
    return out


def case_late_join(ctx):
    a = ctx.args
    out = []
    for policy in split_list(a.late_join_policies):
        base = baseline(ctx, policy)
        factor = max(2, int(math.ceil((a.late_delay_s + base + 0.5) / base)))
        run = Run(ctx, "late-join-" + policy, policy, server_workers=2)
        specs = [WorkerSpec(0, 3, a.steps * factor, base * factor), WorkerSpec(1, 3, a.steps * factor, base * factor),
                 WorkerSpec(2, 3, a.steps, base, start_after=a.late_delay_s)]
        run_cluster(ctx, run, specs)
        run.notes.append("server --workers 2; workers 0, 1 run %d steps (baseline scaled x%d), worker 2 runs %d "
                         "steps and starts %.1f s later (all workers --workers 3)" % (a.steps * factor, factor,
                                                                                     a.steps, a.late_delay_s))
        m = re.search(r"worker 2 joined at clock ([0-9]+)", run.server.err())
        if m:
            run.notes.append("server log: worker 2 joined at clock %s" % m.group(1))
        out.append(evaluate(ctx, "late-join", run, None, False))
    return out


def case_big_model(ctx):
    """A model larger than the frame limit: must fail fast at start-up naming the limit, or work."""
    a = ctx.args
    policy = one_policy(ctx, "bsp")
    # --quiet: without it the server evaluates this model on 1000 samples every second.
    run = Run(ctx, "big-model", policy, model=a.big_model, steps=a.big_model_steps, timeout_ms=a.big_model_timeout_ms,
              server_extra=["--quiet"])
    specs = [WorkerSpec(w, 2, a.big_model_steps, None, judged=False, hard_s=a.big_model_deadline_s) for w in range(2)]
    saved = a.rss_abort_mb
    a.rss_abort_mb = a.big_model_rss_abort_mb
    early = None
    try:
        run_cluster(ctx, run, specs, server_exit_s=a.big_model_deadline_s)
    except CaseError as e:  # the server exited before listening: fine if it named the limit
        early = str(e)
        end = time.monotonic() + 10
        while run.server.running and time.monotonic() < end:
            time.sleep(0.05)
        if run.server.running:
            run.server.kill("did not exit after failing to start")
    finally:
        a.rss_abort_mb = saved
    res = evaluate(ctx, "big-model", run, None, False, rss_checked=False)
    limit_re = re.compile(r"limit", re.I)
    j = run.server_json() or {}
    steps_applied = j.get("steps_applied")
    server_err = run.server.err()
    started = [s for s in specs if s.proc is not None]
    # The server runs --quiet here: its joins are in its metrics, not its log.
    joined_any = bool(j.get("peers")) or re.search(r"worker [0-9]+ joined", server_err) is not None
    server_fast = run.server.rc not in (0, None) and run.server.wall is not None and \
        run.server.wall <= a.big_model_fast_s and limit_re.search(server_err) is not None
    workers_fast = bool(started) and len(started) == len(specs) and all(
        s.proc.rc not in (0, None) and s.proc.wall <= a.big_model_fast_s and limit_re.search(s.proc.err())
        for s in specs) and not joined_any
    works = len(started) == len(specs) and all(s.proc.rc == 0 for s in specs) and run.server.rc == 0 and \
        (steps_applied or 0) >= len(specs) * a.big_model_steps
    reasons = []
    if works:
        outcome = "works (%s steps applied)" % steps_applied
    elif server_fast:
        outcome = "server fails fast at start-up naming the limit (%.1f s)" % run.server.wall
    elif workers_fast:
        outcome = "workers fail fast before joining, naming the limit"
    else:
        outcome = "neither works nor fails fast"
        reasons.append("big model: rc server %s, workers %s, steps applied %s, server %.1f s" % (
            run.server.rc if not run.server.killed else "killed", [s.proc.rc if s.proc else None for s in specs],
            steps_applied, run.server.wall or -1))
    res["big_model_outcome"] = outcome
    res["notes"].insert(0, "model %s: %d parameters (%.0f MB); %s" % (a.big_model, run.dim, run.dim * 4 / 1e6, outcome))
    if early:
        res["notes"].append("server: " + early)
    lines = [l for l in server_err.splitlines() if limit_re.search(l)]
    if lines:
        res["notes"].append("server: " + lines[0][:300])
    res["reasons"] = reasons
    res["verdict"] = "PASS" if not reasons else "FAIL"
    return [res]


CASES = [
    ("flood-push", case_flood_push),
    ("no-read", case_no_read),
    ("pull-huge-clock", case_pull_huge_clock),
    ("stall", case_stall),
    ("prejoin-partial", case_prejoin_partial),
    ("idle-conns", case_idle_conns),
    ("overwrite", case_overwrite),
    ("nan", case_nan),
    ("id-squat", case_id_squat),
    ("sigstop", case_sigstop),
    ("late-join", case_late_join),
    ("big-model", case_big_model),
]


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def split_list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


class Ctx:
    def __init__(self, args):
        self.args = args
        self.baseline = {}
        self.baseline_accuracy = {}
        self.baseline_rss = {}
        self.baseline_failed = {}
        self.server_args = shlex.split(args.server_args)
        self.worker_args = shlex.split(args.worker_args)
        self.disconnect_optional = set(split_list(args.disconnect_optional))
        self.run_dir = None


def parse_args(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    default_bin = os.environ.get("PSYNC_TRAIN") or os.path.join(root, "build", "tools", "psync-train")
    p = argparse.ArgumentParser(
        description="Attacks a real psync-train server while two real workers train (issue 10).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--bin", default=default_bin, help="psync-train binary (or $PSYNC_TRAIN)")
    g.add_argument("--cases", default="all", help="comma-separated case names, or all (see --list)")
    g.add_argument("--list", action="store_true", help="list the cases and exit")
    g.add_argument("--repeat", type=int, default=1, help="run the selected cases this many times (races)")
    g.add_argument("--json", help="write the results to this file")
    g.add_argument("--markdown", help="write the results table as markdown (a README block) to this file")
    g.add_argument("--keep", action="store_true", help="keep the run directory (process logs and metrics)")
    g.add_argument("--server-args", default="", help="extra psync-train arguments for the server (shell words)")
    g.add_argument("--worker-args", default="", help="extra psync-train arguments for the real workers")
    g.add_argument("--secret-file", help="pass --secret-file FILE to the server and the real workers (never to the "
                   "attacker); needs a psync-train with authentication (issue 10)")
    g.add_argument("--auth", action="store_true", help="as --secret-file, with a fresh random secret in the run directory")
    g = p.add_argument_group("cluster")
    g.add_argument("--policy", help="policy for every single-policy case (default: per case)")
    g.add_argument("--model", default="mlp:256", help="psync-train --model (mlp:256: 6404 floats, 25 KB a vector)")
    g.add_argument("--flood-extra-models", default="softmax",
                   help="flood-push, no-read, pull-huge-clock also run with these (softmax: 84 floats, many small "
                        "messages); empty: none")
    g.add_argument("--data", default="synthetic", choices=["synthetic", "fashion-mnist"])
    g.add_argument("--steps", type=int, default=300, help="steps per real worker")
    g.add_argument("--step-delay-ms", type=int, default=4, help="worker --step-delay-ms (makes runs ~1.5 s)")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--lr", default="0.1")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--timeout-ms", type=int, default=3000, help="psync-train --timeout-ms (server and workers)")
    g.add_argument("--child-nofile", type=int, default=1024,
                   help="soft RLIMIT_NOFILE of the server and workers (the usual default); 0: inherit this script's")
    g.add_argument("--baseline-runs", type=int, default=2, help="unattacked runs per policy (the fastest counts)")
    g.add_argument("--start-timeout-s", type=float, default=20)
    g = p.add_argument_group("verdict")
    g.add_argument("--rss-limit-mb", type=float, default=256)
    g.add_argument("--time-factor", type=float, default=2.0, help="worker time limit: factor x baseline ...")
    g.add_argument("--floor-s", type=float, default=5.0, help="... or baseline + this, whichever is larger")
    g.add_argument("--accuracy-tolerance", type=float, default=0.05, help="overwrite, nan: accuracy drop allowed")
    g.add_argument("--disconnect-optional", default="",
                   help="cases where the attacker need not be disconnected (idle-conns never requires it)")
    g.add_argument("--disconnect-deadline-s", type=float, default=2.0,
                   help="after the attack, how long the attacker waits for EOF/reset")
    g.add_argument("--disconnect-margin-s", type=float, default=0.25,
                   help="a disconnect counts only if seen this long before training ended")
    g = p.add_argument_group("attacks")
    g.add_argument("--attack-s", type=float, default=6.0, help="longest attack (it also stops when the workers exit)")
    g.add_argument("--attacker-id", type=int, default=7, help="worker id of a joined attacker")
    g.add_argument("--join-reply-s", type=float, default=2.0, help="attacker's wait for its join reply")
    g.add_argument("--join-wait-s", type=float, default=3.0, help="wait for the real workers' joins in the log")
    g.add_argument("--connected-grace-s", type=float, default=0.2,
                   help="without join lines in the server log: attack this long after the workers connected")
    g.add_argument("--pre-wait-s", type=float, default=15.0, help="longest wait for a pre-join attack to be ready")
    g.add_argument("--grace-s", type=float, default=5.0, help="workers are killed this long past their limit")
    g.add_argument("--server-exit-s", type=float, default=8.0, help="wait for the server to exit after the workers")
    g.add_argument("--rss-abort-mb", type=int, default=1536,
                   help="stop the attack when the server passes this (and kill it at twice this)")
    g.add_argument("--flood-batch", type=int, default=64, help="flood-push: frames per send")
    g.add_argument("--no-read-policy", default="asp", help="no-read: policy (asp answers every push at once)")
    g.add_argument("--no-read-batch", type=int, default=16)
    g.add_argument("--no-read-interval-ms", type=float, default=0)
    g.add_argument("--pull-clock", type=int, default=1 << 60)
    g.add_argument("--pull-batch", type=int, default=1024)
    g.add_argument("--prejoin-conns", type=int, default=20)
    g.add_argument("--prejoin-payload-mb", type=int, default=64, help="announced push payload (capped at 64 MiB)")
    g.add_argument("--idle-conns", type=int, default=1100)
    g.add_argument("--idle-ready-fraction", type=float, default=1.0,
                   help="idle-conns: start the workers once this fraction is open (the rest open meanwhile)")
    g.add_argument("--poison-policy", default="asp", help="overwrite, nan: policy")
    g.add_argument("--push-interval-ms", type=float, default=10, help="overwrite, nan: one push every ...")
    g.add_argument("--overwrite-bias", type=float, default=1000.0,
                   help="overwrite: the planted model's class-0 output bias (every other parameter 0)")
    g.add_argument("--sigstop-policies", default="bsp,ssp:3,osp:20")
    g.add_argument("--sigstop-timeout-ms", type=int, default=3000, help="sigstop: server/worker --timeout-ms")
    g.add_argument("--sigstop-after-s", type=float, default=0.5, help="sigstop: stop worker 1 this long after start")
    g.add_argument("--sigstop-s", type=float, default=5.0, help="sigstop: how long worker 1 stays stopped")
    g.add_argument("--sigstop-nudge-s", type=float, default=0.6,
                   help="sigstop: pause the healthy worker this long around the frozen one's expiry (0: never)")
    g.add_argument("--late-join-policies", default="bsp,asp,ssp:3,osp:20,losp:20")
    g.add_argument("--late-delay-s", type=float, default=2.0, help="late-join: worker 2 starts this much later")
    g.add_argument("--big-model", default="mlp:4096,16384")
    g.add_argument("--big-model-steps", type=int, default=3)
    g.add_argument("--big-model-timeout-ms", type=int, default=30000)
    g.add_argument("--big-model-fast-s", type=float, default=15.0, help="big-model: 'fails fast' means within this")
    g.add_argument("--big-model-deadline-s", type=float, default=90.0)
    g.add_argument("--big-model-rss-abort-mb", type=int, default=6144)
    args = p.parse_args(argv)
    if args.list:
        return args
    names = [n for n, _ in CASES]
    if args.cases == "all":
        args.case_list = names
    else:
        args.case_list = split_list(args.cases)
        unknown = [c for c in args.case_list if c not in names]
        if unknown:
            p.error("unknown case(s) %s; known: %s" % (", ".join(unknown), ", ".join(names)))
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        p.error("psync-train not found at %s (build it, or pass --bin / PSYNC_TRAIN)" % args.bin)
    return args


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def table_lines(results):
    head = ["case", "policy", "RSS before/peak MB", "workers rc", "time vs base", "attacker disconnected",
            "server rc", "verdict"]
    rows = []
    for r in results:
        rcs = ",".join(("%s" % w.get("rc")) + ("" if w["judged"] else "*") for w in r["workers"])
        dash = lambda v: "-" if v is None else str(v)
        rows.append([r["case"], r["policy"], "%s / %s" % (dash(r["rss_before_mb"]), dash(r["rss_peak_mb"])),
                     rcs or "-", "-" if r["time_ratio"] is None else "%.2fx" % r["time_ratio"],
                     disc_text(r["attacker"]), dash(r["server_rc"]) + (" (killed)" if r["server_killed"] else ""),
                     r["verdict"]])
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) for i in range(len(head))]
    fmt = "| " + " | ".join("%%-%ds" % w for w in widths) + " |"
    lines = [fmt % tuple(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt % tuple(row) for row in rows]
    lines.append("(* = worker not judged: the SIGSTOPped one, big-model's; [n/a] = disconnect not required)")
    return lines


def print_table(results):
    for line in table_lines(results):
        print(line)


def command_flags():
    """This run's flags as scripts/abuse.sh passes them: all but the binary and output paths."""
    out, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--bin", "--json", "--markdown"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return "".join(" " + a for a in out)


def write_markdown(path, args, results, passed, failed, elapsed):
    """The table as a README block: what ran, when, on what, and the verdicts."""
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["### Abuse test: attacks on a real `psync-train` server (issue 10)", ""]
    lines += table_lines(results)
    lines += ["",
              "%d passed, %d failed in %.0f s; %s, %d CPUs, load average %.1f at the end; %s. "
              "Server peak RSS limit %d MB; real workers must exit 0 within max(%.0fx, +%.0f s) of an "
              "unattacked run. Command: `scripts/abuse.sh%s`." % (
                  passed, failed, elapsed, when, os.cpu_count() or 0, load,
                  "authenticated workers (--auth)" if (args.auth or args.secret_file) else "no authentication",
                  args.rss_limit_mb, args.time_factor, args.floor_s, command_flags())]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for n, f in CASES:
            print(n)
        return 0
    signal.signal(signal.SIGTERM, on_sigterm)
    need = args.idle_conns + args.prejoin_conns + 256
    have = raise_nofile(need)
    if have < need:
        print("psync_abuse: RLIMIT_NOFILE is %d, below the %d idle-conns needs" % (have, need), flush=True)
    ctx = Ctx(args)
    ctx.run_dir = tempfile.mkdtemp(prefix="psync-abuse.")
    secret = args.secret_file
    if args.auth and not secret:
        secret = os.path.join(ctx.run_dir, "secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    if secret:
        ctx.server_args += ["--secret-file", secret]
        ctx.worker_args += ["--secret-file", secret]
    print("psync_abuse: %s; cases %s; run directory %s" % (args.bin, ",".join(args.case_list), ctx.run_dir),
          flush=True)
    results = []
    t0 = time.monotonic()
    interrupted = False
    try:
        for name, fn in [(n, f) for _ in range(max(1, args.repeat)) for n, f in CASES]:
            if name not in args.case_list:
                continue
            try:
                for res in fn(ctx):
                    results.append(res)
                    print_case_line(res)
            except CaseError as e:
                res = {"case": name, "policy": "-", "rss_before_mb": None, "rss_peak_mb": None, "workers": [],
                       "time_ratio": None, "attacker": {"expected": False}, "server_rc": None,
                       "server_killed": None, "verdict": "FAIL", "reasons": ["could not run: %s" % e], "notes": []}
                results.append(res)
                print("[%s] FAIL: could not run: %s" % (name, e), flush=True)
            finally:
                kill_all_children()
    except KeyboardInterrupt:
        interrupted = True
        print("psync_abuse: interrupted; killing the processes it started", flush=True)
    finally:
        kill_all_children()
    elapsed = time.monotonic() - t0
    print()
    if results:
        print_table(results)
    passed = sum(1 for r in results if r["verdict"] == "PASS")
    failed = len(results) - passed
    if args.json:
        doc = {"binary": args.bin, "command": " ".join(shlex.quote(x) for x in sys.argv), "elapsed_s": round(elapsed, 1),
               "settings": {k: v for k, v in vars(args).items() if k not in ("list",)},
               "baselines": [{"policy": k[0], "model": k[1], "worker_s": round(t, 3),
                              "accuracy": ctx.baseline_accuracy.get(k), "server_peak_rss_mb": ctx.baseline_rss.get(k)}
                             for k, t in ctx.baseline.items()],
               "results": results, "passed": passed, "failed": failed, "interrupted": interrupted}
        with open(args.json + ".tmp", "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    if args.markdown and results:
        write_markdown(args.markdown, args, results, passed, failed, elapsed)
    if args.keep:
        print("run directory kept: %s" % ctx.run_dir)
    else:
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
    print("elapsed %.0f s" % elapsed)
    print("%d passed, %d failed" % (passed, failed))
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all_children()
