"""provctl reads answers, spells socket paths and sizes its help as the standard library
would: ``http.client``, ``pathlib`` and ``shutil``, which it does not import (start-up
time), are the reference here."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.cli import client as cli_client
from daemon.cli import parser as cli_parser
from daemon.cli import wire

ANSWERS = {
    "json": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 1}",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n"
               b"5\r\n\": 1}\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "chunked, no trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n",
    "chunked, bad size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
                         b"0\r\n\r\n",
    "chunked, cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}",
    "not only chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n",
    "to the end": b"HTTP/1.0 200 OK\r\n\r\n{\"a\": 1}",
    "cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    "longer than said": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}and more",
    "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 3\r\n\r\n{} ",
    "folded length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n 3\r\n\r\n{} x",
    "a line that is no field": b"HTTP/1.1 200 OK\r\nweird line\r\nContent-Length: 1\r\n\r\n{}",
    "a From line": b"HTTP/1.1 200 OK\r\nFrom x\r\n y\r\nContent-Length: 1\r\n\r\n{}",
    "no field name": b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 1\r\n\r\n{}",
    "LF only": b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    "no blank line": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
    "status line only": b"HTTP/1.1 200 OK\r\n",
    "no reason": b"HTTP/1.1 418\r\nContent-Length: 0\r\n\r\n",
    "spaced reason": b"HTTP/1.1  404   Not  Found  \r\nContent-Length: 2\r\n\r\n{}",
    "latin-1 reason": b"HTTP/1.1 503 Servi\xe7e\r\nContent-Length: 2\r\n\r\n\xff\xfe",
    "100 Continue first": b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 200 OK\r\n"
                          b"Content-Length: 2\r\n\r\n{}",
    "204 with a body": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    "empty": b"",
    "garbage": b"hello world\r\n\r\n",
    "garbage, no line end": b"hello",
    "bad status": b"HTTP/1.1 abc OK\r\n\r\n",
    "status 1000": b"HTTP/1.1 1000 OK\r\n\r\n",
    "status 99": b"HTTP/1.1 099 OK\r\n\r\n",
    "HTTP/2": b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "status line too long": b"HTTP/1.1 200 " + b"x" * 70000 + b"\r\n\r\n",
    "header too long": b"HTTP/1.1 200 OK\r\nX: " + b"x" * 70000 + b"\r\n\r\n",
    "100 headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100 + b"\r\n",
    "99 headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 98 + b"Content-Length: 2\r\n\r\n{}",
}


def with_http_client(answer: bytes) -> tuple[str, object]:
    """What http.client makes of an answer: ("ok", (status, reason, body)) or ("error", X)."""
    response = http.client.HTTPResponse(FakeSocket(answer), method="GET")
    try:
        response.begin()
        return "ok", (response.status, response.reason, response.read())
    except http.client.RemoteDisconnected as exc:
        return "error", ("OSError", str(exc))
    except http.client.HTTPException as exc:
        return "error", ("NotHTTP", type(exc).__name__)


def with_wire(answer: bytes, chunk: int) -> tuple[str, object]:
    """What provctl makes of it, coming ``chunk`` bytes at a time, in the same terms."""
    try:
        return "ok", wire.read_answer(wire.SocketReader(DribblingSocket(answer, chunk)))
    except OSError as exc:
        return "error", ("OSError", str(exc))
    except wire.NotHTTP as exc:
        return "error", ("NotHTTP", str(exc))


class DribblingSocket:
    """A socket whose peer sends ``data`` a few bytes at a time, then hangs up."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk

    def recv(self, size: int) -> bytes:
        """The next few bytes; b"" at the end."""
        data, self.data = self.data[:min(size, self.chunk)], self.data[min(size, self.chunk):]
        return data


