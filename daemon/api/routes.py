"""The HTTP/JSON API under ``/v1``, served on the Unix socket.

The caller's identity comes only from the socket's peer credentials (``SO_PEERCRED``),
never from anything the client sends. Errors are ``{"error": {"code", "message",
"field"?}}`` with the status their class carries (``daemon.errors``); a bug answers 500
with no detail, and its traceback goes to the daemon's log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_exceptions import HTTPExpectationFailed
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import _default_expect_handler as _aiohttp_expect_handler

from daemon import __version__
from daemon.api.caller import SERVICE, peer_identity, refuse_unknown_query
from daemon.api import sessions
from daemon.api.openapi import openapi_document
from daemon.errors import InvalidInput, ProvisiondError
from daemon.placement import Decision
from daemon.process.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daemon.service import IDEMPOTENCY_KEY_RE, ProvisioningRequest, Service
from daemon.service.intake import NAME_RULE
from daemon.store import LogEntry, RequestRecord
from statemachines.provisioning import State
from statemachines.vm import TABLE as VM_TABLE

log = logging.getLogger("provisiond.api")

MAX_BODY_BYTES = 256 * 1024
"""Room for a create with 64 KiB of user-data and of network-config, JSON-escaped."""
CLOUD_INIT_FIELDS = {"ssh_keys", "user_data", "network_config"}
CREATE_FIELDS = {"template", "size", "resource_pool", "name"} | CLOUD_INIT_FIELDS
EXPLAIN_FIELDS = {"template", "size", "resource_pool"}
LIST_QUERY = ("state", "owner", "resource_pool", "name", "since", "until", "limit", "after")
LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10000
WAIT_MAX = 300.0
"""The longest ``GET /v1/requests/{id}?wait=`` holds a connection, in seconds."""
EPOCH_MAX = 253402300799.0
"""9999-12-31T23:59:59Z: the latest ``since`` or ``until`` given in epoch seconds."""
# ASCII only: str.isdigit() and float() also take '²', '①', '٣' and '1_0'.
INTEGER_RE = re.compile(r"[0-9]{1,9}")
NUMBER_RE = re.compile(r"(?:[0-9]{1,15}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})(?:[eE][+-]?[0-9]{1,3})?")
DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
"""The Content-Encodings aiohttp's parser undoes before the body is read (br and zstd only
with their libraries: without them the parser refuses the request itself)."""
JSON_CHARSETS = ("utf-8", "utf8")

VM_BUSY = frozenset(state.value for state in VM_TABLE.in_progress)
"""A VM's states while an operation of it runs."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- JSON shapes


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with milliseconds."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def request_json(r: RequestRecord) -> dict[str, Any]:
    """A request as the API shows it."""
    return {
        "id": r.id, "name": r.name, "owner": r.owner, "template": r.template, "size": r.size,
        "resource_pool": r.resource_pool, "hardware_pool": r.hardware_pool, "host": r.host,
        "cpus": r.cpus, "memory_kib": r.memory_kib, "storage_gb": r.storage_gb,
        "state": str(r.state), "reason": r.reason,
        "volume": {"pool": r.volume_pool, "name": r.volume_name, "path": r.volume_path,
                   "owned": r.volume_owned} if r.volume_name else None,
        "domain": {"uuid": r.domain_uuid, "name": r.domain_name}
        if r.domain_uuid and r.state == State.DONE else None,
        "vm": {"state": r.vm_state, "reason": r.vm_reason} if r.vm_state else None,
        "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
    }


def log_json(e: LogEntry) -> dict[str, Any]:
    """A log entry as the API shows it."""
    return {"kind": e.kind, "from": e.from_state, "to": e.to_state, "trigger": e.trigger,
            "at": iso(e.at), "detail": e.detail}


def decision_json(d: Decision) -> dict[str, Any]:
    """A placement decision (the dry run) as the API shows it."""
    return {"action": d.action, "pool": d.pool, "volume": d.volume.name if d.volume else None,
            "reason": d.reason, "candidates": [v.to_json() for v in d.verdicts],
            "host": d.host, "hosts": [{"host": h.host, "verdict": "ok" if h.fits else "refused",
                                       "reason": h.reason} for h in d.hosts]}


# --------------------------------------------------------------------------- input


