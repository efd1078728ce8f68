"""The OpenAPI 3.1 document of the ``/v1`` API, served at ``GET /v1/openapi.json``.

Written out by hand, endpoint by endpoint, and strict on purpose: every object schema
closes with ``additionalProperties: false`` and lists what is required, states and error
codes are enums. ``tests/daemon/test_openapi.py`` validates every answer a real daemon
gives against it, so a field, a status or an error code the API adds without saying so
here fails that test. Only the state names are read off their source (the state table).

Imports nothing from ``daemon.api.routes`` (which serves this document) but the close
codes of ``daemon.api.sessions``; the test checks that the
two agree on the body fields, the error codes and the body size limit.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from daemon import __version__
from daemon.api.sessions import CLOSE_CODES
from statemachines import State
from statemachines.vm import VmState

Schema = dict[str, Any]

JSON = "application/json"
MAX_BODY_BYTES = 256 * 1024
"""Bodies past this answer 413 (the API's ``client_max_size``)."""

ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid",), 403: ("forbidden",), 404: ("not_found",), 405: ("method_not_allowed",),
    409: ("wrong_state", "quota_exceeded", "in_use"), 413: ("too_large",),
    415: ("unsupported_media_type",), 429: ("too_many_in_progress",), 500: ("internal",),
    502: ("libvirt",), 503: ("host_unreachable",), 501: ("not_supported",),
    504: ("libvirt_timeout",), 507: ("no_storage", "no_capacity"),
}
"""Each error status with the ``error.code`` values it may carry."""

ERROR_RESPONSES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "The input is invalid (a body not UTF-8 JSON, or with a key twice; a "
                        "number in a query not in ASCII digits); `field` names the culprit "
                        "when there is one. Also a message that is not HTTP/1.1 the API can "
                        "read."),
    403: ("Forbidden", "The caller lacks the privilege this needs (CLOUD_CREATE or "
                       "CLOUD_ADMIN on a resource pool)."),
    404: ("NotFound", "No such request for this caller (other users' requests are not "
                      "revealed), or no such path."),
    405: ("MethodNotAllowed", "The path exists but not with this method."),
    409: ("Conflict", "The request is in the wrong state for this (e.g. already done)."),
    413: ("PayloadTooLarge", f"The body is larger than {MAX_BODY_BYTES} bytes."),
    415: ("UnsupportedMediaType", "The body is not sent as `Content-Type: application/json` "
                                  "(with no charset, or utf-8), or in a `Content-Encoding` "
                                  "other than gzip or deflate."),
    429: ("TooManyRequests", "The caller already has `daemon.max_in_progress_per_user` "
                             "requests and VM operations in progress; the `Retry-After` "
                             "header says when to ask again."),
    500: ("InternalError", "A bug in provisiond; the traceback is in the daemon's log only."),
    501: ("NotImplemented", "The host's libvirt driver cannot do this (e.g. the test driver "
                            "has no console or display)."),
    502: ("BadGateway", "libvirt refused or failed an operation."),
    503: ("ServiceUnavailable", "The libvirt connection to the host is down."),
    504: ("GatewayTimeout", "libvirt did not answer in time."),
}
"""Each error status's reusable response (``#/components/responses/<name>``)."""

STATE_NAMES: list[str] = [s.value for s in State]
VM_STATE_NAMES: list[str] = [s.value for s in VmState]

ISO_TIME: Schema = {
    "type": "string", "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
    "description": "UTC, milliseconds, e.g. `2026-11-24T01:02:03.456Z`.",
}
NAME: Schema = {"type": "string", "minLength": 1}
NULLABLE_NAME: Schema = {"type": ["string", "null"], "minLength": 1}
COUNT: Schema = {"type": "integer", "minimum": 0}
LIMITS: dict[str, Schema] = {"vms": COUNT, "cpus": COUNT,
                             "memory": {**COUNT, "description": "KiB."}, "storage_gb": COUNT}


def ref(kind: str, name: str) -> Schema:
    """A ``$ref`` to ``#/components/<kind>/<name>``."""
    return {"$ref": f"#/components/{kind}/{name}"}


def closed(properties: dict[str, Schema], required: list[str] | None = None,
           description: str | None = None) -> Schema:
    """An object schema with exactly these properties (all required unless told)."""
    schema: Schema = {"type": "object", "additionalProperties": False,
                      "required": list(properties) if required is None else required,
                      "properties": properties}
    if description:
        schema["description"] = description
    return schema


def nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    return {"oneOf": [{"type": "null"}, schema]}


def error_schema(codes: tuple[str, ...] | list[str]) -> Schema:
    """The error body ``{"error": {"code", "message", "field"?}}`` with these codes."""
    return closed({"error": closed({
        "code": {"type": "string", "enum": list(codes)},
        "message": {"type": "string", "minLength": 1},
        "field": {"type": "string", "minLength": 1,
                  "description": "The body field or query parameter at fault."},
    }, required=["code", "message"])})


def json_content(schema: Schema) -> dict[str, Any]:
    """A ``content`` map with one JSON media type."""
    return {JSON: {"schema": schema}}


