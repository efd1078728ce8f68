"""A domain's serial console as an asyncio byte stream, over a non-blocking libvirt stream.

libvirt says through its event implementation (libvirtaio, on the loop thread) when the
stream has data or room; the callback only sets an ``asyncio.Event``. ``recv`` and
``send`` on a non-blocking stream never wait (they answer -2 instead), so they run on
the loop thread, as ``virsh console`` runs them on its event thread. Aborting the stream
is a call to the daemon: it runs off the loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import libvirt

from daemon.errors import ProvisiondError, VirtError

log = logging.getLogger("provisiond.virt")

CHUNK = 65536
_READ_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR |
                libvirt.VIR_STREAM_EVENT_HANGUP)
OffLoop = Callable[[Callable[[], Any]], Awaitable[Any]]


class ConsoleStream:
    """Bytes from and to a domain's console; ``read`` answers b"" once it has closed."""

    def __init__(self, stream: Any, off_loop: OffLoop) -> None:
        self._stream = stream
        self._off_loop = off_loop
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed = False
        self._ended = False
        stream.eventAddCallback(_READ_EVENTS, self._on_stream_event, None)

    def _on_stream_event(self, _stream: Any, events: int, _opaque: Any) -> None:
        if events & _READ_EVENTS:
            self._readable.set()
        if events & libvirt.VIR_STREAM_EVENT_WRITABLE:
            self._writable.set()

    async def read(self) -> bytes:
        """The next bytes the guest wrote; b"" when the console has closed."""
        while not self._closed:
            self._readable.clear()
            try:
                data = self._stream.recv(CHUNK)
            except libvirt.libvirtError as exc:  # the guest stopped, or libvirt went away
                log.info("console stream ended: %s", exc.get_error_message() or exc)
                self._ended = True
                return b""
            if data == -2:  # nothing yet
                await self._readable.wait()
                continue
            if not data:
                self._ended = True
            return bytes(data)
        return b""

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the guest's console, all of it."""
        view = memoryview(data)
        while view and not self._closed:
            try:
                sent = self._stream.send(bytes(view[:CHUNK]))
            except libvirt.libvirtError as exc:
                raise VirtError(f"cannot write to the console: "
                                f"{exc.get_error_message() or exc}") from None
            if sent == -2:  # full: wait for room, then stop asking (it is nearly always so)
                self._writable.clear()
                self._stream.eventUpdateCallback(
                    _READ_EVENTS | libvirt.VIR_STREAM_EVENT_WRITABLE)
                await self._writable.wait()
                if not self._closed:
                    self._stream.eventUpdateCallback(_READ_EVENTS)
                continue
            view = view[sent:]

    async def close(self) -> None:
        """End the stream (idempotent); a pending ``read`` answers b""."""
        if self._closed:
            return
        self._closed = True
        self._readable.set()
        self._writable.set()
        try:
            self._stream.eventRemoveCallback()
        except libvirt.libvirtError:
            pass
        stream = self._stream

        def end() -> None:
            try:
                stream.finish() if self._ended else stream.abort()
            except libvirt.libvirtError:
                pass  # already ended on the daemon's side

        try:
            await self._off_loop(end)
        except ProvisiondError as exc:  # the host went away meanwhile: nothing to end
            log.info("console stream not ended cleanly: %s", exc.message)
