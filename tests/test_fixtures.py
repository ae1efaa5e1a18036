"""The fixtures themselves work: a private broker passes a message, micropython runs in 64K."""

import paho.mqtt.client as mqtt
import paho.mqtt.subscribe as subscribe
import pytest

from tests.support.broker import Broker


def test_private_broker_round_trip(broker: Broker) -> None:
    got: list[bytes] = []
    import threading

    ready = threading.Event()

    def listen() -> None:
        msg = subscribe.simple("t/x", hostname="127.0.0.1", port=broker.port, qos=1)
        got.append(msg.payload)  # type: ignore[union-attr]

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for _ in range(50):
        c.publish("t/x", b"hello", qos=1).wait_for_publish(1)
        th.join(0.1)
        if got:
            break
    c.disconnect()  # also wakes paho's loop: loop_stop alone waits up to 1 s
    c.loop_stop()
    ready.set()
    assert got == [b"hello"]


def test_broker_stops_by_pid(broker: Broker) -> None:
    assert broker.proc is not None
    pid = broker.proc.pid
    broker.stop()
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_micropython_heap_is_enforced(upy) -> None:  # type: ignore[no-untyped-def]
    ok = upy("import gc; print(gc.mem_free() < 70000)", heap="64K").check()
    assert ok.stdout.strip() == "True"
    big = upy("b = bytearray(200000)", heap="64K")
    assert big.returncode != 0 and "MemoryError" in big.stderr + big.stdout
