"""The IDU store interface: `Store` assembled from one room per concern, for callers to import
(with DeviceRecord). Synchronous: the app calls it from one dedicated thread. The store imports
domain values, never transport/ or api/.

Where each part lives (a room is a mixin of store/core.py's StoreCore, so one connection and
one transaction serve them all):

| file | holds |
|---|---|
| core.py | backend hooks, dialect spellings, `transaction()`, chunked inserts, migrations |
| devices.py | `DeviceRecord`, registry CRUD |
| writes.py | `write_batch`: message keys, packed raw samples, events, presence, device state |
| rollups.py | rollup deltas, `compact_rollups`, `hourly`, `latest` (the merge rule's SQL) |
| commands.py | command epoch, commands sent, ACKs settling them |
| claims.py | `TokenRecord`, claim tokens (provisioning issues and decides them) |
| operators.py | `OperatorRecord`, operator accounts, the append-only audit log |
| jobs.py | fleet jobs and their executions (migration 9), settled through `commands` |
| confirms.py | which devices opted into delivery confirmation (docs/PROTOCOL.md section 16) |
| queries.py | raw series, counts, presence transitions, device events |
| retention.py | `prune_raw` (and each device's pruned mark) |
| quarantine.py | messages the store refused: keep, list, resolve |
| schema.py | the migrations |
| sqlite.py, postgres.py | the two backends |
| thread.py | `StoreThread`, the one thread the controller runs every store call on |
"""

from __future__ import annotations

from controller.store.claims import Claims
from controller.store.confirms import Confirms
from controller.store.devices import DeviceRecord, Devices
from controller.store.jobs import Jobs
from controller.store.operators import OperatorRecord, Operators
from controller.store.quarantine import Quarantine, Quarantined
from controller.store.queries import Queries
from controller.store.retention import Retention
from controller.store.writes import Writes, device_update_rows


class Store(Devices, Writes, Queries, Claims, Operators, Retention, Quarantine, Confirms, Jobs):
    """One connection to the IDU store. Not thread-safe: use it from one thread at a time."""


__all__ = ["DeviceRecord", "OperatorRecord", "Quarantined", "Store", "device_update_rows"]
