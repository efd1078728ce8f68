"""The OpenAPI document's parts: its components' schemas and the helpers that write them
(``daemon.api.openapi`` puts them together with the paths and parameters)."""

from __future__ import annotations

from typing import Any

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
    "Whoami": closed({
        "user": NAME,
        "groups": {"type": "array", "items": NAME},
        "privileges": closed({
            "CLOUD_CREATE": {"type": "array", "items": NAME},
            "CLOUD_ADMIN": {"type": "array", "items": NAME},
        }),
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
