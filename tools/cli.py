"""Entry point of the `idufleet` command. Each command group lives in its own module under tools/
and is registered here; commands parse, call a library function, and print."""

from importlib.metadata import version

import click

from tools import proto_cmds, provision_cmds
from tools.broker_cmds import broker_group
from tools.ca_cmds import ca_group
from tools.controller_cli import CONTROLLER_COMMANDS
from tools.doctor import doctor_command
from tools.firmware_build import firmware_group
from tools.flash_cmds import flash_cmd
from tools.operator_cmds import audit, operator_group
from tools.release_cmds import release_group
from tools.sim_cmds import simulate_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("idufleet"), prog_name="idufleet")
def cli() -> None:
    """idufleet: firmware agent and fleet controller for Porto's city edge devices."""


cli.add_command(proto_cmds.protocol)
cli.add_command(ca_group)
cli.add_command(broker_group)
cli.add_command(flash_cmd)
cli.add_command(firmware_group)
for _cmd in CONTROLLER_COMMANDS:  # serve, device, devices, metrics, command, demo
    cli.add_command(_cmd)
provision_cmds.register(cli)  # claim, provision, device rotate-key/revoke
cli.add_command(simulate_cmd)
cli.add_command(release_group)
cli.add_command(operator_group)
cli.add_command(audit)
cli.add_command(doctor_command())


def main() -> None:
    cli()
