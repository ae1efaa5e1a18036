"""protocol/claim.py: X25519 against RFC 7748 and `cryptography`, HKDF against `cryptography`,
the sealed box, the request/response framing and its refusals; and the same code on the real
MicroPython binary (from source and as mpy-cross bytecode in a 64 KiB heap), talking to CPython."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import claim
from protocol.errors import ProtocolError
from tests.support.claimkit import device_bytecode, mpy_cross
from tests.support.upy import ROOT, run_upy

# RFC 7748 section 5.2 and 6.1.
RFC_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
    (  # Alice's public key
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "0900000000000000000000000000000000000000000000000000000000000000",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    ),
    (  # Bob's secret with Alice's public: the shared secret
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    ),
]
ITER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"

TID = "00112233445566ff"
SECRET = bytes(range(16))
NONCE = bytes(range(100, 116))
BOARD_PRIV = bytes(range(32, 64))
IDENTITY: dict[int, object] = {
    claim.I_DEVICE: "ribeira-0001",
    claim.I_KEY: bytes(range(200, 232)),
    claim.I_USERNAME: "ribeira-0001",
    claim.I_PASSWORD: "pw-123",
    claim.I_SITE: "porto",
    claim.I_ZONE: "ribeira",
    claim.I_KIND: "ap",
}


def _pub(priv: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(priv)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


@pytest.mark.parametrize(("k", "u", "out"), RFC_VECTORS)
def test_x25519_rfc7748_vectors(k: str, u: str, out: str) -> None:
    assert claim.x25519(bytes.fromhex(k), bytes.fromhex(u)).hex() == out


def test_x25519_rfc7748_iterated_1000() -> None:
    k = u = claim._BASE
    for _ in range(1000):
        k, u = claim.x25519(k, u), k
    assert k.hex() == ITER_1000


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_x25519_agrees_with_cryptography(a: bytes, b: bytes) -> None:
    assert claim.public_key(a) == _pub(a)
    shared = X25519PrivateKey.from_private_bytes(a).exchange(
        X25519PublicKey.from_public_bytes(_pub(b))
    )
    assert claim.x25519(a, _pub(b)) == shared == claim.x25519(b, claim.public_key(a))


def test_x25519_refuses_low_order_point_and_bad_lengths() -> None:
    with pytest.raises(ProtocolError) as e:
        claim.x25519(BOARD_PRIV, bytes(32))
    assert e.value.code == "bad_key"
    with pytest.raises(ProtocolError):
        claim.x25519(BOARD_PRIV[:31], claim._BASE)


@pytest.mark.parametrize("n", [1, 32, 64, 100])
def test_hkdf_matches_cryptography(n: int) -> None:
    ikm, salt, info = os.urandom(32), os.urandom(16), b"idu-claim/1 test"
    want = HKDF(hashes.SHA256(), n, salt, info).derive(ikm)
    assert claim.hkdf(salt, ikm, info, n) == want


def test_box_round_trip_and_tamper() -> None:
    keys = os.urandom(64)
    for size in (0, 1, 31, 32, 33, 200):
        pt = os.urandom(size)
        sealed = claim.seal_box(keys, NONCE, pt)
        assert len(sealed) == size + claim.TAG_LEN
        assert sealed[:size] != pt or size == 0
        assert claim.open_box(keys, NONCE, sealed) == pt
    bad = bytearray(claim.seal_box(keys, NONCE, b"identity"))
    bad[0] ^= 1
    with pytest.raises(ProtocolError) as e:
        claim.open_box(keys, NONCE, bytes(bad))
    assert e.value.code == "bad_tag"
    other = bytes(64 - 1) + b"\x01"
    with pytest.raises(ProtocolError):
        claim.open_box(other, NONCE, claim.seal_box(keys, NONCE, b"identity"))


def _exchange(
    status: int = claim.OK, secret_ctrl: bytes = SECRET
) -> tuple[str, bytes, claim.Request]:
    pub = claim.public_key(BOARD_PRIV)
    t, p = claim.encode_request(TID, SECRET, NONCE, pub, "sim")
    req = claim.parse_request(t, p)
    ident = IDENTITY if status == claim.OK else None
    rt, rp = claim.encode_response(req, secret_ctrl, status, ident, os.urandom(32))
    return rt, rp, req


def test_request_response_round_trip() -> None:
    rt, rp, req = _exchange()
    req.verify(SECRET)
    assert req.token_id == TID and req.board == "sim" and req.nonce == NONCE
    assert rt == "idu-claim/1/" + TID + "/resp"
    status, ident = claim.decode_response(
        rt, rp, TID, SECRET, BOARD_PRIV, claim.public_key(BOARD_PRIV), NONCE
    )
    assert status == claim.OK and ident == IDENTITY
    assert IDENTITY[claim.I_KEY] not in rp  # type: ignore[operator]  # the key is not in clear
    assert b"pw-123" not in rp


def test_error_status_carries_no_identity() -> None:
    rt, rp, _ = _exchange(claim.USED)
    pub = claim.public_key(BOARD_PRIV)
    assert claim.decode_response(rt, rp, TID, SECRET, BOARD_PRIV, pub, NONCE) == (claim.USED, None)


def test_forged_request_is_refused() -> None:
    pub = claim.public_key(BOARD_PRIV)
    t, p = claim.encode_request(TID, bytes(16), NONCE, pub)  # attacker guesses the secret
    req = claim.parse_request(t, p)
    with pytest.raises(ProtocolError) as e:
        req.verify(SECRET)
    assert e.value.code == "bad_tag"
    # moved to another token's topic: the tag covers the topic
    t2 = claim.topic("ffffffffffffffff", claim.REQ)
    with pytest.raises(ProtocolError) as e:
        claim.parse_request(t2, p).verify(SECRET)
    assert e.value.code == "bad_tag"


def test_board_refuses_response_not_from_the_issuer_or_not_for_it() -> None:
    pub = claim.public_key(BOARD_PRIV)
    rt, rp, _ = _exchange(secret_ctrl=bytes(16))  # someone without the token secret
    with pytest.raises(ProtocolError) as e:
        claim.decode_response(rt, rp, TID, SECRET, BOARD_PRIV, pub, NONCE)
    assert e.value.code == "bad_tag"
    rt, rp, _ = _exchange()
    with pytest.raises(ProtocolError) as e:  # an answer to another request of the same token
        claim.decode_response(rt, rp, TID, SECRET, BOARD_PRIV, pub, bytes(16))
    assert e.value.code == "bad_field"
    other_priv = os.urandom(32)  # another board (observer) cannot open the identity
    with pytest.raises(ProtocolError) as e:
        claim.decode_response(rt, rp, TID, SECRET, other_priv, claim.public_key(other_priv), NONCE)
    assert e.value.code in ("bad_tag", "bad_key")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_request_is_total(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        claim.parse_request(claim.topic(TID, claim.REQ), data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80))
def test_tampered_response_raises_protocol_error_only(junk: bytes) -> None:
    rt, rp, _ = _exchange()
    bad = rp[: len(rp) // 2] + junk
    with pytest.raises(ProtocolError):
        claim.decode_response(rt, bad, TID, SECRET, BOARD_PRIV, claim.public_key(BOARD_PRIV), NONCE)


# --------------------------------------------------------------------------- MicroPython
SCRIPT = ROOT / "tests" / "upy" / "claim_check.py"


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return device_bytecode(tmp_path_factory.mktemp("mpy"))


def _upy(mode: str, mpy: Path, *args: str) -> dict[str, object]:
    stdin = json.dumps(list(args))
    if mode == "source":
        res = run_upy(SCRIPT, heap="512K", stdin=stdin).check()
    else:  # bytecode first on the path, 64 KiB heap like a device
        res = run_upy(SCRIPT, heap="64K", path=[mpy], stdin=stdin).check()
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("mode", ["source", "mpy64k"])
def test_upy_x25519_rfc_vectors(mode: str, mpy_dir: Path) -> None:
    for k, u, want in RFC_VECTORS:
        assert _upy(mode, mpy_dir, "x25519", k, u)["out"] == want


@pytest.mark.parametrize("mode", ["source", "mpy64k"])
def test_upy_board_claims_from_cpython_controller(mode: str, mpy_dir: Path) -> None:
    """The MicroPython board builds the request, CPython verifies it and answers, the board
    opens the identity; and a forged answer is refused on the board."""
    got = _upy(mode, mpy_dir, "request", TID, SECRET.hex(), BOARD_PRIV.hex(), NONCE.hex())
    req = claim.parse_request(str(got["topic"]), bytes.fromhex(str(got["payload"])))
    req.verify(SECRET)
    assert req.public == claim.public_key(BOARD_PRIV) == _pub(BOARD_PRIV)
    rt, rp = claim.encode_response(req, SECRET, claim.OK, IDENTITY, os.urandom(32))
    out = _upy(
        mode, mpy_dir, "response", TID, SECRET.hex(), BOARD_PRIV.hex(), NONCE.hex(), rt, rp.hex()
    )
    ident = out["identity"]
    assert isinstance(ident, dict)
    assert ident["0"] == "ribeira-0001" and ident["1"] == bytes(range(200, 232)).hex()
    assert ident["3"] == "pw-123" and ident["5"] == "ribeira"
    rt, rp = claim.encode_response(req, bytes(16), claim.OK, IDENTITY, os.urandom(32))
    out = _upy(
        mode, mpy_dir, "response", TID, SECRET.hex(), BOARD_PRIV.hex(), NONCE.hex(), rt, rp.hex()
    )
    assert out == {"error": "bad_tag"}


def test_mpy_cross_compiles_claim_for_esp32(tmp_path: Path) -> None:
    for src in (ROOT / "protocol" / "claim.py", ROOT / "firmware" / "claim.py"):
        if not src.exists():
            continue
        dst = tmp_path / (src.stem + ".mpy")
        subprocess.run(
            [mpy_cross(), "-march=xtensawin", "-o", str(dst), str(src)],
            check=True,
            capture_output=True,
        )
        assert dst.stat().st_size > 1000
