"""provctl's side of the API: HTTP/1.1 + JSON over the daemon's Unix socket.

One connection per call (``wire``). Every failure becomes a ``CliError`` carrying
provctl's exit code.
"""

from __future__ import annotations

import os
import sys

from daemon.cli.contract import EXIT_BY_STATUS, SYSTEM_SOCKET, default_socket_path
from daemon.cli.jsontext import dumps, loads
from daemon.cli.wire import NotHTTP, exchange, posix_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from typing import Any, Callable, Sequence

    from daemon.cli.websocket import WebSocket

PROG = "provctl"

CALL_TIMEOUT = 30.0
"""Seconds for one API call: connecting, sending, and reading the whole answer."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130
EXIT_OTHER_ERROR = 1
"""Exit code of an error status missing from ``EXIT_BY_STATUS``."""


def exit_code_for_status(status: int) -> int:
    """The exit code for an HTTP error status."""
    return EXIT_BY_STATUS.get(status, EXIT_OTHER_ERROR)


# --------------------------------------------------------------------------- errors


class CliError(Exception):
    """An error to report as one ``provctl: ...`` line, with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ApiError(CliError):
    """The daemon answered with an error status and its ``{"error": {...}}`` body."""

    def __init__(self, status: int, code: str | None, message: str,
                 field: str | None = None) -> None:
        text = f"{message} (field: {field})" if field else message
        super().__init__(text, exit_code_for_status(status))
        self.status = status
        self.code = code
        self.field = field


def is_request_id(text: str) -> bool:
    """Whether ``text`` is spelled as a request id: 32 lowercase hex digits."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class Unreachable(CliError):
    """The daemon's socket could not be used: missing, refused, timed out, not HTTP."""

    def __init__(self, socket_path: str, reason: str, hint: str | None = None) -> None:
        hint = hint or "is the daemon running? see --socket"
        super().__init__(f"cannot reach provisiond at {socket_path}: {reason} ({hint})",
                         EXIT_UNREACHABLE)


