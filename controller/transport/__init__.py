"""The MQTT adapter: paho-mqtt 2.x driven by the asyncio loop (no paho thread). Knows nothing
of the protocol payloads, the domain or the store."""
