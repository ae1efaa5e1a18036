"""A fixed, seeded corpus of mutated payloads, decoded on whichever interpreter runs this script.

The seeds are the vectors of one file (tests/vectors/device.json); a small xorshift generator
(identical on MicroPython and CPython) derives COUNT mutants from them: bit flips, truncations,
insertions, deletions, corrupted length headers, reserved/ext bytes, duplicated slices and splices.
Each mutant is decoded three ways:

  A  the mutated payload, verified with the seed's key (what a receiver does);
  B  a mutated unsigned prefix, then sealed with a valid tag (so the parser and body checks, not
     the MAC, decide);
  C  the A payload decoded without a key (parse and shape only).

Output: one line per mutant, "i op A B C", each outcome an error code, "ok:<8 hex of the
re-encoded message's SHA-256>", or "CRASH:<exception type>" (a bug: only ProtocolError may
escape the decoder); then one JSON line with the count and a SHA-256 over every mutant, which
proves both interpreters decoded the same corpus.

    micropython -X heapsize=64K tests/upy/mutate.py tests/vectors/device.json [count] [seed] [pure]

"pure" (CPython) turns off protocol's msgpack-C fast path, so the pure codec decides as on a device.
"""

import gc
import hashlib
import json
import sys

from common import vectors

from protocol.codec import Writer
from protocol.envelope import TRAILER, decode, seal, write_head
from protocol.errors import ProtocolError
from protocol.sign import Signer

BUF = bytearray(2400)  # re-encoding buffer, allocated once as a device would
INTERESTING = b"\xc1\xd4\xc7\xff\x00\x7f\x80\x90\xa0\xc0\xc2\xc3\xca\xcb\xcf\xd3\xdd\xdf\xdb\xc6"


class Rng:
    """xorshift32: the same sequence on every interpreter (no reliance on `random`)."""

    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 1

    def next(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.next() % n if n > 0 else 0


def headers(b):
    """Positions of bytes that look like msgpack length or count headers."""
    out = []
    for i in range(len(b)):
        c = b[i]
        if 0x80 <= c <= 0xBF or 0xC4 <= c <= 0xC6 or 0xD9 <= c <= 0xDF:
            out.append(i)
    return out


def mutate(rng, b, others):
    """One mutation of bytes b; returns (op number, mutated bytes)."""
    b = bytearray(b)
    n = len(b)
    op = rng.below(8)
    if op == 0:  # 1-3 bit flips
        for _ in range(1 + rng.below(3)):
            if n:
                b[rng.below(n)] ^= 1 << rng.below(8)
    elif op == 1:  # truncation
        b = b[: rng.below(n)]
    elif op == 2:  # insertion of 1-4 bytes
        p = rng.below(n + 1)
        ins = bytearray()
        for _ in range(1 + rng.below(4)):
            ins.append(INTERESTING[rng.below(len(INTERESTING))] if rng.below(2) else rng.below(256))
        b = b[:p] + ins + b[p:]
    elif op == 3:  # deletion of 1-4 bytes
        p = rng.below(n)
        b = b[:p] + b[p + 1 + rng.below(4) :]
    elif op == 4:  # corrupt a length or count header
        hs = headers(b)
        if hs:
            p = hs[rng.below(len(hs))]
            c = b[p]
            if c <= 0x9F:
                b[p] = (c & 0xF0) | rng.below(16)
            elif c <= 0xBF:
                b[p] = 0xA0 | rng.below(32)
            else:
                size = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}.get(c, 2)
                if c in (0xDD, 0xDF):
                    size = 4
                kind = rng.below(3)
                for k in range(size):
                    if p + 1 + k < n:
                        if kind == 0:
                            b[p + 1 + k] = 0xFF
                        elif kind == 1:
                            b[p + 1 + k] = rng.below(256)
                        else:
                            b[p + 1 + k] = (b[p + 1 + k] + (1 if k == size - 1 else 0)) & 0xFF
    elif op == 5:  # a reserved, ext or other interesting byte
        if n:
            b[rng.below(n)] = INTERESTING[rng.below(len(INTERESTING))]
    elif op == 6:  # duplicate a slice (repeated keys, extra entries)
        if n:
            p = rng.below(n)
            q = p + 1 + rng.below(8)
            d = rng.below(n + 1)
            b = b[:d] + b[p:q] + b[d:]
    else:  # splice with another seed
        o = others[rng.below(len(others))]
        b = b[: rng.below(n + 1)] + o[rng.below(len(o) + 1) :]
    return op, bytes(b)


def outcome(payload, topic, signer):
    try:
        m = decode(payload, topic, signer)
    except ProtocolError as e:
        return e.code
    except Exception as e:  # the finding this corpus exists for
        return "CRASH:" + type(e).__name__
    w = Writer(BUF)
    try:
        write_head(w, m.type, m.epoch, m.seq, m.ts, m.up)
        w.value(m.body, 1)
        n = seal(w, signer or Signer(bytes(32)), topic.encode())
    except ProtocolError as e:  # decoded, yet the encoder refuses it: the two disagree
        return "ok:enc-" + e.code
    except Exception as e:
        return "ok:CRASH:" + type(e).__name__
    return "ok:" + hashlib.sha256(w.mv[:n]).digest()[:4].hex()


def main(path, count, seed):
    seeds = []
    for vec in vectors(path):
        seeds.append(
            (vec["topic"], bytes.fromhex(vec["key_hex"]), bytes.fromhex(vec["payload_hex"]))
        )
    payloads = [s[2] for s in seeds]
    signers = {}
    rng = Rng(seed)
    digest = hashlib.sha256()
    for i in range(count):
        topic, key, payload = seeds[rng.below(len(seeds))]
        signer = signers.get(key)
        if signer is None:
            signer = signers[key] = Signer(key)
        op, a = mutate(rng, payload, payloads)
        op_b, prefix = mutate(rng, payload[:-19], payloads)
        b = prefix + TRAILER + signer.tag(topic.encode(), prefix)
        digest.update(a)
        digest.update(b"\x00")
        digest.update(b)
        digest.update(b"\x00")
        print(
            i,
            str(op) + str(op_b),
            outcome(a, topic, signer),
            outcome(b, topic, signer),
            outcome(a, topic, None),
        )
        if i % 64 == 0:
            gc.collect()
    print(json.dumps({"count": count, "seed": seed, "corpus_sha256": digest.digest().hex()}))


argv = sys.argv[1:]
if "pure" in argv[3:]:
    import protocol.envelope

    protocol.envelope.fast_unpack = None
main(argv[0], int(argv[1]) if len(argv) > 1 else 1200, int(argv[2]) if len(argv) > 2 else 20251123)
