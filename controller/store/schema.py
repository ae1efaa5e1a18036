"""The IDU store schema as ordered migrations, written once for both SQLite and PostgreSQL:
{blob} and {serial} are the only dialect differences. Times are unix seconds (double precision);
metric values are physical units (protocol.metrics.real)."""

from __future__ import annotations

MASK_BITS = 62  # raw_samples.mask (migration 2): bit (metric % 62), within a signed 64-bit integer

MIGRATIONS: list[list[str]] = [
    # 1: registry, ingest, rollups, presence, events, commands
    [
        """CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            zone TEXT NOT NULL,
            kind TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '{{}}',
            key_wrapped {blob} NOT NULL,
            status TEXT NOT NULL DEFAULT 'active',
            created_at DOUBLE PRECISION NOT NULL,
            firmware TEXT,
            board TEXT,
            last_seen DOUBLE PRECISION,
            online INTEGER NOT NULL DEFAULT 0,
            boot_epoch BIGINT,
            birth_epoch BIGINT,
            birth_seq BIGINT,
            death_open INTEGER NOT NULL DEFAULT 0,
            replay {blob}
        )""",
        "CREATE INDEX devices_zone ON devices (zone)",
        """CREATE TABLE messages (
            device_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            mtype INTEGER NOT NULL,
            received DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device_id, epoch, seq)
        )""",
        "CREATE INDEX messages_received ON messages (received)",
        # No key of its own: rows are inserted only with a message new to `messages`, in the
        # same transaction, so (device, epoch, seq) is unique there. One index, (device, ts):
        # a batch touches one index region per device instead of one per (device, metric),
        # 3x cheaper to insert; a metric query filters the device's rows in the time range.
        # Retention deletes by ts scan hourly.
        """CREATE TABLE raw_metrics (
            device_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            sample INTEGER NOT NULL,
            metric INTEGER NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            value DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX raw_metrics_query ON raw_metrics (device_id, ts)",
        """CREATE TABLE rollup_device (
            device_id TEXT NOT NULL,
            metric INTEGER NOT NULL,
            hour BIGINT NOT NULL,
            n BIGINT NOT NULL,
            vmin DOUBLE PRECISION NOT NULL,
            vmax DOUBLE PRECISION NOT NULL,
            vsum DOUBLE PRECISION NOT NULL,
            vlast DOUBLE PRECISION NOT NULL,
            last_ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device_id, metric, hour)
        )""",
        """CREATE TABLE rollup_zone (
            zone TEXT NOT NULL,
            metric INTEGER NOT NULL,
            hour BIGINT NOT NULL,
            n BIGINT NOT NULL,
            vmin DOUBLE PRECISION NOT NULL,
            vmax DOUBLE PRECISION NOT NULL,
            vsum DOUBLE PRECISION NOT NULL,
            vlast DOUBLE PRECISION NOT NULL,
            last_ts DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (zone, metric, hour)
        )""",
        """CREATE TABLE presence (
            id {serial},
            device_id TEXT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL
        )""",
        "CREATE INDEX presence_device ON presence (device_id, ts)",
        "CREATE INDEX presence_ts ON presence (ts)",
        """CREATE TABLE device_events (
            device_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            code INTEGER NOT NULL,
            severity INTEGER NOT NULL,
            text TEXT,
            data TEXT,
            PRIMARY KEY (device_id, epoch, seq)
        )""",
        """CREATE TABLE commands (
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            device_id TEXT NOT NULL,
            op INTEGER NOT NULL,
            args TEXT,
            issued DOUBLE PRECISION NOT NULL,
            expires BIGINT NOT NULL,
            status TEXT NOT NULL,
            result INTEGER,
            acked DOUBLE PRECISION,
            data TEXT,
            PRIMARY KEY (epoch, seq)
        )""",
        "CREATE INDEX commands_device ON commands (device_id, issued)",
        """CREATE TABLE controller_state (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL
        )""",
    ],
    # 2: raw samples packed one row per (message, sample) instead of one row per metric: a
    # 13-metric report is 1 row and 1 index entry, not 13 (ingest throughput, issue 4). `vals`
    # is msgpack {metric id: value}; `n` the number of metrics in it; `mask` has bit
    # (metric % 62) set for each metric, so a per-metric query filters in SQL (collisions are
    # dropped when `vals` is decoded). raw_metrics stays for rows stored before this migration
    # (queries read both) and empties itself through retention.
    [
        """CREATE TABLE raw_samples (
            device_id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            sample INTEGER NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            n INTEGER NOT NULL,
            mask BIGINT NOT NULL,
            vals {blob} NOT NULL
        )""",
        "CREATE INDEX raw_samples_query ON raw_samples (device_id, ts)",
    ],
    # 3: rollup deltas, insert-only (ingest throughput on PostgreSQL, issue 4). Each batch
    # appends one row per (device or zone, metric, hour) it touched, in the transaction that
    # stores its new message keys, so a delta exists only for messages stored once; a
    # compaction (Store.compact_rollups, its own transaction) folds them into rollup_device /
    # rollup_zone and deletes them. Readers merge rollup rows and pending deltas in one
    # statement. `id` orders deltas for "last" on equal sample times (the later batch wins).
    # No index: the table holds a few seconds of batches and a batch only appends to it.
    [
        """CREATE TABLE rollup_device_delta (
            id {serial},
            device_id TEXT NOT NULL,
            metric INTEGER NOT NULL,
            hour BIGINT NOT NULL,
            n BIGINT NOT NULL,
            vmin DOUBLE PRECISION NOT NULL,
            vmax DOUBLE PRECISION NOT NULL,
            vsum DOUBLE PRECISION NOT NULL,
            vlast DOUBLE PRECISION NOT NULL,
            last_ts DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE rollup_zone_delta (
            id {serial},
            zone TEXT NOT NULL,
            metric INTEGER NOT NULL,
            hour BIGINT NOT NULL,
            n BIGINT NOT NULL,
            vmin DOUBLE PRECISION NOT NULL,
            vmax DOUBLE PRECISION NOT NULL,
            vsum DOUBLE PRECISION NOT NULL,
            vlast DOUBLE PRECISION NOT NULL,
            last_ts DOUBLE PRECISION NOT NULL
        )""",
    ],
    # 4: claim tokens (store/claims.py). Until this migration provisioning created the table
    # itself on first use, with this same definition: IF NOT EXISTS upgrades those stores too,
    # keeping their tokens. `secret_wrapped` is the token secret under the master key.
    [
        """CREATE TABLE IF NOT EXISTS claim_tokens (
            id TEXT PRIMARY KEY,
            secret_wrapped {blob} NOT NULL,
            site TEXT NOT NULL,
            zone TEXT NOT NULL,
            kind TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            used_at DOUBLE PRECISION,
            device_id TEXT,
            board_pub {blob},
            extra TEXT NOT NULL DEFAULT '{{}}'
        )""",
    ],
    # 5 and 6 are the i10 ingest and spec branches' migrations; in this branch they are empty
    # placeholders, replaced by the real ones when the branches merge. (Never run a production
    # store from this branch alone: it would record version 7 without their tables.)
    [],
    [],
    # 7: devices that opted into delivery confirmation (store/confirms.py; docs/PROTOCOL.md
    # section 16). A row per device whose last BIRTH carried key 8 = 1, written by whichever
    # controller stored that BIRTH and read by every controller of the group.
    [
        """CREATE TABLE confirming (
            device_id TEXT PRIMARY KEY,
            since DOUBLE PRECISION NOT NULL
        )""",
    ],
]

LATEST = len(MIGRATIONS)
