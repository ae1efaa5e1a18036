"""The run's private PostgreSQL cluster is what the postgres tests use (not the machine's own
server), and its fault helpers work: restart() and terminate_backends(), for the "PostgreSQL
restarted" and "pg_terminate_backend under load" fault tests."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from controller.errors import StoreError
from controller.store.postgres import PostgresStore
from tests.support.postgres import PostgresCluster


def test_the_cluster_is_private(postgres: PostgresCluster) -> None:
    assert postgres.workdir is not None and postgres.port != 5432
    with psycopg.connect(postgres.dsn) as c:
        datadir, port, listen, sockdir, fsync = c.execute(
            "SELECT current_setting('data_directory'), current_setting('port'),"
            " current_setting('listen_addresses'), current_setting('unix_socket_directories'),"
            " current_setting('fsync')"
        ).fetchone() or ("", "", "", "", "")
    assert os.path.realpath(datadir) == os.path.realpath(postgres.datadir)
    assert (int(port), listen, sockdir, fsync) == (
        postgres.port,
        "127.0.0.1",
        str(postgres.workdir),
        "off",
    )


def test_store_config_uses_the_same_private_cluster(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    from tests.controller.conftest import store_config

    cfg = store_config("postgres", tmp_path)
    assert cfg.dsn == postgres.dsn and f"port={postgres.port}" in cfg.dsn


@pytest.fixture
def pg_store(postgres: PostgresCluster) -> PostgresStore:
    s = PostgresStore(postgres.dsn, "t_" + uuid.uuid4().hex[:12])
    s._execute("CREATE TABLE probe (v TEXT)")
    return s


def test_restart_cuts_sessions_and_keeps_data(
    postgres: PostgresCluster, pg_store: PostgresStore
) -> None:
    pg_store._execute("INSERT INTO probe VALUES ('before')")
    pid = postgres.proc.pid if postgres.proc else 0
    postgres.restart()
    assert postgres.proc is not None and postgres.proc.pid != pid
    with pytest.raises(StoreError):  # the old session was cut by the fast shutdown
        pg_store._execute("SELECT 1")
    again = PostgresStore(postgres.dsn, pg_store.schema)  # same dsn, committed data kept
    try:
        assert again._execute("SELECT v FROM probe") == [("before",)]
    finally:
        again.drop_schema()
        again.close()
        pg_store.close()


def test_terminate_backends_cuts_open_sessions(
    postgres: PostgresCluster, pg_store: PostgresStore
) -> None:
    other = PostgresStore(postgres.dsn, pg_store.schema)
    assert postgres.terminate_backends() >= 2  # both stores' sessions (and any other client's)
    for s in (pg_store, other):
        with pytest.raises(StoreError):
            s._execute("SELECT 1")
        s.close()
    fresh = PostgresStore(postgres.dsn, pg_store.schema)  # the server itself is unharmed
    try:
        assert fresh._execute("SELECT 1") == [(1,)]
    finally:
        fresh.drop_schema()
        fresh.close()
