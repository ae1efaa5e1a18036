"""`idufleet serve` in the field (issue 14): a taken API port is one line with the fix (exit 1),
not a traceback; `serve --check` catches a missing master key and an empty broker password."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner, Result

from tests.support.broker import free_port
from tools.cli import cli


def _config(tmp: Path, extra: str = "") -> Path:
    p = tmp / "idufleet.toml"
    p.write_text(
        f'[store]\npath = "{tmp / "idu.sqlite"}"\n'
        f'[keys]\nmaster_key_file = "{tmp / "master.key"}"\n' + extra
    )
    return p


def _run(cfg: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(
        cli,
        [*args],
        env={"IDUFLEET_CONFIG": str(cfg), "IDUFLEET_MQTT_PASSWORD": None, **(env or {})},
    )


def test_a_taken_api_port_is_one_line_with_the_fix(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        cfg = _config(tmp_path, f"[mqtt]\nport = {free_port()}\n[api]\nport = {port}\n")
        assert _run(cfg, "init").exit_code == 0
        r = _run(cfg, "serve")
    finally:
        holder.close()
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.exception
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    assert f"127.0.0.1:{port} is already taken" in errors[0] and "api.port" in errors[0]


def test_serve_check_catches_a_missing_master_key_and_an_empty_broker_password(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, '[mqtt]\nusername = "controller"\n')
    r = _run(cfg, "serve", "--check")
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2, r.output
    assert "master key file" in lines[0] and "idufleet init" in lines[0]
    assert "mqtt.password is empty" in lines[1] and "IDUFLEET_MQTT_PASSWORD" in lines[1]
    assert _run(cfg, "init").exit_code == 0  # the key exists now: only the password is missing
    r = _run(cfg, "serve", "--check")
    assert r.exit_code == 1 and r.output.count("Error:") == 1, r.output
    r = _run(cfg, "serve", "--check", env={"IDUFLEET_MQTT_PASSWORD": "s3cret"})
    assert r.exit_code == 0, r.output
    assert "s3cret" not in r.output