async def read_json(request: web.Request) -> Any:
    """The request's body, decoded as JSON; a clear 4xx for anything else."""
    try:
        content_type = request.content_type
    except Exception:  # Python's MIME header parser fails on some junk (an IndexError)
        content_type = None
    if content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="expected Content-Type: application/json")
    charset = request.charset
    if charset is not None and charset.lower() not in JSON_CHARSETS:
        raise web.HTTPUnsupportedMediaType(
            text=f"expected charset=utf-8 (JSON is UTF-8), got charset={charset[:32]!r}")
    if not decoded_by_aiohttp(request.headers.getall("Content-Encoding", [])):
        raise web.HTTPUnsupportedMediaType(text="unsupported Content-Encoding (the API "
                                                "takes gzip, deflate, or none)")
    limit = request.app[SERVICE].config.daemon.body_timeout
    try:
        # Bounded: a body whose chunked framing breaks after the headers were read is never
        # completed, nor failed, by aiohttp; the handler would wait for it forever.
        async with asyncio.timeout(limit):
            raw = await request.read()  # raises 413 past client_max_size
    except TimeoutError:
        raise InvalidInput(f"the body did not arrive in full within {limit:g} s (is its "
                           "chunked encoding broken?)") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        raise InvalidInput(f"the body cannot be read (Content-Encoding?): {exc}") from None
    except ConnectionResetError:
        # The client went away before it sent its whole body: nobody to answer, no bug.
        log.info("%s %s: the client closed the connection before sending the whole body",
                 request.method, request.path)
        raise InvalidInput("the connection closed before the whole body arrived") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})"
                           ) from None
    try:
        # json.loads(bytes) would guess UTF-16 or UTF-32; a UTF-8 byte order mark may be
        # ignored (RFC 8259 8.1), as it was before.
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=unique_keys)
    except ValueError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("the body is nested too deeply") from None


def decoded_by_aiohttp(codings: list[str]) -> bool:
    """Whether the body is as sent (no Content-Encoding, or identity) or aiohttp's parser
    decoded it (one coding it knows, alone: it ignores any other header value)."""
    tokens = [t.strip().lower() for value in codings for t in value.split(",")]
    if all(t in ("", "identity") for t in tokens):
        return True
    return len(codings) == 1 and codings[0].strip().lower() in DECODED_ENCODINGS


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its pairs; a key given twice is a 400 naming it (``json.loads``
    would keep the last value silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidInput(f"duplicate key {key[:64]!r} in a JSON object of the body",
                               field=key[:200])
        obj[key] = value
    return obj


async def json_body(request: web.Request, allowed: set[str], required: set[str], *,
                    free: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The request's JSON object body, checked: known fields only, string values of 1-200
    characters (but the ``free`` fields, which the service checks itself)."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise InvalidInput(f"unknown field {key!r} (expected: "
                               f"{', '.join(sorted(allowed))})", field=key)
    for key in sorted(required):
        if body.get(key) is None:
            raise InvalidInput(f"missing field {key!r}", field=key)
    for key, value in body.items():
        if key in free:
            continue
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{key} must be a string, got {type(value).__name__}", field=key)
        if isinstance(value, str) and not (0 < len(value) <= 200):
            if key == "name":  # one rule for names, said once (intake's)
                raise InvalidInput(NAME_RULE, field=key)
            raise InvalidInput(f"{key} must be 1-200 characters", field=key)
    return {k: v for k, v in body.items() if v is not None}


# --------------------------------------------------------------------------- handlers


async def health(request: web.Request) -> web.Response:
    """GET /v1/health."""
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "version": __version__,
                              "hosts": service.host_states()})


async def whoami(request: web.Request) -> web.Response:
    """GET /v1/whoami: the caller, and where they may create and administer."""
    refuse_unknown_query(request)
    return web.json_response(request.app[SERVICE].whoami(peer_identity(request)))


async def catalog(request: web.Request) -> web.Response:
    """GET /v1/catalog: the seed's svc_new."""
    return web.json_response(request.app[SERVICE].catalog(peer_identity(request)))


async def create_request(request: web.Request) -> web.Response:
    """POST /v1/requests: the seed's svc_create."""
    service = request.app[SERVICE]
    who = peer_identity(request)
    body = await json_body(request, CREATE_FIELDS, {"template", "size"},
                           free=CLOUD_INIT_FIELDS)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise InvalidInput("idempotency key must be 1-200 printable ASCII characters",
                           field="idempotency_key")
    req = ProvisioningRequest(body["template"], body["size"], body.get("resource_pool"),
                              body.get("name"), key, ssh_keys=body.get("ssh_keys"),
                              user_data=body.get("user_data"),
                              network_config=body.get("network_config"))
    earlier = service.store.find_by_idempotency_key(who.user, key) if key else None
    record = await service.create(who, req)
    await service.store.durable()  # 202 means stored: a crash from now on loses nothing
    status = 200 if earlier is not None and earlier.id == record.id else 202
    return web.json_response(request_json(record), status=status,
                             headers={"Location": f"/v1/requests/{record.id}"})


