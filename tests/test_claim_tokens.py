"""Claim tokens in the store, on SQLite and PostgreSQL: secrets only wrapped at rest, single use
under a real race between two connections, expiry, and the listing never showing secrets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.provisioning import tokens as T
from controller.store import Store, open_store
from tests.controller.conftest import BACKENDS, drop, raw_sql, store_config

MASTER = MasterKey(bytes(range(32)))


@pytest.fixture(params=BACKENDS)
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreConfig]:
    c = store_config(request.param, tmp_path)
    yield c
    drop(c)


@pytest.fixture
def store(cfg: StoreConfig) -> Iterator[Store]:
    s = open_store(cfg)
    yield s
    s.close()


def test_issue_wraps_secret_and_lists_without_it(store: Store) -> None:
    ts = T.TokenStore(store, MASTER)
    issued = ts.issue("porto", "ribeira", "sensor", 3, 3600)
    assert len({t.id for t in issued}) == 3
    for t in issued:
        assert len(t.id) == 16 and len(t.secret) == 16 and t.secret.hex() not in repr(t)
        rec = ts.get(t.id)
        assert rec is not None and rec.zone == "ribeira" and rec.kind == "sensor"
        assert t.secret not in rec.secret_wrapped  # only the AES-GCM wrap is stored
        assert ts.secret(rec) == t.secret
        assert rec.public()["state"] == "open" and "secret" not in str(rec.public())
    rows = raw_sql(store, "SELECT * FROM claim_tokens")
    blobs = b"".join(bytes(v) for r in rows for v in r if isinstance(v, (bytes, memoryview)))
    texts = str([v for r in rows for v in r if isinstance(v, str)])
    assert all(t.secret not in blobs and t.secret.hex() not in texts for t in issued)
    assert {r.id for r in ts.list("ribeira")} == {t.id for t in issued}
    assert ts.list("baixa") == []


def test_wrapped_secret_is_bound_to_its_token_id(store: Store) -> None:
    ts = T.TokenStore(store, MASTER)
    a, b = ts.issue("porto", "ribeira", "ap", 2, 3600)
    ra, rb = ts.get(a.id), ts.get(b.id)
    assert ra is not None and rb is not None
    moved = T.TokenRecord(**{**ra.__dict__, "secret_wrapped": rb.secret_wrapped})
    from controller.errors import KeyWrapError

    with pytest.raises(KeyWrapError):
        ts.secret(moved)


def test_single_use_under_a_race(cfg: StoreConfig) -> None:
    """Two responders (two connections) claim the same token at once: exactly one wins."""
    s0 = open_store(cfg)
    (tok,) = T.TokenStore(s0, MASTER).issue("porto", "ribeira", "ap", 1, 3600)
    stores = [open_store(cfg) for _ in range(2)]
    wins: list[bool] = []
    barrier = threading.Barrier(2)

    def claim(s: Store, n: int) -> None:
        ts = T.TokenStore(s, MASTER)
        barrier.wait(5)
        with s.transaction():  # as the claim responder does, with the device it creates
            wins.append(ts.mark_used(tok.id, f"dev-{n}", bytes([n]) * 32, time.time()))

    threads = [threading.Thread(target=claim, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == [False, True]
    rec = T.TokenStore(s0, MASTER).get(tok.id)
    assert rec is not None and rec.used_at is not None
    for s in [s0, *stores]:
        s.close()


def test_tokens_made_before_migration_4_survive_the_upgrade(
    cfg: StoreConfig, tmp_path: Path
) -> None:
    """Stores from before migration 4 may hold a claim_tokens table that provisioning created
    itself: the upgrade keeps it and its tokens; a store without one gets the table."""
    from controller.store.schema import LATEST, MIGRATIONS

    s = open_store(cfg, migrate=False)
    s.migrate(3)
    with s.transaction():
        for stmt in MIGRATIONS[3]:  # what TokenStore ran on first use before migration 4
            raw_sql(s, stmt.format(blob=s.BLOB))
    (tok,) = T.TokenStore(s, MASTER).issue("porto", "ribeira", "ap", 1, 3600)
    assert s.migrate() == 3 and s.schema_version() == LATEST
    rec = T.TokenStore(s, MASTER).get(tok.id)
    assert rec is not None and T.TokenStore(s, MASTER).secret(rec) == tok.secret
    s.close()
    other = store_config(cfg.backend, tmp_path / "other")
    fresh = open_store(other, migrate=False)
    try:
        fresh.migrate(3)
        assert fresh.migrate() == 3 and fresh.schema_version() == LATEST
        assert T.TokenStore(fresh, MASTER).issue("porto", "ribeira", "ap", 1, 3600)
        assert len(T.TokenStore(fresh, MASTER).list()) == 1
    finally:
        fresh.close()
        drop(other)


def test_decide() -> None:
    now = 1_000_000.0
    rec = T.TokenRecord("00" * 8, b"", "porto", "ribeira", "ap", now - 10, now + 10)
    pub = bytes(32)
    assert T.decide(rec, pub, now) == T.OK
    with pytest.raises(T.ClaimError) as e:
        T.decide(rec, pub, now + 10)
    assert e.value.code == T.EXPIRED
    used = T.TokenRecord(
        rec.id, b"", "porto", "ribeira", "ap", now - 10, now + 10, now, "ribeira-00000000", pub
    )
    assert T.decide(used, pub, now + 5) == T.REDELIVERED
    with pytest.raises(T.ClaimError) as e:
        T.decide(used, bytes([1]) * 32, now + 5)
    assert e.value.code == T.USED
    with pytest.raises(T.ClaimError) as e:  # same board, but long after: no redelivery
        T.decide(used, pub, now + T.REDELIVER_S + 1)
    assert e.value.code == T.USED


@pytest.mark.parametrize(
    ("site", "zone", "kind", "ttl", "count", "words"),
    [
        ("porto", "Ribeira", "ap", 60, 1, "zone"),
        ("porto", "", "ap", 60, 1, "zone"),
        ("porto", "ribeira", "lamp", 60, 1, "kind"),
        ("porto", "ribeira", "ap", 0, 1, "ttl"),
        ("porto", "ribeira", "ap", 60, 0, "count"),
        ("por/to", "ribeira", "ap", 60, 1, "site"),
    ],
)
def test_bad_fields_refused_before_anything_is_stored(
    store: Store, site: str, zone: str, kind: str, ttl: float, count: int, words: str
) -> None:
    ts = T.TokenStore(store, MASTER)
    with pytest.raises(T.ClaimError) as e:
        ts.issue(site, zone, kind, count, ttl)
    assert words in str(e.value)
    assert ts.list() == []


def test_device_ids_fit_the_id_rules() -> None:
    from protocol.topics import check_id

    for zone in ("ribeira", "a" * 32, "zone-with-dash-at-23-ch-x"):
        d = T.device_id_for(zone, "0123456789abcdef")
        assert check_id(d) == d and len(d) <= 32 and d.endswith("-01234567")
