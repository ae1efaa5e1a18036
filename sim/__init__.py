"""The fleet simulator (issue 12): thousands of virtual devices in one CPython asyncio process,
each with its own MQTT connection, key, broker account and boot epoch, speaking the protocol
through `protocol/` and running the firmware's own pure modules (docs/SIMULATOR.md).

Layout: `model.py` (the sans-I/O device), `faults.py` and `scenario.py` (pure), `link.py` (one
MQTT connection on asyncio over firmware/mqtt_codec.py), `runner.py` (the shell: N devices,
timeline, counters), `stack.py` and `provision.py` (brokers, controllers and accounts), `view.py`.
Never imports controller.app: a simulated fleet talks to a controller only over MQTT and HTTP."""
