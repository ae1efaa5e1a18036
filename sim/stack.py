"""A private stack for a simulation: Mosquitto with the project's generated config (dynamic
security, TCP_NODELAY, max_queued_messages raised, persistence on so a restart keeps the
controller's queued messages) and the controller as its own `idufleet serve` process on SQLite,
so the simulator, the broker and the controller each have their own CPU and RSS to measure.
The process helpers (free port, finding mosquitto, stopping a child) are the demo's.

Also the file-descriptor limit: every simulated device holds one socket in this process and one
in the broker's, which inherits this process's limit."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.security import dynsec
from controller.security.broker_config import BrokerSettings, render
from tools.demo import free_port, mosquitto_binary, stop_process

FD_HEADROOM = 256  # sockets and files beyond one per device: logs, the API, the store
BROKER_START_S = 60  # a broker loading tens of thousands of dynsec accounts needs seconds


class StackError(RuntimeError):
    """The stack could not start; the message says where to look."""


def raise_fd_limit(devices: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows; (soft, needed). Beyond the
    hard limit only root can go (`ulimit -Hn`, systemd LimitNOFILE, /etc/security/limits.conf)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices + FD_HEADROOM
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, need


def proc_cpu_rss(pid: int) -> tuple[float, int, int]:
    """(CPU seconds user+system, RSS bytes, peak RSS bytes) of a process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parts = stat[stat.rindex(")") + 2 :].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(parts[11]) + int(parts[12])) / tick
        rss = hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
        return cpu, rss, hwm
    except (OSError, ValueError, IndexError):
        return 0.0, 0, 0


def wait_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise StackError(f"{what} did not start; see {log}")


@dataclass
class OwnStack:
    """Broker + controller under `workdir`; start() then stop(). Credentials stay in files
    (0600) and the children's environment, never on a command line."""

    workdir: Path
    offline_after: int = 180
    mqtt_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    admin: tuple[str, str] = ("admin", "")
    broker: subprocess.Popen[bytes] | None = None
    controller: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # (site, device, password) written into the broker's initial dynsec document: accounts exist
    # before the broker starts, one file write instead of thousands of control commands
    accounts: Sequence[tuple[str, str, str]] = ()
    timings: dict[str, float] = field(default_factory=dict)
    past_broker_cpu: float = 0.0  # CPU seconds of broker processes stopped by restarts
    past_broker_hwm: int = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def db_path(self) -> Path:
        return self.workdir / "idufleet.sqlite"

    def _broker_files(self) -> Path:
        admin_pw, ctl_pw = dynsec.new_password(), dynsec.new_password()
        self.admin = ("admin", admin_pw)
        self._ctl = ("controller", ctl_pw)
        t = time.monotonic()
        dyn = dynsec.write_initial_file(
            self.workdir / "dynsec.json", "admin", admin_pw, self._ctl, self.accounts
        )
        self.timings["accounts_write_s"] = time.monotonic() - t
        self.timings["dynsec_file_mb"] = dyn.stat().st_size / 2**20
        conf = self.workdir / "mosquitto.conf"
        settings = BrokerSettings(
            data_dir=self.workdir,
            port=self.mqtt_port,
            bind="127.0.0.1",
            dynsec_file=dyn,
            # as root keep root: Mosquitto would drop to "mosquitto", which cannot read the
            # owner-only dynsec file nor write persistence here (tests/support/secure_broker.py)
            user=getpass.getuser() if os.geteuid() == 0 else None,
            extra=("autosave_interval 60",),
        )
        conf.write_text(render(settings))
        (self.workdir / "credentials.json").write_text(
            json.dumps(
                {"admin": {"username": "admin", "password": admin_pw}, "port": self.mqtt_port}
            )
        )
        (self.workdir / "credentials.json").chmod(0o600)
        return conf

    def start_broker(self) -> None:
        t = time.monotonic()
        conf = self.workdir / "mosquitto.conf"
        log_path = self.workdir / "mosquitto.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self.broker = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        wait_port(self.mqtt_port, self.broker, BROKER_START_S, "mosquitto", log_path)
        self.timings.setdefault("broker_start_s", time.monotonic() - t)  # the cold start

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._broker_files()
        self.start_broker()
        cfg = self.workdir / "idufleet.toml"
        cfg.write_text(
            "# written by `idufleet simulate`\n"
            f'[mqtt]\nport = {self.mqtt_port}\nusername = "controller"\n'
            'client_id = "idufleet-sim-ctl"\n'
            f'\n[store]\nbackend = "sqlite"\npath = "{self.db_path}"\n'
            f'\n[keys]\nmaster_key_file = "{self.workdir / "master.key"}"\n'
            f"\n[api]\nport = {self.api_port}\n"
            f"\n[ingest]\noffline_after = {self.offline_after}\n"
            '\n[log]\nlevel = "warning"\n'
        )
        env = dict(os.environ)
        env["IDUFLEET_MQTT_PASSWORD"] = self._ctl[1]
        env["IDUFLEET_API_TOKEN"] = self.token
        log_path = self.workdir / "controller.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        self.controller = subprocess.Popen(
            [sys.executable, "-c", "from tools.cli import main; main()", "serve", "--init",
             "--config", str(cfg)],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_port(self.api_port, self.controller, 30, "the controller", log_path)

    def restart_broker(self, down: float) -> None:
        """SIGTERM (Mosquitto saves its persistence at a clean exit), `down` seconds, start.
        The stopped broker's CPU (from the reaped child's rusage, shutdown included) and peak
        RSS are kept, so usage() covers the whole run, not only the last broker process."""
        if self.broker is not None:
            _, _, hwm = proc_cpu_rss(self.broker.pid)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            stop_process(self.broker, 30)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.past_broker_cpu += (after.ru_utime + after.ru_stime) - (
                before.ru_utime + before.ru_stime
            )
            self.past_broker_hwm = max(self.past_broker_hwm, hwm)
        time.sleep(down)
        self.start_broker()
        self.restarts += 1

    def usage(self) -> dict[str, tuple[float, int, int]]:
        """(CPU seconds, RSS, peak RSS) of the broker (all its processes so far) and the
        controller."""
        out = {k: proc_cpu_rss(p) for k, p in self.pids().items()}
        cpu, rss, hwm = out.get("broker", (0.0, 0, 0))
        out["broker"] = (cpu + self.past_broker_cpu, rss, max(hwm, self.past_broker_hwm))
        return out

    def pids(self) -> dict[str, int]:
        out = {}
        if self.broker is not None and self.broker.poll() is None:
            out["broker"] = self.broker.pid
        if self.controller is not None and self.controller.poll() is None:
            out["controller"] = self.controller.pid
        return out

    def stop(self) -> None:
        if self.controller is not None:
            if self.controller.poll() is None:
                self.controller.send_signal(signal.SIGTERM)
            stop_process(self.controller, 30)
        if self.broker is not None:
            stop_process(self.broker, 30)