class Client:
    """provisiond's API, one method per endpoint; each call is one connection."""

    def __init__(self, socket_path: str | os.PathLike[str],
                 timeout: float = CALL_TIMEOUT) -> None:
        self.socket_path = posix_path(os.fspath(socket_path))
        self.timeout = timeout

    def websocket(self, target: str) -> WebSocket:
        """Open a WebSocket on ``target``; errors as ``call`` raises them."""
        from daemon.cli.websocket import ProtocolError, connect

        try:
            return connect(self.socket_path, target, self.timeout)
        except ProtocolError as exc:
            raise Unreachable(self.socket_path, str(exc),
                              "is this provisiond's socket? see --socket") from None
        except BaseException as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> BaseException:
        """What ``exc``, raised while talking to the daemon, means to provctl's user."""
        if isinstance(exc, CliError):
            return exc
        if isinstance(exc, TimeoutError):
            return Unreachable(self.socket_path, f"no answer within {self.timeout:g}s",
                               "is the daemon stuck? see --socket")
        if isinstance(exc, PermissionError):
            directory = os.path.dirname(self.socket_path) or "."
            hint = "the socket's group may use it; see --socket"
            if not os.access(directory, os.X_OK):
                hint = (f"cannot enter {directory}: another user's XDG_RUNTIME_DIR? see "
                        "--socket")
            return Unreachable(self.socket_path, exc.strerror or str(exc), hint)
        if isinstance(exc, OSError):
            return Unreachable(self.socket_path, exc.strerror or str(exc) or
                               type(exc).__name__)
        if isinstance(exc, NotHTTP):
            return Unreachable(self.socket_path, f"not an HTTP answer ({exc})",
                               "is this provisiond's socket? see --socket")
        return exc

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON) or raise ApiError / Unreachable."""
        sent = {"Accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            status, reason, raw = exchange(self.socket_path, self.timeout, method, path, sent,
                                           payload)
        except (OSError, NotHTTP) as exc:
            raise self._unreachable(exc) from None
        data = _decode(raw)
        if status >= 400:
            raise _api_error(status, reason, raw, data)
        if data is _NOT_JSON:
            raise CliError(f"unexpected answer from provisiond to {method} {path}: "
                           f"HTTP {status} {reason} without a JSON body", EXIT_FAILED)
        return status, data

    # -- endpoints

    def health(self) -> dict[str, Any]:
        """GET /v1/health."""
        return self.call("GET", "/v1/health")[1]

    def whoami(self) -> dict[str, Any]:
        """GET /v1/whoami: the caller, and where they may create and administer."""
        return self.call("GET", "/v1/whoami")[1]

    def catalog(self) -> dict[str, Any]:
        """GET /v1/catalog: templates, sizes and resource pools the caller may use."""
        return self.call("GET", "/v1/catalog")[1]

    def create(self, template: str, size: str, resource_pool: str | None = None,
               name: str | None = None, idempotency_key: str | None = None,
               cloud_init: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """POST /v1/requests; return (202 new | 200 idempotent replay, the Request).
        ``cloud_init``: ssh_keys, user_data, network_config (appliance templates)."""
        body: dict[str, Any] = {"template": template, "size": size, **(cloud_init or {})}
        if resource_pool is not None:
            body["resource_pool"] = resource_pool
        if name is not None:
            body["name"] = name
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self.call("POST", "/v1/requests", body, headers)

    def list(self, states: Sequence[str] = (), owners: Sequence[str] = (),
             pools: Sequence[str] = (), since: float | None = None,
             until: float | None = None, names: Sequence[str] = ()) -> dict[str, Any]:
        """GET /v1/requests, optionally filtered by state, owner, pool, VM name and
        creation time."""
        params = [("state", s) for s in states] + [("owner", o) for o in owners]
        params += [("resource_pool", p) for p in pools] + [("name", n) for n in names]
        params += [(key, f"{value:.3f}") for key, value in (("since", since), ("until", until))
                   if value is not None]
        requests: list[Any] = []
        after = None
        while True:  # the daemon answers a page at a time
            page = params + ([("after", after)] if after else [])
            query = "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in page) if page else ""
            data = self.call("GET", f"/v1/requests{query}")[1]
            requests += data.get("requests") or []
            after = data.get("next")
            if not after:
                return {"requests": requests, "next": None}

    def resolve(self, text: str) -> str:
        """The id of the request a command line names: a request id as it is, else the
        VM's name (as virsh takes a domain's). Of several requests with that name, the
        one whose VM is not deleted (nor failed); CliError when none or several are."""
        if is_request_id(text):
            return text
        found = self.list(names=[text]).get("requests") or []
        alive = [r for r in found if r.get("state") != "failed"
                 and (r.get("vm") or {}).get("state") != "deleted"]
        named = alive or found
        if len(named) == 1:
            return str(named[0].get("id"))
        if not named:
            raise CliError(f"no such request {text!r}: neither a request id (32 hex digits) "
                           f"nor the name of a VM you see (see: {PROG} list)",
                           exit_code_for_status(404))
        listed = ", ".join(f"{r.get('id')} ({r.get('owner')}, {r.get('state')}"
                           f"{'/' + str((r.get('vm') or {}).get('state')) if r.get('vm') else ''})"
                           for r in named[:5])
        raise CliError(f"{len(named)} requests are named {text!r}: {listed}"
                       f"{', ...' if len(named) > 5 else ''}; give the id", EXIT_USAGE)

    def get(self, request_id: str, wait: float = 0,
            addresses: bool = False) -> dict[str, Any]:
        """GET /v1/requests/{id}; with ``wait``, answered once it has ended (or after
        ``wait`` seconds); with ``addresses``, its running VM's IP addresses too."""
        params = ([f"wait={wait:g}"] if wait > 0 else []) + (
            ["addresses=true"] if addresses else [])
        query = "?" + "&".join(params) if params else ""
        return self.call("GET", f"/v1/requests/{_seg(request_id)}{query}")[1]

    def log(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/log."""
        return self.call("GET", f"/v1/requests/{_seg(request_id)}/log")[1]

    def cancel(self, request_id: str) -> dict[str, Any]:
        """POST /v1/requests/{id}/cancel."""
        return self.call("POST", f"/v1/requests/{_seg(request_id)}/cancel")[1]

    def operate(self, request_id: str, operation: str, force: bool = False,
                wait: float = 0) -> dict[str, Any]:
        """POST /v1/requests/{id}/OPERATION: start, stop, reboot or delete its VM; with
        ``wait``, answered once the operation is over (or after ``wait`` seconds)."""
        body = {"force": True} if force else None
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self.call("POST", f"/v1/requests/{_seg(request_id)}/{operation}{query}",
                         body)[1]

    def explain(self, template: str, size: str, resource_pool: str | None = None
                ) -> dict[str, Any]:
        """POST /v1/placement/explain: where a request would get its storage."""
        body: dict[str, Any] = {"template": template, "size": size}
        if resource_pool is not None:
            body["resource_pool"] = resource_pool
        return self.call("POST", "/v1/placement/explain", body)[1]

    def reconcile(self, apply: bool) -> dict[str, Any]:
        """POST /v1/reconcile: orphans of this daemon (removed when ``apply``)."""
        return self.call("POST", "/v1/reconcile", {"apply": apply})[1]


_NOT_JSON: Any = object()


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(value: str) -> str:
    """Percent-encode everything but RFC 3986's unreserved characters."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode())


def _seg(value: str) -> str:
    """A value quoted as one URL path segment."""
    return quote(value)


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return loads(raw)
    except ValueError:
        return _NOT_JSON


def _api_error(status: int, reason: str, raw: bytes, data: Any) -> ApiError:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(status, error.get("code"), one_line(str(error["message"])),
                        error.get("field"))
    text = one_line(raw.decode("utf-8", "replace"))[:200]
    message = f"HTTP {status} {reason}" + (f": {text}" if text else "")
    return ApiError(status, None, message)


def find_socket() -> str:
    """The caller's own daemon's socket if there is one, else the system service's."""
    own = default_socket_path()
    try:
        os.stat(own)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.exists(SYSTEM_SOCKET):
            return SYSTEM_SOCKET
    except OSError:
        # Not ours to look at (another user's $XDG_RUNTIME_DIR, kept by su or setpriv):
        # connecting says so and exits 4, rather than quietly asking another daemon.
        pass
    return own


def reporting_errors(command: Callable[[], int]) -> int:
    """Run a provctl command; any error becomes one ``provctl: ...`` line and its exit
    code, never a traceback."""
    try:
        return command()
    except CliError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `provctl list | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:  # this machine's trouble (a file, the terminal), not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: {exc.strerror or one_line(str(exc))}{where}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # this is a bug in provctl or the API
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {one_line(str(exc))}",
              file=sys.stderr)
        return EXIT_FAILED


def one_line(text: str) -> str:
    """Text on one line: its non-blank lines joined by '; '."""
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())
