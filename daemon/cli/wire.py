"""HTTP/1.1 over a Unix socket, one request per connection, for provctl.

Written on the socket itself rather than ``http.client``, which pulls in the ``email``
package (about 12 ms of every provctl run); on ``_socket``, the C module, rather than
``socket``, whose enums and ``selectors`` cost another 3 ms. It reads an answer the way
``http.client`` does, and fails the same way: a malformed answer raises ``NotHTTP`` named
after the exception ``http.client`` would have raised, which provctl's message shows
(``tests/daemon/cli/test_cli_wire.py`` holds the two side by side).
"""

from __future__ import annotations

import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from typing import Protocol

    class Stream(Protocol):
        """What ``read_answer`` reads from: a buffered binary file's two methods."""

        def readline(self, limit: int = -1, /) -> bytes:
            """Up to ``limit`` bytes, ending after the first newline if there is one."""

        def read(self, size: int = -1, /) -> bytes:
            """``size`` bytes, fewer at the end; all that is left when negative."""

MAX_LINE = 65536
"""Longest status, header or chunk-size line (``http.client._MAXLINE``)."""
MAX_HEADERS = 100
"""Most header lines in an answer (``http.client._MAXHEADERS``)."""


class NotHTTP(Exception):
    """Not an HTTP/1.x answer; the message names ``http.client``'s exception for it."""


class RemoteDisconnected(ConnectionResetError):
    """The connection closed before any answer (``http.client.RemoteDisconnected``)."""


def posix_path(path: str) -> str:
    """``path`` spelled as ``str(pathlib.PurePosixPath(path))`` would (without pathlib)."""
    slashes = len(path) - len(path.lstrip("/"))
    root = "//" if slashes == 2 else "/" if slashes else ""  # POSIX: "//" may mean more
    return root + "/".join(p for p in path.split("/") if p and p != ".") or "."


def encode_header(value: str) -> bytes:
    """A header value as ``http.client`` sends it: Latin-1, no line break inside."""
    raw = value.encode("latin-1")
    for i, byte in enumerate(raw):
        following = raw[i + 1:i + 2]
        if (byte == 10 and following not in (b" ", b"\t")) or \
                (byte == 13 and following not in (b" ", b"\t", b"\n")):
            raise ValueError(f"Invalid header value {raw!r}")
    return raw


def exchange(socket_path: str, timeout: float, method: str, target: str,
             headers: dict[str, str], payload: bytes | None) -> tuple[int, str, bytes]:
    """One request on a new connection; (status, reason, body) of the answer."""
    head = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: localhost",
            b"Connection: close"]
    head += [k.encode("ascii") + b": " + encode_header(v) for k, v in headers.items()]
    if payload is not None or method in ("POST", "PUT", "PATCH"):
        head.append(b"Content-Length: %d" % len(payload or b""))
    request = b"\r\n".join(head) + b"\r\n\r\n" + (payload or b"")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(request)
        return read_answer(SocketReader(sock))
    finally:
        sock.close()


class SocketReader:
    """A socket's incoming bytes as a buffered binary file reads them (``Stream``)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.ended = False

    def _fill(self) -> bool:
        if not self.ended:
            data = self.sock.recv(65536)
            self.buffer += data
            self.ended = not data
        return not self.ended

    def readline(self, limit: int = -1, /) -> bytes:
        """Up to ``limit`` bytes, ending after the first newline if there is one."""
        while True:
            end = self.buffer.find(b"\n") + 1
            if 0 < end and (limit < 0 or end <= limit):
                break
            if 0 <= limit <= len(self.buffer) or not self._fill():
                end = len(self.buffer) if limit < 0 else min(limit, len(self.buffer))
                break
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def read(self, size: int = -1, /) -> bytes:
        """``size`` bytes, fewer at the end; all that is left when negative."""
        while (size < 0 or len(self.buffer) < size) and self._fill():
            pass
        end = len(self.buffer) if size < 0 else size
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data


def read_answer(stream: Stream) -> tuple[int, str, bytes]:
    """Status, reason and body of the answer on ``stream``, read as ``http.client`` does."""
    while True:
        version, status, reason = _status_line(stream)
        if status != 100:
            break
        _header_lines(stream)
    if version not in ("HTTP/1.0", "HTTP/0.9") and not version.startswith("HTTP/1."):
        raise NotHTTP("UnknownProtocol")
    fields = _fields(_header_lines(stream))
    chunked = fields.get("transfer-encoding", "").lower() == "chunked"
    length = None
    if not chunked and fields.get("content-length"):
        try:
            length = int(fields["content-length"])
        except ValueError:
            pass
        else:
            if length < 0:
                length = None
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    if chunked:
        body = _read_chunked(stream)
    elif length is None:
        body = stream.read()
    else:
        body = _read_exactly(stream, length)
    return status, reason.strip(), body


def _status_line(stream: Stream) -> tuple[str, int, str]:
    line = str(stream.readline(MAX_LINE + 1), "iso-8859-1")
    if len(line) > MAX_LINE:
        raise NotHTTP("LineTooLong")
    if not line:
        raise RemoteDisconnected("Remote end closed connection without response")
    words = line.split(None, 2)
    version = words[0] if len(words) >= 2 else ""
    if not version.startswith("HTTP/"):
        raise NotHTTP("BadStatusLine")
    try:
        status = int(words[1])
    except ValueError:
        raise NotHTTP("BadStatusLine") from None
    if not 100 <= status <= 999:
        raise NotHTTP("BadStatusLine")
    return version, status, words[2] if len(words) > 2 else ""


def _header_lines(stream: Stream) -> list[bytes]:
    lines = []
    while True:
        line = stream.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise NotHTTP("LineTooLong")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise NotHTTP("HTTPException")
        if line in (b"\r\n", b"\n", b""):
            return lines


def _fields(lines: list[bytes]) -> dict[str, str]:
    # As email's parser reads them for http.client: the first field of a name counts,
    # and a line that is no field ends them.
    text = b"".join(lines).decode("iso-8859-1").replace("\r\n", "\n").replace("\r", "\n")
    fields: dict[str, str] = {}
    name = None
    for line in text.split("\n"):
        if line[:1] in (" ", "\t"):
            if name is not None:
                fields[name] += "\n" + line
            continue
        key, colon, value = line.partition(":")
        if line.startswith("From ") or (colon and not key):  # skipped, as email skips them
            name = None
            continue
        if not colon or any(not "\x21" <= c <= "\x7e" for c in key):
            break
        name = key.lower() if key.lower() not in fields else None
        if name is not None:
            fields[name] = value.lstrip(" \t")
    return fields


def _read_exactly(stream: Stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise NotHTTP("IncompleteRead")
    return data


def _read_chunked(stream: Stream) -> bytes:
    chunks = []
    while True:
        line = stream.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise NotHTTP("LineTooLong")
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise NotHTTP("IncompleteRead") from None
        if size == 0:
            break
        chunks.append(_read_exactly(stream, size))
        _read_exactly(stream, 2)  # the CRLF after the chunk
    while True:  # trailer fields, ignored
        line = stream.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise NotHTTP("LineTooLong")
        if line in (b"\r\n", b"\n", b""):
            return b"".join(chunks)
