"""Writes the release test vectors tests/vectors/release/{ed25519,manifest}.json (docs/PROTOCOL.md,
"Release manifest"). Like generate.py: the JSON files are committed and are the truth, this
script shows the intent of each vector. Expected outcomes are written by hand or taken from the
RFC and from `cryptography` (which signs every manifest here), never from the verifier under
test. Release keys are fixed seeds, and Ed25519 signing is deterministic, so the output is
reproducible.

    .venv/bin/python tests/vectors/generate_release.py          # rewrite the files
    .venv/bin/python tests/vectors/generate_release.py --check  # exit 1 if they differ

One vector per line, so a 64 KiB MicroPython heap reads them a line at a time. They live in a
folder of their own: tests/vectors/*.json are the envelope vectors and their test lists them.
"""

# ruff: noqa: UP031
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol import manifest as MF
from protocol.codec import packb
from protocol.release_vectors import check
from tools.release import Spec, build_manifest, raw_public

OUT = Path(__file__).resolve().parent / "release"
T0 = 1763900000  # 2025-11-23T12:13:20Z, as in generate.py
DAY = 86400

# RFC 8032 section 7.1: (name, secret key, public key, message, signature), hex, as published.
RFC8032 = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
        "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e45"
        "8f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae"
        "67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee"
        "50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829"
        "adb26c81b37c93a1b270b20329d658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e266"
        "40f89ffbc1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4feba15452f8"
        "0288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e06203b33890cc9b832f79ef8056"
        "0ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc103b6621fcde2be"
        "ca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed"
        "185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594"
        "e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a"
        "9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0"
        "c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b0707e0917"
        "af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128bab27af87a71314f318c782b23e"
        "bfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969be3ea7082ff7"
        "fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47ac"
        "db751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafd"
        "b038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85"
        "f6724517b65e614ad6808d6f6ee34dff7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b684"
        "01adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649de618"
        "8a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c"
        "8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac0943bf6686b"
        "64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496"
        "afc5fb93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225"
        "bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03"
        "412c091c6315cf4fde7cb68606937380db2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475"
        "a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528"
        "ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836"
        "ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfd"
        "fbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493


