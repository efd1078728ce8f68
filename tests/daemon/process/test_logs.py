"""Structured logs: text for a terminal, JSON lines, and journald's native protocol."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest

from daemon.process import logs
from harness.daemon import Daemon, spawn_daemon, wait_healthy

CONTEXT = {"request_id": "abc", "state": "authorized"}


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger (not propagating to pytest's handlers)."""
    lg = logging.getLogger("provisiond.engine.test-logs")
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


def capture(logger: logging.Logger, fmt: str) -> io.StringIO:
    out = io.StringIO()
    logger.addHandler(logs.make_handler(fmt, out))
    return out


def parse_journal(datagram: bytes) -> dict[str, str]:
    """Decode journald's native protocol (both the NAME=value and the binary form)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(datagram):
        end = datagram.index(b"\n", i)
        line = datagram[i:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", datagram[end + 1:end + 9])
            value = datagram[end + 9:end + 9 + size]
            assert datagram[end + 9 + size:end + 10 + size] == b"\n"
            i = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A stand-in for journald: an AF_UNIX datagram socket the handler is pointed at."""
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_text_carries_request_id_and_state(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    logger.info("request %s: %s", "abc", "authorized", extra=CONTEXT)
    logger.warning("no context here")
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO provisiond\.engine\."
                        r"test-logs: request abc: authorized \[request_id=abc "
                        r"state=authorized\]", first), first
    assert second.endswith("WARNING provisiond.engine.test-logs: no context here")


def test_text_keeps_a_traceback_after_its_line(logger: logging.Logger) -> None:
    out = capture(logger, "text")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("step crashed", extra=CONTEXT)
    text = out.getvalue()
    assert "ERROR provisiond.engine.test-logs: step crashed [request_id=abc state=authorized]" \
        in text.splitlines()[0]
    assert "ValueError: boom" in text


def test_json_lines_parse(logger: logging.Logger) -> None:
    out = capture(logger, "json")
    logger.info("request %s: %s", "abc", "authorized", extra=CONTEXT)
    try:
        raise ValueError("two\nlines")
    except ValueError:
        logger.exception("crashed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one event per line, even with a multi-line traceback
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "request abc: authorized"
    assert (first["request_id"], first["state"]) == ("abc", "authorized")
    assert (first["level"], first["logger"]) == ("INFO", "provisiond.engine.test-logs")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "request_id" not in second
    assert "ValueError: two\nlines" in second["exception"]


def test_journal_sends_native_fields(logger: logging.Logger,
                                     journal: tuple[socket.socket, Path]) -> None:
    sock, path = journal
    logger.addHandler(logs.JournalHandler(path))
    logger.info("request %s: %s", "abc", "authorized", extra=CONTEXT)
    fields = parse_journal(sock.recv(65536))
    assert fields["MESSAGE"] == "request abc: authorized"
    assert fields["REQUEST_ID"] == "abc"
    assert fields["STATE"] == "authorized"
    assert fields["PRIORITY"] == "6"
    assert fields["LOGGER"] == "provisiond.engine.test-logs"
    assert fields["SYSLOG_IDENTIFIER"] == "provisiond"
    assert fields["CODE_FILE"] == __file__
    assert int(fields["CODE_LINE"]) > 0
    assert fields["CODE_FUNC"] == "test_journal_sends_native_fields"


def test_journal_encodes_multi_line_messages_with_their_length(
        logger: logging.Logger, journal: tuple[socket.socket, Path]) -> None:
    sock, path = journal
    logger.addHandler(logs.JournalHandler(path))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.error("step crashed", exc_info=True, extra=CONTEXT)
    datagram = sock.recv(65536)
    assert b"\nMESSAGE\n" in b"\n" + datagram  # the binary form: name, length, value
    fields = parse_journal(datagram)
    assert fields["MESSAGE"].startswith("step crashed\nTraceback")
    assert fields["PRIORITY"] == "3"
    assert fields["EXCEPTION_TYPE"] == "ValueError"
    assert fields["REQUEST_ID"] == "abc"


def test_journal_falls_back_to_text_for_a_message_too_large(
        logger: logging.Logger, journal: tuple[socket.socket, Path]) -> None:
    _sock, path = journal
    fallback = io.StringIO()
    logger.addHandler(logs.JournalHandler(path, fallback=fallback))
    logger.info("x" * 4_000_000, extra=CONTEXT)  # more than any datagram may carry
    line = fallback.getvalue()
    assert line.endswith(" [request_id=abc state=authorized]\n")
    assert "x" * 1000 in line


def test_journal_falls_back_to_text_without_journald(logger: logging.Logger,
                                                     tmp_path: Path) -> None:
    fallback = io.StringIO()
    logger.addHandler(logs.JournalHandler(tmp_path / "absent.sock", fallback=fallback))
    logger.info("request %s: %s", "abc", "authorized", extra=CONTEXT)
    assert "request abc: authorized [request_id=abc state=authorized]" in fallback.getvalue()


def test_auto_picks_the_journal_only_when_stderr_is_its_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        journal: tuple[socket.socket, Path]) -> None:
    _sock, path = journal
    stderr = open(tmp_path / "stderr", "w")
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", path)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logs.choose_format("auto") == "text"
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # some other stream: not ours
    assert logs.choose_format("auto") == "text"
    st = os.fstat(stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.choose_format("auto") == "journal"
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", tmp_path / "absent.sock")
    assert logs.choose_format("auto") == "json"
    assert logs.choose_format("text") == "text"
    stderr.close()


def test_the_daemon_logs_json_lines_with_request_context(make_daemon) -> None:
    d: Daemon = make_daemon(start=False)
    spawn_daemon(d, "--log-format", "json")
    wait_healthy(d)
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                           "resource_pool": "rp"}).body["id"]
    assert d.wait_terminal(rid)["state"] == "done"
    assert d.stop() == 0
    events = [json.loads(line) for line in d.log().splitlines()]  # every line parses
    mine = [e for e in events if e.get("request_id") == rid]
    # Every transition, the first one (stored by the API's call) included, as in
    # `provctl log`: journald's REQUEST_ID= shows the same timeline.
    assert [e["state"] for e in mine] == ["requested", "authorized", "storage-searching",
                                          "defining", "done"]
    assert all(e["message"] == f"request {rid}: {e['state']}" for e in mine)
    assert any(e["message"].startswith("provisiond serving on") for e in events)
