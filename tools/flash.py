"""Put the agent on a board: optionally write the MicroPython image (esptool), then copy the agent
compiled by mpy-cross and the device bundle over the raw REPL (mpremote), verify, and commit.

Two halves. Planning is local and pure apart from reading files and running mpy-cross: it
validates the image header, compiles, checks the bundle, and yields a `Plan` that `--dry-run`
prints. `execute` does the device I/O in an order that never leaves a half-written agent:
every file is staged as `<name>.new`, all staged files are hashed on the device and compared,
and only then one short script renames them into place (and removes a stale `.py`/`.mpy` twin
that would shadow the new module). Errors are `FlashError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import runpy
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGE_SUFFIX = ".new"
CHUNK = 1024  # bytes per raw-REPL write; larger chunks cost heap on a 64 KiB device
KEEP_SOURCE = frozenset({"main.py"})  # MicroPython runs it by name, never as .mpy
# Compiled modules live here on the device: firmware/main.py puts it first on sys.path (the same
# layout tools/firmware_build.py produces for the unix-port agent).
MPY_DIR = "_mpy"
BUNDLE_DEST = "config.json"
BUNDLE_FIELDS = ("device", "site", "zone", "kind", "key", "broker")
ESP_IMAGE_MAGIC = 0xE9

# Reason codes.
PORT_MISSING = "port_missing"
PORT_BUSY = "port_busy"
PORT_DENIED = "port_denied"
NOT_MICROPYTHON = "not_micropython"
WRONG_BOARD = "wrong_board"
BAD_IMAGE = "bad_image"
BAD_BUNDLE = "bad_bundle"
OTHER_DEVICE = "other_device"
COMPILE_FAILED = "compile_failed"
VERIFY_FAILED = "verify_failed"
DEVICE_ERROR = "device_error"
ESPTOOL_FAILED = "esptool_failed"


class FlashError(Exception):
    """One-line, actionable; `code` is one of the reason codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Board:
    """One row of firmware/boards.py, the board table the device itself reads at boot."""

    name: str
    platform: str  # sys.platform the board reports
    march: str | None  # mpy-cross -march; None: portable bytecode
    chip: str | None = None  # esptool chip name, when images can be written
    chip_id: int | None = None  # image header chip id for that chip
    image_offset: int = 0
    module: str = ""  # the firmware module that drives it (contract: firmware/board.pyi)


def load_boards(path: Path = ROOT / "firmware" / "boards.py") -> dict[str, Board]:
    """The board table, read from the firmware's own file (plain literals: executing it has no
    effect), so flashing, provisioning and the device agree on what boards exist."""
    table: dict[str, tuple[str, str, str | None, int | None, int, str | None]]
    table = runpy.run_path(str(path))["BOARDS"]
    return {
        name: Board(name, platform, march, chip, chip_id, offset, module)
        for name, (module, platform, chip, chip_id, offset, march) in table.items()
    }


BOARDS = load_boards()
# Earlier names still accepted on the command line: "unix" was the flash tool's name for the
# unix-port board before the table was shared with the firmware, which calls it "sim".
ALIASES = {"unix": "sim"}


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    size: int
    segments: int
    chip: str
    offset: int


@dataclass(frozen=True)
class CopyItem:
    """One file for the device: its destination (relative to the device's filesystem root)."""

    dest: str
    data: bytes
    source: str  # what it was made from, for the plan

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def staged(self) -> str:
        return self.dest + STAGE_SUFFIX

    @property
    def twin(self) -> str | None:
        """The other form of the same module, which must not survive (.py shadows .mpy)."""
        if self.dest.endswith(".mpy"):
            return self.dest[:-4] + ".py"
        if self.dest.endswith(".py") and self.dest not in KEEP_SOURCE:
            return self.dest[:-3] + ".mpy"
        return None


