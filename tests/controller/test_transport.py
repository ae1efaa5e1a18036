"""The MQTT link's own QoS 1 PUBLISH parser (controller.transport.mqtt._BufferedClient): messages
that carry MQTT v5 properties (forwarded by the broker from the publisher; blocks of 0 to 300+
bytes, so one- and two-byte property lengths) are read right, and each is stored once and
acknowledged (nothing redelivered after a restart)."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller import registry
from controller.keys import MasterKey
from controller.store import open_store
from protocol import messages as M
from tests.controller.devsim import SimDevice
from tests.controller.harness import ControllerThread, make_config, sqlite_config
from tests.support.broker import Broker


def test_publish_properties_are_skipped_payload_intact(
    tmp_path: Path, master: MasterKey, broker: Broker
) -> None:
    store_cfg = sqlite_config(tmp_path)
    s = open_store(store_cfg)
    dev_id = "ap-" + "x" * 29  # the longest device id
    key = registry.create_device(s, master, dev_id, "porto", "foz", "ap").key
    s.close()
    cfg = make_config(store_cfg, broker.port, client_id="ctl-props")
    dev = SimDevice(dev_id, key, broker.port)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    ct = ControllerThread(cfg, master).start()
    try:
        for i in range(20):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("k" * (i * 10), "v" * (i * 7))]  # 0 .. 300+ bytes
            props.MessageExpiryInterval = 600
            props.ContentType = "application/msgpack"
            topic, payload = dev.build(M.REPORT, {16: i})
            pub.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
        ct.wait(lambda c: c.metrics.stored._value.get() >= 20, what="20 stored")
        assert sum(ct.ctl.metrics.rejected_count(r) for r in ("bad_tag", "truncated")) == 0  # type: ignore[union-attr]
    finally:
        ct.stop()
        pub.disconnect()  # also wakes paho's loop: loop_stop alone waits up to 1 s
        pub.loop_stop()
    ct2 = ControllerThread(cfg, master).start()
    try:
        topic, payload = dev.build(M.REPORT, {16: 20})
        dev_pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        dev_pub.connect("127.0.0.1", broker.port)
        dev_pub.loop_start()
        dev_pub.publish(topic, payload, qos=1).wait_for_publish(5)
        ct2.wait(lambda c: c.metrics.stored._value.get() >= 1, what="one more stored")
        assert ct2.ctl is not None and ct2.ctl.metrics.duplicates._value.get() == 0
        dev_pub.disconnect()
        dev_pub.loop_stop()
    finally:
        ct2.stop()
    s = open_store(store_cfg)
    assert [v for _, v, _ in s.raw_series(dev_id, 16, 0, 2e9)] == [float(i) for i in range(21)]
    s.close()
