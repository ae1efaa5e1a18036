"""A private PostgreSQL cluster from Debian's binaries (/usr/lib/postgresql/<ver>/bin), never the
server the machine happens to run: initdb into a fresh temp dir, the postmaster on a free loopback
TCP port with its unix socket in that dir, one database created, stopped by PID and removed at the
end. `make setup` installs Debian's `postgresql` package when the binaries are missing.

initdb and postgres refuse to run as root: as root the server runs as the `postgres` system user
(Debian's package creates it) through setpriv, with the temp dir owned by that user; otherwise it
runs as whoever we are. Either way the superuser role is named `postgres` and local connections
are trusted (the cluster listens on 127.0.0.1 only and lives as long as its test run), so the dsn
is the same everywhere:

    with PostgresCluster() as pg:
        psycopg.connect(pg.dsn)  # host=127.0.0.1 port=<free> dbname=idufleet_test user=postgres

The postmaster is started with setpriv --pdeathsig: if the process that started it dies without
stopping it (SIGKILL, a crash), the kernel sends the postmaster SIGINT (fast shutdown) rather than
leaving it running. So start the cluster from a thread that outlives it (the main thread).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

import psycopg

from tests.support.broker import free_port
from tools import binaries

SYSTEM_USER = "postgres"  # Debian's package creates it; the server runs as it when we are root
SUPERUSER = "postgres"  # the cluster's superuser role (initdb -U), whoever runs the server
DBNAME = "idufleet_test"

# Test-speed settings: the cluster's data is thrown away at the end of the run, so nothing is
# worth an fsync, a full-page image or a synchronous WAL flush; a crash of the test machine loses
# only a test run. Never use these for a real deployment.
SPEED_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "checkpoint_timeout": "30min",
    "max_wal_size": "1GB",
}


class PostgresCluster:
    """One private cluster. start() -> dsn is usable; stop() stops it and removes the temp dir.
    restart() keeps the data and the port; terminate_backends() kills client sessions."""

    def __init__(
        self, dbname: str = DBNAME, speed: bool = True, settings: dict[str, str] | None = None
    ) -> None:
        """speed=False keeps initdb's durable defaults (fsync, synchronous_commit on), as a
        deployment runs: for benchmarks whose numbers should mean something outside a test."""
        self.dbname = dbname
        self.bin = binaries.postgres_bindir()
        self.settings = dict(SPEED_SETTINGS if speed else {}, **(settings or {}))
        self.as_root = os.geteuid() == 0
        self.workdir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0  # initdb + first start + CREATE DATABASE, for the record

    # --- addresses ---------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None, "cluster not started"
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "cluster not started"
        return self.workdir / "postgres.log"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={SUPERUSER} connect_timeout=5"

    @property
    def dsn(self) -> str:
        """libpq connection string of the test database (TCP on loopback, explicit port)."""
        return self.dsn_for(self.dbname)

    # --- running as the right user -----------------------------------------------------------

    def _cmd(self, *argv: str) -> list[str]:
        """argv run as the postgres system user when we are root, else as ourselves; the
        postmaster gets SIGINT if we die (setpriv execs, so Popen's pid is the program's)."""
        pre = ["setpriv", "--pdeathsig", "INT"]
        if self.as_root:
            pre += ["--reuid", SYSTEM_USER, "--regid", SYSTEM_USER, "--init-groups"]
        return [*pre, "--", *argv]

    def _chown(self, path: Path) -> None:
        if self.as_root:
            try:
                pw = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root but there is no {SYSTEM_USER!r} user to run PostgreSQL as; "
                    "run `make setup` (Debian's postgresql package creates it)"
                ) from None
            os.chown(path, pw.pw_uid, pw.pw_gid)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        t0 = time.monotonic()
        # Not under pytest's tmp_path: its base is mode 0700 root, which the postgres user
        # could not enter. mkdtemp's dir is 0700 too, then handed to the server's user.
        self.workdir = Path(tempfile.mkdtemp(prefix="idufleet-pg-"))
        try:
            self._chown(self.workdir)
            self._initdb()
            for attempt in range(3):  # a free port can be taken before the server binds it
                self.port = free_port()
                try:
                    self._launch(timeout)
                    break
                except PortTaken:
                    if attempt == 2:
                        raise
            with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.dbname}"')
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _initdb(self) -> None:
        r = subprocess.run(
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # initdb's own files: the data dir is thrown away at the end
                "--no-instructions",
            ),
            cwd=self.workdir,
            capture_output=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({r.returncode}): {r.stderr.decode(errors='replace')}"
            )
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.workdir}'",
            *(f"{k} = {v}" for k, v in self.settings.items()),
        ]
        with (self.datadir / "postgresql.conf").open("a") as f:  # existing file: owner kept
            f.write("\n# idufleet private test cluster\n" + "\n".join(lines) + "\n")

    def _launch(self, timeout: float) -> None:
        """Start the postmaster on self.port and return once it accepts connections."""
        assert self.workdir is not None
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._cmd(
                    str(self.bin / "postgres"), "-D", str(self.datadir), "-p", str(self.port)
                ),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C in the terminal reaches pytest, not the server
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Connect in a bounded loop until the server accepts a session (the event we need: not
        a fixed sleep). Raises, with the server log's tail, if it exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                tail = self.log_tail()
                if "Address already in use" in tail or "could not create any TCP/IP" in tail:
                    raise PortTaken(tail)
                raise RuntimeError(f"postgres exited during start-up; log:\n{tail}")
            try:
                with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as e:  # not listening yet, or "starting up"
                last = e
            time.sleep(0.01)
        raise TimeoutError(f"postgres not ready after {timeout}s ({last}); log:\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AssertionError):
            return ""

    def _shutdown(self, timeout: float = 30.0) -> None:
        """Stop the postmaster by PID: SIGINT (fast: clients cut, checkpoint written), then
        SIGQUIT (immediate) if it has not exited within `timeout`, then SIGKILL."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with suppress(ProcessLookupError):
                os.kill(p.pid, sig)
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self) -> None:
        """Stop the server (bounded) and remove its temp dir. Safe to call twice."""
        self._shutdown()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart(self, timeout: float = 60.0) -> None:
        """Fast shutdown and start again: same data, same port, so the dsn stays valid. Every
        open connection is cut (clients see an OperationalError on their next statement)."""
        self._shutdown()
        try:
            self._launch(timeout)
        except PortTaken:
            raise RuntimeError(f"port {self.port} was taken while PostgreSQL restarted") from None

    def terminate_backends(self, dbname: str | None = None) -> int:
        """pg_terminate_backend() every client session of the database (default: the test
        database) but our own; returns how many were terminated. Waits until they are gone."""
        db = dbname or self.dbname
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM"
                " pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()",
                (db,),
            ).fetchone()
        return int(row[0]) if row else 0

    def __enter__(self) -> PostgresCluster:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        et: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PortTaken(RuntimeError):
    """The postmaster could not bind its port (someone took it between free_port() and bind)."""


@contextmanager
def private_cluster(dbname: str = DBNAME, speed: bool = True) -> Iterator[PostgresCluster]:
    """A started cluster for a `with` block; stopped and removed after it."""
    pg = PostgresCluster(dbname, speed)
    with pg:
        yield pg


_session: PostgresCluster | None = None


def session_cluster() -> PostgresCluster:
    """The process's one shared cluster, started on first call (the tests' `postgres` fixture
    and store_config use it); stopped by stop_session_cluster() or, failing that, at exit."""
    global _session
    if _session is None:
        _session = PostgresCluster().start()
        atexit.register(stop_session_cluster)
    return _session


def stop_session_cluster() -> None:
    global _session
    if _session is not None:
        _session.stop()
        _session = None
