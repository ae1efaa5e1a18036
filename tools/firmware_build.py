"""Compile the device code (firmware/*.py and the protocol modules the agent imports) to .mpy
bytecode with mpy-cross. The unix-port agent loads firmware/_mpy/ (firmware/main.py prefers it):
compiling the sources on a 64 KiB heap does not fit. Incremental, so callers (tests, demo,
benchmarks) can call build() every time."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import click

from tools import binaries
from tools.options import api_option, token_option

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware"
DEFAULT_OUT = FIRMWARE / "_mpy"
# protocol modules a device needs (not metrics/vectors/replay/fastpath: controller and test side
# only). A stale .mpy of a module dropped from this list would shadow nothing: the device never
# imports it.
PROTOCOL = (
    "__init__",
    "claim",  # firmware/claim.py: boards booting with a claim bundle (docs/PROVISIONING.md)
    "codec",
    "commands",
    "compat",
    "confirm",  # a CONFIRM's ranges, loaded while one is opened (heap.py DECODER)
    "downlink",
    "envelope",
    "errors",
    "messages",
    "reader",
    "sealing",
    "sign",
    "topics",
    "writer",
)
ENTRY = "main.py"  # stays source: it is the script micropython is started with


class BuildError(Exception):
    """mpy-cross is missing or refused a file; the message says which and why."""


def mpy_cross() -> str:
    try:
        return binaries.mpy_cross()
    except binaries.MissingBinary as e:
        raise BuildError(str(e)) from None


def sources() -> list[tuple[Path, str]]:
    """(source file, module path inside the output tree) for everything a device imports."""
    out = [(p, p.stem) for p in sorted(FIRMWARE.glob("*.py")) if p.name != ENTRY]
    out += [(ROOT / "protocol" / f"{m}.py", f"protocol/{m}") for m in PROTOCOL]
    return out


def build(out: Path | None = None, arch: str | None = None) -> Path:
    """Compile every device module into out (default firmware/_mpy); returns out. arch:
    None for portable bytecode (unix port), "xtensawin" for an ESP32."""
    out = out or DEFAULT_OUT
    tool = mpy_cross()
    for src, mod in sources():
        dst = out / f"{mod}.mpy"
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        cmd = [tool, "-O3", "-o", str(dst), "-s", f"{mod}.py"]
        if arch:
            cmd.append(f"-march={arch}")
        proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True)
        if proc.returncode:
            raise BuildError(f"mpy-cross failed on {src}: {proc.stderr.strip()}")
    return out


@click.group("firmware")
def firmware_group() -> None:
    """Device firmware utilities."""


@firmware_group.command("build")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder.")
@click.option("--arch", default=None, help="mpy-cross -march (xtensawin for ESP32).")
def build_cmd(out: Path | None, arch: str | None) -> None:
    """Compile the agent and protocol to .mpy (default firmware/_mpy, used by the unix port)."""
    try:
        click.echo(build(out, arch))
    except BuildError as e:
        raise click.ClickException(str(e)) from e


AGENT_HEAP = "64K"  # the tests' heap; see firmware/README.md, "Heap"


def micropython() -> str:
    try:
        return binaries.micropython()
    except binaries.MissingBinary as e:
        raise BuildError(str(e)) from None


def agent_command(flash: Path, heap: str = AGENT_HEAP) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run the agent on the unix port with flash as its flash."""
    root = binaries.device_root()  # a short path, as on a device (tools/binaries.py says why)
    env = dict(os.environ, MICROPYPATH=f"{root}:{root / 'firmware'}")
    argv = [micropython(), "-X", f"heapsize={heap}", str(root / "firmware" / "main.py"), str(flash)]
    return argv, env


def sim_config(
    device: str,
    host: str,
    port: int,
    key_hex: str,
    kind: str = "ap",
    site: str = "porto",
    zone: str = "ribeira",
    interval: int = 10,
    speed: float = 1.0,
) -> dict[str, object]:
    """A config.json for the sim board (docs/DEVICE-CONFIG.md)."""
    from controller.provisioning.bundles import broker_block, device_bundle

    broker = broker_block(host, port, device, None)
    return device_bundle(
        device,
        site,
        zone,
        kind,
        bytes.fromhex(key_hex),
        broker,
        board="sim",
        interval=interval,
        sim={"speed": speed, "seed": 1},
    )


@firmware_group.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=1883, show_default=True)
@click.option("--device", default="ap-dev-1", show_default=True)
@click.option("--kind", type=click.Choice(["ap", "sensor"]), default="ap", show_default=True)
@click.option("--key-hex", default=None, help="32-byte key in hex (default: new, printed).")
@click.option("--interval", default=10, show_default=True, help="Seconds between reports.")
@click.option("--speed", default=1.0, show_default=True, help="Sim clock speed.")
@click.option(
    "--flash",
    type=click.Path(path_type=Path),
    default=None,
    help="Flash directory (default var/flash/<device>); an existing config is kept.",
)
@click.option("--heap", default=AGENT_HEAP, show_default=True)
@click.option("--zone", default=None, help="Zone to register the device in (with --token).")
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Run an existing device bundle (`device add --bundle`, `provision`) instead.",
)
@api_option
@token_option
def run_cmd(
    host: str,
    port: int,
    device: str,
    kind: str,
    key_hex: str | None,
    interval: int,
    speed: float,
    flash: Path | None,
    heap: str,
    zone: str | None,
    bundle: Path | None,
    api: str | None,
    token: str | None,
) -> None:
    """Build the firmware and run one sim agent on the unix port against a broker: registered
    through the controller's API first (--zone; --api and --token or the config's), or from an
    existing --bundle. A refused broker login is one console line (CONNACK 4/5) with the fix."""
    try:
        build()
        if bundle is not None:
            doc = json.loads(bundle.read_text())
            device = str(doc["device"])
        flash = flash or ROOT / "var" / "flash" / device
        cfg_path = flash / "config.json"
        if bundle is not None:
            doc["board"] = "sim"  # the unix port simulates the hardware
            doc.setdefault("sim", {"speed": speed, "seed": 1})
            _write_config(cfg_path, doc)
            click.echo(f"running {device} from {bundle}", err=True)
        elif not cfg_path.exists():
            if key_hex is None:
                if zone is None:
                    raise click.UsageError(
                        "give --zone (and --token/--api, or a config) to register the device "
                        "with the controller, --bundle FILE of a registered device, or --key-hex"
                    )
                from tools.api_client import ApiClient

                new = ApiClient(api, token).post(
                    "/api/devices", {"id": device, "zone": zone, "kind": kind}
                )
                key_hex = str(new["key"])
                click.echo(f"registered {device} in {zone} through the controller API", err=True)
            doc = sim_config(
                device, host, port, key_hex, kind, zone=zone or "ribeira", interval=interval,
                speed=speed,
            )  # fmt: skip
            _write_config(cfg_path, doc)
            click.echo(f"wrote {cfg_path}", err=True)
        argv, env = agent_command(flash, heap)
    except (BuildError, ValueError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    os.execve(argv[0], argv, env)


def _write_config(cfg_path: Path, doc: dict[str, object]) -> None:
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc))


if __name__ == "__main__":
    build()
