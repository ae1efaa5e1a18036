"""The security package's one exception type; `.code` is stable for callers, the message says
what to do next. Secrets never appear in messages."""

# Reason codes.
CA_EXISTS = "ca_exists"
CA_MISSING = "ca_missing"
BAD_HOST = "bad_host"
BAD_NAME = "bad_name"
PLUGIN_MISSING = "plugin_missing"
CONNECT_FAILED = "connect_failed"
TIMEOUT = "timeout"
COMMAND_FAILED = "command_failed"


class SecurityError(Exception):
    """A security operation failed; `code` is one of the constants above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


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