def _seed(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


K1 = _seed("idufleet release vector key 1")
K2 = _seed("idufleet release vector key 2")
K3 = _seed("idufleet release vector key 3")
P1, P2, P3 = raw_public(K1), raw_public(K2), raw_public(K3)

VECS: dict[str, list[dict[str, Any]]] = {"ed25519": [], "manifest": []}


def _cryptography_accepts(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def ed(name: str, pub: bytes, msg: bytes, sig: bytes, error: str | None = None) -> None:
    """An Ed25519 vector. Whether cryptography agrees is asserted: it is the reference."""
    assert _cryptography_accepts(pub, msg, sig) == (error is None), name
    v: dict[str, Any] = {
        "name": name,
        "public_hex": pub.hex(),
        "message_hex": msg.hex(),
        "signature_hex": sig.hex(),
    }
    v.update({"error": error} if error else {"ok": True})
    VECS["ed25519"].append(v)


def build_ed25519() -> None:
    for name, secret, public, message, signature in RFC8032:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
        pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
        assert raw_public(key) == pub and key.sign(msg) == sig, name  # the RFC, transcribed right
        ed("rfc8032_" + name.lower().replace(" ", "_"), pub, msg, sig)
    _, _, pub1, _, sig1 = RFC8032[0]
    pub, sig = bytes.fromhex(pub1), bytes.fromhex(sig1)
    ed("rfc8032_test_1_other_message", pub, b"\x00", sig, "bad_signature")
    ed("r_flipped", pub, b"", bytes([sig[0] ^ 1]) + sig[1:], "bad_signature")
    ed("s_flipped", pub, b"", sig[:40] + bytes([sig[40] ^ 1]) + sig[41:], "bad_signature")
    s = int.from_bytes(sig[32:], "little")
    ed("s_plus_group_order", pub, b"", sig[:32] + (s + _L).to_bytes(32, "little"), "bad_signature")
    ed("signature_63_bytes", pub, b"", sig[:63], "bad_signature")
    ed("signature_of_another_key", P1, b"", sig, "bad_signature")
    # a y for which no x exists: not a point, refused as a key
    y = 2
    while True:
        u, v = (y * y - 1) % _P, (-121665 * pow(121666, _P - 2, _P) * y * y + 1) % _P
        if pow(u * pow(v, _P - 2, _P) % _P, (_P - 1) // 2, _P) == _P - 1:
            break
        y += 1
    ed("key_not_on_curve", y.to_bytes(32, "little"), b"", sig, "bad_key")
    ed("key_y_not_canonical", (_P + 1).to_bytes(32, "little"), b"", sig, "bad_key")
    ed("key_31_bytes", pub[:31], b"", sig, "bad_key")
    msg = MF.CONTEXT + bytes(range(32))
    ed("release_message_47_bytes", P1, msg, K1.sign(msg))


# --------------------------------------------------------------------------- manifests
FILES = [
    ("_mpy/agent.mpy", bytes(range(256)) * 9),  # 2304 B: spans chunks
    ("_mpy/protocol/codec.mpy", b"codec" * 100),
    ("main.py", b"import startup\n"),
]
IMAGE = b"\xe9" + bytes(range(255)) * 12


def spec(**kw: Any) -> Spec:
    base: dict[str, Any] = {
        "version": 5,
        "display": "0.5.0",
        "board": "sim",
        "expires": T0 + 30 * DAY,
        "chunk": 1024,
        "created": T0,
    }
    base.update(kw)
    return Spec(**base)


def make(
    s: Spec | None = None,
    files: list[tuple[str, bytes]] | None = None,
    firmware: bytes | None = None,
    key: Ed25519PrivateKey = K1,
    next_key: Ed25519PrivateKey | None = None,
) -> bytes:
    return build_manifest(s or spec(), FILES if files is None else files, firmware, key, next_key)[
        0
    ]


def assemble(
    head: dict[int, Any] | bytes,
    table: bytes,
    key: Ed25519PrivateKey = K1,
    next_key: Ed25519PrivateKey | None = None,
    prefix: bytes | None = None,
) -> bytes:
    """A manifest from parts, signed over exactly these bytes (so that a vector shows the
    decoder refusing it, not the signature)."""
    body = head if isinstance(head, bytes) else packb(head, MF.MAX_HEAD)
    pre = prefix or (MF.MAGIC + bytes([MF.FORMAT, 0]) + len(body).to_bytes(2, "big"))
    signed = pre + body + table
    d = MF.CONTEXT + hashlib.sha256(signed).digest()
    return signed + key.sign(d) + (next_key.sign(d) if next_key else b"")


def good_head(over: dict[int, Any] | None = None) -> tuple[dict[int, Any], bytes]:
    """The head and table of the plain valid manifest, with fields replaced."""
    m = make()
    pm = MF.parse(m)
    head = dict(packed_head(m))
    head.update(over or {})
    return head, m[pm.table_offset : pm.signed_len]


def packed_head(m: bytes) -> dict[int, Any]:
    from protocol.codec import unpackb

    n = int.from_bytes(m[6:8], "big")
    h = unpackb(m[8 : 8 + n])
    assert isinstance(h, dict)
    return h


def mv(
    name: str,
    data: bytes,
    error: str | None = None,
    key: bytes = P1,
    board: str = "sim",
    now: int = T0,
    floor: int = 0,
    current: int = 0,
    kind: str | None = None,
) -> None:
    v: dict[str, Any] = {
        "name": name,
        "key_hex": key.hex(),
        "board": board,
        "now": now,
        "floor": floor,
        "current": current,
    }
    if kind is not None:
        v["kind"] = kind
    v["manifest_hex"] = data.hex()
    if error:
        v["error"] = error
    else:
        v["fields"] = expected_fields(data, key)
    VECS["manifest"].append(v)


def expected_fields(data: bytes, key: bytes) -> dict[str, Any]:
    """The fields, computed from the head as packed (not from protocol.manifest)."""
    h = packed_head(data)
    n = int.from_bytes(data[6:8], "big")
    files, off = [], 0
    for p, size, d in h.get(MF.H_FILES, []):
        files.append([p, size, d.hex(), off])
        off += size
    fw = h.get(MF.H_FIRMWARE)
    chunks = -(-h[MF.H_TOTAL] // h[MF.H_CHUNK])
    nk = h.get(MF.H_NEXT_KEY)
    return {
        "version": h[MF.H_VERSION],
        "display": h[MF.H_DISPLAY],
        "board": h[MF.H_BOARD],
        "kind": h.get(MF.H_KIND),
        "files": files,
        "firmware": None if fw is None else [fw[0], fw[1].hex(), off],
        "total": h[MF.H_TOTAL],
        "digest": h[MF.H_DIGEST].hex(),
        "chunk": h[MF.H_CHUNK],
        "chunks": chunks,
        "floor": h[MF.H_FLOOR],
        "expires": h[MF.H_EXPIRES],
        "key_id": h[MF.H_KEY_ID].hex(),
        "next_key": None if nk is None else nk.hex(),
        "from": h.get(MF.H_FROM, 0),
        "created": h.get(MF.H_CREATED),
        "size": 8 + n + 32 * chunks + 64 * (2 if nk else 1),
        "trusted_after": (nk or key).hex(),
    }


def build_manifests() -> None:
    base = make()
    mv("agent_release", base, current=4, floor=4)
    mv(
        "agent_and_firmware_esp32",
        make(spec(board="esp32", version=7, display="0.7.0"), firmware=IMAGE),
        board="esp32",
    )
    mv(
        "firmware_only_esp32",
        make(spec(board="esp32", chunk=4096), files=[], firmware=IMAGE),
        board="esp32",
    )
    mv("for_access_points", make(spec(kind="ap")), kind="ap")
    mv("jump_allowed_from_installed", make(spec(min_from=3)), current=3)
    mv("floor_below_version", make(spec(floor=2)), current=1, floor=1)
    mv("extension_key_ignored", assemble(*good_head({40: "note"})))
    many = [("_mpy/m%02d.mpy" % i, bytes([i]) * (1500 + 37 * i)) for i in range(40)]
    mv("forty_files_2k_chunks", make(spec(chunk=2048), files=many))
    mv("rotation_to_key_2", make(spec(version=6), next_key=K2), current=5, floor=5)
    mv("signed_by_key_2_after_rotation", make(spec(version=7), key=K2), key=P2, current=6)

    # refused while decoding (check order step 1-3)
    mv("empty", b"", "truncated")
    mv("prefix_only", base[:8], "truncated")
    mv("not_a_manifest", b"IDUX" + base[4:], "bad_field")
    mv("format_2", base[:4] + b"\x02" + base[5:], "unknown_version")
    mv("head_over_limit", base[:6] + (MF.MAX_HEAD + 1).to_bytes(2, "big") + base[8:], "too_big")
    mv("missing_last_signature_byte", base[:-1], "truncated")
    head, table = good_head()
    hb = packb(head, MF.MAX_HEAD)
    mv("head_not_a_map", assemble(packb([1, 2]), table), "bad_field")
    mv("bytes_after_head_map", assemble(hb + b"\xc0", table), "trailing_bytes")
    mv("head_ext_type", assemble(b"\x81\x01\xd4\x01\x00", table), "bad_type")
    mv("head_string_key", assemble(b"\x81\xa1a\x01", table), "bad_type")
    mv("head_repeated_key", assemble(b"\x82\x00\x01\x00\x02", table), "bad_field")
    mv("files_not_an_array", assemble(*good_head({MF.H_FILES: 3})), "bad_field")
    mv("unknown_head_key_20", assemble(*good_head({20: 1})), "bad_field")
    mv("version_zero", assemble(*good_head({MF.H_VERSION: 0})), "bad_field")
    mv("total_not_sum", assemble(*good_head({MF.H_TOTAL: 3000})), "bad_field")
    mv("chunk_not_power_of_two", assemble(*good_head({MF.H_CHUNK: 1000})), "bad_field")
    mv("chunk_too_small", assemble(*good_head({MF.H_CHUNK: 128})), "bad_field")
    mv("floor_above_version", assemble(*good_head({MF.H_FLOOR: 6})), "bad_field")
    mv("from_at_version", assemble(*good_head({MF.H_FROM: 5})), "bad_field")
    f = [list(x) for x in head[MF.H_FILES]]
    mv(
        "path_escapes",
        assemble(*good_head({MF.H_FILES: [["../boot.py", *f[0][1:]], *f[1:]]})),
        "bad_field",
    )
    mv(
        "files_not_sorted",
        assemble(*good_head({MF.H_FILES: [f[1], f[0], f[2]]})),
        "bad_field",
    )
    mv("file_digest_short", assemble(*good_head({MF.H_FILES: [[*f[0][:2], b"x"]]})), "bad_field")
    mv("no_files_no_firmware", assemble(*good_head({MF.H_FILES: []})), "bad_field")
    mv("key_id_short", assemble(*good_head({MF.H_KEY_ID: b"1234"})), "bad_field")
    mv("table_cut_short", assemble(head, table[:-32])[:-64], "truncated")

    # refused by the signatures (step 4)
    n = int.from_bytes(base[6:8], "big")
    i = 8 + n - 40  # a byte inside the head (a file digest)
    mv("head_byte_changed", base[:i] + bytes([base[i] ^ 1]) + base[i + 1 :], "bad_signature")
    j = 8 + n + 5
    mv("table_byte_changed", base[:j] + bytes([base[j] ^ 1]) + base[j + 1 :], "bad_signature")
    mv("signature_changed", base[:-1] + bytes([base[-1] ^ 0x20]), "bad_signature")
    mv("signed_by_key_2", make(key=K2), "wrong_key")
    mv("old_key_after_rotation", base, "wrong_key", key=P2)
    forged = assemble(*good_head(), key=K2)  # claims key 1's id, signed by key 2
    mv("key_id_of_key_1_signed_by_key_2", forged, "bad_signature")
    rot, rt = good_head({MF.H_NEXT_KEY: P2})
    mv("rotation_not_signed_by_next_key", assemble(rot, rt, next_key=K3), "bad_signature")
    mv("rotation_next_signature_missing", assemble(rot, rt, next_key=K2)[:-64], "truncated")

    # refused by the device's policy (step 5), after the signature verified
    mv("wrong_board", base, "wrong_board", board="esp32")
    mv("wrong_class", make(spec(kind="ap")), "wrong_board", kind="sensor")
    mv("expired", base, "expired", now=T0 + 30 * DAY)
    mv("version_at_floor", base, "below_floor", floor=5)
    mv("version_installed", base, "not_newer", current=5)
    mv("older_than_installed", base, "not_newer", current=9, floor=2)
    mv("jump_not_allowed", make(spec(min_from=4)), "jump_not_allowed", current=3)


def render(vectors: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(json.dumps(v) for v in vectors) + "\n]\n"


def main(argv: list[str]) -> int:
    build_ed25519()
    build_manifests()
    status = 0
    for name, vecs in VECS.items():
        names = [v["name"] for v in vecs]
        assert len(names) == len(set(names)), "duplicate vector names in " + name
        for v in vecs:
            want = {k: v[k] for k in ("ok", "fields", "error") if k in v}
            got = check(v)
            if got != want:
                print("NOTE %s/%s: protocol gives %s" % (name, v["name"], got), file=sys.stderr)
        path = OUT / (name + ".json")
        text = render(vecs)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                print("%s differs from the generator" % path, file=sys.stderr)
                status = 1
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
            print("wrote %s: %d vectors" % (path.name, len(vecs)))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