class FakeSocket:
    """Just what HTTPResponse asks of a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, _mode: str) -> io.BufferedReader:
        """The answer as a buffered stream."""
        return io.BufferedReader(io.BytesIO(self.data))


@pytest.mark.parametrize("chunk", [1, 7, 65536])
@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_answers_are_read_as_http_client_reads_them(answer: bytes, chunk: int) -> None:
    assert with_wire(answer, chunk) == with_http_client(answer)


@given(st.lists(st.sampled_from([b"HTTP/1.1 ", b"200 ", b"OK", b"\r\n", b"\n", b"\r",
                                 b"Content-Length: ", b"2", b"Transfer-Encoding: chunked",
                                 b"0", b";", b" ", b"\t", b"{}", b":", b"X", b"100 ",
                                 b"From ", b"-"]), max_size=30))
def test_any_answer_is_read_as_http_client_reads_it(parts: list[bytes]) -> None:
    answer = b"".join(parts)
    assert with_wire(answer, 3) == with_http_client(answer)


@given(st.binary(max_size=64), st.lists(st.integers(-1, 70), max_size=8),
       st.integers(1, 9))
def test_the_socket_reader_reads_as_a_buffered_file(data: bytes, limits: list[int],
                                                    chunk: int) -> None:
    ours = wire.SocketReader(DribblingSocket(data, chunk))
    theirs = io.BufferedReader(io.BytesIO(data))
    for i, limit in enumerate(limits):
        if i % 2:
            assert ours.read(limit) == theirs.read(limit)
        else:
            assert ours.readline(limit) == theirs.readline(limit)
    assert ours.read() == theirs.read()


def test_an_answer_is_read_from_the_socket_up_to_its_length() -> None:
    # http.client stops at Content-Length; so does provctl, whether the daemon closes or not.
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # and stays open
        ours.settimeout(5)
        assert wire.read_answer(wire.SocketReader(ours)) == (200, "OK", b"{}")
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("value", ["plain", "tab\tinside", "é", "folded\r\n next", "a\n\tb",
                                   "a\r\nX-Injected: 1", "a\nb", "a\rb", "trailing\r", "€"])
def test_header_values_are_checked_as_http_client_checks_them(value: str) -> None:
    def outcome(encode: object) -> tuple[str, str]:
        try:
            return "ok", repr(encode())  # type: ignore[operator]
        except ValueError as exc:  # UnicodeEncodeError included
            return type(exc).__name__, str(exc)

    conn = http.client.HTTPConnection("localhost")
    conn.putrequest("GET", "/")

    def theirs() -> bytes:
        conn.putheader("X", value)
        return conn._buffer[-1].split(b": ", 1)[1]

    assert outcome(lambda: wire.encode_header(value)) == outcome(theirs)


@given(st.text(alphabet="/.a", max_size=12))
def test_socket_paths_are_spelled_as_pathlib_spells_them(path: str) -> None:
    assert wire.posix_path(path) == str(PurePosixPath(path))


def test_a_client_shows_its_socket_path_as_pathlib_would() -> None:
    assert cli_client.Client("/run//provisiond/./p.sock/").socket_path == \
        "/run/provisiond/p.sock"
    assert cli_client.Client(Path("rel")).socket_path == "rel"


@pytest.fixture
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stdout is not a terminal, and $COLUMNS / $LINES are unset."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    read, write = os.pipe()
    with os.fdopen(write, "w") as out, os.fdopen(read):
        monkeypatch.setattr("sys.__stdout__", out)
        yield


@pytest.mark.parametrize("columns", [None, "120", "40", "0", "-5", "abc", ""])
def test_help_is_as_wide_as_argparse_would_make_it(columns: str | None, no_terminal: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if columns is not None:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli_parser.terminal_columns() == shutil.get_terminal_size().columns


def test_help_width_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    size = os.terminal_size((97, 20))
    monkeypatch.setattr(os, "get_terminal_size", lambda *_args: size)
    assert cli_parser.terminal_columns() == shutil.get_terminal_size().columns == 97
    monkeypatch.setattr(os, "get_terminal_size", lambda *_args: os.terminal_size((0, 0)))
    assert cli_parser.terminal_columns() == shutil.get_terminal_size().columns == 80


@pytest.mark.parametrize("argv, command", [
    (["list"], "list"),
    (["--json", "--socket", "list", "catalog"], "catalog"),  # the socket is named "list"
    (["--so", "log", "list"], "list"),
    (["--s", "x", "--j", "show", "ID"], "show"),
    (["--socket=log", "list"], "list"),
    (["--jso", "--so=/x", "catalog"], "catalog"),
    (["--", "list"], None),
    (["-1", "list"], None),
    (["--he", "list"], None),
    (["--j=x", "list"], None),
    (["-h", "list"], None),
    (["nothing"], None),
    ([], None),
])
def test_only_the_subcommand_argparse_would_run_is_built(argv: list[str],
                                                           command: str | None) -> None:
    assert cli_parser.command_in(argv) == command
    if command is not None:  # and argparse agrees
        assert cli_parser.build_parser().parse_known_args(argv)[0].command == command


def test_a_daemon_that_hangs_up_at_once_is_unreachable() -> None:
    path = Path(tempfile.mkdtemp(prefix="provctl-", dir="/tmp")) / "p.sock"  # AF_UNIX: short
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(cli_client.Unreachable) as exc:
            cli_client.Client(path, timeout=5).health()
    finally:
        thread.join(5)
        server.close()
        shutil.rmtree(path.parent)
    assert exc.value.exit_code == 4
    assert exc.value.message == (f"cannot reach provisiond at {path}: Remote end closed "
                                 "connection without response (is the daemon running? see "
                                 "--socket)")
