"""A WebSocket client (RFC 6455) over the daemon's Unix socket, for provctl's console and
display: the standard library has none, and these two commands need only binary messages,
ping/pong and close. The handshake's answer is read as ``wire`` reads any answer; a
refusal (404, 409, 501, ...) becomes the same ``ApiError`` as any other command's.
"""

from __future__ import annotations

import _socket
import os

from daemon.cli.client import _api_error, _decode
from daemon.cli.wire import NotHTTP, SocketReader, _fields, _header_lines, _status_line

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The daemon broke the WebSocket protocol (or is not provisiond)."""


def accept_key(key: bytes) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


class WebSocket:
    """One open WebSocket: ``send`` bytes; ``feed`` then ``messages`` to receive."""

    def __init__(self, sock: _socket.socket, pending: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(pending)
        self.close_code: int | None = None
        """The code of the daemon's close frame, once it came (1005: none given)."""
        self.close_reason = ""
        self._fragments: list[bytes] = []
        self._closing = False

    def fileno(self) -> int:
        """The socket's descriptor (for ``select``)."""
        return self.sock.fileno()

    def send(self, data: bytes, opcode: int = BINARY) -> None:
        """Send one message (masked, as a client must)."""
        header = bytearray([0x80 | opcode])
        size = len(data)
        if size < 126:
            header.append(0x80 | size)
        elif size < 65536:
            header += bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        header += mask
        masked = _mask(data, mask)
        self.sock.sendall(bytes(header) + masked)

    def close(self, code: int = 1000) -> None:
        """Say goodbye (once) and close the socket."""
        if not self._closing:
            self._closing = True
            try:
                self.send(code.to_bytes(2, "big"), CLOSE)
            except OSError:
                pass
        self.sock.close()

    def feed(self) -> bool:
        """Read what the socket has (blocking until something comes); False at its end."""
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def messages(self) -> list[bytes]:
        """The whole data messages in the buffer; pings are answered, a close is noted
        (``close_code``) and answered."""
        out = []
        while True:
            frame = self._frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode == PING:
                self.send(payload, PONG)
            elif opcode == PONG:
                pass
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 \
                    else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                if not self._closing:
                    self._closing = True
                    try:
                        self.send(payload[:2], CLOSE)
                    except OSError:
                        pass
                return out
            elif opcode in (TEXT, BINARY, CONTINUATION):
                self._fragments.append(payload)
                if sum(len(f) for f in self._fragments) > MAX_MESSAGE:
                    raise ProtocolError("a message larger than 16 MiB")
                if fin:
                    out.append(b"".join(self._fragments))
                    self._fragments = []
            else:
                raise ProtocolError(f"unknown WebSocket opcode {opcode:#x}")

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, size, at = bool(buf[1] & 0x80), buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, at = int.from_bytes(buf[2:4], "big"), 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, at = int.from_bytes(buf[2:10], "big"), 10
        if masked:
            raise ProtocolError("the server masked a frame")
        if len(buf) < at + size:
            return None
        payload = bytes(buf[at:at + size])
        del buf[:at + size]
        return fin, opcode, payload


def _mask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (done as one big integer: fast enough)."""
    if not data:
        return b""
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def connect(socket_path: str, target: str, timeout: float) -> WebSocket:
    """Open a WebSocket on ``target`` (a path and query) of the daemon at ``socket_path``.

    Raises OSError and ``NotHTTP`` as ``wire.exchange`` does, ``ApiError`` when the daemon
    refuses, ``ProtocolError`` when its answer is no WebSocket handshake.
    """
    import base64

    key = base64.b64encode(os.urandom(16))
    request = (f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
               "Sec-WebSocket-Version: 13\r\nAccept: application/json\r\n\r\n").encode()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(request)
        reader = SocketReader(sock)
        _version, status, reason = _status_line(reader)
        fields = _fields(_header_lines(reader))
        if status != 101:
            try:
                length = int(fields.get("content-length", ""))
            except ValueError:
                length = -1
            body = reader.read(length)
            raise _api_error(status, reason.strip(), body, _decode(body))
        if fields.get("sec-websocket-accept", "").strip() != accept_key(key):
            raise ProtocolError("the daemon's WebSocket handshake does not match the key sent")
        sock.settimeout(None)
        return WebSocket(sock, bytes(reader.buffer))
    except BaseException:
        sock.close()
        raise


__all__ = ["NotHTTP", "ProtocolError", "WebSocket", "accept_key", "connect"]
