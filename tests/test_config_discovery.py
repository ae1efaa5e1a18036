"""One config discovery rule for every command (issue 14): --config, $IDUFLEET_CONFIG,
./idufleet.toml, /etc/idufleet/idufleet.toml; nothing found is a refusal with the fix, never a
fresh registry, and only `idufleet init` / `serve --init` create a store or master key."""

from __future__ import annotations

import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from controller import config as C
from tools.api_client import resolve
from tools.cli import cli

CLEAN = {"IDUFLEET_CONFIG": None, "IDUFLEET_API": None, "IDUFLEET_API_TOKEN": None}


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, no system config, no IDUFLEET_* variables."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(C, "SYSTEM_CONFIG", tmp_path / "etc" / "idufleet.toml")
    for k in CLEAN:
        monkeypatch.delenv(k, raising=False)
    return work


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**CLEAN, **(env or {})})


@pytest.mark.parametrize(
    "args",
    [
        ["device", "add", "ap-1", "--zone", "foz", "--kind", "ap"],
        ["device", "disable", "ap-1"],
        ["claim", "list"],
        ["serve"],
        ["init"],
    ],
)
def test_a_command_without_a_config_refuses_with_the_fix_and_creates_nothing(
    nowhere: Path, args: list[str]
) -> None:
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    assert "no idufleet config found" in r.output and "IDUFLEET_CONFIG" in r.output
    assert list(nowhere.iterdir()) == []  # no ./var/idufleet.sqlite, no ./var/master.key


def test_discovery_order(nowhere: Path, tmp_path: Path) -> None:
    system = C.SYSTEM_CONFIG
    system.parent.mkdir()
    system.write_text("")
    assert C.find(None, {}) == system
    (nowhere / "idufleet.toml").write_text("")
    assert C.find(None, {}) == Path("idufleet.toml")
    assert C.find(None, {"IDUFLEET_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert C.find("/y.toml", {"IDUFLEET_CONFIG": "/x.toml"}) == Path("/y.toml")


def test_the_cli_finds_the_api_and_token_in_the_config(
    nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve(None, None) == ("http://127.0.0.1:8080", "")
    cfg = nowhere / "idufleet.toml"
    cfg.write_text('[api]\nhost = "0.0.0.0"\nport = 9123\ntoken = "boot"\n')
    assert resolve(None, None) == ("http://127.0.0.1:9123", "boot")
    cfg.write_text(
        '[api]\nport = 9123\ntoken = "boot"\n[cli]\napi = "http://ctl:80"\ntoken = "t"\n'
    )
    assert resolve(None, None) == ("http://ctl:80", "t")
    monkeypatch.setenv("IDUFLEET_API", "http://env:1")  # the environment overrides the file
    monkeypatch.setenv("IDUFLEET_API_TOKEN", "e")
    assert resolve(None, None) == ("http://env:1", "e")
    assert resolve("http://opt:2", "o") == ("http://opt:2", "o")


def _config(d: Path, store: Path, key: Path) -> Path:
    p = d / "idufleet.toml"
    p.write_text(f'[store]\npath = "{store}"\n[keys]\nmaster_key_file = "{key}"\n')
    return p


def test_device_add_before_init_refuses_and_init_creates_owner_only_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = _config(tmp_path, data / "idu.sqlite", data / "master.key")
    env: dict[str, str | None] = {"IDUFLEET_CONFIG": str(cfg)}
    r = invoke("device", "add", "ap-1", "--zone", "foz", "--kind", "ap", env=env)
    assert r.exit_code == 1 and "idufleet init" in r.output
    assert not data.exists()
    r = invoke("init", env=env)  # data/ is missing: refused unless told
    assert r.exit_code == 1 and "--create-dirs" in r.output and not data.exists()
    r = invoke("serve", "--init", env=env)
    assert r.exit_code == 1 and "--create-dirs" in r.output and not data.exists()
    r = invoke("init", "--create-dirs", env=env)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "idu.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "master.key").stat().st_mode) == 0o600
    r = invoke("device", "add", "ap-1", "--zone", "foz", "--kind", "ap", env=env)
    assert r.exit_code == 0 and "registered ap-1" in r.output
    assert "nothing to create" in invoke("init", env=env).output


def _commands(group: click.Group, path: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{path} {name}".strip(), cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, f"{path} {name}"))
    return out


def test_the_controller_api_is_spelled_api_everywhere() -> None:
    for name, cmd in _commands(cli):
        for p in cmd.params:
            if "--controller" in p.opts or p.name == "api":
                assert p.opts[0] == "--api", f"{name}: {p.opts}"
