#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/fuzz_wire.cpp into tests/fuzz/corpus/wire/.

    python3 tests/fuzz/make_corpus.py [OUT_DIR]

Every file is one fuzz input: two bytes of limits, then a stream of frames.
  byte 0: bit 0 set -> WireLimits::expected_dimension = (byte >> 1) + 1, clear -> 0
  byte 1: WireLimits::max_payload_bytes = 64 + 8 * byte
The frames are encoded here from docs/wire-protocol.md, independently of wire.hpp,
so the corpus also pins the documented layout: valid frames of every message type
(each accepted and round-tripped by the fuzz target) and truncated or corrupt ones
(each refused). Python standard library only; the output is deterministic.
"""

import os
import struct
import sys

MAGIC = b"PSYN"
VERSION = 4
JOIN, LEAVE, PUSH, PULL, MODEL, ERROR, CHALLENGE = range(7)
SERVER = 0xFFFFFFFF
ANY_WORKER = 0xFFFFFFFE  # a join asking the server to assign its id (version 3)
DENSE, FP16, TOPK, QSGD8 = range(4)  # a push's encoding byte (version 4)
QSGD_BUCKET = 512


def limits(dimension=0, max_payload=64 + 8 * 255):
    """The two leading bytes: dimension 0 = unchecked, else 1..128."""
    assert dimension == 0 or 1 <= dimension <= 128
    assert (max_payload - 64) % 8 == 0 and 0 <= (max_payload - 64) // 8 <= 255
    b0 = 0 if dimension == 0 else ((dimension - 1) << 1) | 1
    return bytes([b0, (max_payload - 64) // 8])


def header(mtype, sender, payload_length, magic=MAGIC, version=VERSION, reserved=0):
    return magic + struct.pack("<BBHIQ", version, mtype, reserved, sender, payload_length)


def frame(mtype, sender, payload, **kw):
    return header(mtype, sender, len(payload), **kw) + payload


def floats(n, seed=1):
    return struct.pack("<%df" % n, *[(i * 0.5 - 3.25) * seed for i in range(n)])


def join(worker, dimension, policy, sender=None, mac_kind=0, mac=None, length=None):
    """Fixed fields: worker u32, dimension u64, policy length u32, MAC kind u8, MAC 32 bytes."""
    p = policy.encode()
    if mac is None:
        mac = bytes(32) if mac_kind == 0 else bytes(range(1, 33))
    fixed = struct.pack("<IQIB", worker, dimension, len(p) if length is None else length, mac_kind) + mac
    return frame(JOIN, worker if sender is None else sender, fixed + p)


def challenge(flags=0, nonce=None, sender=SERVER, extra=b""):
    """Transport frame the server sends first: flags u8, nonce 32 bytes."""
    return frame(CHALLENGE, sender, bytes([flags]) + (nonce or bytes(range(32))) + extra)


def leave(reason, sender=0):
    return frame(LEAVE, sender, bytes([reason]))


def push(n, clock=0, base=0, steps=1, sender=0, count=None):
    """Fixed fields: clock u64, base_version u64, steps u32, encoding u8 (0 dense), count u64; n floats."""
    body = struct.pack("<QQIBQ", clock, base, steps, DENSE, n if count is None else count) + floats(n)
    return frame(PUSH, sender, body)


def encoded_push(encoding, count, payload, clock=0, base=0, steps=1, sender=0):
    """A push whose update is encoded: count is the float count it stands for, payload the codec's bytes."""
    return frame(PUSH, sender, struct.pack("<QQIBQ", clock, base, steps, encoding, count) + payload)


def fp16(values):
    return struct.pack("<%de" % len(values), *values)


def topk(pairs):
    """k u32 indices (strictly increasing), then their k f32 values."""
    idx = [i for i, _ in pairs]
    return struct.pack("<%dI" % len(idx), *idx) + struct.pack("<%df" % len(pairs), *[v for _, v in pairs])


def qsgd8(scales, levels):
    """ceil(n / 512) f32 scales, then n int8 levels in [-127, 127]."""
    return struct.pack("<%df" % len(scales), *scales) + struct.pack("<%db" % len(levels), *levels)


def pull(buffer, clock=0, sender=0):
    return frame(PULL, sender, struct.pack("<QQ", clock, buffer))


def model(n, version=0, min_clock=0, held_ns=0, worker=0, count=None):
    """Fixed fields: version u64, min_clock u64, held_ns u64, worker u32, count u64."""
    body = struct.pack("<QQQIQ", version, min_clock, held_ns, worker, n if count is None else count) + floats(n, 2)
    return frame(MODEL, SERVER, body)


