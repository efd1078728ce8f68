"""The HTTP API over a real Unix socket of a real provisiond process.

A second real uid (``nobody``) makes calls from a subprocess, so identities are the
kernel's peer credentials, exactly as in production.
"""

from __future__ import annotations

import os
import socket
import stat
import time

from harness.daemon import Daemon, ME, OTHER_USER


def create(daemon: Daemon, as_user: str | None = None, **body: str):
    body.setdefault("template", "ipxe")
    body.setdefault("size", "small")
    return daemon.call("POST", "/v1/requests", body, as_user=as_user)


def test_health_and_catalog(daemon: Daemon) -> None:
    health = daemon.call("GET", "/v1/health")
    assert health.status == 200 and health.body["hosts"] == {"testhost": "connected"}

    catalog = daemon.call("GET", "/v1/catalog")
    assert catalog.status == 200
    assert catalog.body["user"] == ME
    assert {t["name"] for t in catalog.body["templates"]} == {"ipxe", "ipxe-file"}
    small = next(s for s in catalog.body["sizes"] if s["name"] == "small")
    assert (small["cpus"], small["memory"], small["storage_size_in_gb"]) == (2, 262144, 15)
    assert [p["name"] for p in catalog.body["resource_pools"]] == ["rp", "rp2"]


def test_catalog_says_where_the_caller_is_an_admin(make_daemon) -> None:
    daemon = make_daemon(resource_pools={
        "rp": {"hardware_pool": "hw", "grants": {"CLOUD_CREATE": {"users": [ME]},
                                                 "CLOUD_ADMIN": {"users": [ME]}}},
        "rp2": {"hardware_pool": "hw", "grants": {"CLOUD_CREATE": {"users": [ME]}}}})
    pools = daemon.call("GET", "/v1/catalog").body["resource_pools"]
    assert {p["name"]: p["you_administer"] for p in pools} == {"rp": True, "rp2": False}


def test_catalog_refuses_a_caller_who_may_create_nowhere(daemon: Daemon) -> None:
    reply = daemon.call("GET", "/v1/catalog", as_user=OTHER_USER)
    assert reply.status == 403
    assert reply.body["error"]["code"] == "forbidden"
    assert "nobody holds CLOUD_CREATE on no resource pool" in reply.body["error"]["message"]


def test_create_then_show_and_log(daemon: Daemon) -> None:
    reply = create(daemon, resource_pool="rp", name="web-42")
    assert reply.status == 202
    assert reply.body["state"] == "requested" and reply.body["owner"] == ME
    assert reply.headers["Location"] == f"/v1/requests/{reply.body['id']}"

    final = daemon.wait_terminal(reply.body["id"])
    assert final["state"] == "done"
    assert final["name"] == "web-42" and final["domain"]["name"] == "web-42"
    log = daemon.call("GET", f"/v1/requests/{final['id']}/log").body["log"]
    transitions = [e for e in log if e["kind"] == "transition"]
    assert [e["to"] for e in transitions] == [
        "requested", "authorized", "storage-searching", "defining", "done"]
    assert all(e["at"].endswith("Z") for e in transitions)
    assert any(e["kind"] == "event" and e["trigger"] == "libvirt:DEFINED" for e in log)


def test_show_with_wait_answers_once_the_request_has_ended(daemon: Daemon) -> None:
    created = create(daemon, resource_pool="rp").body
    ended = daemon.call("GET", f"/v1/requests/{created['id']}?wait=20")
    assert ended.status == 200 and ended.body["state"] == "done"  # one call, no polling
    again = daemon.call("GET", f"/v1/requests/{created['id']}?wait=20")  # ended: at once
    assert again.body == ended.body

    for query, field in [("wait=soon", "wait"), ("wait=-1", "wait"), ("wait=301", "wait"),
                         ("wait=nan", "wait"), ("wait=1&wait=2", "wait"), ("watch=1", "watch")]:
        reply = daemon.call("GET", f"/v1/requests/{created['id']}?{query}")
        assert reply.status == 400, (query, reply.body)
        assert reply.body["error"]["field"] == field, reply.body
    assert daemon.call("GET", "/v1/requests/does-not-exist?wait=1").status == 404


