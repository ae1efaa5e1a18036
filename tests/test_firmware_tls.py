"""The agent over TLS: the broker's certificate is verified against the project CA (PEM in the
bundle, converted to DER on the device), reports arrive and verify, also after the broker
restarts; an agent trusting another CA never gets through."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.provisioning.bundles import broker_block
from controller.security import ca
from tests.firmware.harness import Agent, Observer, make_flash
from tests.support.broker import Broker, free_port

pytestmark = pytest.mark.timeout(90)


def tls_broker(factory: Callable[..., Broker], cadir: Path) -> tuple[Broker, int]:
    port = free_port()
    extra = [
        f"listener {port} 127.0.0.1",
        f"cafile {cadir / 'ca.crt'}",
        f"certfile {cadir / 'server.crt'}",
        f"keyfile {cadir / 'server.key'}",
    ]
    if os.geteuid() == 0:
        extra.insert(0, "user root")
    return factory(extra=extra), port


def test_agent_over_tls(broker_factory: Callable[..., Broker], tmp_path: Path) -> None:
    cadir = tmp_path / "ca"
    ca.init_ca(cadir)
    ca.issue_server(cadir, ["localhost", "127.0.0.1"])
    other = tmp_path / "other"
    ca.init_ca(other)
    broker, tls_port = tls_broker(broker_factory, cadir)
    # the plain listener, for observing only; a persistent session, so what the agent publishes
    # after the restart reaches the observer even if it reconnects later than the agent
    obs = Observer(broker.port, persistent=True).start()

    def tls(device: str, ca_file: Path) -> dict[str, object]:
        return broker_block("127.0.0.1", tls_port, device, None, True, str(ca_file))

    good = Agent(make_flash(tmp_path, "ap-tls", 0, broker=tls("ap-tls", cadir / "ca.crt"))).start()
    bad = Agent(
        make_flash(tmp_path, "ap-rogue", 0, broker=tls("ap-rogue", other / "ca.crt"))
    ).start()
    try:
        obs.wait(lambda: len(obs.reports("ap-tls")) >= 5, 30, "reports over TLS")
        obs.wait(lambda: "link down" in bad.console(), 30, "the rogue agent's TLS failure")
        assert not obs.items("ap-rogue")
        assert not obs.bad
        # a broker restart: the agent reconnects over TLS (in its 64 KiB heap, after running
        # a while) and the reports made meanwhile arrive
        downs = good.console().count("link down")
        broker.stop()
        obs.wait(lambda: good.console().count("link down") > downs, 30, "the agent sees it")
        broker.start()
        try:
            obs.wait(lambda: len(obs.items("ap-tls", "birth")) >= 2, 30, "birth after a restart")
            n = len(obs.reports("ap-tls"))
            obs.wait(lambda: len(obs.reports("ap-tls")) >= n + 5, 30, "reports after a restart")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- agent console\n{good.console()[-2000:]}") from None
        assert not obs.bad
    finally:
        good.kill()
        bad.kill()
        obs.stop()
    assert "connected" in good.console()
    out = bad.console()
    assert "connected" not in out and "link down" in out, out
