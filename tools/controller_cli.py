"""The controller's commands, registered by tools/cli.py in one line."""

from __future__ import annotations

import click

from tools.demo import demo
from tools.fleet_cmds import command, device_show, devices, metrics, quarantine
from tools.job_cmds import job_group
from tools.serve_cmds import device_group, init_cmd, serve

device_group.add_command(device_show)  # `device show ID` reads through the API

CONTROLLER_COMMANDS: list[click.Command] = [
    init_cmd,
    serve,
    device_group,
    devices,
    metrics,
    command,
    job_group,
    quarantine,
    demo,
]
