"""The OpenAPI document: a valid OpenAPI 3.1 document, and true of every answer.

A real provisiond is driven through every endpoint and every status it can be made to
answer; each answer (status, content type, headers, body) is validated against the
document it serves at ``/v1/openapi.json``. An undocumented status, a field the schema does
not list, a wrong error code: each fails. At the end, every documented status must have
been seen, but those no test can provoke (``UNPRODUCIBLE``).
"""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from daemon import errors
from daemon.api import openapi, routes as api
from statemachines import State
from harness.daemon import ME, Daemon, OTHER_USER, Reply
from tests.conftest import LateHost

DOC_URI = "urn:provisiond:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

UNPRODUCIBLE: dict[tuple[str, str], set[int]] = {
    ("/v1/placement/explain", "post"): {502, 504},  # libvirt refusing / not answering
    ("/v1/reconcile", "post"): {502, 504},
    # A VM operation over the in-progress cap (429) and on a VM whose host is away (503):
    # tests/daemon/service/test_admission.py and workflows/test_vm_lifecycle.py.
    **{(f"/v1/requests/{{id}}/{op}", "post"): {429, 503}
       for op in ("start", "stop", "reboot", "delete")},
    # The test driver opens no console or display (501 here); tests/e2e opens both.
    **{(f"/v1/requests/{{id}}/{kind}", "get"): {101, 502, 503, 504}
       for kind in ("console", "display")},
}
"""Documented statuses no test here can provoke; 500 (a bug) is never provoked either."""


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to a place in the document."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenAPIChecker:
    """Validates real requests and answers against the OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        self.registry = Registry().with_resource(
            DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012))
        self.paths = [(re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", p) + "$"), p)
                      for p in document["paths"]]
        self.seen: set[tuple[str, str, int]] = set()

    def validate(self, instance: Any, at: str, what: str) -> None:
        """Validate ``instance`` against the schema at pointer ``at`` of the document."""
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{DOC_URI}#{at}"}, registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        problems = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not problems, f"{what}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in problems)

    def resolve(self, at: str) -> tuple[str, dict[str, Any]]:
        """Follow a chain of ``$ref`` from pointer ``at``; return the final pointer and node."""
        node: Any = self.doc
        for part in at.split("/")[1:]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        while "$ref" in node:
            at = node["$ref"][1:]
            node = self.resolve(at)[1]
        return at, node

    def check(self, method: str, url: str, reply: Reply, sent: Any = None) -> Reply:
        """Validate one exchange; record which documented status it exercised."""
        split = urlsplit(url)
        method = method.lower()
        what = f"{method.upper()} {url} -> {reply.status} {reply.body!r:.300}"
        template = next((t for rx, t in self.paths if rx.match(split.path)), None)
        if template is None:
            assert reply.status == 404, f"{what}: no such path in the document"
            response_at = pointer("components", "responses", "NotFound")
        elif method not in self.doc["paths"][template]:
            assert reply.status == 405, f"{what}: no such operation in the document"
            response_at = pointer("components", "responses", "MethodNotAllowed")
        else:
            operation = self.doc["paths"][template][method]
            assert str(reply.status) in operation["responses"], \
                f"{what}: status not documented (only {sorted(operation['responses'])})"
            response_at = pointer("paths", template, method, "responses", str(reply.status))
            self.seen.add((template, method, reply.status))
            if 200 <= reply.status < 300:
                self._check_request(template, method, operation, split.query, sent, what)
        response_at, response = self.resolve(response_at)
        content_type = reply.headers.get("Content-Type", "").split(";")[0].strip()
        assert content_type in response["content"], \
            f"{what}: content type {content_type!r} not documented"
        self.validate(reply.body, f"{response_at}{pointer('content', content_type, 'schema')}",
                      what)
        for name, header in response.get("headers", {}).items():
            value = reply.headers.get(name)
            assert value is not None or not header.get("required"), f"{what}: no {name} header"
            if value is not None:
                self.validate(value, f"{response_at}{pointer('headers', name, 'schema')}",
                              f"{what}: header {name}")
        return reply

    def _check_request(self, template: str, method: str, operation: dict[str, Any],
                       query: str, sent: Any, what: str) -> None:
        """A request the API accepted must be one the document allows."""
        params = [self.resolve(p["$ref"][1:])[1] if "$ref" in p else p for p in
                  [*self.doc["paths"][template].get("parameters", []),
                   *operation.get("parameters", [])]]
        in_query = {p["name"]: p for p in params if p["in"] == "query"}
        for name, _value in parse_qsl(query, keep_blank_values=True):
            assert name in in_query, f"{what}: accepted an undocumented query parameter {name}"
        if sent is not None:
            assert "requestBody" in operation, f"{what}: accepted an undocumented body"
            body_at = pointer("paths", template, method, "requestBody", "content",
                              "application/json", "schema")
            self.validate(sent, body_at, f"{what}: the body sent")

    def unseen(self) -> set[tuple[str, str, int]]:
        """Documented (path, method, status) not exercised, but the unproducible ones."""
        missing = set()
        for template, item in self.doc["paths"].items():
            for method in METHODS:
                for status in item.get(method, {}).get("responses", {}):
                    skip = UNPRODUCIBLE.get((template, method), set()) | {500}
                    if int(status) not in skip and (template, method, int(status)) \
                            not in self.seen:
                        missing.add((template, method, int(status)))
        return missing


# --------------------------------------------------------------------------- the document


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.openapi_document()
    validate_openapi(doc)
    assert doc["openapi"].startswith("3.1.")
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for status, (name, _text) in openapi.ERROR_RESPONSES.items():
        codes = doc["components"]["responses"][name]["content"]["application/json"]["schema"]
        assert codes["properties"]["error"]["properties"]["code"]["enum"] == \
            list(openapi.ERROR_CODES[status])


def test_every_object_schema_is_closed() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and where != "/paths/~1v1~1openapi.json" \
                    "/get/responses/200/content/application~1json/schema":
                assert node.get("additionalProperties") is False or \
                    isinstance(node.get("additionalProperties"), dict), where
                assert "required" in node or isinstance(node.get("additionalProperties"),
                                                        dict), where
            for key, value in node.items():
                walk(value, f"{where}{pointer(key)}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(openapi.openapi_document(), "")


def test_every_route_is_documented_and_nothing_more() -> None:
    routes = {(r.resource.canonical, r.method.lower()) for r in api.make_app().router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(p, m) for p, item in openapi.openapi_document()["paths"].items()
                  for m in METHODS if m in item}
    assert routes == documented


def test_the_document_agrees_with_the_code() -> None:
    doc = openapi.openapi_document()
    schemas = doc["components"]["schemas"]
    assert schemas["State"]["enum"] == [s.value for s in State]
    assert set(schemas["CreateRequest"]["properties"]) == api.CREATE_FIELDS
    assert set(schemas["ExplainRequest"]["properties"]) == api.EXPLAIN_FIELDS
    list_params = {p["name"] for p in doc["paths"]["/v1/requests"]["get"]["parameters"]}
    assert list_params == set(api.LIST_QUERY)
    assert openapi.MAX_BODY_BYTES == api.MAX_BODY_BYTES
    for status, code in api.HTTP_CODES.items():
        assert code in openapi.ERROR_CODES[status], (status, code)

    def classes(cls: type[errors.ProvisiondError]) -> list[type[errors.ProvisiondError]]:
        return [cls] + [c for sub in cls.__subclasses__() for c in classes(sub)]

    for cls in classes(errors.ProvisiondError):
        if cls is not errors.ConfigError:  # configuration files only, never over the API
            assert cls.code in openapi.ERROR_CODES[cls.http_status], cls.__name__


# --------------------------------------------------------------------------- real answers


@pytest.fixture
def checker(daemon: Daemon) -> OpenAPIChecker:
    """A checker over the document the daemon serves (which must be the module's)."""
    served = daemon.call("GET", "/v1/openapi.json")
    assert served.status == 200 and served.body == openapi.openapi_document()
    checker = OpenAPIChecker(served.body)
    checker.check("GET", "/v1/openapi.json", served)
    return checker


def exchange(daemon: Daemon, checker: OpenAPIChecker) -> Callable[..., Reply]:
    """A ``daemon.call`` whose answer is checked against the document."""
    def call(method: str, url: str, body: Any = None, **kwargs: Any) -> Reply:
        reply = daemon.call(method, url, body, **kwargs)
        return checker.check(method, url, reply, sent=body)
    return call


def test_every_answer_matches_the_document(daemon: Daemon, checker: OpenAPIChecker,
                                           make_daemon: Callable[..., Daemon],
                                           late_host: LateHost) -> None:
    call = exchange(daemon, checker)
    small = {"template": "ipxe", "size": "small", "resource_pool": "rp"}

    # health, catalog, the document itself
    assert call("GET", "/v1/health").status == 200
    assert call("GET", "/v1/openapi.json", as_user=OTHER_USER).status == 200
    assert "provisiond_requests" in call("GET", "/metrics").body
    assert call("GET", "/v1/catalog").status == 200
    assert call("GET", "/v1/catalog", as_user=OTHER_USER).status == 403
    assert call("GET", "/v1/whoami").status == 200
    assert call("GET", "/v1/whoami", as_user=OTHER_USER).status == 200
    assert call("GET", "/v1/whoami?x=1").status == 400

    # create: new, replayed, refused in every way
    created = call("POST", "/v1/requests", {**small, "name": "web-1"},
                   headers={"Idempotency-Key": "k-1"})
    assert created.status == 202
    rid = created.body["id"]
    assert call("POST", "/v1/requests", {**small, "name": "web-1"},
                headers={"Idempotency-Key": "k-1"}).status == 200
    for bad in ({"template": "ipxe"}, {**small, "template": None}, {**small, "size": 5},
                {**small, "colour": "red"}, {**small, "template": "nope"},
                {**small, "name": "a b"}, {**small, "resource_pool": "moon"}):
        assert call("POST", "/v1/requests", bad).status == 400, bad
    assert call("POST", "/v1/requests", raw=b"[1,").status == 400
    assert call("POST", "/v1/requests", {**small, "ssh_keys": ["ssh-ed25519 AAAA"]}
                ).status == 400  # an iso template takes no cloud-init
    assert call("POST", "/v1/requests", {**small, "size": "tiny"},
                headers={"Idempotency-Key": "k-1"}).status == 400
    assert call("POST", "/v1/requests", {**small, "resource_pool": "rp2"},
                as_user=OTHER_USER).status == 403
    assert call("POST", "/v1/requests", {"template": "x" * 300_000, "size": "s"}).status == 413
    assert call("POST", "/v1/requests", raw=b"{}",
                headers={"Content-Type": "text/plain"}).status == 415

    # show, log, list (with every filter), cancel
    done = daemon.wait_terminal(rid)
    assert done["state"] == "done"
    assert call("GET", f"/v1/requests/{rid}").status == 200
    assert call("GET", f"/v1/requests/{rid}", as_user=OTHER_USER).status == 200  # admin of rp
    assert call("GET", f"/v1/requests/{rid}?wait=5").status == 200
    assert call("GET", f"/v1/requests/{rid}?wait=forever").status == 400
    log = call("GET", f"/v1/requests/{rid}/log")
    assert log.status == 200 and {e["kind"] for e in log.body["log"]} >= {"transition", "event"}
    assert call("GET", "/v1/requests/" + "0" * 32).status == 404
    assert call("GET", "/v1/requests/" + "0" * 32 + "/log").status == 404
    for query in ("", "?state=done&state=failed", f"?owner={done['owner']}&resource_pool=rp",
                  "?since=2020-01-01T00:00:00Z&until=2100-01-01", "?since=0&until=4e9"):
        assert call("GET", f"/v1/requests{query}").status == 200, query
    for query in ("?state=finished", "?since=yesterday", "?until=nan", "?since=5&until=4",
                  "?owner=", "?pool=rp", "?since=1&since=2"):
        assert call("GET", f"/v1/requests{query}").status == 400, query
    assert call("POST", f"/v1/requests/{rid}/cancel").status == 409
    assert call("POST", "/v1/requests/" + "0" * 32 + "/cancel").status == 404

    # the VM after done: start, reboot, stop (and forced off), delete
    def vm_after(answer: Reply) -> str:
        assert answer.status == 202, answer.body
        return daemon.call("GET", f"/v1/requests/{rid}?wait=10").body["vm"]["state"]

    assert call("POST", f"/v1/requests/{rid}/stop").status == 409  # it is stopped
    for operation in ("start", "stop", "reboot", "delete"):
        for query, field in (("wait=soon", "wait"), ("wait=301", "wait"), ("watch=1", "watch")):
            bad = call("POST", f"/v1/requests/{rid}/{operation}?{query}")
            assert bad.status == 400 and bad.body["error"]["field"] == field, (operation, query)
    started = call("POST", f"/v1/requests/{rid}/start?wait=10")  # one call: over when answered
    assert started.status == 200 and started.body["vm"]["state"] == "running"
    assert call("POST", f"/v1/requests/{rid}/stop?wait=10", {"force": True}
                ).body["vm"]["state"] == "stopped"
    assert vm_after(call("POST", f"/v1/requests/{rid}/start")) == "running"
    assert call("POST", f"/v1/requests/{rid}/start").status == 409
    websocket = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for kind in ("console", "display"):
        assert call("GET", f"/v1/requests/{rid}/{kind}", headers=websocket).status == 501
        assert call("GET", f"/v1/requests/{rid}/{kind}").status == 400  # not a WebSocket
        assert call("GET", "/v1/requests/" + "0" * 32 + f"/{kind}",
                    headers=websocket).status == 404
    assert call("GET", f"/v1/requests/{rid}/console?force=maybe",
                headers=websocket).status == 400
    shown = call("GET", f"/v1/requests/{rid}?addresses=true")
    assert shown.status == 200 and shown.body["vm"]["addresses"] == []  # no NIC: none
    assert call("GET", f"/v1/requests/{rid}?addresses=maybe").status == 400
    assert vm_after(call("POST", f"/v1/requests/{rid}/reboot")) == "running"
    assert call("POST", f"/v1/requests/{rid}/reboot?wait=10").status == 200
    assert call("POST", f"/v1/requests/{rid}/stop", {"force": "yes"}).status == 400
    assert call("POST", f"/v1/requests/{rid}/stop", raw=b'{"force": true}' + b" " * 270_000
                ).status == 413
    assert call("POST", f"/v1/requests/{rid}/stop", raw=b"{}",
                headers={"Content-Type": "text/plain"}).status == 415
    assert vm_after(call("POST", f"/v1/requests/{rid}/stop", {"force": True})) == "stopped"
    assert call("POST", f"/v1/requests/{rid}/reboot").status == 409
    for kind in ("console", "display"):  # stopped: nothing to show
        assert call("GET", f"/v1/requests/{rid}/{kind}", headers=websocket).status == 409
    for operation in ("start", "stop", "reboot", "delete"):
        assert call("POST", "/v1/requests/" + "0" * 32 + f"/{operation}").status == 404
    assert vm_after(call("POST", f"/v1/requests/{rid}/delete")) == "deleted"
    assert call("POST", f"/v1/requests/{rid}/delete").status == 202  # already: no error
    again = call("POST", f"/v1/requests/{rid}/delete?wait=1")
    assert again.status == 200 and again.body["vm"]["state"] == "deleted"
    assert call("POST", f"/v1/requests/{rid}/start").status == 409

    # explain and reconcile
    assert call("POST", "/v1/placement/explain", small).status == 200
    assert call("POST", "/v1/placement/explain", {**small, "size": "huge"}).status == 400
    assert call("POST", "/v1/placement/explain", small, as_user=OTHER_USER).status == 403
    assert call("POST", "/v1/placement/explain",
                {"template": "x" * 300_000, "size": "s"}).status == 413
    assert call("POST", "/v1/placement/explain", raw=b"{}",
                headers={"Content-Type": "text/plain"}).status == 415
    assert call("POST", "/v1/reconcile", {"apply": False}, as_user=OTHER_USER).status == 200
    assert call("POST", "/v1/reconcile", as_user=OTHER_USER).status == 200
    assert call("POST", "/v1/reconcile", {"apply": "yes"}, as_user=OTHER_USER).status == 400
    assert call("POST", "/v1/reconcile", {"apply": False}).status == 403
    assert call("POST", "/v1/reconcile", raw=b'{"apply": false}' + b" " * 270_000,
                as_user=OTHER_USER).status == 413
    assert call("POST", "/v1/reconcile", raw=b"{}", headers={"Content-Type": "text/plain"},
                as_user=OTHER_USER).status == 415

    # no such path, no such method
    assert call("GET", "/v1/nothing-here").status == 404
    assert call("DELETE", "/v1/requests").status == 405
    assert call("PUT", f"/v1/requests/{rid}").status == 405
    assert call("POST", "/v1/health").status == 405

    # a host that is down: health says so, placement answers 503, a live request cancels;
    # requests held there meet the quota (409) and the in-progress cap (429) at submit
    grants = {"CLOUD_CREATE": {"users": [ME]}, "CLOUD_ADMIN": {"users": [OTHER_USER]}}
    down = make_daemon(str(late_host.path), daemon={"max_in_progress_per_user": 2},
                       resource_pools={
                           "rp": {"hardware_pool": "hw", "grants": grants, "quota": {"vms": 1}},
                           "rp2": {"hardware_pool": "hw", "grants": grants}})
    call = exchange(down, checker)
    health = call("GET", "/v1/health")
    assert health.body["hosts"] == {"testhost": "disconnected"}
    assert call("POST", "/v1/placement/explain", small).status == 503
    assert call("POST", "/v1/reconcile", {"apply": False}, as_user=OTHER_USER).status == 503
    live = call("POST", "/v1/requests", small).body["id"]
    waited = call("GET", f"/v1/requests/{live}?wait=0.3")  # it waits for the host: time out
    assert waited.status == 200 and waited.body["state"] not in ("done", "failed")
    assert call("POST", f"/v1/requests/{live}/delete").status == 409  # no VM yet
    assert call("POST", "/v1/requests", small).status == 409  # quota: vms 1 used + 1 > 1
    assert call("POST", "/v1/placement/explain", small).status == 409
    assert call("POST", "/v1/requests", {**small, "resource_pool": "rp2"}).status == 202
    too_many = call("POST", "/v1/requests", {**small, "resource_pool": "rp2"})
    assert too_many.status == 429 and too_many.headers["Retry-After"].isdigit()
    cancelled = call("POST", f"/v1/requests/{live}/cancel")
    assert cancelled.status == 202 and cancelled.body["state"] not in ("done", "failed")

    assert checker.unseen() == set()
    assert "Traceback" not in daemon.log() + down.log()


def test_an_undocumented_answer_fails_the_check(checker: OpenAPIChecker) -> None:
    """The checker itself: each kind of departure from the document is caught."""
    request = {"id": "0" * 32, "name": "n", "owner": "o", "template": "t", "size": "s",
               "resource_pool": "rp", "hardware_pool": "hw", "host": None, "cpus": 1,
               "memory_kib": 1, "storage_gb": 1, "state": "requested", "reason": None,
               "volume": None, "domain": None, "vm": None,
               "created_at": "2026-01-01T00:00:00.000Z",
               "updated_at": "2026-01-01T00:00:00.000Z"}
    headers = {"Content-Type": "application/json; charset=utf-8"}
    url = "/v1/requests/" + "0" * 32
    checker.check("GET", url, Reply(200, request, headers))
    wrong = [
        Reply(201, request, headers),                                   # status
        Reply(200, {**request, "extra": 1}, headers),                    # a field
        Reply(200, {**request, "state": "sleeping"}, headers),           # an enum
        Reply(200, {k: v for k, v in request.items() if k != "owner"}, headers),
        Reply(200, request, {"Content-Type": "text/plain"}),             # content type
        Reply(404, {"error": {"code": "wrong_state", "message": "m"}}, headers),
        Reply(404, {"error": {"code": "not_found"}}, headers),
    ]
    for reply in wrong:
        with pytest.raises(AssertionError):
            checker.check("GET", url, reply)
    with pytest.raises(AssertionError):  # Location is required on 202
        checker.check("POST", "/v1/requests", Reply(202, request, headers),
                      sent={"template": "t", "size": "s"})
    with pytest.raises(AssertionError):  # a body the document would refuse
        checker.check("POST", "/v1/requests",
                      Reply(202, request, {**headers, "Location": url}),
                      sent={"template": "t", "size": "s", "owner": "root"})
    with pytest.raises(AssertionError):  # a query parameter it does not list
        checker.check("GET", "/v1/requests?colour=red",
                      Reply(200, {"requests": []}, headers))
