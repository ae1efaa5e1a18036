"""Message types, the channel each travels on, and the body fields of each (docs/PROTOCOL.md,
"Message types"). Field numbers are the wire keys; names exist only for code and docs."""

# Envelope keys.
K_VERSION = 0
K_TYPE = 1
K_EPOCH = 2
K_SEQ = 3
K_TS = 4
K_UP = 5
K_BODY = 6
K_TAG = 7

# Message types.
BIRTH = 1
DEATH = 2
REPORT = 3
BATCH = 4
EVENT = 5
ACK = 6
COMMAND = 7
CONFIG = 8
OTA = 9
CONFIRM = 10

NAMES = {
    BIRTH: "birth",
    DEATH: "death",
    REPORT: "report",
    BATCH: "batch",
    EVENT: "event",
    ACK: "ack",
    COMMAND: "command",
    CONFIG: "config",
    OTA: "ota",
    CONFIRM: "confirm",
}
BY_NAME = {v: k for k, v in NAMES.items()}

# Channels are spelled out (protocol.topics names the same strings; tests check they agree) so a
# device that needs these tables does not load the topic parser too.
CHANNEL = {
    BIRTH: "birth",
    DEATH: "death",
    REPORT: "rep",
    BATCH: "rep",
    EVENT: "evt",
    ACK: "ack",
    COMMAND: "cmd",
    CONFIG: "cfg",
    OTA: "ota",
    CONFIRM: "cmd",  # a device that opts in already subscribes to cmd (and its ACL allows it)
}

# Largest payload accepted per channel, in bytes (MQTT payload, tag included).
MAX_PACKET = {
    "birth": 512,
    "death": 128,
    "rep": 1024,
    "evt": 512,
    "ack": 512,
    "cmd": 512,
    "cfg": 1024,
    "ota": 2304,
}
MAX_PACKET_ANY = 2304

# Body fields. BIRTH
B_FIRMWARE = 0  # str, firmware version
B_BOARD = 1  # str, "esp32" / "sim"
B_BOOT_REASON = 2  # int, BOOT_*
B_CONFIG_HASH = 3  # bin(8), first 8 bytes of SHA-256 of the canonical config
B_SAFE_MODE = 4  # bool
B_KIND = 5  # str, "ap" or "sensor"
B_INTERVAL = 6  # int, report interval in seconds
B_BUFFERED = 7  # int, reports waiting in the offline buffer
B_CONFIRM = 8  # int, optional: CONFIRM_V1 = keep reports until a CONFIRM names them
CONFIRM_V1 = 1
BOOT_POWER_ON = 0
BOOT_HARD_RESET = 1
BOOT_WATCHDOG = 2
BOOT_SOFT_RESET = 3
BOOT_DEEP_SLEEP = 4
BOOT_CRASH = 5

# DEATH
D_REASON = 0  # int, DEATH_*
DEATH_LOST = 0  # published by the broker as the last will
DEATH_SHUTDOWN = 1
DEATH_REBOOT = 2

# EVENT
E_CODE = 0  # int, EV_*
E_SEVERITY = 1  # int, 0 info, 1 warning, 2 error
E_TEXT = 2  # str, optional
E_DATA = 3  # map, optional
EV_BUFFER_DROPPED = 1  # data {0: dropped count}
EV_SAFE_MODE = 2
EV_CONFIG_APPLIED = 3
EV_COMMAND_REFUSED = 4  # data {0: reason code, 1: count}
EV_OTA = 5
EV_SENSOR_FAULT = 6

# ACK
A_CMD_EPOCH = 0  # int, the command's envelope epoch
A_CMD_SEQ = 1  # int, the command's envelope seq
A_RESULT = 2  # int, R_*
A_DATA = 3  # map, optional result
R_OK = 0
R_BAD_ARGS = 1
R_UNKNOWN_OP = 2
R_EXPIRED = 3
R_REPLAY = 4
R_BAD_TAG = 5
R_BUSY = 6
R_FAILED = 7

# COMMAND
C_OP = 0  # int, OP_*
C_EXPIRES = 1  # int, unix seconds
C_ARGS = 2  # map, optional
OP_PING = 1
OP_REBOOT = 2
OP_SET_CONFIG = 3
OP_DIAGNOSTICS = 4
OP_ROTATE_KEY = 5
OP_NAMES = {
    OP_PING: "ping",
    OP_REBOOT: "reboot",
    OP_SET_CONFIG: "set_config",
    OP_DIAGNOSTICS: "diagnostics",
    OP_ROTATE_KEY: "rotate_key",
}

# OP_DIAGNOSTICS ack data (A_DATA) keys (firmware/README.md, "Diagnostics ack data")
DG_HEAP_FREE = 0  # int, bytes free after a collection
DG_HEAP_HIGH_WATER = 1  # int, most live bytes seen after a collection
DG_HEAP_SIZE = 2  # int, bytes
DG_UPTIME = 3  # int, board seconds
DG_RSSI = 4  # int, dBm
DG_BUFFER_DEPTH = 5  # int, reports waiting in the offline buffer
DG_RECONNECTS = 6  # int
DG_DROPPED = 7  # int, reports dropped by the offline buffer (lifetime)
DG_REFUSED_BAD_TAG = 8  # int, downlink refused: tag does not verify
DG_REFUSED_EXPIRED = 9  # int, commands refused: expired
DG_REFUSED_REPLAY = 10  # int, commands or configs refused: seen before / older
DG_SAFE_MODE = 11  # bool
DG_REPORTS = 12  # int, reports made this boot
DG_EPOCH = 13  # int, boot epoch
DG_HEAP_PEAK = 14  # int, most bytes allocated, garbage included
DG_CMD_DROPPED = 15  # int, downlink messages dropped (the device's queue was full)
DG_REFUSED_MALFORMED = 16  # int, downlink refused: not a message the protocol allows
# The device's refusal counters, one slot each in the order it keeps them; diagnostics reports
# slot RF_x as DG_REFUSED_x.
RF_BAD_TAG = 0
RF_EXPIRED = 1
RF_REPLAY = 2
RF_MALFORMED = 3

# CONFIG (desired config, also the args of OP_SET_CONFIG)
G_INTERVAL = 0  # int, seconds between reports
G_DEADBANDS = 1  # map {metric id: delta in the metric's fixed-point units}
G_METRICS = 2  # array of metric ids to report (absent: all)
G_BATCH = 3  # int, samples per message (1: plain REPORT)

# OTA
O_PHASE = 0  # int, 1 offer, 2 chunk, 3 commit, 4 abort
O_VERSION = 1  # str
O_SIZE = 2  # int
O_SHA256 = 3  # bin(32)
O_SIGNATURE = 4  # bin(64), Ed25519 over the image's SHA-256
O_OFFSET = 5  # int
O_DATA = 6  # bin

# CONFIRM (docs/PROTOCOL.md "Delivery confirmed by the store")
F_RANGES = 0  # array: [epoch, first seq, count] triples, ascending, of uplink messages stored
MAX_CONFIRM_RANGES = 21  # triples per CONFIRM: 63 items, within the 64-item array limit
