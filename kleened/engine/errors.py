"""Domain errors. Routers map them to status codes in one place (api/errors.py).

Messages are what clients see; several are compared literally by klee, so
keep the original's wording (typos included) where the reference marks it.
"""


class EngineError(Exception):
    """Base class; `str(err)` is the client-visible message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(EngineError):
    """The object named by the request does not exist."""


class Conflict(EngineError):
    """The request conflicts with current state (running, in use, name taken)."""


class InvalidInput(EngineError):
    """The request is well-formed JSON but its values are not acceptable."""


class HostFailure(EngineError):
    """A host operation (zfs, jail, mount, firewall) failed."""