@dataclass(frozen=True)
class Plan:
    port: str
    board: Board
    image: ImageInfo | None
    erase: bool
    items: tuple[CopyItem, ...]
    device_id: str | None  # from the bundle, when one is copied

    def describe(self) -> list[str]:
        """Human-readable plan lines; never the bundle's contents."""
        out = [f"port {self.port}, board {self.board.name}"]
        if self.erase:
            out.append("erase the whole flash")
        if self.image is not None:
            i = self.image
            out.append(
                f"write {i.path} ({i.size} bytes, {i.segments} segments, {i.chip}) "
                f"at 0x{i.offset:x} with esptool, then wait for MicroPython to boot"
            )
        total = sum(len(it.data) for it in self.items)
        out.append(f"copy {len(self.items)} files, {total} bytes, staged as *{STAGE_SUFFIX}:")
        for it in self.items:
            out.append(f"  {it.dest:<28} {len(it.data):>7} B  {it.sha256[:12]}  <- {it.source}")
        out.append("verify sha256 of every staged file on the device, then rename into place")
        return out


# Planning -----------------------------------------------------------------------------------


def board(name: str) -> Board:
    """The table row for name (or for an alias of it); FlashError naming the choices."""
    try:
        return BOARDS[ALIASES.get(name, name)]
    except KeyError:
        raise FlashError(WRONG_BOARD, f"unknown board {name!r}: use {', '.join(BOARDS)}") from None


def check_image(path: Path, b: Board) -> ImageInfo:
    """Parse the image with esptool's own loader; refuse anything that is not a whole image for
    this chip (wrong magic, truncated segments, wrong chip id, bad SHA-256 digest)."""
    if b.chip is None:
        raise FlashError(BAD_IMAGE, f"board {b.name} takes no firmware image: drop --firmware")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FlashError(BAD_IMAGE, f"cannot read image {path}: {e.strerror}") from e
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        first = f"0x{data[0]:02x}" if data else "nothing"
        raise FlashError(
            BAD_IMAGE,
            f"{path} is not an ESP image (starts with {first}, expected 0xe9): "
            "download the MicroPython .bin for your board",
        )
    from esptool.bin_image import LoadFirmwareImage

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            img = LoadFirmwareImage(b.chip, data)
    except Exception as e:  # esptool raises FatalError, struct.error, RuntimeError on bad input
        raise FlashError(
            BAD_IMAGE, f"{path} is truncated or corrupt ({e}): download the image again"
        ) from e
    if b.chip_id is not None and getattr(img, "chip_id", b.chip_id) != b.chip_id:
        raise FlashError(
            BAD_IMAGE,
            f"{path} is built for {_chip_name(img.chip_id)}, not {b.chip}: use the {b.chip} image",
        )
    stored, calc = getattr(img, "stored_digest", None), getattr(img, "calc_digest", None)
    if getattr(img, "append_digest", False) and stored != calc:
        raise FlashError(BAD_IMAGE, f"{path} fails its SHA-256 digest: download the image again")
    return ImageInfo(path, len(data), len(img.segments), b.chip, b.image_offset)


def _chip_name(chip_id: int) -> str:
    from esptool.targets import CHIP_DEFS

    names = [k for k, c in CHIP_DEFS.items() if getattr(c, "IMAGE_CHIP_ID", None) == chip_id]
    return names[0] if names else f"chip id {chip_id}"


