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
    # 5: ingest never stops and never silently loses (issue 10). `quarantine` holds messages
    # the store refused to commit (store/quarantine.py): the raw topic and payload as received,
    # so a replay after a fix goes through verification again; `digest` (sha256 of topic and
    # payload) keeps a redelivered poison message to one row. `resolved`/`outcome` are set
    # when a replay stored it (or found it stored, or refused it). devices.pruned_epoch/seq:
    # the newest message key retention deleted for the device, the bound below which a
    # message older than the replay window is refused instead of being stored again.
    [
        """CREATE TABLE quarantine (
            id {serial},
            digest TEXT NOT NULL UNIQUE,
            device_id TEXT,
            topic TEXT NOT NULL,
            payload {blob} NOT NULL,
            reason TEXT NOT NULL,
            received DOUBLE PRECISION NOT NULL,
            quarantined DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 1,
            resolved DOUBLE PRECISION,
            outcome TEXT
        )""",
        "ALTER TABLE devices ADD COLUMN pruned_epoch BIGINT",
        "ALTER TABLE devices ADD COLUMN pruned_seq BIGINT",
    ],
    # 6: time placement (docs/PROTOCOL.md section 5, controller/domain/timeline.py). `approx`
    # says how a sample's or event's ts was found: 0 the device's ts, 1 its uptime anchored on
    # the epoch's first BIRTH, 2 the receive time; rows stored before this migration read 0.
    # devices.anchors keeps the anchors of recent epochs (JSON [[epoch, t, up], ...]) so a
    # restarted controller places a backlog as the one that saw the BIRTH would.
    [
        "ALTER TABLE raw_samples ADD COLUMN approx INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE device_events ADD COLUMN approx INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN anchors TEXT",
    ],
    # 7: devices that opted into delivery confirmation (store/confirms.py; docs/PROTOCOL.md
    # section 16). A row per device whose last BIRTH carried key 8 = 1, written by whichever
    # controller stored that BIRTH and read by every controller of the group.
    [
        """CREATE TABLE confirming (
            device_id TEXT PRIMARY KEY,
            since DOUBLE PRECISION NOT NULL
        )""",
    ],
    # 8: operator accounts and the audit log (store/operators.py, controller/operators.py).
    # `token_hash` is HMAC-SHA256 of the bearer token under a key derived from the master key
    # (the token itself is never stored). `audit` is append-only: nothing updates or deletes
    # its rows; `args` is JSON without secrets.
    [
        """CREATE TABLE operators (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created DOUBLE PRECISION NOT NULL,
            created_by TEXT NOT NULL,
            revoked_at DOUBLE PRECISION
        )""",
        """CREATE TABLE audit (
            id {serial},
            ts DOUBLE PRECISION NOT NULL,
            who TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            args TEXT NOT NULL DEFAULT '{{}}',
            result TEXT NOT NULL
        )""",
        "CREATE INDEX audit_ts ON audit (ts)",
    ],
    # 9: fleet jobs (store/jobs.py, controller/jobs.py, controller/domain/jobs.py). A job is an
    # op + args sent to a selector (JSON); each matched device has one execution, bound at its
    # first send to one command (cmd_epoch, cmd_seq: the row in `commands` its ACK settles) whose
    # signed bytes are kept so a retry, also after a restart, re-sends the same command.
    [
        """CREATE TABLE jobs (
            id {serial},
            op INTEGER NOT NULL,
            args TEXT,
            selector TEXT NOT NULL,
            ttl DOUBLE PRECISION NOT NULL,
            rate DOUBLE PRECISION NOT NULL,
            continuous INTEGER NOT NULL DEFAULT 0,
            policy TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            created_by TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL,
            ended DOUBLE PRECISION
        )""",
        """CREATE TABLE job_executions (
            job_id BIGINT NOT NULL,
            device_id TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            cmd_epoch BIGINT,
            cmd_seq BIGINT,
            cmd_expires BIGINT,
            topic TEXT,
            payload {blob},
            result INTEGER,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (job_id, device_id)
        )""",
        "CREATE INDEX job_executions_state ON job_executions (state)",
        "CREATE INDEX jobs_state ON jobs (state)",
    ],
]

LATEST = len(MIGRATIONS)
