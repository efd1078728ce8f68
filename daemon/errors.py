"""The one error hierarchy of provisiond, mapped once to HTTP statuses and CLI exit codes.

    ProvisiondError                 500  exit 1   something went wrong on our side
    ├── InvalidInput                400  exit 2   the caller's input is wrong (has .field)
    │   ├── UnknownName             404  exit 5   no such request (a name in the URL)
    │   └── ConfigError             --   exit 2   config files are invalid (has .problems)
    ├── PermissionDenied            403  exit 3   the caller may not do this
    ├── InvalidState                409  exit 1   the request is in the wrong state for this
    │   ├── StaleState              409  exit 1   a transition from a state no longer stored
    │   ├── AlreadyClaimed          409  exit 1   another request holds the volume
    │   ├── RequestCancelled        409  exit 1   raised into a waiting step by a cancel
    │   │   └── ForceOffAsked       409  exit 1   ... by a forced stop (ends a stop's wait)
    │   └── InUse                   409  exit 1   taken: a VM's console, a VM name
    ├── QuotaExceeded               409  exit 1   the resource pool's quota would not hold
    ├── TooManyInProgress           429  exit 1   the caller has too much in progress
    ├── NoStorage                   507  exit 1   no free volume and no pool with room
    ├── NoHostCapacity              507  exit 1   no host of the hardware pool has room
    ├── VirtError                   502  exit 1   libvirt said no (mapped in daemon.virt)
    │   ├── HostUnreachable         503  exit 1   the libvirt connection is down
    │   ├── VirtTimeout             504  exit 1   libvirt did not answer / event never came
    │   └── NotSupported            501  exit 1   the host's driver cannot do this
    └── SocketInUse                 --   exit 1   another provisiond serves the socket path

Each class carries its ``http_status`` and ``exit_code``; the API reads them and nothing
else decides a status code (provctl keeps a copy of the status -> exit code table in
``daemon/cli/contract.py``, checked against ``exit_codes_by_status`` by a test). ``code``
is a stable machine-readable name. Anything else raised on a request's path is a bug: the
engine fails that one request with "internal error", the API answers 500.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProvisiondError(Exception):
    """Base of every error provisiond raises on purpose."""

    http_status: int = 500
    exit_code: int = 1
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, str]:
        """The error as the API's ``{"code", "message", "field"?}`` object."""
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidInput(ProvisiondError):
    """The caller's input is malformed or out of range."""

    http_status = 400
    exit_code = 2
    code = "invalid"


class UnknownName(InvalidInput):
    """A resource named in the URL (a request id) that does not exist for the caller."""

    http_status = 404
    exit_code = 5
    code = "not_found"


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file, located by file and key path."""

    file: str
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key_path}: " if self.key_path else f"{self.file}: "
        return where + self.message


class ConfigError(InvalidInput):
    """The configuration is invalid; ``problems`` lists every problem found."""

    code = "config"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class PermissionDenied(ProvisiondError):
    """The caller lacks the privilege for this action."""

    http_status = 403
    exit_code = 3
    code = "forbidden"


class InvalidState(ProvisiondError):
    """The request is in a state that does not allow this."""

    http_status = 409
    code = "wrong_state"


class StaleState(InvalidState):
    """A transition was asked from a state the record is no longer in (in the store)."""


class AlreadyClaimed(InvalidState):
    """Another live request holds a claim on this volume."""


class RequestCancelled(InvalidState):
    """Raised into a step waiting for an event when its request is cancelled."""


class ForceOffAsked(RequestCancelled):
    """Raised into a VM's stop step, waiting for its guest to shut down, by a forced stop
    asked meanwhile: the step stops waiting and forces it off."""

    def __init__(self, user: str) -> None:
        super().__init__(f"stop --force by {user}")
        self.user = user


class InUse(InvalidState):
    """What was asked for is taken: a VM's console (another session), a VM's name."""

    code = "in_use"


class QuotaExceeded(ProvisiondError):
    """The resource pool's quota would be exceeded."""

    http_status = 409
    code = "quota_exceeded"


class TooManyInProgress(ProvisiondError):
    """The caller already has ``daemon.max_in_progress_per_user`` things in progress."""

    http_status = 429
    code = "too_many_in_progress"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds after which asking again may be accepted (the Retry-After header)."""


class NoStorage(ProvisiondError):
    """No free volume of the right size and no pool with room for a new one."""

    http_status = 507
    code = "no_storage"


class NoHostCapacity(ProvisiondError):
    """No reachable host of the hardware pool has the cpus and memory a request needs."""

    http_status = 507
    code = "no_capacity"


class VirtError(ProvisiondError):
    """libvirt refused or failed an operation."""

    http_status = 502
    code = "libvirt"

    def __init__(self, message: str, *, libvirt_code: int | None = None) -> None:
        super().__init__(message)
        self.libvirt_code = libvirt_code


class HostUnreachable(VirtError):
    """The libvirt connection to the host is down or cannot be opened."""

    http_status = 503
    code = "host_unreachable"


class VirtTimeout(VirtError):
    """libvirt did not answer, or an awaited event did not come, in time."""

    http_status = 504
    code = "libvirt_timeout"


class NotSupported(VirtError):
    """The host's libvirt driver cannot do this (the test driver has no console)."""

    http_status = 501
    code = "not_supported"


class SocketInUse(ProvisiondError):
    """Another live process serves on the socket path (or it is not a socket)."""


def exit_codes_by_status() -> dict[int, int]:
    """HTTP status -> CLI exit code, read off the hierarchy (the one place both live)."""
    table: dict[int, int] = {}
    pending = [ProvisiondError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        known = table.setdefault(cls.http_status, cls.exit_code)
        if known != cls.exit_code:
            raise AssertionError(f"HTTP {cls.http_status} maps to exit codes {known} and "
                                 f"{cls.exit_code}")
    return table
