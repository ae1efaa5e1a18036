"""Stopping and restarting the controller loses nothing (persistent session, flush on stop, the
replay window survives in the store), and two controllers on a shared subscription split the
load and store every report exactly once."""

from __future__ import annotations

from controller import registry
from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.store import open_store
from protocol import messages as M
from tests.controller.devsim import SimDevice, publisher
from tests.controller.harness import ControllerThread, make_config
from tests.support.broker import Broker


def test_restart_resumes_session_and_window(
    store_cfg: StoreConfig, master: MasterKey, broker: Broker
) -> None:
    s = open_store(store_cfg)
    key = registry.create_device(s, master, "ap-1", "porto", "foz", "ap").key
    s.close()
    cfg = make_config(store_cfg, broker.port, client_id="ctl-restart")
    dev = SimDevice("ap-1", key, broker.port)
    ct = ControllerThread(cfg, master).start()
    dev.connect()
    for i in range(50):
        dev.report({16: i})
    old = dev.build(M.REPORT, {16: 999}, seq=10)  # REPORT seq 10 again: a replay
    ct.wait(lambda c: c.metrics.stored._value.get() >= 51, what="first 51 stored")
    ct.stop()
    for i in range(50, 150):  # the broker queues these for the stopped controller's session
        dev.report({16: i})
    ct2 = ControllerThread(cfg, master).start()
    try:
        ct2.wait(lambda c: c.metrics.stored._value.get() >= 100, what="backlog stored")
        pub = publisher(broker.port)
        pub.publish(*old, qos=1).wait_for_publish(5)
        ct2.wait(lambda c: c.metrics.rejected_count("replay") == 1, what="replay refused")
        pub.disconnect()  # also wakes paho's loop: loop_stop alone waits up to 1 s
        pub.loop_stop()
        dev.close()
    finally:
        ct2.stop()
    assert ct2.ctl is not None
    # the first run PUBACKed all it stored (batched acks): the broker redelivered none of it
    assert ct2.ctl.metrics.duplicates._value.get() == 0
    s = open_store(store_cfg)
    values = [v for _, v, _ in s.raw_series("ap-1", 16, 0, 2e9)]
    assert sorted(values) == [float(i) for i in range(150)]
    assert s.count("messages") == 151  # BIRTH + 150 reports
    s.close()


def test_two_controllers_shared_subscription(
    store_cfg: StoreConfig, master: MasterKey, broker: Broker
) -> None:
    s = open_store(store_cfg)
    keys = [
        registry.create_device(s, master, f"s-{i}", "porto", "baixa", "sensor").key
        for i in range(4)
    ]
    s.close()
    a = ControllerThread(
        make_config(store_cfg, broker.port, client_id="ctl-a", shared_group="idu"), master
    ).start()
    b = ControllerThread(
        make_config(store_cfg, broker.port, client_id="ctl-b", shared_group="idu"), master
    ).start()
    try:
        devs = [SimDevice(f"s-{i}", k, broker.port) for i, k in enumerate(keys)]
        for d in devs:
            d.connect()
            for j in range(100):
                d.report({57: j})

        def stored(c: object) -> float:
            return c.metrics.stored._value.get()  # type: ignore[attr-defined, no-any-return]

        a.wait(lambda _: stored(a.ctl) + stored(b.ctl) >= 404, 30, "404 stored in total")
        assert stored(a.ctl) > 50 and stored(b.ctl) > 50  # both took a share
        for d in devs:
            d.close()
    finally:
        a.stop()
        b.stop()
    s = open_store(store_cfg)
    assert s.count("messages") == 404 and s.count("raw_metrics") == 400
    for i in range(4):
        assert sum(h["count"] for h in s.hourly("device", f"s-{i}", 57, 0, 2e9)) == 100
    s.close()