def error(code, text, sender=SERVER, length=None):
    t = text.encode()
    return frame(ERROR, sender, struct.pack("<BI", code, len(t) if length is None else length) + t)


def corpus():
    free = limits()
    d8 = limits(8)
    c = {}
    # Valid frames, one message type at a time, with and without a dimension check.
    c["join-bsp"] = free + join(0, 8, "bsp")
    c["join-ssp3-dim8"] = d8 + join(3, 8, "ssp:3")
    c["join-empty-policy"] = free + join(1, 0, "")
    c["join-policy-256"] = free + join(2, 128, "x" * 256)
    c["join-mac-osp20"] = free + join(4, 8, "osp:20", mac_kind=1)
    c["join-any-worker"] = free + join(ANY_WORKER, 8, "bsp")
    for r in range(4):
        c["leave-reason-%d" % r] = free + leave(r, sender=r)
    c["push-8-dim8"] = d8 + push(8, clock=5, base=4, steps=3)
    c["push-0"] = free + push(0)
    c["push-128-dim128"] = limits(128) + push(128, clock=2**40, base=2**63, steps=2**32 - 1)
    c["push-fp16-8-dim8"] = d8 + encoded_push(FP16, 8, fp16([0.5, -1.0, 65504.0, 0.0, 1e-7, -2.5, 3.0, 0.125]))
    c["push-topk-3-of-8-dim8"] = d8 + encoded_push(TOPK, 8, topk([(0, 1.5), (3, -2.0), (7, 0.25)]), clock=2)
    c["push-topk-0-of-8"] = free + encoded_push(TOPK, 8, b"")
    c["push-qsgd8-8-dim8"] = d8 + encoded_push(QSGD8, 8, qsgd8([2.0], [127, -127, 0, 5, -5, 64, 1, -1]))
    c["push-qsgd8-600"] = free + encoded_push(QSGD8, 600, qsgd8([1.0, 0.0], [(i % 255) - 127 for i in range(600)]))
    c["pull-no-buffer"] = free + pull(0, clock=7)
    c["pull-8-dim8"] = d8 + pull(8, clock=1)
    c["pull-at-limit"] = limits(0, 64) + pull((64 - 32) // 4)
    c["model-8-dim8"] = d8 + model(8, version=9, min_clock=3, held_ns=12345, worker=5)
    c["model-100"] = free + model(100)
    for code in range(1, 11):
        c["error-code-%d" % code] = free + error(code, "refused: code %d" % code)
    c["error-empty-text"] = free + error(1, "")
    c["error-text-1024"] = free + error(8, "e" * 1024)
    # Streams of frames, as a worker and as the server send them.
    c["stream-worker"] = d8 + join(1, 8, "osp:20") + push(8, sender=1) + pull(8, clock=1, sender=1) + leave(0, 1)
    c["stream-assigned"] = d8 + challenge(0) + model(8, worker=3) + model(8, version=1, min_clock=1, worker=3)
    c["stream-server"] = d8 + model(8) + model(8, version=1, min_clock=1) + error(5, "bad clock")
    c["stream-then-corrupt"] = free + push(4) + pull(0) + header(PUSH, 0, 29, version=5)
    c["stream-encoded-worker"] = d8 + join(1, 8, "bsp") + encoded_push(TOPK, 8, topk([(2, 1.0)]), sender=1) + \
        encoded_push(FP16, 8, fp16([1.0] * 8), clock=1, sender=1) + leave(0, 1)
    # The challenge: valid ones (decode_challenge accepts them; a message decoder refuses them).
    c["challenge-open"] = free + challenge(0)
    c["challenge-auth"] = free + challenge(1, nonce=bytes(range(100, 132)))
    c["challenge-then-join"] = d8 + challenge(1) + join(0, 8, "bsp", mac_kind=1)
    # Header faults.
    c["bad-magic"] = free + frame(LEAVE, 0, b"\0", magic=b"GET ")
    c["bad-version"] = free + frame(LEAVE, 0, b"\0", version=3)
    c["bad-version-5"] = free + frame(LEAVE, 0, b"\0", version=5)
    c["bad-type"] = free + header(7, 0, 0)
    c["bad-reserved"] = free + frame(LEAVE, 0, b"\0", reserved=0x0100)
    c["payload-over-limit"] = limits(0, 64) + header(PUSH, 0, 65)
    c["payload-under-fixed"] = free + frame(PUSH, 0, b"\0" * 28)
    c["truncated-header"] = free + join(0, 8, "bsp")[:11]
    # Payload faults.
    c["truncated-fixed"] = free + push(4)[:30]
    c["truncated-body"] = free + model(16)[:-5]
    c["trailing-bytes"] = free + leave(0) + b"\x01\x02\x03"
    c["push-count-mismatch"] = free + push(4, count=5)
    c["push-count-overflow"] = free + push(0, count=2**62)
    c["push-odd-length"] = free + frame(PUSH, 0, struct.pack("<QQIBQ", 0, 0, 1, DENSE, 0) + b"\0\0\0")
    # Encoded push faults (version 4).
    c["push-encoding-4"] = free + encoded_push(4, 2, b"\0" * 8)
    c["push-fp16-length-mismatch"] = free + encoded_push(FP16, 3, fp16([1.0, 2.0]))
    c["push-fp16-inf"] = free + encoded_push(FP16, 2, fp16([1.0, float("inf")]))
    c["push-fp16-nan"] = free + encoded_push(FP16, 1, b"\x00\x7e")
    c["push-topk-index-out-of-range"] = free + encoded_push(TOPK, 8, topk([(1, 1.0), (8, 1.0)]))
    c["push-topk-not-increasing"] = free + encoded_push(TOPK, 8, topk([(3, 1.0), (3, 2.0)]))
    c["push-topk-decreasing"] = free + encoded_push(TOPK, 8, topk([(5, 1.0), (2, 2.0)]))
    c["push-topk-more-than-count"] = free + encoded_push(TOPK, 1, topk([(0, 1.0), (1, 2.0)]))
    c["push-topk-half-pair"] = free + encoded_push(TOPK, 8, topk([(0, 1.0)])[:6])
    c["push-topk-nan-value"] = free + encoded_push(TOPK, 8, topk([(0, float("nan"))]))
    c["push-topk-wrong-dimension"] = d8 + encoded_push(TOPK, 9, topk([(0, 1.0)]))
    c["push-qsgd8-nan-scale"] = free + encoded_push(QSGD8, 2, qsgd8([float("nan")], [1, 1]))
    c["push-qsgd8-negative-scale"] = free + encoded_push(QSGD8, 2, qsgd8([-1.0], [1, 1]))
    c["push-qsgd8-level-128"] = free + encoded_push(QSGD8, 2, qsgd8([1.0], [-128, 1]))
    c["push-qsgd8-missing-scale"] = free + encoded_push(QSGD8, 513, qsgd8([1.0], [0] * 513))
    c["model-wrong-dimension"] = d8 + model(7)
    c["join-wrong-dimension"] = d8 + join(0, 9, "bsp")
    c["join-policy-257"] = free + join(0, 8, "p" * 257)
    c["join-policy-length-mismatch"] = free + join(0, 8, "bsp", length=5)
    c["join-bad-mac-kind"] = free + join(0, 8, "bsp", mac_kind=2)
    c["join-no-mac-nonzero"] = free + join(0, 8, "bsp", mac_kind=0, mac=b"\x01" + bytes(31))
    c["challenge-bad-flags"] = free + challenge(2)
    c["challenge-from-worker"] = free + challenge(0, sender=0)
    c["challenge-long"] = free + challenge(0, extra=b"\0")
    c["leave-bad-reason"] = free + leave(4)
    c["leave-long"] = free + frame(LEAVE, 0, b"\0\0")
    c["pull-over-limit"] = limits(0, 64) + pull((64 - 32) // 4 + 1)
    c["pull-wrong-dimension"] = d8 + pull(9)
    c["pull-huge"] = free + pull(2**40)
    c["error-code-0"] = free + error(0, "zero")
    c["error-code-11"] = free + error(11, "eleven")
    c["error-text-1025"] = free + error(8, "e" * 1025)
    c["error-length-mismatch"] = free + error(1, "abc", length=4)
    return c


def main():
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "wire")
    out = sys.argv[1] if len(sys.argv) > 1 else default
    os.makedirs(out, exist_ok=True)
    files = corpus()
    if out == default:  # the committed corpus is exactly this: drop seeds no longer generated
        for name in os.listdir(out):
            if name not in files:
                os.remove(os.path.join(out, name))
    for name, data in sorted(files.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("make_corpus: %d files, %d bytes in %s" % (len(files), sum(map(len, files.values())), out))


if __name__ == "__main__":
    main()
