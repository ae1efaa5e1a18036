"""`idufleet flash` against the real MicroPython unix port on a pseudo-terminal (its raw REPL
answers mpremote), with a temporary directory as the board's filesystem; and the local checks
(image header, bundle, ports) that must refuse bad input before anything is written."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from esptool.bin_image import ELFSection, ESP32FirmwareImage, ESP32S3FirmwareImage

from controller.provisioning.bundles import broker_block, device_bundle
from tests.support.pty_device import PtyDevice
from tests.support.upy import micropython_binary
from tools import flash as F
from tools.cli import cli


def snapshot(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def make_bundle(tmp: Path, device: str = "ap-0001", mode: int = 0o600) -> Path:
    broker = broker_block("127.0.0.1", 1883, device, "s3cret-pw")
    doc = device_bundle(device, "porto", "ribeira", "ap", b"\xab" * 32, broker, board="sim")
    p = tmp / f"bundle-{device}.json"
    p.write_text(json.dumps(doc))
    p.chmod(mode)
    return p


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyDevice]:
    with PtyDevice(tmp_path / "flash") as dev:
        yield dev


@pytest.fixture(scope="module")
def unix_plan_items() -> tuple[F.CopyItem, ...]:
    """The compiled agent, once per module (mpy-cross runs are the slow local part)."""
    return F.build_plan("/dev/null", "unix").items


def test_copy_verify_commit_on_the_unix_port(
    board: PtyDevice, tmp_path: Path, unix_plan_items: tuple[F.CopyItem, ...]
) -> None:
    fs = board.fs_dir
    # a previous install: an old source module that would shadow the new .mpy, a stale stage
    (fs / "_mpy" / "protocol").mkdir(parents=True)
    (fs / "_mpy" / "protocol" / "codec.py").write_text("raise ImportError('shadows the mpy')\n")
    (fs / "_mpy" / "backoff.mpy").write_bytes(b"old")
    bundle = make_bundle(tmp_path)
    item, device = F.load_bundle(bundle)
    plan = F.Plan(board.port, F.BOARDS["sim"], None, False, (*unix_plan_items, item), device)
    seen: list[tuple[str, int, int]] = []
    result = F.execute(plan, lambda ph, d, t: seen.append((ph, d, t)), timeout=5)

    want = {it.dest: it.sha256 for it in plan.items}
    got = snapshot(fs)
    assert {k: got.get(k) for k in want} == want
    assert not [p for p in got if p.endswith(F.STAGE_SUFFIX)]
    assert "_mpy/protocol/codec.py" not in got  # the shadowing twin is gone
    assert json.loads((fs / "config.json").read_bytes())["device"] == "ap-0001"
    assert result.written == len(plan.items) and result.bytes == sum(
        len(i.data) for i in plan.items
    )
    copy = [s for s in seen if s[0] == "copy"]
    assert copy[-1][1] == copy[-1][2] == result.bytes
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(copy))
    # every protocol module and firmware module is on the "flash", compiled
    for src, dest in F.source_files():
        name = dest if dest in F.KEEP_SOURCE else f"{F.MPY_DIR}/{dest[:-3]}.mpy"
        assert name in got, src
    # the installed .mpy files load on the board's interpreter, without the repository on its path
    env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
    code = (
        "import sys\nsys.path.insert(0, '_mpy')\n"  # what firmware/main.py does
        "import protocol.envelope, protocol.codec, protocol.sign\n"
        "print(protocol.codec.__file__, 'ok')"
    )
    r = subprocess.run(
        [micropython_binary(), "-c", code],
        cwd=fs,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.stdout.split() == ["_mpy/protocol/codec.mpy", "ok"], r.stdout + r.stderr


def test_verify_mismatch_leaves_the_previous_install(
    board: PtyDevice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = board.fs_dir
    (fs / "config.json").write_text(json.dumps({"device": "ap-0001", "old": True}))
    (fs / "_mpy").mkdir()
    (fs / "_mpy" / "ring.mpy").write_bytes(b"previous agent")
    before = snapshot(fs)
    items = (
        F.CopyItem("_mpy/ring.mpy", b"new agent " * 300, "test"),
        F.CopyItem("_mpy/protocol/x.mpy", b"x" * 100, "test"),
        F.load_bundle(make_bundle(tmp_path))[0],
    )
    plan = F.Plan(board.port, F.BOARDS["sim"], None, False, items, "ap-0001")
    real_write = F.Device.write

    def flaky_write(self: F.Device, path: str, data: bytes, cb: object) -> None:
        if path.startswith("_mpy/protocol/"):
            data = data[:-1] + b"?"  # a byte lost on the wire
        real_write(self, path, data, cb)  # type: ignore[arg-type]

    monkeypatch.setattr(F.Device, "write", flaky_write)
    with pytest.raises(F.FlashError) as e:
        F.execute(plan, timeout=5)
    assert e.value.code == F.VERIFY_FAILED and "_mpy/protocol/x.mpy.new" in str(e.value)
    after = snapshot(fs)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [p for p in after if p.endswith(F.STAGE_SUFFIX)]


def test_bundle_for_another_device_is_refused(board: PtyDevice, tmp_path: Path) -> None:
    fs = board.fs_dir
    (fs / "config.json").write_text(json.dumps({"device": "ap-old"}))
    before = snapshot(fs)
    bundle = make_bundle(tmp_path, "ap-new")
    runner = CliRunner()
    args = ["flash", "--port", board.port, "--board", "unix", "--bundle", str(bundle), "--no-agent"]
    r = runner.invoke(cli, args)
    assert r.exit_code == 1
    assert "holds device 'ap-old'" in r.output and len(r.output.strip().splitlines()) == 1
    assert snapshot(fs) == before
    r = runner.invoke(cli, [*args, "--replace-identity"])
    assert r.exit_code == 0, r.output
    assert "hashes verified" in r.output
    assert json.loads((fs / "config.json").read_text())["device"] == "ap-new"


def test_cli_flash_agent_and_dry_run(board: PtyDevice, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    runner = CliRunner()
    base = ["flash", "--port", board.port, "--board", "unix", "--bundle", str(bundle)]
    r = runner.invoke(cli, [*base, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "_mpy/protocol/envelope.mpy" in r.output and "config.json" in r.output
    assert "s3cret-pw" not in r.output and "abab" not in r.output
    assert snapshot(board.fs_dir) == {}  # a dry run touches nothing
    r = runner.invoke(cli, base)
    assert r.exit_code == 0, r.output
    assert "hashes verified" in r.output
    assert "config.json" in snapshot(board.fs_dir)


def test_wrong_board_is_refused(board: PtyDevice) -> None:
    r = CliRunner().invoke(cli, ["flash", "--port", board.port, "--board", "esp32"])
    assert r.exit_code == 1
    assert "MicroPython linux board, not esp32: pass --board sim" in r.output
    assert snapshot(board.fs_dir) == {}


def test_port_errors(tmp_path: Path, board: PtyDevice) -> None:
    runner = CliRunner()
    base = ["flash", "--board", "unix", "--no-agent", "--bundle", str(make_bundle(tmp_path))]
    r = runner.invoke(cli, [*base, "--port", "/dev/ttyNOPE0"])
    assert r.exit_code == 1 and "no such port /dev/ttyNOPE0" in r.output

    fd = os.open(board.port, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what pyserial/mpremote/esptool hold
        r = runner.invoke(cli, [*base, "--port", board.port])
        assert r.exit_code == 1 and "in use by another program" in r.output
    finally:
        os.close(fd)
    assert snapshot(board.fs_dir) == {}

    with PtyDevice(tmp_path / "silent", silent=True) as mute:
        r = runner.invoke(cli, [*base, "--port", mute.port, "--timeout", "1.5"])
    assert r.exit_code == 1
    assert "did not answer as a MicroPython board" in r.output
    assert len(r.output.strip().splitlines()) == 1


# Local checks: image header and bundle -------------------------------------------------------


def esp_image(cls: type = ESP32FirmwareImage) -> bytes:
    img = cls()
    img.entrypoint = 0x40080000
    img.segments = [
        ELFSection(b".dram0.data", 0x3FFB0000, bytes(range(256)), 0),
        ELFSection(b".iram0.text", 0x40080000, bytes(512), 0),
    ]
    data = img.save(None)
    assert isinstance(data, bytes)
    return data


def test_image_header_validation(tmp_path: Path) -> None:
    good = esp_image()
    p = tmp_path / "fw.bin"
    p.write_bytes(good)
    info = F.check_image(p, F.BOARDS["esp32"])
    assert (info.segments, info.chip, info.offset, info.size) == (2, "esp32", 0x1000, len(good))
    bad = {
        "truncated": good[:300],
        "no digest": good[:-5],
        "bit flip": good[:100] + bytes([good[100] ^ 1]) + good[101:],
        "zip": b"PK\x03\x04" + good[4:],
        "empty": b"",
        "s3": esp_image(ESP32S3FirmwareImage),
    }
    for what, data in bad.items():
        p.write_bytes(data)
        with pytest.raises(F.FlashError) as e:
            F.check_image(p, F.BOARDS["esp32"])
        assert e.value.code == F.BAD_IMAGE, what
    p.write_bytes(bad["s3"])
    with pytest.raises(F.FlashError, match="built for esp32s3, not esp32"):
        F.check_image(p, F.BOARDS["esp32"])


def test_cli_refuses_bad_firmware_and_options(tmp_path: Path) -> None:
    runner = CliRunner()
    trunc = tmp_path / "fw.bin"
    trunc.write_bytes(esp_image()[:200])
    r = runner.invoke(cli, ["flash", "--port", "/dev/null", "--firmware", str(trunc), "--dry-run"])
    assert r.exit_code == 1 and "truncated or corrupt" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["flash", "--port", "/dev/null", "--erase", "--dry-run"])
    assert r.exit_code == 1 and "--erase wipes MicroPython too" in r.output
    good = tmp_path / "ok.bin"
    good.write_bytes(esp_image())
    r = runner.invoke(
        cli, ["flash", "--port", "/dev/null", "--board", "unix", "--firmware", str(good)]
    )
    assert r.exit_code == 1 and "takes no firmware image" in r.output
    r = runner.invoke(
        cli, ["flash", "--port", "/dev/ttyX", "--firmware", str(good), "--erase", "--dry-run"]
    )
    assert r.exit_code == 0, r.output
    assert "erase the whole flash" in r.output and "at 0x1000" in r.output
    assert "xtensawin" in r.output  # the agent is compiled for the ESP32's architecture


def test_bundle_checks(tmp_path: Path) -> None:
    loose = make_bundle(tmp_path, "ap-loose", mode=0o644)
    with pytest.raises(F.FlashError, match="chmod 600"):
        F.load_bundle(loose)
    p = tmp_path / "b.json"
    for text, msg in [
        ("not json", "not JSON"),
        ("[1]", "one JSON object"),
        (json.dumps({"device": "a"}), "lacks field 'site'"),
    ]:
        p.write_text(text)
        p.chmod(0o600)
        with pytest.raises(F.FlashError, match=msg):
            F.load_bundle(p)
    good = make_bundle(tmp_path).read_bytes()
    item, device = F.check_bundle(good)  # bytes straight from a provisioning flow
    assert (item.dest, item.data, device) == ("config.json", good, "ap-0001")
    plan = F.build_plan("/dev/x", "unix", agent=False, bundle_data=good)
    assert plan.items == (item,) and plan.device_id == "ap-0001"
    doc = json.loads(good)
    doc["key"] = "zz"
    p.write_text(json.dumps(doc))
    with pytest.raises(F.FlashError, match="64 hex digits") as e:
        F.load_bundle(p)
    assert "s3cret" not in str(e.value)


def test_source_files_are_computed(tmp_path: Path) -> None:
    (tmp_path / "firmware" / "sub").mkdir(parents=True)
    (tmp_path / "protocol").mkdir()
    (tmp_path / "firmware" / "main.py").write_text("print('main')\n")
    (tmp_path / "firmware" / "newmod.py").write_text("X = 1\n")
    (tmp_path / "firmware" / "sub" / "__init__.py").write_text("")
    (tmp_path / "protocol" / "__init__.py").write_text("")
    (tmp_path / "firmware" / "broken.py").write_text("def (:\n")
    files = F.source_files(tmp_path)
    assert [d for _, d in files] == [
        "broken.py",
        "main.py",
        "newmod.py",
        "sub/__init__.py",
        "protocol/__init__.py",
    ]
    with pytest.raises(F.FlashError, match=r"mpy-cross failed on firmware/broken\.py"):
        F.compile_sources(files, F.BOARDS["sim"], tmp_path)
    items = F.compile_sources(files[1:], F.BOARDS["esp32"], tmp_path)
    assert [i.dest for i in items] == [
        "main.py",
        "_mpy/newmod.mpy",
        "_mpy/sub/__init__.mpy",
        "_mpy/protocol/__init__.mpy",
    ]
    assert items[0].data == b"print('main')\n"
    assert items[1].data[:1] == b"M"  # mpy header
