"""`idufleet release keygen|build|inspect`: keys are owner-only and never replaced, a build is
the real agent compiled for the board and signed, inspect verifies it, and every tampering or
wrong key is refused with its named reason; usage errors exit 2, refusals exit 1, each one line.
Key rotation: a release signed with the old key hands devices over to the new one."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from protocol import manifest as MF
from protocol.errors import ProtocolError
from tests.test_flash_pty import esp_image
from tools import release as R
from tools.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["release", *args])


def last_line(r: Result) -> str:
    return r.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("old", "new"):
        r = run("keygen", "--out", str(d / f"{name}.key"))
        assert r.exit_code == 0, r.output
        out[name] = d / f"{name}.key"
    return out


@pytest.fixture(scope="module")
def release(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "r1.bin"
    r = run("build", "--version", "1.4.2", "--board", "sim", "--key", str(keys["old"]))
    assert r.exit_code == 2  # --out is required
    r = run(
        "build",
        "--version",
        "1.4.2",
        "--board",
        "sim",
        "--key",
        str(keys["old"]),
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    return out


def pub(keys: dict[str, Path], name: str) -> bytes:
    return bytes.fromhex(keys[name].with_suffix(".pub").read_text())


def test_keygen_writes_an_owner_only_key_and_refuses_to_replace_it(tmp_path: Path) -> None:
    key = tmp_path / "k" / "release.key"
    r = run("keygen", "--out", str(key))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = bytes.fromhex(key.with_suffix(".pub").read_text())
    assert f"key id: {MF.key_id(public).hex()}" in r.output and public.hex() in r.output
    before = key.read_bytes()
    again = run("keygen", "--out", str(key))
    assert again.exit_code == 1 and "exists" in last_line(again)
    assert key.read_bytes() == before
    r = run("keygen", "--out", str(tmp_path / "x.pub"))
    assert r.exit_code == 2 and "*.key" in last_line(r)


def test_built_release_is_the_compiled_agent_and_inspect_verifies_it(
    release: Path, keys: dict[str, Path]
) -> None:
    data = release.read_bytes()
    m = MF.verify(data, pub(keys, "old"), "sim", int(time.time()), current=1004001)
    assert (m.version, m.display, m.board, m.floor) == (1004002, "1.4.2", "sim", 1004002)
    paths = [f[0] for f in m.files()]
    assert (
        "main.py" in paths and "_mpy/agent.mpy" in paths and "_mpy/protocol/manifest.mpy" in paths
    )
    assert m.expires - int(time.time()) > 29 * 86400 and m.chunk == 2048
    r = run("inspect", str(release), "--pubkey", str(keys["old"].with_suffix(".pub")))
    assert r.exit_code == 0, r.output
    assert "1.4.2 (#1004002)" in r.output and "signature    ok" in r.output
    r = run("inspect", str(release))
    assert r.exit_code == 0 and "not checked" in r.output


@pytest.mark.parametrize(
    ("where", "code"),
    [
        ("payload", "chunk_digest"),  # one byte of one file: its chunk no longer matches
        ("table", "bad_signature"),
        ("head", "bad_signature"),
        ("signature", "bad_signature"),
        ("cut", "payload_size"),
    ],
)
def test_inspect_refuses_a_tampered_release_naming_why(
    release: Path, keys: dict[str, Path], tmp_path: Path, where: str, code: str
) -> None:
    data = bytearray(release.read_bytes())
    m = MF.parse(bytes(data))
    if where == "cut":
        data = data[:-1]
    else:
        i = {
            "payload": m.size + 100,
            "table": m.table_offset + 3,
            "head": m.table_offset - 40,
            "signature": m.signed_len + 10,
        }[where]
        data[i] ^= 0x01
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(data))
    r = run("inspect", str(bad), "--pubkey", pub(keys, "old").hex())
    assert r.exit_code == 1 and f": {code}:" in last_line(r)
    assert len(r.output.strip().splitlines()) == 1


def test_inspect_with_another_key_is_wrong_key(release: Path, keys: dict[str, Path]) -> None:
    r = run("inspect", str(release), "--pubkey", pub(keys, "new").hex())
    assert r.exit_code == 1 and ": wrong_key:" in last_line(r)
    r = run("inspect", str(release), "--pubkey", "zz")
    assert r.exit_code == 2 and "64 hex digits" in last_line(r)


@pytest.mark.parametrize(
    ("state", "code"),
    [
        ({"board": "esp32"}, "wrong_board"),
        ({"now": 2**32 - 1}, "expired"),
        ({"floor": 1004002}, "below_floor"),
        ({"current": 1004002}, "not_newer"),
    ],
)
def test_device_refuses_the_built_release_outside_its_policy(
    release: Path, keys: dict[str, Path], state: dict[str, object], code: str
) -> None:
    args: dict[str, object] = {"board": "sim", "now": int(time.time())} | state
    with pytest.raises(ProtocolError) as e:
        MF.verify(release.read_bytes(), pub(keys, "old"), **args)  # type: ignore[arg-type]
    assert e.value.code == code


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--version", "1.x"], "--version"),
        (["--version", "1.1000.0"], "0-999"),
        (["--version", "0"], "--version"),
        (["--version", "3", "--board", "esp8266"], "--board"),
        (["--version", "3", "--chunk", "3000"], "power of two"),
        (["--version", "3", "--floor", "4"], "--floor"),
        (["--version", "3", "--from", "3"], "--from"),
        (["--version", "3", "--firmware", "fw.bin"], "takes no image"),
        (["--version", "3", "--no-agent"], "--firmware"),
    ],
)
def test_build_usage_errors_exit_2_with_the_fix(
    args: list[str], hint: str, keys: dict[str, Path], tmp_path: Path
) -> None:
    base = ["build", "--board", "sim", "--key", str(keys["old"]), "--out", str(tmp_path / "o")]
    r = run(*base, *args)
    assert r.exit_code == 2, r.output
    assert hint in r.output
    assert not (tmp_path / "o").exists()


def test_build_refuses_a_key_others_can_read_and_an_existing_out(
    keys: dict[str, Path], release: Path, tmp_path: Path
) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys["old"].read_bytes())
    os.chmod(loose, 0o644)
    r = run(
        "build",
        "--version",
        "3",
        "--board",
        "sim",
        "--key",
        str(loose),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.exit_code == 1 and "chmod 600" in last_line(r)
    r = run(
        "build",
        "--version",
        "3",
        "--board",
        "sim",
        "--key",
        str(keys["old"]),
        "--out",
        str(release),
    )
    assert r.exit_code == 1 and "exists" in last_line(r)


def test_esp32_release_carries_the_agent_for_xtensawin_and_the_image(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(esp_image())
    out = tmp_path / "r.bin"
    r = run(
        "build",
        "--version",
        "7",
        "--firmware",
        str(fw),
        "--key",
        str(keys["old"]),
        "--out",
        str(out),
    )
    assert r.exit_code == 0, r.output
    m, payload = R.open_release(out.read_bytes(), pub(keys, "old"))
    assert m.board == "esp32" and m.firmware is not None and m.firmware[0] == len(fw.read_bytes())
    assert payload[m.firmware[2] :] == fw.read_bytes()
    agent = dict((p, payload[o : o + n]) for p, n, _, o in m.files())
    assert agent["_mpy/agent.mpy"][:1] == b"M"  # .mpy header; -march=xtensawin sets its arch bits
    fw.write_bytes(b"\x00" * 64)
    r = run(
        "build",
        "--version",
        "8",
        "--firmware",
        str(fw),
        "--key",
        str(keys["old"]),
        "--out",
        str(tmp_path / "r2"),
    )
    assert r.exit_code == 1 and "not an ESP image" in last_line(r)


def test_rotation_release_hands_devices_over_to_the_next_key(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    old, new = pub(keys, "old"), pub(keys, "new")
    rot, after, stale = tmp_path / "rot.bin", tmp_path / "after.bin", tmp_path / "stale.bin"
    r = run(
        "build", "--version", "10", "--board", "sim", "--key", str(keys["old"]),
        "--next-key", str(keys["new"]), "--out", str(rot),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"switch to key id {MF.key_id(new).hex()}" in r.output
    now = int(time.time())
    m = MF.verify(rot.read_bytes(), old, "sim", now, current=9)
    trusted = MF.trusted_key_after(m, old)
    assert trusted == new
    assert run("inspect", str(rot), "--pubkey", old.hex()).exit_code == 0
    for key, out, v in ((keys["new"], after, "11"), (keys["old"], stale, "12")):
        r = run("build", "--version", v, "--board", "sim", "--key", str(key), "--out", str(out))
        assert r.exit_code == 0, r.output
    assert MF.verify(after.read_bytes(), trusted, "sim", now, current=10).version == 11
    with pytest.raises(ProtocolError) as e:  # the old key signs nothing a rotated device takes
        MF.verify(stale.read_bytes(), trusted, "sim", now, current=11)
    assert e.value.code == "wrong_key"
    with pytest.raises(ProtocolError) as e:  # and a device that missed the rotation waits for it
        MF.verify(after.read_bytes(), old, "sim", now, current=9)
    assert e.value.code == "wrong_key"


def test_bundles_carry_the_release_public_key(keys: dict[str, Path]) -> None:
    from controller.provisioning.bundles import (
        BundleError,
        broker_block,
        claim_bundle,
        device_bundle,
    )
    from controller.provisioning.tokens import IssuedToken
    from tools import flash as F

    key = pub(keys, "old")
    broker = broker_block("127.0.0.1", 1883, "ap-1", None)
    cfg = device_bundle("ap-1", "porto", "ribeira", "ap", bytes(32), broker, key, interval=30)
    assert cfg["release_key"] == key.hex() and cfg["interval"] == 30
    assert "release_key" not in device_bundle("ap-1", "porto", "ribeira", "ap", bytes(32), broker)
    F.check_bundle(json.dumps(cfg).encode())  # the flash tool takes it as it is
    tok = IssuedToken("00" * 8, "porto", "ribeira", "ap", 0.0, bytes(16))
    assert claim_bundle(tok, broker, key)["release_key"] == key.hex()
    with pytest.raises(BundleError):
        device_bundle("ap-1", "porto", "ribeira", "ap", bytes(32), broker, b"short")


def test_provision_refuses_a_bad_release_key_before_doing_anything() -> None:
    r = CliRunner().invoke(
        cli, ["provision", "--port", "/dev/null", "--zone", "ribeira", "--release-key", "abc"]
    )
    assert r.exit_code == 2 and "64 hex digits" in last_line(r)
