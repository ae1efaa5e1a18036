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


class StoreUnavailable(StoreError):
    """The store cannot be reached or cannot write right now (connection lost, server
    restarting, database locked, disk full): retry the same call later; nothing about the data
    is wrong. The store thread reopens a lost connection with backoff."""

    code = "store_unavailable"


class StoreDataError(StoreError):
    """The store refused what it was given (a value it cannot represent: an integer past
    int64 in SQLite, a NUL in PostgreSQL text, ...). Retrying the same data fails the same way:
    the ingest pipeline isolates the message and quarantines it. `kind` names the driver's
    error class, for counting."""

    code = "store_refused"

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind or "error"


class TransportError(ControllerError):
    """The MQTT broker refused or dropped the connection."""

    code = "transport"


class CommandError(ControllerError):
    """A command could not be built or sent to a device."""

    code = "command"


class JobError(ControllerError):
    """A fleet job cannot be created or found (code not_found, no_match, bad_job)."""

    code = "job"


class OperatorError(ControllerError):
    """An operator account request was refused (bad name or role, name taken, unknown name)."""

    code = "operator"


# Security reason codes (SecurityError.code).
CA_EXISTS = "ca_exists"
CA_MISSING = "ca_missing"
BAD_HOST = "bad_host"
BAD_NAME = "bad_name"
PLUGIN_MISSING = "plugin_missing"
CONNECT_FAILED = "connect_failed"
TIMEOUT = "timeout"
COMMAND_FAILED = "command_failed"


class SecurityError(ControllerError):
    """A security operation failed (CA, broker config, broker accounts); `code` is one of the
    constants above. Secrets never appear in messages."""

    code = "security"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code)
        self.message = message


class DynsecCommandError(SecurityError):
    """One or more dynamic-security commands in a batch were refused by the broker.

    `failures` lists (command name, broker error text) in batch order. The plugin applies each
    command on its own, so the other commands of the batch did take effect."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        detail = "; ".join(f"{cmd}: {err}" for cmd, err in failures)
        super().__init__(
            COMMAND_FAILED,
            f"broker refused {len(failures)} dynamic-security command(s): {detail}",
        )
        self.failures = failures