def query_names(request: web.Request, key: str) -> list[str] | None:
    """The values of a repeatable query parameter (None when absent), each 1-200 chars."""
    if key not in request.query:
        return None
    values = request.query.getall(key)
    for value in values:
        if not 0 < len(value) <= 200:
            raise InvalidInput(f"{key} must be 1-200 characters", field=key)
    return values


def query_time(request: web.Request, key: str) -> float | None:
    """A query parameter given at most once as an ISO-8601 time or epoch seconds.

    An ISO time without a UTC offset is taken as UTC. Returns epoch seconds, or None.
    """
    if key not in request.query:
        return None
    values = request.query.getall(key)
    if len(values) > 1:
        raise InvalidInput(f"give {key} at most once", field=key)
    value = values[0] if values[0].isascii() else ""
    if NUMBER_RE.fullmatch(value):
        epoch = float(value)
        if not epoch <= EPOCH_MAX:
            raise InvalidInput(f"{key} in epoch seconds must be from 0 to {EPOCH_MAX:.0f}",
                               field=key)
        return epoch
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{key} must be an ISO-8601 time (e.g. 2026-01-31T12:00:00Z) "
                           f"or epoch seconds in ASCII digits, got {values[0][:64]!r}",
                           field=key) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def query_number(request: web.Request, key: str, low: float, high: float, *,
                 integer: bool = False, unit: str = "") -> float | None:
    """A number given at most once in the query, in ASCII digits, from ``low`` to
    ``high``; None when absent."""
    if key not in request.query:
        return None
    values = request.query.getall(key)
    pattern = INTEGER_RE if integer else NUMBER_RE
    number = float(values[0]) if len(values) == 1 and pattern.fullmatch(values[0]) \
        else math.nan
    if not low <= number <= high:
        what = "an integer" if integer else "a number"
        raise InvalidInput(f"{key} must be given once, as {what} from {low:g} to {high:g}"
                           f"{unit} in ASCII digits", field=key)
    return number


async def list_requests(request: web.Request) -> web.Response:
    """GET /v1/requests[?state=&owner=&resource_pool=&name=&since=&until=&limit=&after=]:
    what the caller sees, a page at a time.

    That is the caller's requests and those of the pools they hold CLOUD_ADMIN on; the
    filters narrow it (``since <= created_at < until``). ``next`` in the answer, passed
    as ``after``, gives the next page.
    """
    service = request.app[SERVICE]
    who = peer_identity(request)
    refuse_unknown_query(request, *LIST_QUERY)
    states = None
    if "state" in request.query:
        known = [s.value for s in State]
        for value in request.query.getall("state"):
            if value not in known:
                raise InvalidInput(f"unknown state {value[:64]!r} (expected one of: "
                                   f"{', '.join(known)})", field="state")
        states = [State(s) for s in request.query.getall("state")]
    since, until = query_time(request, "since"), query_time(request, "until")
    if since is not None and until is not None and until < since:
        raise InvalidInput("until is before since", field="until")
    given = query_number(request, "limit", 1, LIST_LIMIT_MAX, integer=True)
    limit = LIST_LIMIT_DEFAULT if given is None else int(given)
    after = request.query.get("after")
    if after is not None and not 0 < len(after) <= 64:
        raise InvalidInput("after must be the id of a request (from 'next')", field="after")
    # One page at a time: a long history must not hold the event loop (or memory).
    records = service.list_visible(
        who, states=states, owners=query_names(request, "owner"),
        pools=query_names(request, "resource_pool"), since=since, until=until, after=after,
        limit=limit + 1, names=query_names(request, "name"))
    more = len(records) > limit
    page = records[:limit]
    return web.json_response({"requests": [request_json(r) for r in page],
                              "next": page[-1].id if more else None})


async def show_request(request: web.Request) -> web.Response:
    """GET /v1/requests/{id}[?wait=SECONDS][&addresses=true]: the request; with ``wait``,
    once it has ended (done, or failed and rolled back) or the seconds have passed,
    whichever comes first; with ``addresses``, its running VM's IP addresses too."""
    service = request.app[SERVICE]
    refuse_unknown_query(request, "wait", "addresses")
    addresses = request.query.getall("addresses", [])
    if addresses not in ([], ["true"], ["false"]):
        raise InvalidInput("addresses must be given once, as true or false",
                           field="addresses")
    wait = query_number(request, "wait", 0, WAIT_MAX, unit=" seconds")
    record = service.visible(peer_identity(request), request.match_info["id"])
    if wait:
        try:
            record = await service.wait_terminal(record.id, timeout=wait)
        except asyncio.TimeoutError:
            record = service.store.get_request(record.id) or record
    answer = request_json(record)
    if addresses == ["true"] and answer["vm"] is not None:
        answer["vm"]["addresses"] = await service.addresses(record)
    return web.json_response(answer)


