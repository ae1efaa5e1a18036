"""The generated Mosquitto config sizes its queues from the fleet and the outage to survive
(controller/security/broker_config.py: QueueSizing; the formula is in its docstring and in
docs/CONTROLLER.md), saves its state every few seconds and publishes $SYS often enough to watch."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.errors import SecurityError
from controller.security.broker_config import MIN_QUEUE, QueueSizing
from tools.cli import cli


@pytest.mark.parametrize(
    ("devices", "interval", "outage", "queued"),
    [
        (1000, 60.0, 3600.0, 120_000),  # 2 x 1000 x 3600 / 60
        (5000, 30.0, 7200.0, 2_400_000),
        (10, 60.0, 600.0, MIN_QUEUE),  # never below what the burst trials needed
    ],
)
def test_queue_limits_follow_the_formula(
    devices: int, interval: float, outage: float, queued: int
) -> None:
    q = QueueSizing(devices, interval, outage, subscribers=2)
    assert q.max_queued_messages == queued
    assert q.max_queued_bytes == queued * 1024
    assert q.memory_limit == 2 * queued * 1024 + 64 * 1024 * 1024


def test_nonsense_sizing_is_refused() -> None:
    with pytest.raises(SecurityError):
        QueueSizing(devices=0)
    with pytest.raises(SecurityError):
        QueueSizing(outage_s=0)


def test_broker_init_writes_sized_queues_autosave_and_sys_interval(tmp_path: Path) -> None:
    d = tmp_path / "b"
    sizing = ["--devices", "5000", "--report-interval", "30", "--outage", "7200"]
    r = CliRunner().invoke(cli, ["broker", "init", "--dir", str(d), *sizing, "--controllers", "2"])
    assert r.exit_code == 0, r.output
    lines = (d / "mosquitto.conf").read_text().splitlines()
    for want in (
        "max_queued_messages 2400000",
        f"max_queued_bytes {2_400_000 * 1024}",
        "max_inflight_messages 1000",
        "autosave_interval 5",
        "sys_interval 10",
    ):
        assert want in lines
    assert not [x for x in lines if x.startswith("memory_limit")]  # see QueueSizing