def test_pool_must_be_named_when_the_caller_has_several(daemon: Daemon) -> None:
    reply = create(daemon)
    assert reply.status == 400 and reply.body["error"]["field"] == "resource_pool"
    assert "rp, rp2" in reply.body["error"]["message"]


def test_idempotency_key_gives_one_request(daemon: Daemon) -> None:
    headers = {"Idempotency-Key": "deploy-7"}
    body = {"template": "ipxe", "size": "small", "resource_pool": "rp"}
    first = daemon.call("POST", "/v1/requests", body, headers=headers)
    again = daemon.call("POST", "/v1/requests", body, headers=headers)

    assert first.status == 202 and again.status == 200
    assert again.body["id"] == first.body["id"]
    assert len(daemon.call("GET", "/v1/requests").body["requests"]) == 1
    other = daemon.call("POST", "/v1/requests", {**body, "size": "tiny"}, headers=headers)
    assert other.status == 400 and other.body["error"]["field"] == "idempotency_key"


def test_list_filters_by_state(daemon: Daemon) -> None:
    ok = create(daemon, resource_pool="rp").body["id"]
    daemon.wait_terminal(ok)
    done = daemon.call("GET", "/v1/requests?state=done").body["requests"]
    failed = daemon.call("GET", "/v1/requests?state=failed").body["requests"]
    assert [r["id"] for r in done] == [ok] and failed == []
    bad = daemon.call("GET", "/v1/requests?state=finished")
    assert bad.status == 400 and bad.body["error"]["field"] == "state"


def test_another_user_cannot_see_cancel_or_create(daemon: Daemon) -> None:
    mine = create(daemon, resource_pool="rp2").body["id"]  # rp2: OTHER_USER has no grant

    theirs = daemon.call("GET", f"/v1/requests/{mine}", as_user=OTHER_USER)
    assert theirs.status == 404
    unknown = daemon.call("GET", f"/v1/requests/{'0' * 32}", as_user=OTHER_USER)
    # The id asked for is named, in the same words whether it is another's or none.
    assert theirs.body["error"]["message"] == f"no such request '{mine}'"
    assert unknown.body["error"]["message"] == f"no such request '{'0' * 32}'"
    assert daemon.call("GET", f"/v1/requests/{mine}/log", as_user=OTHER_USER).status == 404
    assert daemon.call("POST", f"/v1/requests/{mine}/cancel", as_user=OTHER_USER).status == 404
    assert daemon.call("GET", "/v1/requests", as_user=OTHER_USER).body["requests"] == []
    refused = create(daemon, as_user=OTHER_USER, resource_pool="rp2")
    assert refused.status == 403
    assert refused.body["error"]["message"] == "nobody does not hold CLOUD_CREATE on " \
                                               "resource pool rp2"


def test_nothing_in_the_body_changes_who_the_caller_is(daemon: Daemon) -> None:
    for extra in ({"owner": ME}, {"user": ME}, {"uid": "0"}):
        reply = create(daemon, as_user=OTHER_USER, resource_pool="rp", **extra)
        assert reply.status == 400
        assert reply.body["error"]["field"] == next(iter(extra))
    spoof = daemon.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                                 "resource_pool": "rp"},
                        headers={"X-Remote-User": ME, "Authorization": f"Basic {ME}"},
                        as_user=OTHER_USER)
    assert spoof.status == 403
    assert daemon.call("GET", "/v1/requests").body["requests"] == []


def test_admin_privilege_widens_to_the_pools_requests(daemon: Daemon) -> None:
    in_rp = create(daemon, resource_pool="rp").body["id"]
    in_rp2 = create(daemon, resource_pool="rp2").body["id"]
    seen = daemon.call("GET", "/v1/requests", as_user=OTHER_USER).body["requests"]
    assert [r["id"] for r in seen] == [in_rp]
    assert daemon.call("GET", f"/v1/requests/{in_rp}", as_user=OTHER_USER).status == 200
    assert daemon.call("GET", f"/v1/requests/{in_rp2}", as_user=OTHER_USER).status == 404


def test_cancel_of_a_finished_request_is_409(daemon: Daemon) -> None:
    rid = create(daemon, resource_pool="rp").body["id"]
    daemon.wait_terminal(rid)
    reply = daemon.call("POST", f"/v1/requests/{rid}/cancel")
    assert reply.status == 409 and reply.body["error"]["code"] == "wrong_state"
    assert "already done" in reply.body["error"]["message"]


