"""``provctl``: the command-line client of provisiond's HTTP API over its Unix socket.

Standard library only: HTTP/1.1 + JSON through ``http.client`` on an AF_UNIX socket. Human
output is plain aligned tables; ``--json`` prints the API's JSON instead. Exit codes:

    0  success
    1  the request failed, or the daemon refused it (409 wrong_state / quota_exceeded, 5xx)
    2  invalid input (400, and command-line usage errors)
    3  permission denied (403)
    4  the daemon cannot be reached (socket missing, connection refused, timeout)
    5  not found (404)
    130 interrupted (Ctrl-C)

Every error is one line on stderr: ``provctl: <message>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote, urlencode

from daemon.config import default_socket_path
from daemon.errors import exit_codes_by_status
from statemachines import TERMINAL, State

PROG = "provctl"
SOCKET_ENV = "PROVISIOND_SOCKET"
SYSTEM_SOCKET_TEXT = "/run/provisiond/provisiond.sock"
CALL_TIMEOUT = 30.0
"""Seconds for one API call: connecting, sending, and reading the whole answer."""
POLL_INTERVAL = 0.2
"""Seconds between two reads of a request's log under ``create --wait`` and ``log --follow``."""
ROLLBACK_GRACE = 2.0
"""Seconds ``log --follow`` waits after ``failed`` for the rollback's note to be logged."""

STATES: tuple[str, ...] = tuple(s.value for s in State)
TERMINAL_STATES: frozenset[str] = frozenset(s.value for s in TERMINAL)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130

EXIT_BY_STATUS: dict[int, int] = exit_codes_by_status()
"""HTTP status of an API error -> provctl's exit code, read off ``daemon.errors``."""
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


class Unreachable(CliError):
    """The daemon's socket could not be used: missing, refused, timed out, not HTTP."""

    def __init__(self, socket_path: str | Path, reason: str, hint: str | None = None) -> None:
        hint = hint or "is the daemon running? see --socket"
        super().__init__(f"cannot reach provisiond at {socket_path}: {reason} ({hint})",
                         EXIT_UNREACHABLE)


# --------------------------------------------------------------------------- HTTP client


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose transport is a Unix stream socket."""

    def __init__(self, socket_path: str | Path, timeout: float = CALL_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        """Open the AF_UNIX socket (the host name is only used for the Host header)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """provisiond's API, one method per endpoint; each call is one connection."""

    def __init__(self, socket_path: str | Path, timeout: float = CALL_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON) or raise ApiError / Unreachable."""
        sent = {"Accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, path, body=payload, headers=sent)
            response = conn.getresponse()
            status, reason, raw = response.status, response.reason, response.read()
        except TimeoutError:
            raise Unreachable(self.socket_path, f"no answer within {self.timeout:g}s",
                              "is the daemon stuck? see --socket") from None
        except PermissionError as exc:
            raise Unreachable(self.socket_path, exc.strerror or str(exc),
                              "the socket's group may use it; see --socket") from None
        except OSError as exc:
            raise Unreachable(self.socket_path, exc.strerror or str(exc) or type(exc).__name__
                              ) from None
        except http.client.HTTPException as exc:
            raise Unreachable(self.socket_path,
                              f"not an HTTP answer ({type(exc).__name__})",
                              "is this provisiond's socket? see --socket") from None
        finally:
            conn.close()
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

    def catalog(self) -> dict[str, Any]:
        """GET /v1/catalog: templates, sizes and resource pools the caller may use."""
        return self.call("GET", "/v1/catalog")[1]

    def create(self, template: str, size: str, resource_pool: str | None = None,
               name: str | None = None, idempotency_key: str | None = None
               ) -> tuple[int, dict[str, Any]]:
        """POST /v1/requests; return (202 new | 200 idempotent replay, the Request)."""
        body: dict[str, Any] = {"template": template, "size": size}
        if resource_pool is not None:
            body["resource_pool"] = resource_pool
        if name is not None:
            body["name"] = name
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self.call("POST", "/v1/requests", body, headers)

    def list(self, states: Sequence[str] = (), owners: Sequence[str] = (),
             pools: Sequence[str] = (), since: float | None = None,
             until: float | None = None) -> dict[str, Any]:
        """GET /v1/requests, optionally filtered by state, owner, pool and creation time."""
        params = [("state", s) for s in states] + [("owner", o) for o in owners]
        params += [("resource_pool", p) for p in pools]
        params += [(key, f"{value:.3f}") for key, value in (("since", since), ("until", until))
                   if value is not None]
        requests: list[Any] = []
        after = None
        while True:  # the daemon answers a page at a time
            page = params + ([("after", after)] if after else [])
            query = f"?{urlencode(page)}" if page else ""
            data = self.call("GET", f"/v1/requests{query}")[1]
            requests += data.get("requests") or []
            after = data.get("next")
            if not after:
                return {"requests": requests, "next": None}

    def get(self, request_id: str, wait: float = 0) -> dict[str, Any]:
        """GET /v1/requests/{id}; with ``wait``, answered once it has ended (or after
        ``wait`` seconds)."""
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self.call("GET", f"/v1/requests/{_seg(request_id)}{query}")[1]

    def log(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/log."""
        return self.call("GET", f"/v1/requests/{_seg(request_id)}/log")[1]

    def cancel(self, request_id: str) -> dict[str, Any]:
        """POST /v1/requests/{id}/cancel."""
        return self.call("POST", f"/v1/requests/{_seg(request_id)}/cancel")[1]

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


