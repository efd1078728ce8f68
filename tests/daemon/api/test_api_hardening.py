"""Issue 12's API points, each the regression it is: names matched in full (8), numbers in
query strings in ASCII digits only (9), bodies in an encoding the API reads or a 415, no
duplicate JSON keys, and aiohttp's own parser errors in the API's JSON shape (11)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from daemon.api.routes import ApiRunner, make_app
from daemon.auth import Identity
from daemon.config import load_config
from daemon.errors import InvalidInput
from daemon.service import ProvisioningRequest
from harness.daemon import Daemon, write_config

ALICE = Identity("alice", frozenset({"staff"}))
CREATE = {"template": "ipxe", "size": "small", "resource_pool": "rp"}


def error_of(reply: Any) -> dict[str, Any]:
    """The API's ``error`` object of an answer (fails if the body is not that shape)."""
    assert isinstance(reply.body, dict) and isinstance(reply.body.get("error"), dict), reply
    return reply.body["error"]


# --------------------------------------------------------------------------- point 8


def test_a_name_with_a_trailing_newline_is_a_400_and_nothing_is_made(daemon: Daemon) -> None:
    messages = set()
    for name in ("web-1\n", "a\n", "web-1\n\n", "", "bad name!", "x" * 300):
        reply = daemon.call("POST", "/v1/requests", {**CREATE, "name": name})
        assert reply.status == 400, (name, reply.body)
        assert error_of(reply)["field"] == "name"
        messages.add(error_of(reply)["message"])
    assert messages == {"name must be 1-63 letters, digits, '.', '_' or '-', starting with "
                        "a letter or digit"}  # one rule, whatever is wrong with the name
    assert daemon.call("GET", "/v1/requests").body["requests"] == []  # not even requested
    assert daemon.call("POST", "/v1/requests", {**CREATE, "name": "web-1"}).status == 202


async def test_an_idempotency_key_with_a_trailing_newline_is_refused(harness: Any) -> None:
    # A header cannot carry one over HTTP (the parser strips it); the service is the check.
    with pytest.raises(InvalidInput) as exc:
        harness.service.submit(ALICE, ProvisioningRequest("ipxe", "small", "rp",
                                                          idempotency_key="key-1\n"))
    assert exc.value.field == "idempotency_key"
    with pytest.raises(InvalidInput) as exc:
        harness.service.submit(ALICE, ProvisioningRequest("ipxe", "small", "rp",
                                                          name="web-1\n"))
    assert exc.value.field == "name"


def test_a_config_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    main = write_config(tmp_path, sizes={"small\n": {"cpus": 1, "memory": 65536,
                                                    "storage_size_in_gb": 1}})
    with pytest.raises(InvalidInput) as exc:
        load_config(main)
    assert "small\\n" in str(exc.value)


# --------------------------------------------------------------------------- point 9

# Each is a digit to str.isdigit() (or to float()), none an ASCII number ('+' is a space).
NOT_ASCII_NUMBERS = ["%C2%B2", "%E2%91%A0", "1%C2%B2", "%D9%A3", "%EF%BC%95", "1_0", "+5",
                     "%205", "5%20", "0x10"]


def test_limit_takes_ascii_digits_only_and_is_never_a_500(daemon: Daemon) -> None:
    for text in NOT_ASCII_NUMBERS + ["", "1" * 400, "10001", "0"]:
        reply = daemon.call("GET", f"/v1/requests?limit={text}")
        assert reply.status == 400, (text, reply.status, reply.body)
        assert error_of(reply)["field"] == "limit"
        assert "limit" in error_of(reply)["message"]
    assert daemon.call("GET", "/v1/requests?limit=05").status == 200
    assert "Traceback" not in daemon.log()


def test_wait_takes_ascii_numbers_only(daemon: Daemon) -> None:
    rid = daemon.call("POST", "/v1/requests", CREATE).body["id"]
    for text in NOT_ASCII_NUMBERS + ["1" * 400, "infinity", "1e999"]:
        reply = daemon.call("GET", f"/v1/requests/{rid}?wait={text}")
        assert reply.status == 400, (text, reply.status, reply.body)
        assert error_of(reply)["field"] == "wait"
    for text in ("0", "0.2", "1.5", "2e0", ".5"):
        assert daemon.call("GET", f"/v1/requests/{rid}?wait={text}").status == 200, text


def test_since_and_until_take_ascii_epoch_numbers_in_range(daemon: Daemon) -> None:
    for key in ("since", "until"):
        for text in NOT_ASCII_NUMBERS + ["1e300", "-1", "99999999999999", "2026-%D9%A1-01"]:
            reply = daemon.call("GET", f"/v1/requests?{key}={text}")
            assert reply.status == 400, (key, text, reply.status, reply.body)
            assert error_of(reply)["field"] == key
    for query in ("since=0&until=4e9", "since=1700000000.5", "until=2026-01-31T12:00:00Z"):
        assert daemon.call("GET", f"/v1/requests?{query}").status == 200, query


