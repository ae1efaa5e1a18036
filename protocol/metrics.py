"""The metric registry: id -> (name, unit, kind, scale). A value on the wire is an integer in
fixed point: real = raw / 10**scale. Ids < 128 encode in one byte. Unknown ids are legal on the
wire and kept by receivers (a newer device may report a metric this table does not know yet).
Devices need only the ids; this table is for the controller, docs and tools."""

# kind: "gauge" (a level at the sample time) or "counter" (a count since the previous report).
# id: (name, unit, kind, scale)
REGISTRY = {
    # device health, every board
    1: ("uptime", "s", "gauge", 0),
    2: ("heap_free", "B", "gauge", 0),
    3: ("uplink_rssi", "dBm", "gauge", 0),
    4: ("battery_voltage", "mV", "gauge", 0),
    5: ("buffer_depth", "reports", "gauge", 0),
    6: ("reports_dropped", "reports", "counter", 0),
    7: ("battery_level", "%", "gauge", 0),
    # Wi-Fi access points
    16: ("clients", "clients", "gauge", 0),
    17: ("clients_2g4", "clients", "gauge", 0),
    18: ("clients_5g", "clients", "gauge", 0),
    19: ("clients_6g", "clients", "gauge", 0),
    20: ("client_rssi_min", "dBm", "gauge", 0),
    21: ("client_rssi_mean", "dBm", "gauge", 0),
    22: ("client_rssi_max", "dBm", "gauge", 0),
    23: ("clients_weak", "clients", "gauge", 0),
    24: ("tx_bytes", "B", "counter", 0),
    25: ("rx_bytes", "B", "counter", 0),
    26: ("channel_util_2g4", "%", "gauge", 0),
    27: ("channel_util_5g", "%", "gauge", 0),
    28: ("sessions_new", "sessions", "counter", 0),
    29: ("auth_failures", "attempts", "counter", 0),
    # urban sensors
    48: ("noise_laeq", "dBA", "gauge", 1),
    49: ("noise_lamax", "dBA", "gauge", 1),
    50: ("noise_la90", "dBA", "gauge", 1),
    51: ("pm2_5", "ug/m3", "gauge", 1),
    52: ("pm10", "ug/m3", "gauge", 1),
    53: ("pm1", "ug/m3", "gauge", 1),
    54: ("no2", "ug/m3", "gauge", 0),
    55: ("o3", "ug/m3", "gauge", 0),
    56: ("co", "mg/m3", "gauge", 2),
    57: ("temperature", "C", "gauge", 2),
    58: ("humidity", "%RH", "gauge", 1),
    59: ("pressure", "hPa", "gauge", 1),
    60: ("people_count", "people", "counter", 0),
    61: ("vehicle_count", "vehicles", "counter", 0),
    62: ("bicycle_count", "bicycles", "counter", 0),
    63: ("illuminance", "lx", "gauge", 0),
}

BY_NAME = {row[0]: mid for mid, row in REGISTRY.items()}


def name(mid: int) -> str:
    """Registry name, or "m<id>" for an id this table does not know (kept, not dropped)."""
    row = REGISTRY.get(mid)
    return row[0] if row else "m%d" % mid


def real(mid: int, raw: int | float) -> float:
    """The physical value of a raw wire value (unknown ids are taken as scale 0)."""
    row = REGISTRY.get(mid)
    return raw / 10 ** row[3] if row else float(raw)


def lookup(name_or_id: str) -> int:
    """Metric id from a registry name, "m<id>" or a decimal id; raises KeyError naming choices."""
    if name_or_id in BY_NAME:
        return BY_NAME[name_or_id]
    text = name_or_id[1:] if name_or_id[:1] == "m" else name_or_id
    if text.isdigit():
        return int(text)
    raise KeyError("unknown metric %r; known: %s" % (name_or_id, ", ".join(sorted(BY_NAME))))