async def request_log(request: web.Request) -> web.Response:
    """GET /v1/requests/{id}/log: every transition, libvirt event and note, oldest first."""
    service = request.app[SERVICE]
    record = service.visible(peer_identity(request), request.match_info["id"])
    return web.json_response({"request_id": record.id,
                              "log": [log_json(e) for e in service.log_of(record)]})


async def cancel_request(request: web.Request) -> web.Response:
    """POST /v1/requests/{id}/cancel."""
    service = request.app[SERVICE]
    who = peer_identity(request)
    record = service.visible(who, request.match_info["id"])
    service.cancel(record.id, who.user)
    current = service.store.get_request(record.id)
    assert current is not None
    return web.json_response(request_json(current), status=202)


def vm_operation(operation: str) -> Handler:
    """POST /v1/requests/{id}/OPERATION[?wait=SECONDS]: start, stop, reboot or delete the
    request's VM; with ``wait``, answered once the operation is over (200) or the seconds
    have passed (202), whichever comes first."""

    async def handler(request: web.Request) -> web.Response:
        service = request.app[SERVICE]
        who = peer_identity(request)
        refuse_unknown_query(request, "wait")
        wait = query_number(request, "wait", 0, WAIT_MAX, unit=" seconds")
        force = False
        if operation == "stop" and request.can_read_body:
            body = await read_json(request)
            if not isinstance(body, dict) or set(body) - {"force"} or not isinstance(
                    body.get("force", False), bool):
                raise InvalidInput('the body must be {"force": true|false}', field="force")
            force = body.get("force", False)
        record = await service.operate(who, request.match_info["id"], operation, force=force)
        # One pass first: the operation's task then waits for the same commit ahead of this
        # answer, so its step (a libvirt call, in a thread) starts before the answer is sent.
        await asyncio.sleep(0)
        await service.store.durable()  # 202 means recorded: it runs even after a crash
        if wait:  # one call for clients that wait for the end (provctl --wait)
            try:
                record = await service.wait_terminal(record.id, timeout=wait)
            except asyncio.TimeoutError:
                record = service.store.get_request(record.id) or record
        answer = request_json(record)
        over = wait and (answer["vm"] or {}).get("state") not in VM_BUSY
        return web.json_response(answer, status=200 if over else 202)

    handler.__doc__ = f"POST /v1/requests/{{id}}/{operation}."
    return handler


async def explain(request: web.Request) -> web.Response:
    """POST /v1/placement/explain: the placement dry run."""
    who = peer_identity(request)
    body = await json_body(request, EXPLAIN_FIELDS, {"template", "size"})
    decision = await request.app[SERVICE].explain(who, ProvisioningRequest(
        body["template"], body["size"], body.get("resource_pool")))
    return web.json_response(decision_json(decision))


async def reconcile(request: web.Request) -> web.Response:
    """POST /v1/reconcile ``{"apply": bool}``: list (and with apply, remove) orphans.

    Admins only: the hosts looked at are those of the hardware pools that the resource
    pools where the caller holds CLOUD_ADMIN draw on.
    """
    service = request.app[SERVICE]
    who = peer_identity(request)
    service.admin_pools(who)  # refused before the body is read
    apply = False
    if request.can_read_body:
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"apply"} or not isinstance(
                body.get("apply", False), bool):
            raise InvalidInput('the body must be {"apply": true|false}', field="apply")
        apply = body.get("apply", False)
    hosts, orphans = await service.reconcile(who, apply)
    return web.json_response({"applied": apply, "hosts": hosts,
                              "orphans": [o.to_json() for o in orphans]})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (anyone who can reach the socket)."""
    return web.Response(body=request.app[SERVICE].metrics.exposition(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi_json(request: web.Request) -> web.Response:
    """GET /v1/openapi.json: this API's OpenAPI 3.1 document (no privilege needed)."""
    return web.json_response(openapi_document())


# --------------------------------------------------------------------------- errors


def error_response(status: int, code: str, message: str,
                   field: str | None = None) -> web.Response:
    """The API's error body."""
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    return web.json_response({"error": error}, status=status)


