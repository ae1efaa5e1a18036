"""OTA transfer end to end (docs/OTA.md, docs/PROTOCOL.md "9 OTA"): the real micropython agent in a
64 KiB heap, a real Mosquitto, a real controller. A release built by the release code downloads
fully and every file's SHA-256 matches; a SIGKILL mid-download resumes with at most one chunk
fetched twice; a corrupted chunk is re-fetched; bad signature, wrong key, expired, below floor and
wrong board are refused with the reason and nothing staged."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.keys import MasterKey
from protocol import manifest as MF
from protocol import messages as M
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.firmware.harness import Agent, make_flash
from tests.ota_kit import make_release, release_key, short_wait
from tools import release as R

MASTER = MasterKey(bytes(range(32)))
PUB = R.raw_public(release_key())


@dataclass
class Stack:
    ct: ControllerThread
    agent: Agent
    flash: Path
    dev: str

    @property
    def fleet(self) -> Any:
        assert self.ct.ctl is not None
        return self.ct.ctl.fleet

    def status(self) -> dict[str, Any]:
        return self.fleet.ota_status(self.dev) or {}

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.status()):
            if time.monotonic() > deadline:
                print(self.agent.console()[-3000:])
                raise AssertionError(f"timed out waiting for {what}: {self.status()}")
            time.sleep(0.02)


@pytest.fixture
def stack(tmp_path: Path, broker_factory: Callable[..., Any]) -> Any:
    broker = broker_factory()
    ct = ControllerThread(make_config(sqlite_config(tmp_path), broker.port), MASTER).start()
    assert ct.ctl is not None and ct.ctl.fleet is not None
    dev = "upy-ota"
    new = ct.call(ct.ctl.fleet.register, dev, "porto", "ribeira", "ap")
    flash = make_flash(
        tmp_path / "flash", dev, broker.port, key=new.key.hex(), release_key=PUB.hex(),
        interval=1,
    )  # fmt: skip
    agent = Agent(short_wait(flash)).start()
    s = Stack(ct, agent, flash, dev)
    deadline = time.monotonic() + 20
    while "connected" not in agent.console():
        assert time.monotonic() < deadline, agent.console()
        time.sleep(0.02)
    yield s
    agent.kill()
    ct.stop()


def staged_files_match(flash: Path, release: Path) -> bool:
    raw = release.read_bytes()
    m = MF.parse(raw)
    stage = (flash / "slot_b" / "stage.bin").read_bytes()
    assert len(stage) == m.total
    return all(
        hashlib.sha256(stage[off : off + size]).digest() == digest
        for _, size, digest, off in m.files()
    )


def test_release_downloads_fully_and_every_file_matches(stack: Stack, tmp_path: Path) -> None:
    rel = make_release(tmp_path / "r.bin")  # the real agent for the sim board
    out = stack.ct.call(stack.fleet.offer_release, stack.dev, str(rel))
    stack.wait(lambda s: s.get("state") == "downloaded", 30, "downloaded")
    assert stack.status()["result"] == "ok"
    assert staged_files_match(stack.flash, rel)
    row = stack.ct.call(stack.fleet.command, out["epoch"], out["seq"])
    assert row["status"] == "ok"  # the offer's ACK
    con = stack.agent.console()
    assert "MemoryError" not in con and "ota verify ok" in con


def test_sigkill_mid_download_resumes_refetching_at_most_one_chunk(
    stack: Stack, tmp_path: Path
) -> None:
    rel = make_release(tmp_path / "r.bin", size=256 * 1024)
    stack.ct.call(stack.fleet.offer_release, stack.dev, str(rel))
    stack.wait(lambda s: s.get("chunks_served", 0) >= 40, 30, "40 chunks served")
    stack.agent.kill()
    stack.agent.start()
    stack.wait(lambda s: s.get("state") == "downloaded", 40, "downloaded after the restart")
    assert staged_files_match(stack.flash, rel)
    assert stack.status()["chunks_refetched"] <= 1, stack.status()


def test_corrupted_chunk_is_detected_and_refetched(stack: Stack, tmp_path: Path) -> None:
    rel = make_release(tmp_path / "r.bin", size=32 * 1024)
    stack.fleet.ota.corrupt_once.add((stack.dev, M.PART_PAYLOAD, 5))
    stack.ct.call(stack.fleet.offer_release, stack.dev, str(rel))
    stack.wait(lambda s: s.get("state") == "downloaded", 30, "downloaded")
    assert staged_files_match(stack.flash, rel)
    assert stack.status()["chunks_refetched"] == 1
    assert "ota chunk 5 corrupt" in stack.agent.console()


def _other_key() -> Any:
    return release_key(7)


REFUSALS = [
    ("wrong_key", {"key": "other"}),
    ("expired", {"expires": 1000}),
    ("wrong_board", {"board": "esp32"}),
    ("below_floor", {"floor": True}),
    ("bad_signature", {"flip_signature": True}),
]


@pytest.mark.parametrize(("reason", "how"), REFUSALS, ids=[r for r, _ in REFUSALS])
def test_refused_manifest_is_reported_with_its_reason_and_nothing_staged(
    stack: Stack, tmp_path: Path, reason: str, how: dict[str, Any]
) -> None:
    files = [("lib/a.bin", b"a" * 3000), ("lib/b.bin", b"b" * 100)]
    kw: dict[str, Any] = {}
    if how.get("key"):
        kw["key"] = _other_key()
    if "expires" in how:
        kw["expires"] = how["expires"]
    if "board" in how:
        kw["board"] = how["board"]
    rel = make_release(tmp_path / "r.bin", files, **kw)
    if how.get("floor"):
        (stack.flash / "ota.floor").write_text("1000001 0")  # as install will persist it
    if how.get("flip_signature"):
        raw = bytearray(rel.read_bytes())
        m = MF.parse(bytes(raw))
        raw[m.signed_len + 3] ^= 1
        rel.write_bytes(bytes(raw))
    stack.ct.call(stack.fleet.offer_release, stack.dev, str(rel))
    stack.wait(lambda s: s.get("state") == "failed", 30, "refused")
    st = stack.status()
    assert st["result"] == reason and st["detail"] == reason, st
    assert not (stack.flash / "slot_b" / "stage.bin").exists()
    assert st["chunks_served"] == 0