def _seg(value: str) -> str:
    """A value quoted as one URL path segment."""
    return quote(value, safe="")


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _api_error(status: int, reason: str, raw: bytes, data: Any) -> ApiError:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ApiError(status, error.get("code"), _one_line(str(error["message"])),
                        error.get("field"))
    text = _one_line(raw.decode("utf-8", "replace"))[:200]
    message = f"HTTP {status} {reason}" + (f": {text}" if text else "")
    return ApiError(status, None, message)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# --------------------------------------------------------------------------- rendering


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Iterable[int] = ()) -> str:
    """Rows as an aligned plain-text table under its headers (None shows as '-')."""
    right_cols = set(right)
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _mib(kib: Any) -> str:
    if not isinstance(kib, (int, float)) or isinstance(kib, bool):
        return "-"
    mib = kib / 1024
    return f"{mib:.0f}" if mib == int(mib) else f"{mib:.1f}"


def _quota_text(quota: Any) -> str:
    """A pool's quota compactly: ``vms=10 cpus=16 memory=32768MiB storage=500GiB``."""
    if not isinstance(quota, dict):
        return "-" if quota is None else str(quota)
    units = {"memory": lambda v: f"{_mib(v)}MiB", "storage_gb": lambda v: f"{v}GiB"}
    names = {"storage_gb": "storage"}
    parts = []
    for key, value in quota.items():
        if value is None:
            continue
        if isinstance(value, dict):  # e.g. {"limit": .., "used": ..}
            used, limit = value.get("used"), value.get("limit")
            shown = (f"{used}/{limit}" if "used" in value and "limit" in value
                     else json.dumps(value, separators=(",", ":")))
        elif isinstance(value, (int, float)) and key in units:
            shown = units[key](value)
        else:
            shown = str(value)
        parts.append(f"{names.get(key, key)}={shown}")
    return " ".join(parts) if parts else "unlimited"


def render_catalog(catalog: dict[str, Any]) -> str:
    """The catalog as three tables: templates, sizes (memory in KiB and MiB), pools."""
    templates = render_table(
        ["TEMPLATE", "KIND", "DESCRIPTION"],
        [[t.get("name"), t.get("kind"), t.get("description")]
         for t in catalog.get("templates", [])])
    sizes = render_table(
        ["SIZE", "CPUS", "MEMORY KiB", "MEMORY MiB", "STORAGE GiB", "NETWORK"],
        [[s.get("name"), s.get("cpus"), s.get("memory"), _mib(s.get("memory")),
          s.get("storage_size_in_gb"), s.get("network")] for s in catalog.get("sizes", [])],
        right={1, 2, 3, 4})
    pools = render_table(
        ["RESOURCE POOL", "HARDWARE POOL", "QUOTA", "DESCRIPTION"],
        [[p.get("name"), p.get("hardware_pool"), _quota_text(p.get("quota")),
          p.get("description")] for p in catalog.get("resource_pools", [])])
    head = f"Catalog for user {catalog['user']}\n\n" if catalog.get("user") else ""
    return f"{head}{templates}\n\n{sizes}\n\n{pools}"


def _short_time(value: Any) -> str:
    """An ISO-8601 UTC time to the second, e.g. ``2026-11-24 01:02:03Z``."""
    when = _parse_time(value)
    if when is None:
        return "-" if value is None else str(value)
    utc = when.utcoffset() is not None and not when.utcoffset()
    return when.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if utc else "")


def render_list(requests: Sequence[dict[str, Any]]) -> str:
    """Requests as a table: full id, name, state, template, size, pool, creation time."""
    if not requests:
        return "No requests."
    return render_table(
        ["ID", "NAME", "STATE", "TEMPLATE", "SIZE", "POOL", "CREATED"],
        [[r.get("id"), r.get("name"), r.get("state"), r.get("template"), r.get("size"),
          r.get("resource_pool"), _short_time(r.get("created_at"))] for r in requests])