def test_explain_shows_each_candidate_and_claims_nothing(daemon: Daemon) -> None:
    reply = daemon.call("POST", "/v1/placement/explain",
                        {"template": "ipxe", "size": "small", "resource_pool": "rp"})
    assert reply.status == 200
    assert reply.body["action"] == "reuse" and reply.body["volume"] == "free-15g.qcow2"
    verdicts = {(c["pool"], c["volume"]): c for c in reply.body["candidates"]}
    assert verdicts[("pool-dir", "used-15g.qcow2")]["reason"] == "in use by domain web01"
    assert verdicts[("pool-iscsi", None)]["reason"] == "pool type 'iscsi' cannot create volumes"
    again = daemon.call("POST", "/v1/placement/explain",
                        {"template": "ipxe", "size": "small", "resource_pool": "rp"})
    assert again.body["volume"] == "free-15g.qcow2"  # the dry run claimed nothing


def test_bad_input_gets_a_clear_4xx_and_the_daemon_stays_up(daemon: Daemon) -> None:
    cases = [
        (dict(raw=b'{"template": "ipxe",'), 400, None),
        (dict(raw=b'["ipxe", "small"]'), 400, None),
        (dict(raw=b"\xff\xfe"), 400, None),
        (dict(body={"template": "ipxe", "size": 5, "resource_pool": "rp"}), 400, "size"),
        (dict(body={"template": "ipxe", "size": "small", "resource_pool": "rp",
                    "colour": "red"}), 400, "colour"),
        (dict(body={"size": "small", "resource_pool": "rp"}), 400, "template"),
        (dict(body={"template": "nope", "size": "small", "resource_pool": "rp"}), 400,
         "template"),
        (dict(body={"template": "ipxe", "size": "huge", "resource_pool": "rp"}), 400, "size"),
        (dict(body={"template": "ipxe", "size": "small", "resource_pool": "moon"}), 400,
         "resource_pool"),
        (dict(body={"template": "ipxe", "size": "small", "resource_pool": "rp",
                    "name": "<domain type='kvm'>&amp;"}), 400, "name"),
        (dict(body={"template": "ipxe", "size": "small", "resource_pool": "rp",
                    "name": "vm; rm -rf / $(id)"}), 400, "name"),
        (dict(body={"template": "x" * 300_000, "size": "small"}), 413, None),
        (dict(raw=b'{"template": "ipxe"}', headers={"Content-Type": "text/plain"}), 415, None),
        # Python's MIME parser raises IndexError on this one (found by the long fuzz run).
        (dict(raw=b'{"template": "ipxe"}', headers={"Content-Type": "2G{ Du;1*"}), 415, None),
    ]
    for kwargs, status, field in cases:
        reply = daemon.call("POST", "/v1/requests", **kwargs)
        assert reply.status == status, (kwargs, reply.body)
        assert reply.body["error"]["message"], reply.body
        if field:
            assert reply.body["error"].get("field") == field, reply.body
    assert daemon.call("GET", "/v1/requests/does-not-exist").status == 404
    assert daemon.call("GET", "/v1/nothing-here").body["error"]["code"] == "not_found"
    assert daemon.call("DELETE", "/v1/requests").status == 405
    assert daemon.call("GET", "/v1/requests").body["requests"] == []  # nothing stored
    assert daemon.call("GET", "/v1/health").status == 200
    assert "Traceback" not in daemon.log()


def test_socket_is_0660_with_the_configured_group(daemon: Daemon) -> None:
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    import grp
    assert grp.getgrgid(st.st_gid).gr_name == "nogroup"


def test_reconcile_is_for_admins_only(daemon: Daemon) -> None:
    refused = daemon.call("POST", "/v1/reconcile", {"apply": True})
    assert refused.status == 403 and "CLOUD_ADMIN" in refused.body["error"]["message"]
    admin = daemon.call("POST", "/v1/reconcile", {"apply": False}, as_user=OTHER_USER)
    assert admin.status == 200
    assert admin.body == {"applied": False, "hosts": ["testhost"], "orphans": []}
    bad = daemon.call("POST", "/v1/reconcile", {"apply": "yes"}, as_user=OTHER_USER)
    assert bad.status == 400 and bad.body["error"]["field"] == "apply"