# --------------------------------------------------------------------------- point 11


def test_an_unknown_content_encoding_is_a_415(daemon: Daemon) -> None:
    body = json.dumps(CREATE).encode()
    for encoding in ("zstd2", "identity, foo", "gzip, identity", "compress", "x-gzip"):
        reply = daemon.call("POST", "/v1/requests", raw=body,
                            headers={"Content-Encoding": encoding})
        assert reply.status == 415, (encoding, reply.body)
        assert "Content-Encoding" in error_of(reply)["message"]
    assert daemon.call("GET", "/v1/requests").body["requests"] == []
    for encoding, raw in (("identity", body), ("gzip", gzip.compress(body)),
                          ("GZIP", gzip.compress(body))):
        reply = daemon.call("POST", "/v1/placement/explain", raw=raw,
                            headers={"Content-Encoding": encoding})
        assert reply.status == 200, (encoding, reply.body)


def test_a_charset_other_than_utf8_is_a_415(daemon: Daemon) -> None:
    body = json.dumps({**CREATE, "name": "caf\u00e9"}).encode("latin-1")
    for charset in ("latin-1", "iso-8859-1", "utf-16"):
        reply = daemon.call("POST", "/v1/requests", raw=body,
                            headers={"Content-Type": f"application/json; charset={charset}"})
        assert reply.status == 415, (charset, reply.body)
        assert "charset" in error_of(reply)["message"]
    for charset in ("utf-8", "UTF-8", "utf8"):
        reply = daemon.call("POST", "/v1/placement/explain", raw=json.dumps(CREATE).encode(),
                            headers={"Content-Type": f"application/json; charset={charset}"})
        assert reply.status == 200, (charset, reply.body)


def test_a_body_that_is_not_utf8_is_a_400(daemon: Daemon) -> None:
    # json.loads(bytes) would guess UTF-16 from the NUL bytes; the API reads UTF-8 only.
    reply = daemon.call("POST", "/v1/placement/explain",
                        raw=json.dumps(CREATE).encode("utf-16-le"))
    assert reply.status == 400 and error_of(reply)["message"], reply.body
    latin1 = daemon.call("POST", "/v1/placement/explain", raw=b'{"template": "caf\xe9"}')
    assert latin1.status == 400 and "not UTF-8" in error_of(latin1)["message"], latin1.body


def test_duplicate_json_keys_are_a_400_naming_the_key(daemon: Daemon) -> None:
    raw = b'{"template": "ipxe", "size": "small", "resource_pool": "rp", "size": "tiny"}'
    reply = daemon.call("POST", "/v1/requests", raw=raw)
    assert reply.status == 400, reply.body
    assert error_of(reply)["field"] == "size" and "'size'" in error_of(reply)["message"]
    nested = daemon.call("POST", "/v1/reconcile", raw=b'{"apply": false, "apply": true}')
    assert nested.status in (400, 403) and error_of(nested)
    assert daemon.call("GET", "/v1/requests").body["requests"] == []


# --------------------------------------------------------------------------- aiohttp's parser


@pytest.fixture
async def api_socket() -> AsyncIterator[str]:
    """The API's app served by ``ApiRunner`` on a Unix socket (no service: aiohttp's
    parser answers these before any handler)."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="provisiond-api-")
    path = str(Path(directory) / "api.sock")
    runner = ApiRunner(make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        yield path
    finally:
        await runner.cleanup()
        Path(path).unlink(missing_ok=True)
        Path(directory).rmdir()


async def exchange(path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; the answer's status, headers and body."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


PARSER_REFUSED = [
    (b"GE\x00T /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"GE\x00T"),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\x01: <script>\r\n\r\n", 400,
     b"<script>"),
    (b"GET /v1/health?" + b"q" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"qqqq"),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"<v>" * 4000 + b"\r\n\r\n", 400,
     b"<v>"),
    (b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"chunked"),
    (b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: <12>\r\n\r\n", 400, b"<12>"),
    (b"POST /v1/requests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", 415, None),
]


@pytest.mark.parametrize("raw, status, echoed", PARSER_REFUSED)
async def test_aiohttps_parser_errors_answer_in_the_apis_json_shape(
        api_socket: str, raw: bytes, status: int, echoed: bytes | None) -> None:
    got, headers, body = await exchange(api_socket, raw)
    assert got == status, body
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert error["code"] == ("invalid" if status == 400 else "unsupported_media_type")
    assert error["message"]
    if echoed is not None:
        assert echoed not in body, body  # the raw input is never echoed
    # The app's own answers are served as before.
    got, headers, body = await exchange(
        api_socket, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_the_daemon_answers_its_parsers_errors_in_json(daemon: Daemon) -> None:
    # Through the daemon's own runner (process.connections.GuardedRunner, an ApiRunner).
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(daemon.socket)
    s.sendall(b"GE\x00T /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ") and b"application/json" in head, answer
    assert json.loads(body)["error"]["code"] == "invalid"