def render_request(req: dict[str, Any]) -> str:
    """A Request as aligned ``key: value`` lines, most useful first."""
    volume = req.get("volume")
    domain = req.get("domain")
    vol_text = None
    if isinstance(volume, dict):
        vol_text = f"{volume.get('pool')}/{volume.get('name')}"
        if volume.get("path"):
            vol_text += f" ({volume['path']})"
        vol_text += ", created for this request" if volume.get("owned") else ", reused"
    dom_text = (f"{domain.get('name')} ({domain.get('uuid')})" if isinstance(domain, dict)
                else None)
    memory = req.get("memory_kib")
    pairs: list[tuple[str, Any]] = [
        ("id", req.get("id")),
        ("name", req.get("name")),
        ("state", req.get("state")),
        ("reason", req.get("reason")),
        ("owner", req.get("owner")),
        ("template", req.get("template")),
        ("size", req.get("size")),
        ("resource pool", req.get("resource_pool")),
        ("hardware pool", req.get("hardware_pool")),
        ("host", req.get("host")),
        ("cpus", req.get("cpus")),
        ("memory", f"{memory} KiB ({_mib(memory)} MiB)" if memory is not None else None),
        ("storage", f"{req['storage_gb']} GiB" if req.get("storage_gb") is not None else None),
        ("volume", vol_text),
        ("domain", dom_text),
        ("created", req.get("created_at")),
        ("updated", req.get("updated_at")),
    ]
    known = {"id", "name", "state", "reason", "owner", "template", "size", "resource_pool",
             "hardware_pool", "host", "cpus", "memory_kib", "storage_gb", "volume", "domain",
             "created_at", "updated_at"}
    pairs += [(k, v if not isinstance(v, (dict, list)) else json.dumps(v))
              for k, v in req.items() if k not in known]
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {'-' if v is None or v == '' else v}"
                     for k, v in pairs)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """A time span as ``+0.012s``, ``+12.345s`` or ``+3m05.000s``."""
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60)
    return f"+{int(minutes)}m{rest:06.3f}s"


def _states_text(entry: dict[str, Any], from_width: int) -> str:
    """``from -> to`` with the arrows aligned; an event or note shows its one state."""
    src, dst = entry.get("from"), entry.get("to")
    if entry.get("kind") != "transition":
        return str(dst or src or "-")
    return f"{src or '':<{from_width}} -> {dst}"


def render_log(entries: Sequence[dict[str, Any]]) -> str:
    """A request's log, one line per entry; TOOK is the time spent in the state left.

    For a transition, TOOK is its time minus the previous transition's time: how long the
    request stayed in the ``from`` state. A last line sums the walk when there are at least
    two transitions.
    """
    if not entries:
        return "No log entries."
    from_width = max((len(e.get("from") or "") for e in entries
                      if e.get("kind") == "transition"), default=0)
    rows = []
    first_at = last_at = None
    first_state = last_state = None
    for entry in entries:
        took = None
        at = _parse_time(entry.get("at"))
        if entry.get("kind") == "transition":
            if at is not None and last_at is not None:
                took = format_duration((at - last_at).total_seconds())
            if at is not None:
                last_at = at
                first_at = first_at or at
            first_state = first_state or entry.get("from") or entry.get("to")
            last_state = entry.get("to")
        rows.append([entry.get("at"), entry.get("kind"), _states_text(entry, from_width),
                     entry.get("trigger"), took, _one_line(entry.get("detail") or "")])
    table = render_table(["TIME", "KIND", "STATE", "TRIGGER", "TOOK", "DETAIL"], rows,
                         right={4})
    transitions = sum(1 for e in entries if e.get("kind") == "transition")
    if transitions >= 2 and first_at is not None and last_at is not None:
        total = format_duration((last_at - first_at).total_seconds())
        table += f"\n\n{first_state} -> {last_state} in {total}"
    return table


class Timeline:
    """A request's log rendered one entry at a time, in fixed columns (``log --follow``).

    The columns are ``render_log``'s; TOOK is the time spent in the state a transition
    leaves. Events (libvirt's, e.g. ``libvirt:DEFINED``) and notes show the state they
    happened in.
    """

    WIDTHS = (24, 10, 2 * max(len(s) for s in STATES) + 4, 18, 10)
    HEADERS = ("TIME", "KIND", "STATE", "TRIGGER", "TOOK", "DETAIL")

    def __init__(self) -> None:
        self.first_at: datetime | None = None
        self.last_at: datetime | None = None
        self.first_state: str | None = None
        self.last_state: str | None = None
        self.transitions = 0

    def _row(self, cells: Sequence[str]) -> str:
        parts = [cell.rjust(width) if i == 4 else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(cells[:-1], self.WIDTHS, strict=True))]
        return "  ".join([*parts, cells[-1]]).rstrip()

    def header(self) -> str:
        """The column headers."""
        return self._row(self.HEADERS)

    def line(self, entry: dict[str, Any]) -> str:
        """One entry as one line; a transition's TOOK is measured from the previous one."""
        took = ""
        if entry.get("kind") == "transition":
            at = _parse_time(entry.get("at"))
            if at is not None and self.last_at is not None:
                took = format_duration((at - self.last_at).total_seconds())
            if at is not None:
                self.last_at = at
                self.first_at = self.first_at or at
            self.first_state = self.first_state or entry.get("from") or entry.get("to")
            self.last_state = entry.get("to")
            self.transitions += 1
        width = max(len(s) for s in STATES)
        cells = [str(entry.get("at") or "-"), str(entry.get("kind") or "-"),
                 _states_text(entry, width), str(entry.get("trigger") or "-"), took,
                 _one_line(entry.get("detail") or "")]
        return self._row(cells)

    def summary(self) -> str | None:
        """``requested -> done in +0.044s`` once at least two transitions were seen."""
        if self.transitions < 2 or self.first_at is None or self.last_at is None:
            return None
        total = format_duration((self.last_at - self.first_at).total_seconds())
        return f"{self.first_state} -> {self.last_state} in {total}"