HTTP_CODES = {400: "invalid", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              409: "wrong_state", 413: "too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to the JSON error body, once."""
    try:
        return await handler(request)
    except ProvisiondError as exc:
        response = error_response(exc.http_status, exc.code, exc.message, exc.field)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) \
            else exc.reason
        if exc.status == 413:
            message = f"the body is larger than {MAX_BODY_BYTES} bytes"
        return error_response(exc.status, HTTP_CODES.get(exc.status, "http_error"), message)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the daemon's log")


PARSER_REFUSALS: tuple[tuple[Any, str], ...] = (
    (LineTooLong, "the request line or a header is too long"),
    (BadHttpMethod, "the request line does not start with an HTTP method"),
    (BadStatusLine, "the request line is malformed"),
    (InvalidURLError, "the request target is not a valid path"),
    (InvalidHeader, "a header is malformed"),
    ((TransferEncodingError, ContentLengthError), "the body's framing (Content-Length or "
                                                   "Transfer-Encoding) is malformed"),
    (ContentEncodingError, "the body's Content-Encoding cannot be decoded here (the API "
                           "takes gzip, deflate, or none)"),
)
"""What aiohttp's parser refused, in words that never echo the input (most specific
first: BadHttpMethod is a BadStatusLine)."""


class ApiRequestHandler(RequestHandler):
    """aiohttp's handler of one connection, answering its own errors in the API's shape."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """What aiohttp answers by itself (a request its parser refused, a handler that
        failed past the middleware) as the API's JSON error, never echoing the input."""
        # aiohttp's own: it logs (one line, see process.logs) and raises if it is too late.
        super().handle_error(request, status, exc, message)
        text = next((words for kinds, words in PARSER_REFUSALS if isinstance(exc, kinds)),
                    "malformed HTTP: the request line, a header or the body's framing")
        if isinstance(exc, ContentEncodingError):
            status = 415
        if status >= 500:
            code, text = "internal", "internal error; see the daemon's log"
        else:
            code = HTTP_CODES.get(status, "invalid")
        response = error_response(status, code, text)
        response.force_close()
        return response


class ApiServer(web.Server):
    """aiohttp's low-level server, making ``ApiRequestHandler`` connections."""

    def __call__(self) -> RequestHandler:
        """A new connection's protocol."""
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer aiohttp's own errors (a request its HTTP
    parser refused) in the API's JSON shape; aiohttp offers no other hook for them."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ApiServer(server.request_handler, request_factory=server.request_factory,
                         handler_cancellation=server.handler_cancellation,
                         loop=server._loop, **server._kwargs)


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` as aiohttp does; anything else a JSON 400 (aiohttp's own
    answer would be text, before the error middleware can see it)."""
    try:
        return await _aiohttp_expect_handler(request)
    except HTTPExpectationFailed:
        return error_response(400, "invalid", "unsupported Expect header (only "
                              "100-continue)", "Expect")


def make_app() -> web.Application:
    """The aiohttp application; its ``cleanup_ctx`` must provide ``app[SERVICE]``."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/v1/health", health, expect_handler=expect_handler)
    app.router.add_get("/v1/whoami", whoami, expect_handler=expect_handler)
    app.router.add_get("/v1/catalog", catalog, expect_handler=expect_handler)
    app.router.add_post("/v1/requests", create_request, expect_handler=expect_handler)
    app.router.add_get("/v1/requests", list_requests, expect_handler=expect_handler)
    app.router.add_get("/v1/requests/{id}", show_request, expect_handler=expect_handler)
    app.router.add_get("/v1/requests/{id}/log", request_log, expect_handler=expect_handler)
    app.router.add_post("/v1/requests/{id}/cancel", cancel_request, expect_handler=expect_handler)
    for operation in ("start", "stop", "reboot", "delete"):
        app.router.add_post(f"/v1/requests/{{id}}/{operation}", vm_operation(operation),
                            expect_handler=expect_handler)
    app.router.add_get("/v1/requests/{id}/console", sessions.console,
                       expect_handler=expect_handler)
    app.router.add_get("/v1/requests/{id}/display", sessions.display,
                       expect_handler=expect_handler)
    app.router.add_post("/v1/placement/explain", explain, expect_handler=expect_handler)
    app.router.add_post("/v1/reconcile", reconcile, expect_handler=expect_handler)
    app.router.add_get("/v1/openapi.json", openapi_json, expect_handler=expect_handler)
    app.router.add_get("/metrics", metrics, expect_handler=expect_handler)
    return app
