"""The IDU store: one interface (store.base.Store), SQLite and PostgreSQL backends beside each
other. open_store() picks one from config and brings its schema up to date."""

from __future__ import annotations

from controller.config import StoreConfig
from controller.store.base import DeviceRecord, Store


def open_store(cfg: StoreConfig, migrate: bool = True, create: bool = True) -> Store:
    """Open (and migrate) the store. create=False refuses a SQLite file that does not exist yet,
    with the fix: only `idufleet init` / `serve --init` (and the running service) make one."""
    if cfg.backend == "postgres":
        from controller.store.postgres import PostgresStore

        store: Store = PostgresStore(cfg.dsn, cfg.schema)
    else:
        from controller.store.sqlite import SqliteStore

        store = SqliteStore(cfg.path, create=create)
    if migrate:
        store.migrate()
    return store


__all__ = ["DeviceRecord", "Store", "open_store"]