def render_explain(result: dict[str, Any]) -> str:
    """The placement decision as one line, then a table of every candidate's verdict."""
    action = result.get("action") or "none"
    pool, volume = result.get("pool"), result.get("volume")
    reason = _one_line(result.get("reason") or "")
    if reason:  # the daemon's reason names the volume or pool already
        line = f"{action}: {reason}"
    elif action == "reuse":
        line = f"reuse: free volume {pool}/{volume}"
    elif action == "create":
        line = f"create: a new volume in pool {pool}"
    else:
        line = "none: no storage"
    candidates = result.get("candidates") or []
    if not candidates:
        return f"{line}\n\nNo candidates."
    table = render_table(
        ["STAGE", "POOL", "VOLUME", "VERDICT", "REASON"],
        [[c.get("stage"), c.get("pool"), c.get("volume"), c.get("verdict"),
          _one_line(c.get("reason") or "")] for c in candidates])
    return f"{line}\n\n{table}"


def render_reconcile(result: dict[str, Any]) -> str:
    """Orphans found (and what was done with each), as a table."""
    orphans = result.get("orphans") or []
    hosts = ", ".join(result.get("hosts") or []) or "no host"
    if not orphans:
        return f"No orphans on {hosts}."
    table = render_table(
        ["HOST", "KIND", "POOL", "NAME", "REQUEST", "ACTION", "WHY"],
        [[o.get("host"), o.get("kind"), o.get("pool"), o.get("name"), o.get("request_id"),
          o.get("action"), _one_line(o.get("reason") or "")] for o in orphans])
    hint = "" if result.get("applied") else "\n\nNothing was removed; run with --apply to remove."
    return f"{len(orphans)} orphan(s) on {hosts}:\n\n{table}{hint}"


def render_transition(entry: dict[str, Any]) -> str:
    """One reached state, as ``create --wait`` prints it: ``  storage-searching  (detail)``."""
    state = str(entry.get("to") or "-")
    detail = _one_line(entry.get("detail") or "")
    width = max(len(s) for s in STATES)
    return f"  {state:<{width}}  ({detail})" if detail else f"  {state}"


def render_outcome(req: dict[str, Any]) -> str:
    """The one-line outcome of a done request: what was defined, where, on what disk."""
    domain = req.get("domain") if isinstance(req.get("domain"), dict) else {}
    volume = req.get("volume") if isinstance(req.get("volume"), dict) else {}
    text = f"done: {domain.get('name') or req.get('name')}"
    if req.get("host"):
        text += f" defined on {req['host']}"
    if domain.get("uuid"):
        text += f" (domain {domain['uuid']})"
    if volume:
        text += f", volume {volume.get('pool')}/{volume.get('name')}"
    return text


# --------------------------------------------------------------------------- commands


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _out(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        _print_json(data)
    else:
        print(human(data))


def cmd_catalog(client: Client, args: argparse.Namespace) -> int:
    """``provctl catalog``."""
    _out(args, client.catalog(), render_catalog)
    return EXIT_OK


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    """``provctl create``: submit, and with --wait follow the request to its end."""
    status, req = client.create(args.template, args.size, args.pool, args.name,
                                args.idempotency_key)
    if not args.wait:
        if args.json:
            _print_json(req)
        else:
            if status == 200:
                print("An earlier request had this idempotency key; it is shown instead.\n")
            print(render_request(req))
        return EXIT_OK
    return wait_for(client, req, quiet=args.json, replay=status == 200)


def pause_unless_ended(client: Client, request_id: str) -> None:
    """Wait ``POLL_INTERVAL`` seconds, or less if the request ends meanwhile: the daemon
    answers ``GET ?wait=`` as soon as the request has ended."""
    started = time.monotonic()
    if client.get(request_id, wait=POLL_INTERVAL).get("state") not in TERMINAL_STATES:
        # An older daemon answers at once: do not ask again sooner than before.
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))