def ok(description: str, schema: Schema, headers: dict[str, Any] | None = None
       ) -> dict[str, Any]:
    """A success response."""
    response: dict[str, Any] = {"description": description, "content": json_content(schema)}
    if headers:
        response["headers"] = headers
    return response


def errors(*statuses: int) -> dict[str, Any]:
    """The reusable error responses of these statuses, plus 500 (any endpoint may fail)."""
    return {str(s): ref("responses", ERROR_RESPONSES[s][0])
            for s in sorted({*statuses, 500})}


def json_body(schema_name: str, description: str, required: bool = True) -> dict[str, Any]:
    """A JSON request body."""
    return {"required": required, "description": description,
            "content": json_content(ref("schemas", schema_name))}


def wait_parameter(until: str) -> dict[str, Any]:
    """The ``wait`` query parameter: seconds to wait at most for ``until``."""
    return {"name": "wait", "in": "query", "description": f"Seconds to wait at most for {until}.",
            "schema": {"type": "number", "minimum": 0, "maximum": 300}}


# --------------------------------------------------------------------------- schemas

SCHEMAS: dict[str, Schema] = {
    "State": {"type": "string", "enum": STATE_NAMES,
              "description": "A request's state; `done` and `failed` are terminal."},
    "VmState": {"type": "string", "enum": VM_STATE_NAMES,
                "description": "A done request's VM's state (docs/states.md); `deleted` is "
                               "terminal."},
    "Vm": closed({
        "state": ref("schemas", "VmState"),
        "reason": {"type": ["string", "null"],
                   "description": "Why its last operation did not succeed."},
        "addresses": {"type": ["array", "null"], "items": ref("schemas", "Address"),
                      "description": "Only with `?addresses=true`: a running VM's IP "
                                     "addresses (none when it is not running); null when "
                                     "its host could not be asked."},
    }, required=["state", "reason"],
        description="The VM a done request made, in its own lifecycle."),
    "Address": closed({
        "interface": {"type": "string"},
        "mac": {"type": ["string", "null"]},
        "address": {"type": "string"},
        "prefix": {"type": "integer", "minimum": 0, "maximum": 128},
        "source": {"type": "string", "enum": ["lease", "agent", "arp"],
                   "description": "Who told libvirt: the network's DHCP lease, the guest "
                                  "agent, or the host's ARP table (asked in that order)."},
    }, description="One IP address of a VM's network interface."),
    "StopRequest": closed({
        "force": {"type": "boolean", "description": "Forced off at once (virsh destroy)."},
    }, description="How to stop a VM."),
    "Request": closed({
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "name": {**NAME, "description": "The VM's (domain's) name."},
        "owner": {**NAME, "description": "The user who asked (from the socket's peer)."},
        "template": NAME,
        "size": NAME,
        "resource_pool": NAME,
        "hardware_pool": NAME,
        "host": {**NULLABLE_NAME, "description": "Set once storage is placed."},
        "cpus": {"type": "integer", "minimum": 1},
        "memory_kib": {"type": "integer", "minimum": 1},
        "storage_gb": {"type": "integer", "minimum": 1},
        "state": ref("schemas", "State"),
        "reason": {"type": ["string", "null"], "description": "Why it failed."},
        "volume": nullable(ref("schemas", "Volume")),
        "domain": nullable(ref("schemas", "Domain")),
        "vm": {**nullable(ref("schemas", "Vm")),
               "description": "The VM's lifecycle once the request is done (else null)."},
        "created_at": ISO_TIME,
        "updated_at": ISO_TIME,
    }, description="A provisioning request."),
    "Volume": closed({
        "pool": NAME,
        "name": NAME,
        "path": NULLABLE_NAME,
        "owned": {"type": "boolean",
                  "description": "true: created for this request (deleted if it fails); "
                                 "false: a free volume reused."},
    }, description="The storage volume a request holds."),
    "Domain": closed({
        "uuid": {"type": "string", "format": "uuid",
                 "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
        "name": NAME,
    }, description="The libvirt domain of a done request."),
    "RequestList": closed({
        "requests": {"type": "array", "items": ref("schemas", "Request")},
        "next": {"type": ["string", "null"],
                 "description": "Pass as `after` for the next page; null on the last one."},
    }, description="Requests, oldest first, one page."),
    "LogEntry": closed({
        "kind": {"type": "string", "enum": ["transition", "event", "note"],
                 "description": "transition: the state changed; event: a libvirt event "
                                "about the request's domain; note: anything else worth "
                                "keeping (rollback, reconnects)."},
        "from": {"type": ["string", "null"], "enum": [*STATE_NAMES, *VM_STATE_NAMES, None],
                 "description": "The state left (null for the first transition): a "
                                "request's, then its VM's; for an event or note, the state "
                                "it happened in."},
        "to": {"type": ["string", "null"], "enum": [*STATE_NAMES, *VM_STATE_NAMES, None],
               "description": "The state entered; for an event or note, the current one."},
        "trigger": {"type": ["string", "null"],
                    "description": "What fired it (e.g. `authorize`, `libvirt:DEFINED`)."},
        "at": ISO_TIME,
        "detail": {"type": ["string", "null"]},
    }),
    "RequestLog": closed({
        "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "log": {"type": "array", "items": ref("schemas", "LogEntry")},
    }, description="A request's log, oldest first."),
    "Health": closed({
        "status": {"type": "string", "enum": ["ok"]},
        "version": NAME,
        "hosts": {"type": "object", "additionalProperties": {
            "type": "string", "enum": ["connected", "disconnected"]}},
    }),
    "Catalog": closed({
        "user": NAME,
        "templates": {"type": "array", "items": closed({
            "name": NAME, "kind": {"type": "string", "enum": ["iso", "appliance", "kickstart"]},
            "description": {"type": "string"},
            "accepts": {"type": "array", "items": {"type": "string", "enum": [
                "ssh_keys", "user_data", "network_config"]},
                "description": "What a create of this template may add (`CreateRequest`)."}})},
        "sizes": {"type": "array", "items": closed({
            "name": NAME,
            "cpus": {"type": "integer", "minimum": 1},
            "memory": {"type": "integer", "minimum": 1, "description": "KiB."},
            "storage_size_in_gb": {"type": "integer", "minimum": 1},
            "network": NULLABLE_NAME,
        })},
        "resource_pools": {"type": "array", "items": closed({
            "name": NAME,
            "description": {"type": "string"},
            "hardware_pool": NAME,
            "quota": closed({**LIMITS, "per_user": closed(
                LIMITS, required=[], description="The same bounds on each user's share.")},
                required=[], description="Upper bounds; a missing one is unbounded."),
            "used": closed(LIMITS, description="What the pool's VMs and requests hold."),
            "used_by_you": closed(LIMITS, description="The caller's share of `used`."),
            "you_administer": {"type": "boolean", "description": "Whether the caller holds "
                               "CLOUD_ADMIN on the pool (sees and cancels everyone's "
                               "requests there, runs the reconciler)."},
        })},
    }, description="What the caller may ask for: templates, sizes, and the resource pools "
                   "they hold CLOUD_CREATE on."),
    "CreateRequest": closed({
        "template": {**NAME, "maxLength": 200},
        "size": {**NAME, "maxLength": 200},
        "resource_pool": {"type": ["string", "null"], "minLength": 1, "maxLength": 200,
                          "description": "Needed when the caller may create in several."},
        "name": {"type": ["string", "null"], "minLength": 1, "maxLength": 63,
                 "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                 "description": "The VM's name (default: `<template>-<id prefix>`)."},
        "ssh_keys": {"type": ["array", "null"], "maxItems": 32,
                     "items": {"type": "string", "minLength": 1},
                     "description": "OpenSSH public keys (`TYPE BASE64 [COMMENT]`) for the "
                                    "VM's cloud-init seed, added to the template's (appliance "
                                    "templates only)."},
        "user_data": {"type": ["string", "null"], "maxLength": 65536,
                      "description": "`#cloud-config` YAML replacing the template's "
                                     "(appliance templates only; at most 64 KiB)."},
        "network_config": {"type": ["string", "null"], "maxLength": 65536,
                           "description": "cloud-init network config (version 1 or 2) "
                                          "replacing the template's (appliance templates)."},
    }, required=["template", "size"]),
    "ExplainRequest": closed({
        "template": {**NAME, "maxLength": 200},
        "size": {**NAME, "maxLength": 200},
        "resource_pool": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
    }, required=["template", "size"]),
    "Decision": closed({
        "action": {"type": "string", "enum": ["reuse", "create", "none"]},
        "pool": NULLABLE_NAME,
        "volume": {**NULLABLE_NAME, "description": "The free volume reused."},
        "reason": {"type": "string"},
        "candidates": {"type": "array", "items": closed({
            "stage": {"type": "string", "enum": ["reuse", "create"]},
            "pool": NAME,
            "volume": NULLABLE_NAME,
            "verdict": {"type": "string", "enum": ["ok", "refused"]},
            "reason": {"type": "string"},
        })},
        "host": {**NULLABLE_NAME, "description": "The host a request would get."},
        "hosts": {"type": "array", "items": closed({
            "host": NAME,
            "verdict": {"type": "string", "enum": ["ok", "refused"]},
            "reason": {"type": "string"},
        }), "description": "Each host of the hardware pool, the chosen one first."},
    }, description="Where a request would get its host and storage now, with the verdict "
                   "on every host and every candidate volume and pool. Nothing is reserved."),
    "ReconcileRequest": closed({"apply": {"type": "boolean", "default": False}}, required=[]),
    "ReconcileResult": closed({
        "applied": {"type": "boolean"},
        "hosts": {"type": "array", "items": NAME},
        "orphans": {"type": "array", "items": closed({
            "host": NAME,
            "kind": {"type": "string", "enum": ["volume", "domain", "claim"]},
            "name": NAME,
            "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "reason": {"type": "string"},
            "pool": NULLABLE_NAME,
            "uuid": NULLABLE_NAME,
            "action": {"type": "string", "pattern": "^(found|kept|removed|released|not removed: .+)$"},
        })},
    }),
    "Error": error_schema(sorted({c for codes in ERROR_CODES.values() for c in codes})),
}

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
