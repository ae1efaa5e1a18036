"""Revocation: the broker account first (dynsec disableClient refuses new logins and drops the
live connection, so the device's messages stop at the broker), then the registry entry (ingest
refuses the device as disabled_device, which also catches what was already queued). Re-enabling
is `idufleet broker device enable` + `idufleet device enable`; a stolen board should instead get
a new identity (delete + provision)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.errors import ControllerError
from controller.security import dynsec
from controller.security.errors import SecurityError

if TYPE_CHECKING:
    from controller.app import Controller


def revoke_broker(admin: dynsec.DynsecClient, device_id: str) -> None:
    """Raises ControllerError with the broker's reason (unknown account, no admin rights)."""
    try:
        admin.disable_client(device_id)
    except SecurityError as e:
        raise ControllerError(
            f"broker did not disable {device_id}: {e}; check the id with "
            "`idufleet broker device list`",
            "revoke",
        ) from e


async def revoke(ctl: Controller, device_id: str, admin: dynsec.DynsecClient | None) -> None:
    """Both steps from inside a running controller (admin None: a broker without accounts)."""
    if admin is not None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, revoke_broker, admin, device_id)
    await ctl.disable(device_id)