def wait_for(client: Client, req: dict[str, Any], *, quiet: bool = False,
             replay: bool = False) -> int:
    """Poll a request's log, print each state reached, end on done (0) or failed (1)."""
    request_id = str(req.get("id"))
    if not quiet:
        what = "already submitted" if replay else "accepted"
        print(f"request {request_id} ({req.get('name')}) {what}: {req.get('template')}/"
              f"{req.get('size')} in {req.get('resource_pool')}", flush=True)
    seen = 0
    try:
        while True:
            log = client.log(request_id).get("log") or []
            reached = None
            for entry in log[seen:]:
                if entry.get("kind") != "transition":
                    continue
                if not quiet:
                    print(render_transition(entry), flush=True)
                if entry.get("to") in TERMINAL_STATES:
                    reached = entry.get("to")
                    break
            seen = len(log)
            if reached:
                break
            pause_unless_ended(client, request_id)
        final = client.get(request_id)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; request {request_id} goes on "
              f"(see: {PROG} show {request_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if quiet:
        _print_json(final)
    if final.get("state") == "done":
        if not quiet:
            print(render_outcome(final))
        return EXIT_OK
    reason = _one_line(final.get("reason") or "no reason given")
    print(f"{PROG}: request {request_id} {final.get('state')}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    """``provctl show ID``."""
    _out(args, client.get(args.id), render_request)
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    """``provctl list``: filtered by state, owner, pool and age (the daemon filters)."""
    now = time.time()
    since = args.since.epoch(now) if args.since else None
    until = args.older_than.epoch(now) if args.older_than else None
    if since is not None and until is not None and until < since:
        raise CliError(f"--older-than {args.older_than.text} and --since {args.since.text} "
                       "leave no time between them", EXIT_USAGE)
    data = client.list(args.state or (), args.owner or (), args.pool or (), since, until)
    requests = data.get("requests") or []
    if args.quiet:
        for req in requests:
            print(req.get("id"))
    elif args.json:
        _print_json(data)
    else:
        print(render_list(requests))
    return EXIT_OK


def cmd_log(client: Client, args: argparse.Namespace) -> int:
    """``provctl log ID [--follow]``."""
    if args.follow:
        return follow_log(client, args.id, as_json=args.json)
    entries = client.log(args.id).get("log") or []
    _out(args, entries, render_log)
    return EXIT_OK


def _rolled_back(entries: Sequence[dict[str, Any]]) -> bool:
    """Whether the rollback of a failed request has logged its outcome."""
    return any(e.get("kind") == "note" and e.get("trigger") == "rollback" for e in entries)


def follow_log(client: Client, request_id: str, *, as_json: bool = False) -> int:
    """Print a request's log as it grows until it is done (exit 0) or failed (exit 1).

    Reads the log every ``POLL_INTERVAL`` seconds, at once when the request ends. After ``failed`` it goes on until the
    rollback's note is in (at most ``ROLLBACK_GRACE`` seconds more). With ``as_json``
    each entry is one JSON line. A request already done or failed prints its whole log.
    """
    timeline = Timeline()
    seen: list[dict[str, Any]] = []
    terminal: str | None = None
    failed_at = 0.0
    if not as_json:
        print(timeline.header(), flush=True)
    try:
        while True:
            entries = client.log(request_id).get("log") or []
            for entry in entries[len(seen):]:
                print(json.dumps(entry) if as_json else timeline.line(entry), flush=True)
                if entry.get("kind") == "transition" and entry.get("to") in TERMINAL_STATES:
                    terminal = entry.get("to")
                    failed_at = time.monotonic()
            seen = list(entries)
            if terminal == "done" or (terminal == "failed" and (
                    _rolled_back(seen) or time.monotonic() - failed_at > ROLLBACK_GRACE)):
                break
            if terminal is None:
                pause_unless_ended(client, request_id)
            else:
                time.sleep(POLL_INTERVAL)  # for the rollback's note
        final = client.get(request_id)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; request {request_id} goes on "
              f"(see: {PROG} show {request_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = timeline.summary()
    if summary and not as_json:
        print(f"\n{summary}")
    if final.get("state") == "done":
        return EXIT_OK
    reason = _one_line(final.get("reason") or "no reason given")
    print(f"{PROG}: request {request_id} {final.get('state')}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """``provctl cancel ID``."""
    req = client.cancel(args.id)
    if args.json:
        _print_json(req)
    else:
        print(f"cancel accepted for request {req.get('id', args.id)} "
              f"(state now: {req.get('state')})")
    return EXIT_OK


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """``provctl explain``: the placement dry run."""
    _out(args, client.explain(args.template, args.size, args.pool), render_explain)
    return EXIT_OK


def cmd_reconcile(client: Client, args: argparse.Namespace) -> int:
    """``provctl reconcile``: list (and with --apply remove) orphaned volumes and domains."""
    _out(args, client.reconcile(args.apply), render_reconcile)
    return EXIT_OK


def cmd_completion(_client: Client, args: argparse.Namespace) -> int:
    """``provctl completion bash|zsh``: print the shell completion script."""
    parser = build_parser()
    print(bash_completion(parser) if args.shell == "bash" else zsh_completion(parser), end="")
    return EXIT_OK


# --------------------------------------------------------------------------- arguments

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")


@dataclass(frozen=True)
class TimeBound:
    """A time given on the command line: an age (``10m`` ago) or an absolute time."""

    text: str
    age: float | None = None
    """Seconds before now."""
    at: float | None = None
    """Epoch seconds."""

    def epoch(self, now: float) -> float:
        """The bound as epoch seconds, ages counted back from ``now``."""
        return now - self.age if self.age is not None else float(self.at or 0.0)


def parse_time_bound(text: str) -> TimeBound:
    """argparse type: a duration (``90s``, ``10m``, ``2h``, ``7d``, ``1h30m``) or ISO time."""
    value = text.strip()
    if DURATION_RE.fullmatch(value):
        return TimeBound(text, age=sum(float(n) * DURATION_UNITS[u]
                                       for n, u in DURATION_PART_RE.findall(value)))
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (e.g. 90s, 10m, 2h, 7d, 1h30m) nor an ISO-8601 "
            "time (e.g. 2026-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return TimeBound(text, at=when.timestamp())



class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' and epilogs' line breaks (for the examples)."""


def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's unset option must not overwrite the same option given
    # before the subcommand; real defaults are filled in by parse_args().
    parser.add_argument(
        "--socket", metavar="PATH", type=Path, default=argparse.SUPPRESS,
        help=f"provisiond's Unix socket (default: ${SOCKET_ENV}, else "
             f"{default_socket_path()} if it exists, else {SYSTEM_SOCKET_TEXT})")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of tables")


def build_parser() -> argparse.ArgumentParser:
    """provctl's argument parser; global options are accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common.add_argument_group("global options"))
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], formatter_class=_Formatter,
        description="Ask provisiond for VMs, and follow your requests.",
        epilog="exit codes: 0 ok, 1 request failed or refused (409, 5xx), 2 invalid input,\n"
               "3 permission denied, 4 daemon unreachable, 5 not found, 130 interrupted\n\n"
               "examples:\n"
               "  provctl catalog\n"
               "  provctl create --template ipxe --size small --wait\n"
               "  provctl list --state failed --since 1d\n"
               "  provctl log --follow 3f2a9c...\n"
               "  source <(provctl completion bash)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="what to do; 'provctl COMMAND --help' says more")

    def add(name: str, summary: str, description: str, epilog: str = "") -> Any:
        p = sub.add_parser(name, help=summary, description=description, epilog=epilog or None,
                           parents=[common], formatter_class=_Formatter)
        return p

    p = add("catalog", "list the templates, sizes and resource pools you may use",
            "List the templates (what gets installed), the sizes (cpus, memory, disk) and "
            "the\nresource pools you hold CLOUD_CREATE on, with their quotas.")
    p.set_defaults(func=cmd_catalog)

    p = add("create", "request a VM",
            "Request a VM of a template and size. provisiond checks your grant and the "
            "pool's\nquota, finds or creates a volume, and defines the domain in libvirt. "
            "Without\n--wait it prints the accepted request; follow it with 'provctl show' "
            "or 'provctl log'.",
            "examples:\n"
            "  provctl create --template ipxe --size small\n"
            "  provctl create --template ipxe --size small --pool rp --name web1 --wait\n"
            "  provctl create -t ipxe -s small --idempotency-key web1-2026 --wait\n\n"
            "With --wait: exit 0 when the VM is defined, 1 when the request failed.")
    p.add_argument("--template", "-t", required=True, help="template name (see 'catalog')")
    p.add_argument("--size", "-s", required=True, help="size name (see 'catalog')")
    p.add_argument("--pool", "-p", metavar="POOL",
                   help="resource pool (default: chosen by provisiond when you may use only "
                        "one)")
    p.add_argument("--name", "-n", help="the VM's name (default: chosen by provisiond)")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="send the request at most once: a retry with the same key returns "
                        "the earlier request")
    p.add_argument("--wait", "-w", action="store_true",
                   help="follow the request, printing each state it reaches, until done or "
                        "failed (with --json: print the final request)")
    p.set_defaults(func=cmd_create)

    p = add("show", "show one request",
            "Show a request: its state (and the reason if it failed), what it asked for, "
            "and\nthe volume and domain it got.")
    p.add_argument("id", metavar="ID", help="request id (see 'list')")
    p.set_defaults(func=cmd_show)

    p = add("list", "list your requests (all of a pool's for its admins)",
            "List the requests you can see: your own, and all those of the pools you hold\n"
            "CLOUD_ADMIN on, oldest first. The filters narrow that down; each repeatable one\n"
            "matches any of its values, and all the filters given must match.",
            "examples:\n"
            "  provctl list\n"
            "  provctl list --state failed --state done\n"
            "  provctl list --pool rp --owner alice --since 1d\n"
            "  provctl list --state defining --older-than 10m    # stuck?\n"
            "  provctl list --since 2026-01-31T00:00:00Z -q      # ids only\n\n"
            "AGE is a duration back from now (90s, 10m, 2h, 7d, 1h30m) or an ISO-8601 time\n"
            "(UTC unless it has an offset).")
    p.add_argument("--state", action="append", choices=STATES, metavar="STATE",
                   help=f"only requests in this state; repeat for several "
                        f"({', '.join(STATES)})")
    p.add_argument("--owner", "-o", action="append", metavar="USER",
                   help="only requests of this user; repeat for several (you see others' "
                        "requests only in pools you hold CLOUD_ADMIN on)")
    p.add_argument("--pool", "-p", action="append", metavar="POOL",
                   help="only requests in this resource pool; repeat for several")
    p.add_argument("--since", type=parse_time_bound, metavar="AGE",
                   help="only requests created at or after this (e.g. 10m: in the last 10 "
                        "minutes)")
    p.add_argument("--older-than", type=parse_time_bound, metavar="AGE",
                   help="only requests created before this (e.g. 2h: more than 2 hours ago)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only the ids, one per line")
    p.set_defaults(func=cmd_list)

    p = add("log", "show a request's state log, or follow it live",
            "Show a request's log: every transition, libvirt event (e.g. libvirt:DEFINED) and\n"
            "note, with the time spent in each state (TOOK: time since the previous\n"
            "transition, i.e. in the state that was left).\n\n"
            "With --follow, print the entries as they come until the request is done or\n"
            f"failed (polling every {POLL_INTERVAL:g} s); exit 0 when done, 1 when failed. A "
            "request that\nis already done or failed prints its log and exits the same way.",
            "examples:\n"
            "  provctl log 3f2a9c...\n"
            "  provctl log --follow 3f2a9c...\n"
            "  provctl log -f --json 3f2a9c...    # one JSON entry per line")
    p.add_argument("id", metavar="ID", help="request id (see 'list')")
    p.add_argument("--follow", "-f", action="store_true",
                   help="stream new entries until the request is done or failed (with "
                        "--json: one JSON object per line)")
    p.set_defaults(func=cmd_log)

    p = add("cancel", "cancel a request in progress",
            "Cancel a request that is still in progress: it fails, and what it held (a "
            "volume\nit created, a domain it defined, quota) is released. A request that is "
            "done or\nfailed cannot be cancelled (exit 1).")
    p.add_argument("id", metavar="ID", help="request id (see 'list')")
    p.set_defaults(func=cmd_cancel)

    p = add("explain", "show where a request would get its storage (dry run)",
            "Dry run of storage placement: whether a request of this template and size "
            "would\nreuse a free volume or create one, and the verdict on every candidate. "
            "Nothing is\nreserved or created.")
    p.add_argument("--template", "-t", required=True, help="template name (see 'catalog')")
    p.add_argument("--size", "-s", required=True, help="size name (see 'catalog')")
    p.add_argument("--pool", "-p", metavar="POOL", help="resource pool")
    p.set_defaults(func=cmd_explain)

    p = add("reconcile", "list (and remove) volumes and domains no request owns (admin)",
            "List the volumes and domains that carry provisiond's tags (volume name\n"
            "provisiond-<request id>, domain <metadata>) but belong to no request in\n"
            "progress or done. With --apply, undefine those domains and delete those\n"
            "volumes (a volume some domain still uses is kept). Needs CLOUD_ADMIN.")
    p.add_argument("--apply", action="store_true", help="remove what is listed")
    p.set_defaults(func=cmd_reconcile)

    p = add("completion", "print a shell completion script (bash or zsh)",
            "Print a completion script for provctl's commands, options, state names and\n"
            "(for show, log and cancel) request ids, generated from provctl's own options.",
            "examples:\n"
            "  source <(provctl completion bash)        # this shell only\n"
            "  provctl completion bash > ~/.local/share/bash-completion/completions/provctl\n"
            "  source <(provctl completion zsh)         # in ~/.zshrc, after compinit")
    p.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL",
                   help="bash or zsh")
    p.set_defaults(func=cmd_completion)
    return parser


# --------------------------------------------------------------------------- completion

_BASH_TEMPLATE = r"""# bash completion for provctl, generated from its argument parser by
# 'provctl completion bash'. Use it with:  source <(provctl completion bash)
# or save it as ~/.local/share/bash-completion/completions/provctl

_provctl_ids() {
    # Request ids for show/log/cancel, asked of the daemon (quietly, briefly).
    timeout 3 "${COMP_WORDS[0]}" list --quiet "$@" 2>/dev/null
}

_provctl() {
    local cur prev word cmd="" npos=0 i opts="" words=""
    local -a socket=()
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev=""
    if [[ $COMP_CWORD -gt 0 ]]; then prev="${COMP_WORDS[COMP_CWORD-1]}"; fi
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            @SOCKET_OPTIONS@)
                socket=(--socket "${COMP_WORDS[i+1]}"); i=$((i + 1)) ;;
            @VALUE_OPTIONS@)
                i=$((i + 1)) ;;
            -*) ;;
            *)
                if [[ -z "$cmd" ]]; then cmd="$word"; else npos=$((npos + 1)); fi ;;
        esac
    done
    case "$prev" in
