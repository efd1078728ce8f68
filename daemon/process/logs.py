"""Structured logs: one event per line, carrying a request's id and state when known.

A log call adds context with ``extra``, as the engine does::

    log.info("request %s: %s", rid, state, extra={"request_id": rid, "state": state})

Three outputs, one chosen at start-up (``provisiond --log-format``):

- ``text``: for a terminal or a file, e.g. (on one line)::

    2026-11-24 00:14:21.926 INFO provisiond.engine: request abc: authorized
    [request_id=abc state=authorized]

- ``json``: one JSON object per line on stderr.
- ``journal``: journald's native protocol (``systemd.journal-fields(7)``): MESSAGE,
  PRIORITY, LOGGER, REQUEST_ID, STATE, CODE_FILE, CODE_LINE, CODE_FUNC... so that
  ``journalctl -u provisiond REQUEST_ID=abc`` finds one request's events. A datagram too
  large for the socket, or a journal that does not answer, falls back to a text line on
  stderr (which systemd also collects).

``auto`` picks ``journal`` when stderr is the journal's stream (``$JOURNAL_STREAM``
names its device and inode) and journald's socket exists; ``json`` when stderr is the
journal's stream but the socket is absent; ``text`` otherwise.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

CONTEXT_FIELDS = ("request_id", "state")
"""``extra`` attributes carried by every format (the journal names them in upper case)."""

FORMATS = ("auto", "text", "json", "journal")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "provisiond"

# logging level -> syslog priority (journald's PRIORITY field)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emergency .. 7 debug) of a logging level."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The record's context fields that the log call set (request id, state)."""
    out = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = str(value)
    return out


class TextFormatter(logging.Formatter):
    """``2026-11-24 00:14:21.926 INFO logger: message [request_id=… state=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The line, with the record's context appended in brackets."""
        line = super().formatMessage(record)
        context = context_of(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per event: time (UTC), level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The event as one line of JSON (a traceback is a string field, not more lines)."""
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, ensure_ascii=False)


def journal_fields(record: logging.LogRecord, message: str) -> dict[str, str]:
    """The journal fields of one event (names as ``systemd.journal-fields(7)`` spells them)."""
    fields = {
        "MESSAGE": message,
        "PRIORITY": str(syslog_priority(record.levelno)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "LOGGER": record.name,
        "LEVEL": record.levelname,
        "CODE_FILE": record.pathname,
        "CODE_LINE": str(record.lineno),
        "CODE_FUNC": record.funcName,
        "THREAD_NAME": record.threadName or "",
    }
    for name, value in context_of(record).items():
        fields[name.upper()] = value
    if record.exc_info and record.exc_info[0] is not None:
        fields["EXCEPTION_TYPE"] = record.exc_info[0].__name__
    return fields


def encode_journal(fields: dict[str, str]) -> bytes:
    """Serialize fields in journald's native protocol.

    ``NAME=value\\n`` for a value without a newline; otherwise ``NAME\\n``, the value's
    length as a little-endian 64-bit integer, the value and ``\\n``.
    """
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Send each event to journald as one datagram of native-protocol fields."""

    def __init__(self, path: Path | str = JOURNAL_SOCKET, fallback: TextIO | None = None,
                 level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.path = str(path)
        self.fallback = fallback if fallback is not None else sys.stderr
        self._fallback_formatter = TextFormatter()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.setFormatter(logging.Formatter("%(message)s"))  # MESSAGE carries its traceback

    def emit(self, record: logging.LogRecord) -> None:
        """Send one datagram; write a text line to the fallback stream if that fails."""
        try:
            datagram = encode_journal(journal_fields(record, self.format(record)))
            try:
                self._socket.sendto(datagram, self.path)
                return
            except OSError as exc:
                # EMSGSIZE/ENOBUFS: too large for a datagram (journald would want a memfd);
                # ENOENT/ECONNREFUSED: journald is gone. Either way the line is not lost.
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS, errno.ENOENT,
                                     errno.ECONNREFUSED, errno.EAGAIN, errno.EACCES,
                                     errno.EPERM):
                    raise
            self.fallback.write(self._fallback_formatter.format(record) + "\n")
            self.fallback.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Close the journal socket."""
        self._socket.close()
        super().close()


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether stderr is connected to journald (``$JOURNAL_STREAM`` is ``dev:inode`` of it)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def choose_format(requested: str = "auto") -> str:
    """Resolve ``auto`` to ``journal``, ``json`` or ``text`` for this process."""
    if requested != "auto":
        return requested
    if stderr_is_journal():
        return "journal" if JOURNAL_SOCKET.is_socket() else "json"
    return "text"


def make_handler(fmt: str, stream: TextIO | None = None,
                 journal_socket: Path | str = JOURNAL_SOCKET) -> logging.Handler:
    """A handler writing ``fmt`` (text, json or journal) to ``stream`` or the journal."""
    stream = stream if stream is not None else sys.stderr
    if fmt == "journal":
        return JournalHandler(journal_socket, fallback=stream)
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(TextFormatter())
    else:
        raise ValueError(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    return handler


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (malformed by the client) with a full
    traceback: keep one line, so a local user cannot fill the log with junk requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.msg = f"{record.getMessage()}: refused a malformed request: {exc}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(fmt: str = "auto", level: int = logging.INFO) -> str:
    """Route every logger to one handler of the chosen format; return the format used."""
    chosen = choose_format(fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(make_handler(chosen))
    root.setLevel(level)
    logging.getLogger("transitions").setLevel(logging.WARNING)  # logs every callback at INFO
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(ClientErrorFilter())
    return chosen
