"""The OpenAPI 3.1 document of the ``/v1`` API, served at ``GET /v1/openapi.json``.

Written out by hand, endpoint by endpoint, and strict on purpose: every object schema
closes with ``additionalProperties: false`` and lists what is required, states and error
codes are enums. ``tests/daemon/test_openapi.py`` validates every answer a real daemon
gives against it, so a field, a status or an error code the API adds without saying so
here fails that test. Only the state names are read off their source (the state table).
The components' schemas, and the helpers that write them, are in ``openapi_schemas``.

Imports nothing from ``daemon.api.routes`` (which serves this document) but the close
codes of ``daemon.api.sessions``; the test checks that the
two agree on the body fields, the error codes and the body size limit.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from daemon import __version__
from daemon.api.openapi_schemas import (  # the first three: the API's tests read them here
    ERROR_CODES,
    ERROR_RESPONSES,
    MAX_BODY_BYTES,
    SCHEMAS,
    error_schema,
    errors,
    json_body,
    json_content,
    ok,
    ref,
    wait_parameter,
)
from daemon.api.sessions import CLOSE_CODES

# --------------------------------------------------------------------------- parameters

PARAMETERS: dict[str, Any] = {
    "RequestId": {"name": "id", "in": "path", "required": True,
                  "description": "A request id (32 hex digits, see `GET /v1/requests`).",
                  "schema": {"type": "string"}},
    "IdempotencyKey": {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "Send a request at most once: a retry with the same key (and the same "
                       "template, size and pool) answers 200 with the earlier request; the "
                       "same key with different ones is a 400 on `idempotency_key`.",
        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"}},
}

LIST_PARAMETERS: list[dict[str, Any]] = [
    {"name": "state", "in": "query", "style": "form", "explode": True,
     "description": "Only requests in these states (repeat for several).",
     "schema": {"type": "array", "items": ref("schemas", "State")}},
    {"name": "owner", "in": "query", "style": "form", "explode": True,
     "description": "Only requests of these users (repeat for several); narrows what the "
                    "caller may see, never widens it.",
     "schema": {"type": "array", "items": {"type": "string", "minLength": 1,
                                           "maxLength": 200}}},
    {"name": "resource_pool", "in": "query", "style": "form", "explode": True,
     "description": "Only requests in these resource pools (repeat for several).",
     "schema": {"type": "array", "items": {"type": "string", "minLength": 1,
                                           "maxLength": 200}}},
    {"name": "name", "in": "query", "style": "form", "explode": True,
     "description": "Only requests for VMs of these names (repeat for several).",
     "schema": {"type": "array", "items": {"type": "string", "minLength": 1,
                                           "maxLength": 200}}},
    {"name": "since", "in": "query",
     "description": "Only requests created at or after this time: ISO-8601 (UTC when it has "
                    "no offset) or epoch seconds (ASCII digits, up to 253402300799).",
     "schema": {"type": "string", "examples": ["2026-11-24T01:00:00Z", "1795480403.5"]}},
    {"name": "until", "in": "query",
     "description": "Only requests created before this time (same forms as `since`; not "
                    "before it).",
     "schema": {"type": "string"}},
    {"name": "limit", "in": "query",
     "description": "At most this many requests in the answer (default 1000).",
     "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
    {"name": "after", "in": "query",
     "description": "The next page: the `next` of the previous answer.",
     "schema": {"type": "string", "minLength": 1, "maxLength": 64}},
]

LOCATION = {"Location": {"description": "The request's URL, `/v1/requests/{id}`.",
                         "required": True,
                         "schema": {"type": "string", "pattern": "^/v1/requests/[0-9a-f]{32}$"}}}

# --------------------------------------------------------------------------- paths

REQUEST = ref("schemas", "Request")

PATHS: dict[str, Any] = {
    "/v1/health": {"get": {
        "operationId": "health", "tags": ["daemon"], "summary": "Is the daemon up",
        "description": "Always answers while the daemon runs; each libvirt host's "
                       "connection state. Needs no privilege.",
        "responses": {"200": ok("Up.", ref("schemas", "Health")), **errors()},
    }},
    "/v1/openapi.json": {"get": {
        "operationId": "openapi", "tags": ["daemon"], "summary": "This document",
        "description": "The API's OpenAPI 3.1 document. Needs no privilege.",
        "responses": {"200": ok("The document.", {"type": "object",
                                                  "required": ["openapi", "info", "paths"]}),
                      **errors()},
    }},
    "/metrics": {"get": {
        "operationId": "metrics", "tags": ["daemon"], "summary": "Prometheus metrics",
        "description": "Requests by state, time spent in each state, libvirt call latency "
                       "and errors, placement outcomes, libvirt events received, "
                       "reconnects; Prometheus text format. Needs no privilege.",
        "responses": {"200": {"description": "The metrics.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **errors()},
    }},
    "/v1/whoami": {"get": {
        "operationId": "whoami", "tags": ["requests"], "summary": "Who the caller is",
        "description": "The caller as the socket's peer credentials say, and the resource "
                       "pools where they hold CLOUD_CREATE and CLOUD_ADMIN (empty lists "
                       "when none: anyone may ask).",
        "responses": {"200": ok("The caller.", ref("schemas", "Whoami")), **errors(400)},
    }},
    "/v1/catalog": {"get": {
        "operationId": "catalog", "tags": ["requests"], "summary": "What may be asked for",
        "responses": {"200": ok("The catalog.", ref("schemas", "Catalog")), **errors(403)},
    }},
    "/v1/requests": {
        "post": {
            "operationId": "createRequest", "tags": ["requests"], "summary": "Ask for a VM",
            "description": "Names are checked and the request is stored as `requested`; "
                           "the rest happens in the background (follow it with "
                           "`GET /v1/requests/{id}/log`).",
            "parameters": [ref("parameters", "IdempotencyKey")],
            "requestBody": json_body("CreateRequest", "What to provision."),
            "responses": {
                "202": ok("Accepted and stored.", REQUEST, LOCATION),
                "200": ok("An earlier request with this Idempotency-Key; nothing new was "
                          "stored.", REQUEST, LOCATION),
                **errors(400, 403, 409, 413, 415, 429),
            },
        },
        "get": {
            "operationId": "listRequests", "tags": ["requests"], "summary": "List requests",
            "description": "The caller's requests and those of the resource pools they hold "
                           "CLOUD_ADMIN on, oldest first; every filter given must hold. An "
                           "unknown query parameter is a 400.",
            "parameters": LIST_PARAMETERS,
            "responses": {"200": ok("The requests.", ref("schemas", "RequestList")),
                          **errors(400)},
        },
    },
    "/v1/requests/{id}": {
        "parameters": [ref("parameters", "RequestId")],
        "get": {
            "operationId": "showRequest", "tags": ["requests"], "summary": "One request",
            "description": "With `wait`, the answer comes when the request has ended (done, "
                           "or failed and rolled back), when `wait` seconds have passed, or "
                           "when the daemon stops, whichever is first: a client can wait for "
                           "a request without polling.",
            "parameters": [wait_parameter("the request to end"),
                           {"name": "addresses", "in": "query",
                            "description": "true: ask libvirt for the running VM's IP "
                                           "addresses (in `vm.addresses`).",
                            "schema": {"type": "string", "enum": ["true", "false"]}}],
            "responses": {"200": ok("The request.", REQUEST), **errors(400, 404)},
        },
    },
    "/v1/requests/{id}/log": {
        "parameters": [ref("parameters", "RequestId")],
        "get": {
            "operationId": "requestLog", "tags": ["requests"], "summary": "A request's log",
            "description": "Every transition, libvirt event and note, oldest first; poll it "
                           "to follow a request.",
            "responses": {"200": ok("The log.", ref("schemas", "RequestLog")),
                          **errors(404)},
        },
    },
    "/v1/requests/{id}/cancel": {
        "parameters": [ref("parameters", "RequestId")],
        "post": {
            "operationId": "cancelRequest", "tags": ["requests"],
            "summary": "Cancel a request in progress",
            "description": "The request fails with `cancelled by <user>` and what it held is "
                           "released, in the background. Any body is ignored.",
            "responses": {"202": ok("Cancellation accepted; the request as it is now.",
                                    REQUEST),
                          **errors(404, 409)},
        },
    },
    **{f"/v1/requests/{{id}}/{operation}": {
        "parameters": [ref("parameters", "RequestId")],
        "post": {
            "operationId": f"{operation}Vm", "tags": ["vms"], "summary": summary,
            "description": description + " Recorded before it acts; it runs in the "
                           "background (follow it with `GET /v1/requests/{id}?wait=`), or "
                           "with `wait` the answer comes when it is over. "
                           "Refused with 409 where the VM's state does not allow it, and "
                           "while another operation of it runs." + (
                               "" if operation == "stop" else " Any body is ignored."),
            "parameters": [wait_parameter("the operation to be over (the VM at rest, where "
                                          "it went or where it stopped, with its reason)")],
            **({"requestBody": json_body("StopRequest", "Optional.", required=False)}
               if operation == "stop" else {}),
            "responses": {"200": ok("With `wait`: the operation is over; the request (and "
                                    "its VM) as it left it.", REQUEST),
                          "202": ok("Accepted (without `wait`, or it still ran when the "
                                    "seconds were up); the request and its VM as they are "
                                    "now.", REQUEST),
                          **(errors(400, 404, 409, 413, 415, 429, 503) if operation == "stop"
                             else errors(400, 404, 409, 429, 503))},
        },
    } for operation, summary, description in (
        ("start", "Start the VM", "The domain is started; its STARTED event ends it."),
        ("stop", "Stop the VM", "An ACPI shutdown, forced off after `daemon.stop_timeout`; "
                                "with `force`, forced off at once."),
        ("reboot", "Reboot the VM", "An ACPI reboot."),
        ("delete", "Delete the VM", "Forced off if running, undefined, and its storage given "
                                    "back (a created volume deleted, a reused one wiped or as "
                                    "its pool's `on_release` says); its quota is given back. "
                                    "While a delete runs, another returns it."),
    )},
    **{f"/v1/requests/{{id}}/{kind}": {
        "parameters": [ref("parameters", "RequestId")],
        "get": {
            "operationId": f"{kind}Vm", "tags": ["vms"], "summary": summary,
            "description": description + " The answer upgrades the connection to a "
                           "WebSocket (RFC 6455; `Connection: Upgrade`, `Upgrade: websocket`) "
                           "that carries raw bytes both ways in binary messages (a text "
                           "message from the client is taken as its UTF-8 bytes). Refusals "
                           "come before the upgrade, as JSON errors: 409 when the VM is not "
                           "running" + (" or its console is in use" if kind == "console"
                                        else "") + ", 501 when its host cannot. The daemon "
                           "pings every 30 s and drops a client that does not answer; it "
                           "closes a session whose client sent nothing for "
                           "`daemon.session_idle_timeout` seconds. Close codes: "
                           + "; ".join(f"{code} {text}" for code, text in CLOSE_CODES.items())
                           + ". Each session is noted in the request's log.",
            **({"parameters": [{"name": "force", "in": "query",
                                "description": "true: end the session holding the console "
                                               "(it closes with 4001) and take it over.",
                                "schema": {"type": "string", "enum": ["true", "false"]}}]}
               if kind == "console" else {}),
            "responses": {"101": {"description": "Switching Protocols: the WebSocket is "
                                                 "open."},
                          **errors(400, 404, 409, 501, 502, 503, 504)},
        },
    } for kind, summary, description in (
        ("console", "The VM's serial console (WebSocket)",
         "The serial console of a running VM, as `virsh console` gives it: one session at a "
         "time per VM."),
        ("display", "The VM's graphical display (WebSocket)",
         "The VNC (RFB) stream of a running VM's display, for noVNC or `provctl display`. "
         "The display listens on no port: libvirt hands provisiond a connection to it."),
    )},
    "/v1/placement/explain": {"post": {
        "operationId": "explainPlacement", "tags": ["placement"],
        "summary": "Placement dry run",
        "requestBody": json_body("ExplainRequest", "The request to place."),
        "responses": {"200": ok("The decision.", ref("schemas", "Decision")),
                      **errors(400, 403, 409, 413, 415, 502, 503, 504)},
    }},
    "/v1/reconcile": {"post": {
        "operationId": "reconcile", "tags": ["admin"],
        "summary": "Find (and remove) orphans",
        "description": "Volumes and domains that carry provisiond's tags but belong to no "
                       "request in progress or done, on the hosts of the pools where the "
                       "caller holds CLOUD_ADMIN. With `apply`, they are removed.",
        "requestBody": json_body("ReconcileRequest", "No body: list only.", required=False),
        "responses": {"200": ok("The orphans.", ref("schemas", "ReconcileResult")),
                      **errors(400, 403, 413, 415, 502, 503, 504)},
    }},
}

INFO_DESCRIPTION = """\
provisiond's HTTP/JSON API, served on its Unix socket (mode 0660). The caller is the
peer of the socket (`SO_PEERCRED`); nothing in a request changes who they are.

Every error is `{"error": {"code", "message", "field"?}}` with the status of
`#/components/responses`. Any path answers an unknown method with 405
(`MethodNotAllowed`), and an unknown path answers 404 (`NotFound`).
"""


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {"title": "provisiond", "version": __version__,
                 "description": INFO_DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": "http://localhost",
                     "description": "over the Unix socket, e.g. curl --unix-socket PATH"}],
        "tags": [{"name": "daemon"}, {"name": "requests"}, {"name": "vms"},
                 {"name": "placement"}, {"name": "admin"}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "responses": {name: {"description": text,
                                 "content": json_content(error_schema(ERROR_CODES[status])),
                                 **({"headers": {"Retry-After": {
                                     "required": True,
                                     "description": "Seconds to wait before asking again.",
                                     "schema": {"type": "string", "pattern": r"^[0-9]+$"}}}}
                                    if status == 429 else {})}
                          for status, (name, text) in ERROR_RESPONSES.items()},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy the caller may change)."""
    return copy.deepcopy(_document())
