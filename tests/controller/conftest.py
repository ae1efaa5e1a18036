"""Controller test fixtures: a store per backend (SQLite file, or a PostgreSQL schema created and
dropped by the test in the run's one private cluster), a master key, and a registered-device
helper."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.store import Store, open_store
from tests.support.postgres import session_cluster

BACKENDS = ["sqlite", "postgres"]


def store_config(backend: str, tmp_path: Path) -> StoreConfig:
    """PostgreSQL: a fresh schema in the run's private cluster (the `postgres` fixture's), which
    this starts on first use, so a run without postgres tests never starts one."""
    if backend == "postgres":
        dsn = session_cluster().dsn
        return StoreConfig(backend="postgres", dsn=dsn, schema="t_" + uuid.uuid4().hex[:12])
    return StoreConfig(backend="sqlite", path=str(tmp_path / "idu.sqlite"))


def drop(cfg: StoreConfig) -> None:
    if cfg.backend == "postgres":
        from controller.store.postgres import PostgresStore

        s = PostgresStore(cfg.dsn, cfg.schema)
        s.drop_schema()
        s.close()


def raw_sql(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Plain SQL (? placeholders) on the store's own DB-API connection, for what no store method
    shows or makes: what is at rest (no secret in clear) and states from older versions (a
    newer schema, pre-migration rows). Autocommit, or inside `store.transaction()`."""
    if store.backend == "postgres":
        sql = sql.replace("?", "%s")
    cur = store.conn.execute(sql, tuple(params))  # type: ignore[attr-defined]
    return cur.fetchall() if cur.description is not None else []


@pytest.fixture(params=BACKENDS)
def store_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreConfig]:
    cfg = store_config(request.param, tmp_path)
    yield cfg
    drop(cfg)


@pytest.fixture
def store(store_cfg: StoreConfig) -> Iterator[Store]:
    s = open_store(store_cfg)
    yield s
    s.close()


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(bytes(range(32)))
