"""Release test-vector semantics shared by both interpreters (tests/vectors/release/*.json,
docs/PROTOCOL.md, "Release manifest"): an Ed25519 vector is checked with
protocol.ed25519.verify, a manifest vector with protocol.manifest.verify under the device state
the vector gives. Test side only: not part of the firmware build."""

from protocol import ed25519
from protocol import manifest as MF
from protocol.errors import ProtocolError


def _hex(b: object) -> object:
    return None if b is None else bytes(b).hex()  # type: ignore[call-overload]


def to_json(m: MF.Manifest, key: bytes) -> dict:  # type: ignore[type-arg]
    """What a device learns from a manifest it accepted, in JSON form."""
    fw = m.firmware
    return {
        "version": m.version,
        "display": m.display,
        "board": m.board,
        "kind": m.kind,
        "files": [[p, n, d.hex(), o] for p, n, d, o in m.files()],
        "firmware": None if fw is None else [fw[0], fw[1].hex(), fw[2]],
        "total": m.total,
        "digest": m.digest.hex(),
        "chunk": m.chunk,
        "chunks": m.chunks,
        "floor": m.floor,
        "expires": m.expires,
        "key_id": m.key_id.hex(),
        "next_key": _hex(m.next_key),
        "from": m.min_from,
        "created": m.created,
        "size": m.size,
        "trusted_after": MF.trusted_key_after(m, key).hex(),
    }


def check(vec: dict, path: object = None) -> dict:  # type: ignore[type-arg]
    """{"ok": true} / {"fields": ...} or {"error": code}, to compare with the vector. With path,
    a manifest vector is read from that file with verify_file, as a device reads one from flash
    (its manifest_hex may then be absent)."""
    try:
        if "manifest_hex" in vec or path is not None:
            key = bytes.fromhex(vec["key_hex"])
            state = (
                key,
                vec["board"],
                vec["now"],
                vec.get("floor", 0),
                vec.get("current", 0),
                vec.get("kind"),
            )
            if path is None:
                m = MF.verify(bytes.fromhex(vec["manifest_hex"]), *state)
            else:
                with open(path, "rb") as f:  # type: ignore[call-overload]
                    size = f.seek(0, 2)
                    m = MF.verify_file(f, size, *state)
            return {"fields": to_json(m, key)}
        ed25519.verify(
            bytes.fromhex(vec["public_hex"]),
            bytes.fromhex(vec["message_hex"]),
            bytes.fromhex(vec["signature_hex"]),
        )
        return {"ok": True}
    except ProtocolError as e:
        return {"error": e.code}
