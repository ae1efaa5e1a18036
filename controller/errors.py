"""The controller's one exception tree. Each error carries a reason code and a message that says
what to do next; the CLI maps them to exit code 1. Imports nothing from the rest of controller/."""


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""

    code = "controller"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(ControllerError):
    """The configuration file or an environment override is invalid."""

    code = "config"


class KeyWrapError(ControllerError):
    """The master key is missing or wrong, or a wrapped device key does not open."""

    code = "key"


class RegistryError(ControllerError):
    """A device registry operation was refused (unknown id, duplicate, bad field)."""

    code = "registry"


class StoreError(ControllerError):
    """The IDU store is unreachable, or its schema is newer than this code."""

    code = "store"


class TransportError(ControllerError):
    """The MQTT broker refused or dropped the connection."""

    code = "transport"


class CommandError(ControllerError):
    """A command could not be built or sent to a device."""

    code = "command"