def test_metrics_over_the_socket(daemon: Daemon) -> None:
    rid = create(daemon, resource_pool="rp").body["id"]
    daemon.wait_terminal(rid)
    reply = daemon.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert 'provisiond_requests{state="done"} 1.0' in reply.body
    assert 'provisiond_placements_total{outcome="reused"} 1.0' in reply.body
    assert "provisiond_libvirt_call_seconds_bucket" in reply.body


def test_list_comes_a_page_at_a_time(daemon: Daemon) -> None:
    ids = [create(daemon, resource_pool="rp").body["id"] for _ in range(3)]
    first = daemon.call("GET", "/v1/requests?limit=2").body
    assert [r["id"] for r in first["requests"]] == ids[:2] and first["next"] == ids[1]
    rest = daemon.call("GET", f"/v1/requests?limit=2&after={first['next']}").body
    assert [r["id"] for r in rest["requests"]] == ids[2:] and rest["next"] is None
    assert daemon.call("GET", "/v1/requests").body["next"] is None
    for bad in ("0", "10001", "x", "-1"):
        reply = daemon.call("GET", f"/v1/requests?limit={bad}")
        assert reply.status == 400 and reply.body["error"]["field"] == "limit"


def test_a_client_that_hangs_up_mid_body_costs_one_log_line(daemon: Daemon) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(daemon.socket)
    s.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"tem")
    time.sleep(0.3)  # the daemon is reading the body now
    s.close()
    deadline = time.monotonic() + 5
    while "before sending the whole body" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()[-2000:]
        time.sleep(0.05)
    assert "Traceback" not in daemon.log()
    assert daemon.call("GET", "/v1/health").status == 200
    assert daemon.call("GET", "/v1/requests").body["requests"] == []  # nothing stored


def test_a_body_that_never_completes_gets_a_400_after_body_timeout(make_daemon) -> None:
    # aiohttp never completes (nor fails) a body whose chunked framing breaks after the
    # headers were read: without a bound, the handler would wait for it forever.
    d: Daemon = make_daemon(daemon={"body_timeout": 0.5})
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket)
    s.settimeout(10)
    s.sendall(b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.2)  # the handler is reading the body now
    s.sendall(b'{"template": "ipxe"}')  # not a chunk: no chunk size
    answer = s.recv(4096).decode()
    s.close()
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400 "), answer
    assert "did not arrive in full within 0.5 s" in body, answer
    assert d.call("GET", "/v1/requests").body["requests"] == []
    assert "Traceback" not in d.log()


def test_the_list_filters_by_vm_name(daemon: Daemon) -> None:
    ids = {}
    for name in ("web-1", "web-2"):
        reply = daemon.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                                      "resource_pool": "rp", "name": name})
        assert reply.status == 202, reply.body
        ids[name] = reply.body["id"]
    named = daemon.call("GET", "/v1/requests?name=web-2").body["requests"]
    assert [r["id"] for r in named] == [ids["web-2"]]
    both = daemon.call("GET", "/v1/requests?name=web-1&name=web-2").body["requests"]
    assert {r["id"] for r in both} == set(ids.values())
    assert daemon.call("GET", "/v1/requests?name=web-3").body["requests"] == []
    for rid in ids.values():
        daemon.wait_terminal(rid)


def test_whoami_says_where_the_caller_may_create_and_administer(daemon: Daemon) -> None:
    # The test configuration: ME creates in rp; OTHER_USER administers it, creates nowhere.
    me = daemon.call("GET", "/v1/whoami").body
    other = daemon.call("GET", "/v1/whoami", as_user=OTHER_USER).body
    assert me["user"] == ME and other["user"] == OTHER_USER
    assert "rp" in me["privileges"]["CLOUD_CREATE"]
    assert other["privileges"]["CLOUD_ADMIN"] == sorted(other["privileges"]["CLOUD_ADMIN"])
    assert "rp" in other["privileges"]["CLOUD_ADMIN"]
    assert other["privileges"]["CLOUD_CREATE"] == []  # its catalog is a 403
    assert daemon.call("GET", "/v1/catalog", as_user=OTHER_USER).status == 403
    assert isinstance(me["groups"], list) and me["groups"] == sorted(me["groups"])
