"""Bulk broker accounts for a simulated fleet against a real Mosquitto with the dynamic security
plugin: written into the initial document before the broker starts, or created through control
messages to a running broker, idempotently (a batch applied twice is done, not an error)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.security import dynsec
from controller.security.broker_config import BrokerSettings
from sim import provision as P
from sim.model import DeviceSpec
from tests.support.secure_broker import GeneratedBroker, Peer

ADMIN = ("admin", "admin-pw-for-tests")


def specs(n: int, prefix: str = "simt") -> list[DeviceSpec]:
    return [
        DeviceSpec(f"{prefix}-ap-{i:03d}", "porto", "ribeira", "ap", bytes(32), f"pw-{i}", i)
        for i in range(1, n + 1)
    ]


def login(port: int, user: str, password: str) -> int:
    p = Peer(port, user, password, client_id=user)
    try:
        return p.connect()
    finally:
        p.close()


@pytest.fixture
def broker_with(tmp_path: Path) -> Iterator[tuple[GeneratedBroker, list[DeviceSpec]]]:
    pre = specs(30, "pre")
    dyn = dynsec.write_initial_file(
        tmp_path / "dynsec.json", *ADMIN, None, [(s.site, s.id, s.password or "") for s in pre]
    )
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn)
    ).start()
    try:
        yield b, pre
    finally:
        b.stop()


def test_accounts_in_the_initial_document_log_in_with_their_role(
    broker_with: tuple[GeneratedBroker, list[DeviceSpec]],
) -> None:
    b, pre = broker_with
    s = pre[0]
    assert login(b.port, s.id, s.password or "") == 0
    assert login(b.port, s.id, "wrong") != 0
    with dynsec.DynsecClient("127.0.0.1", b.port, *ADMIN) as c:
        assert c.get_client(s.id)["roles"] == [{"rolename": dynsec.device_role(s.site, s.id)}]
        assert len(c.list_clients()) == 31  # the admin and 30 devices


def test_creating_accounts_twice_is_done_and_verified_not_an_error(
    broker_with: tuple[GeneratedBroker, list[DeviceSpec]],
) -> None:
    b, _ = broker_with
    admin = P.Admin("127.0.0.1", b.port, *ADMIN)
    fleet = specs(60)
    first = P.create_accounts(admin, fleet)
    assert (first.created, first.existed) == (60, 0)
    # the same batch again (a QoS 1 re-send, a retry after a timeout), with new passwords
    again = [
        DeviceSpec(s.id, s.site, s.zone, s.kind, s.key, "new-" + (s.password or "")) for s in fleet
    ]
    second = P.create_accounts(admin, again)
    assert (second.created, second.existed) == (0, 60)
    assert login(b.port, again[5].id, again[5].password or "") == 0  # ours now


def test_an_existing_account_that_is_not_this_devices_is_refused(
    broker_with: tuple[GeneratedBroker, list[DeviceSpec]],
) -> None:
    b, _ = broker_with
    with dynsec.DynsecClient("127.0.0.1", b.port, *ADMIN) as c:
        c.run([{"command": "createClient", "username": "simt-ap-002", "password": "theirs"}])
    with pytest.raises(P.ProvisionError, match="simt-ap-002 already exists and has roles"):
        P.create_accounts(P.Admin("127.0.0.1", b.port, *ADMIN), specs(3))
    assert login(b.port, "simt-ap-002", "theirs") == 0  # left alone


def test_batches_aim_at_the_target_time_and_never_more_than_double() -> None:
    assert P.next_batch(50, 0.1) == 100  # fast: at most double
    assert P.next_batch(100, 4 * P.BATCH_TARGET_S) == 25
    assert P.next_batch(5, 100.0) == P.BATCH_MIN
    assert P.next_batch(400, 0.0) == P.BATCH_MAX
