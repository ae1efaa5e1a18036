"""A fake of MicroPython's ESP32 `network` module (ports/esp32/network_wlan.c): WLAN(STA_IF |
AP_IF), active(), connect(ssid, key) that joins only a network of `NETWORKS` with the right key
and only after a few isconnected() polls (association takes time), status("rssi") raising OSError
while not connected, status("stations") on the AP as a list of (mac,) tuples."""

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_WRONG_PASSWORD = 202

NETWORKS = {}  # ssid -> key, what the radio can hear
STATIONS = []  # clients associated to our AP
RSSI = -61
JOINS = []  # (ssid, key) of every connect()


class WLAN:
    def __init__(self, interface=STA_IF):
        if interface not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        self.iface = interface
        self.on = False
        self.polls = -1  # polls left before association; -1: not joining
        self.stat = STAT_IDLE

    def active(self, *on):
        if on:
            self.on = bool(on[0])
        return self.on

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self.on:
            raise OSError("Wifi Not Started")
        JOINS.append((ssid, key))
        self.stat = STAT_CONNECTING
        self.polls = 3 if NETWORKS.get(ssid, 0) == key else -1
        if ssid in NETWORKS and NETWORKS[ssid] != key:
            self.stat = STAT_WRONG_PASSWORD

    def isconnected(self):
        if self.polls > 0:
            self.polls -= 1
            if self.polls == 0:
                self.stat = STAT_GOT_IP
        return self.stat == STAT_GOT_IP

    def status(self, param=None):
        if param is None:
            return self.stat
        if param == "rssi":
            if self.iface != STA_IF or self.stat != STAT_GOT_IP:
                raise OSError("STA must be connected")
            return RSSI
        if param == "stations":
            if self.iface != AP_IF:
                raise OSError("AP required")
            return [(m,) for m in STATIONS]
        raise ValueError("unknown status param")
