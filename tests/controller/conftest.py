"""Controller test fixtures: a store per backend (SQLite file, or a PostgreSQL schema created and
dropped by the test in the run's private cluster: the `postgres` fixture), a master key, and a
registered-device helper."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.config import StoreConfig
from controller.keys import MasterKey
from controller.store import Store, open_store
from tests.support.postgres import PostgresCluster

BACKENDS = ["sqlite", "postgres"]


def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """The store config for the backend in request.param. PostgreSQL: a fresh schema in the
    run's private cluster, which this starts on first use (so SQLite-only runs never start it)."""
    if request.param == "postgres":
        pg: PostgresCluster = request.getfixturevalue("postgres")
        return StoreConfig(backend="postgres", dsn=pg.dsn, schema="t_" + uuid.uuid4().hex[:12])
    return StoreConfig(backend="sqlite", path=str(tmp_path / "idu.sqlite"))


def drop(cfg: StoreConfig) -> None:
    if cfg.backend == "postgres":
        from controller.store.postgres import PostgresStore

        s = PostgresStore(cfg.dsn, cfg.schema)
        s.drop_schema()
        s.close()


@pytest.fixture(params=BACKENDS)
def store_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreConfig]:
    cfg = store_config(request, tmp_path)
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