@PREV_CASES@
    esac
    case "$cmd" in
        "")
            opts="@GLOBAL_OPTIONS@"
            words="@COMMANDS@" ;;
@COMMAND_CASES@
    esac
    if [[ "$cur" == -* || -z "$words" ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    fi
    return 0
}

complete -F _provctl provctl
"""

_ZSH_HEAD = """#compdef provctl
# zsh completion for provctl: the bash one, through zsh's bashcompinit. Use it with:
#   source <(provctl completion zsh)      (in ~/.zshrc, after compinit)
autoload -U +X bashcompinit && bashcompinit

"""

ID_FILTERS: dict[str, tuple[str, ...]] = {
    "cancel": tuple(a for s in STATES if s not in TERMINAL_STATES for a in ("--state", s)),
}
"""Extra ``provctl list`` arguments when completing a command's request id."""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name."""
    for action in parser._actions:  # argparse has no public way to walk a parser
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser, long ones first."""
    found = [s for a in parser._actions for s in a.option_strings]
    return sorted(found, key=lambda s: (not s.startswith("--"), s))


def _value_options(parsers: Iterable[argparse.ArgumentParser]
                   ) -> dict[str, argparse.Action]:
    """Options that take a value, each with its action; the same string means one thing."""
    found: dict[str, argparse.Action] = {}
    flags: set[str] = set()
    for parser in parsers:
        for action in parser._actions:
            for option in action.option_strings:
                if action.nargs == 0:
                    flags.add(option)
                    continue
                known = found.setdefault(option, action)
                if (known.choices, known.type) != (action.choices, action.type):
                    raise AssertionError(f"{option} takes different values in two commands")
    if flags & set(found):
        raise AssertionError(f"{sorted(flags & set(found))} are flags in one command and take "
                             "a value in another")
    return found


def _words(items: Iterable[Any]) -> str:
    return " ".join(str(i) for i in items)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for provctl, generated from its argument parser."""
    commands = _subcommands(parser)
    values = _value_options([parser, *commands.values()])
    paths = sorted(o for o, a in values.items() if a.type is Path)
    sockets = sorted(o for o, a in values.items() if a.dest == "socket")
    others = sorted(o for o in values if o not in sockets)
    prev_cases = []
    by_choices: dict[tuple[str, ...], list[str]] = {}
    for option, action in values.items():
        if action.choices:
            by_choices.setdefault(tuple(action.choices), []).append(option)
    for choices, options in by_choices.items():
        prev_cases.append(f'        {"|".join(sorted(options))})\n'
                          f'            COMPREPLY=( $(compgen -W "{_words(choices)}" -- "$cur") )'
                          f"\n            return 0 ;;")
    if paths:
        prev_cases.append(f'        {"|".join(paths)})\n'
                          '            COMPREPLY=( $(compgen -f -- "$cur") )\n'
                          "            return 0 ;;")
    free = sorted(o for o, a in values.items() if not a.choices and a.type is not Path)
    if free:
        prev_cases.append(f'        {"|".join(free)})\n'
                          "            return 0 ;;  # free text")
    command_cases = []
    for name, sub in commands.items():
        lines = [f"        {name})", f'            opts="{_words(_options(sub))}"']
        positionals = [a for a in sub._actions if not a.option_strings]
        if positionals and positionals[0].choices:
            lines.append(f'            [[ $npos -eq 0 ]] && words="'
                         f'{_words(positionals[0].choices)}"')
        elif positionals and positionals[0].dest == "id":
            extra = " ".join(shlex.quote(a) for a in ID_FILTERS.get(name, ()))
            lines.append(f'            [[ $npos -eq 0 ]] && words="$(_provctl_ids '
                         f'{extra + " " if extra else ""}"${{socket[@]}}")"')
        lines[-1] += " ;;"
        command_cases.append("\n".join(lines))
    replacements = {
        "@SOCKET_OPTIONS@": "|".join(sockets) or "--socket",
        "@VALUE_OPTIONS@": "|".join(others) or "--",
        "@PREV_CASES@": "\n".join(prev_cases),
        "@GLOBAL_OPTIONS@": _words(_options(parser)),
        "@COMMANDS@": _words(commands),
        "@COMMAND_CASES@": "\n".join(command_cases),
    }
    script = _BASH_TEMPLATE
    for token, text in replacements.items():
        script = script.replace(token, text)
    return script


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion script for provctl: the bash one, loaded through bashcompinit."""
    return _ZSH_HEAD + bash_completion(parser)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse provctl's command line and fill in the global options' defaults."""
    args = build_parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    if not hasattr(args, "socket"):
        env = os.environ.get(SOCKET_ENV)
        args.socket = Path(env) if env else find_socket()
    return args


SYSTEM_SOCKET = Path(SYSTEM_SOCKET_TEXT)
"""Where the systemd units put the socket of the system's provisiond."""


def find_socket() -> Path:
    """The caller's own daemon's socket if there is one, else the system service's."""
    own = default_socket_path()
    if not own.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return own


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``provctl``; returns the exit code."""
    try:
        args = parse_args(argv)
        client = Client(args.socket)
        return args.func(client, args)
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
    except Exception as exc:  # never a traceback; this is a bug in provctl or the API
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {_one_line(str(exc))}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