def source_files(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(source, module path) for firmware/**.py (top-level modules, as the agent imports them)
    and protocol/**.py (the `protocol` package). Computed from the tree, so new modules are
    picked up without editing a list."""
    out: list[tuple[Path, str]] = []
    for base, prefix in ((root / "firmware", ""), (root / "protocol", "protocol/")):
        for p in sorted(base.rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            out.append((p, prefix + p.relative_to(base).as_posix()))
    return out


def _mpy_cross() -> str:
    from tools import binaries

    try:
        return binaries.mpy_cross()
    except binaries.MissingBinary as e:
        raise FlashError(COMPILE_FAILED, str(e)) from None


def compile_sources(files: list[tuple[Path, str]], b: Board, root: Path = ROOT) -> list[CopyItem]:
    """Compile each module with mpy-cross for the board (main.py stays source)."""
    items: list[CopyItem] = []
    tool = _mpy_cross()
    with tempfile.TemporaryDirectory(prefix="idufleet-mpy-") as tmp:
        for src, dest in files:
            rel = src.relative_to(root).as_posix() if src.is_relative_to(root) else str(src)
            if dest in KEEP_SOURCE:
                items.append(CopyItem(dest, src.read_bytes(), rel))
                continue
            out = Path(tmp) / (dest.replace("/", "__") + ".mpy")
            cmd = [tool, "-o", str(out), "-s", dest]
            if b.march:
                cmd.append(f"-march={b.march}")
            proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:
                first = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                raise FlashError(COMPILE_FAILED, f"mpy-cross failed on {rel}: {first[0]}")
            arch = f" -march={b.march}" if b.march else ""
            mpy = f"{MPY_DIR}/{dest[:-3]}.mpy"
            items.append(CopyItem(mpy, out.read_bytes(), f"{rel} (mpy-cross{arch})"))
    return items


def load_bundle(path: Path) -> tuple[CopyItem, str]:
    """Check the bundle file (owner-only, then `check_bundle`) and return it as config.json plus
    its device id. Messages never quote the file's contents."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as e:
        raise FlashError(BAD_BUNDLE, f"cannot read bundle {path}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FlashError(
            BAD_BUNDLE,
            f"bundle {path} is readable by other users (mode {st.st_mode & 0o777:04o}); it holds "
            f"the device key: run chmod 600 {path}",
        )
    return check_bundle(raw, f"bundle {path}")


def check_bundle(raw: bytes, label: str = "bundle") -> tuple[CopyItem, str]:
    """The bundle as bytes (provisioning can pass it without a file on disk): one JSON object
    with the required fields of docs/DEVICE-CONFIG.md and a 64-hex-digit key."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise FlashError(BAD_BUNDLE, f"{label} is not JSON (line {_line(e)})") from e
    if not isinstance(doc, dict):
        raise FlashError(BAD_BUNDLE, f"{label} must be one JSON object")
    if "claim" in doc and "key" not in doc:  # a claim bundle (docs/PROVISIONING.md)
        return _check_claim_bundle(doc, raw, label)
    for f in BUNDLE_FIELDS:
        if f not in doc:
            raise FlashError(BAD_BUNDLE, f"{label} lacks field {f!r} (docs/DEVICE-CONFIG.md)")
    key = doc["key"]
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise FlashError(BAD_BUNDLE, f"{label}: field 'key' must be 64 hex digits")
    if not isinstance(doc["device"], str) or not doc["device"]:
        raise FlashError(BAD_BUNDLE, f"{label}: field 'device' must be a device id")
    return CopyItem(BUNDLE_DEST, raw, f"{label}"), doc["device"]


def _check_claim_bundle(doc: dict[str, Any], raw: bytes, label: str) -> tuple[CopyItem, str]:
    """A board that fetches its identity at first boot: `claim` {id, secret} instead of device
    and key. Its plan identity is "claim:<token id>", so it never silently replaces a board that
    already holds a device identity (--replace-identity does)."""
    c = doc["claim"]
    ok = (
        isinstance(c, dict)
        and isinstance(c.get("id"), str)
        and re.fullmatch(r"[0-9a-f]{16}", c["id"]) is not None
        and isinstance(c.get("secret"), str)
        and re.fullmatch(r"[0-9a-f]{32}", c["secret"]) is not None
    )
    if not ok:
        raise FlashError(
            BAD_BUNDLE, f"{label}: claim must be {{id: 16 hex, secret: 32 hex}} (claim create)"
        )
    for f in ("site", "zone", "kind", "broker"):
        if f not in doc:
            raise FlashError(BAD_BUNDLE, f"{label} lacks field {f!r} (docs/PROVISIONING.md)")
    return CopyItem(BUNDLE_DEST, raw, f"{label}"), "claim:" + c["id"]


def _line(e: ValueError) -> int:
    return int(getattr(e, "lineno", 0))


def build_plan(
    port: str,
    board_name: str = "esp32",
    firmware: Path | None = None,
    bundle: Path | None = None,
    erase: bool = False,
    agent: bool = True,
    root: Path = ROOT,
    bundle_data: bytes | None = None,
) -> Plan:
    """Everything checked before the board is touched: image, compiled agent, bundle (a file,
    or `bundle_data` bytes from a provisioning flow that never writes the key to disk)."""
    b = board(board_name)
    if erase and firmware is None:
        raise FlashError(
            BAD_IMAGE, "--erase wipes MicroPython too: give --firmware IMAGE.bin with it"
        )
    image = check_image(firmware, b) if firmware is not None else None
    items = compile_sources(source_files(root), b, root) if agent else []
    device_id = None
    if bundle is not None or bundle_data is not None:
        if bundle is not None:
            item, device_id = load_bundle(bundle)
        else:
            assert bundle_data is not None
            item, device_id = check_bundle(bundle_data)
        items.append(item)  # last: config.json lands after the code that reads it
    if not items and image is None:
        raise FlashError(BAD_BUNDLE, "nothing to do: give --firmware, the agent, or --bundle")
    return Plan(port, b, image, erase, tuple(items), device_id)


# Device I/O -----------------------------------------------------------------------------------


def check_port(port: str) -> None:
    """Fail fast with the real reason: mpremote reports every open failure the same way."""
    if not os.path.exists(port):
        raise FlashError(
            PORT_MISSING,
            f"no such port {port}: plug the board in and look at /dev/ttyUSB* /dev/ttyACM*",
        )
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise FlashError(PORT_BUSY, f"port {port} is busy: close the other program") from e
        if e.errno == errno.EACCES:
            raise FlashError(
                PORT_DENIED, f"no permission on {port}: add yourself to the dialout group"
            ) from e
        raise FlashError(PORT_MISSING, f"cannot open {port}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        raise FlashError(
            PORT_BUSY,
            f"port {port} is in use by another program (serial monitor, mpremote, esptool?): "
            "close it and retry",
        ) from e
    finally:
        os.close(fd)


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


_HASH_SCRIPT = """
import hashlib, binascii
def _h(p):
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while 1:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
for _p in %r:
    try:
        print(_p, _h(_p))
    except OSError:
        print(_p, '-')
"""

_MKDIRS_SCRIPT = "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass"
_REMOVE_SCRIPT = "import os\nfor p in %r:\n try:\n  os.remove(p)\n except OSError:\n  pass"

_COMMIT_SCRIPT = """
import os
for _a, _b in %r:
    os.rename(_a, _b)
for _p in %r:
    try:
        os.remove(_p)
    except OSError:
        pass
print('committed')
"""


class Device:
    """A MicroPython board behind a serial port, in raw REPL (mpremote's transport)."""

    def __init__(self, port: str, timeout: float = 10.0) -> None:
        check_port(port)
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._error: type[Exception] = TransportError
        try:
            self.t: Any = SerialTransport(port, baudrate=115200, timeout=1)
        except TransportError as e:
            raise FlashError(PORT_BUSY, f"cannot open {port} ({e}): is it in use?") from e
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it read
                self.t.enter_raw_repl(soft_reset=False, timeout_overall=timeout)
        except (TransportError, OSError) as e:
            self.t.close()
            raise FlashError(
                NOT_MICROPYTHON,
                f"{port} did not answer as a MicroPython board (no raw REPL within {timeout:g}s): "
                "check the port, or reset the board and retry",
            ) from e

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.t.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.t.close()

    def exec(self, code: str) -> str:
        try:
            return bytes(self.t.exec(code)).decode(errors="replace")
        except self._error as e:
            last = str(e).strip().splitlines()[-1:] or ["?"]
            raise FlashError(DEVICE_ERROR, f"the board failed: {last[0]}") from e

    def platform(self) -> str:
        return self.exec("import sys\nprint(sys.platform)").strip()

    def device_id(self) -> str | None:
        """The device id in the board's current config.json, if it has a readable one."""
        out = self.exec(
            "import json\ntry:\n with open('config.json') as f:\n  print(json.load(f)['device'])"
            "\nexcept Exception:\n print('')"
        ).strip()
        return out or None

    def mkdirs(self, dirs: list[str]) -> None:
        if dirs:
            self.exec(_MKDIRS_SCRIPT % (dirs,))

    def write(self, path: str, data: bytes, cb: Callable[[int], None]) -> None:
        try:
            self.t.fs_writefile(path, data, chunk_size=CHUNK, progress_callback=lambda d, t: cb(d))
        except (self._error, OSError) as e:
            raise FlashError(DEVICE_ERROR, f"writing {path} on the board failed: {e}") from e

    def hashes(self, paths: list[str]) -> dict[str, str]:
        out = self.exec(_HASH_SCRIPT % (paths,))
        found: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                found[parts[0]] = parts[1]
        return found

    def remove(self, paths: list[str]) -> None:
        self.exec(_REMOVE_SCRIPT % (paths,))


@dataclass(frozen=True)
class Result:
    written: int  # files
    bytes: int
    seconds: float


def write_image(plan: Plan, baud: int = 460800) -> None:
    """esptool through its Python API: needs a real ESP32 in bootloader reach (not tested here)."""
    assert plan.image is not None
    from esptool.cmds import (
        attach_flash,
        detect_chip,
        erase_flash,
        reset_chip,
        run_stub,
        write_flash,
    )
    from esptool.util import FatalError

    check_port(plan.port)
    try:
        with detect_chip(plan.port) as esp:
            if esp.CHIP_NAME.lower().replace("-", "") != plan.image.chip:
                raise FlashError(
                    WRONG_BOARD, f"{plan.port} has an {esp.CHIP_NAME}, the image is for esp32"
                )
            esp = run_stub(esp)
            if baud != esp.ESP_ROM_BAUD:
                esp.change_baud(baud)
            attach_flash(esp)
            if plan.erase:
                erase_flash(esp)
            write_flash(esp, [(plan.image.offset, str(plan.image.path))])
            reset_chip(esp, "hard-reset")
    except FatalError as e:
        raise FlashError(
            ESPTOOL_FAILED, f"esptool: {e}; hold BOOT while plugging in and retry"
        ) from e


def execute(
    plan: Plan,
    progress: Progress = _no_progress,
    replace_identity: bool = False,
    timeout: float = 10.0,
    boot_wait: float = 8.0,
) -> Result:
    """Run the plan. On any failure after staging began, staged files are removed (best effort)
    and the files in place are the previous ones."""
    t0 = time.monotonic()
    if plan.image is not None:
        write_image(plan)
        time.sleep(min(boot_wait, 2.0))  # the first boot also formats the filesystem
    dev = Device(plan.port, timeout=boot_wait if plan.image is not None else timeout)
    staged: list[str] = []
    try:
        got = dev.platform()
        if got != plan.board.platform:
            raise FlashError(
                WRONG_BOARD,
                f"{plan.port} is a MicroPython {got} board, not {plan.board.name}: "
                f"pass --board {next((n for n, b in BOARDS.items() if b.platform == got), got)}",
            )
        if plan.device_id is not None and not replace_identity:
            current = dev.device_id()
            if current is not None and current != plan.device_id:
                raise FlashError(
                    OTHER_DEVICE,
                    f"the board holds device {current!r}, the bundle is for {plan.device_id!r}: "
                    "check the bundle, or pass --replace-identity to re-provision this board",
                )
        dirs = sorted({str(d) for it in plan.items for d in Path(it.dest).parents} - {"."})
        dev.mkdirs(dirs)
        total = sum(len(it.data) for it in plan.items)
        done = 0
        progress("copy", 0, total)
        for it in plan.items:
            staged.append(it.staged)
            dev.write(it.staged, it.data, _offset(progress, "copy", done, total))
            done += len(it.data)
            progress("copy", done, total)
        progress("verify", 0, len(plan.items))
        _verify(dev, {it.staged: it.sha256 for it in plan.items}, "staged")
        progress("verify", len(plan.items), len(plan.items))
        pairs = [(it.staged, it.dest) for it in plan.items]
        twins = [it.twin for it in plan.items if it.twin]
        if "committed" not in dev.exec(_COMMIT_SCRIPT % (pairs, twins)):
            raise FlashError(DEVICE_ERROR, "the board did not confirm the rename: run flash again")
        staged = []
        _verify(dev, {it.dest: it.sha256 for it in plan.items}, "installed")
        return Result(len(plan.items), total, time.monotonic() - t0)
    except BaseException:
        if staged:
            with contextlib.suppress(Exception):
                dev.remove(staged)
        raise
    finally:
        dev.close()


def _offset(progress: Progress, phase: str, base: int, total: int) -> Callable[[int], None]:
    def cb(done: int) -> None:
        progress(phase, base + done, total)

    return cb


def _verify(dev: Device, want: dict[str, str], what: str) -> None:
    got = dev.hashes(list(want))
    bad = [p for p, h in want.items() if got.get(p) != h]
    if bad:
        raise FlashError(
            VERIFY_FAILED,
            f"{len(bad)} {what} file(s) differ on the board (first: {bad[0]}): "
            "nothing was switched over; check the cable and run flash again",
        )
