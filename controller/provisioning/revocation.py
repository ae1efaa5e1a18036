"""Revocation: the broker account first (dynsec disableClient refuses new logins and drops the
live connection, so the device's messages stop at the broker), then the registry entry (ingest
refuses the device as disabled_device, which also catches what was already queued). Re-enabling
is `idufleet device enable`, which undoes both halves (`enable_broker`); a stolen board
should instead get a new identity (delete + provision). The registry half is `Fleet.disable` behind
`POST /api/devices/{id}/disable`; `idufleet device revoke` calls this, then that."""

from __future__ import annotations

from controller.errors import ControllerError, SecurityError
from controller.security import dynsec


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


def enable_broker(admin: dynsec.DynsecClient, device_id: str) -> None:
    """The other half of revoke_broker. Raises ControllerError with the broker's reason."""
    try:
        admin.enable_client(device_id)
    except SecurityError as e:
        raise ControllerError(
            f"broker did not enable {device_id}: {e}; check the id with "
            "`idufleet broker device list`",
            "enable",
        ) from e
