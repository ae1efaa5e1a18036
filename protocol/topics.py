"""Topic names: idu/<version>/<site>/<device>/<channel>. One ACL pattern per device pins it to
its own subtree (docs/PROTOCOL.md, "Topics"). Pure string logic."""

from protocol.errors import BAD_TOPIC, UNKNOWN_VERSION, ProtocolError

ROOT = "idu"
VERSION = 1
PREFIX = "idu/1/"

# Uplink (device publishes) and downlink (controller publishes) channels.
BIRTH = "birth"
DEATH = "death"
REPORT = "rep"
EVENT = "evt"
ACK = "ack"
COMMAND = "cmd"
CONFIG = "cfg"
OTA = "ota"
UPLINK = (BIRTH, DEATH, REPORT, EVENT, ACK)
DOWNLINK = (COMMAND, CONFIG, OTA)
CHANNELS = UPLINK + DOWNLINK

MAX_ID = 32
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def check_id(name: str, what: str = "id") -> str:
    """Site and device ids: 1-32 of [a-z0-9-], not starting with '-'. Raises BAD_TOPIC."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_ID or name[0] == "-":
        raise ProtocolError(BAD_TOPIC, "%s must be 1-%d chars of a-z 0-9 -" % (what, MAX_ID))
    for ch in name:
        if ch not in _ID_CHARS:
            raise ProtocolError(BAD_TOPIC, "%s %r has a character outside a-z 0-9 -" % (what, name))
    return name


def topic(site: str, device: str, channel: str) -> str:
    if channel not in CHANNELS:
        raise ProtocolError(BAD_TOPIC, "unknown channel " + str(channel))
    return PREFIX + check_id(site, "site") + "/" + check_id(device, "device") + "/" + channel


def parse(name: str) -> tuple[str, str, str]:
    """Split a topic into (site, device, channel); raises BAD_TOPIC or UNKNOWN_VERSION."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise ProtocolError(BAD_TOPIC, "not idu/<v>/<site>/<device>/<channel>")
    if parts[1] != "1":
        raise ProtocolError(UNKNOWN_VERSION, "topic version " + parts[1])
    if parts[4] not in CHANNELS:
        raise ProtocolError(BAD_TOPIC, "unknown channel " + parts[4])
    return check_id(parts[2], "site"), check_id(parts[3], "device"), parts[4]


def is_death_clear(name: str, payload: bytes) -> bool:
    """A zero-length payload on a `death` topic: a device back online deleting its retained
    DEATH (docs/PROTOCOL.md, "Transport"). Not a message: receivers skip it, never refuse it."""
    return not payload and name.endswith("/" + DEATH)


def uplink_filter(channel: str) -> str:
    """What the controller subscribes to for one uplink channel, across all sites and devices."""
    return PREFIX + "+/+/" + channel
