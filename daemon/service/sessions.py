"""Console and display sessions: who holds a VM's serial console, and take-overs.

A VM's console has one session at a time (as ``virsh console`` without ``--force``);
``force`` ends the current one ("taken over by USER") and opens a new one. Displays are
not exclusive (VNC shares a screen). Each session is noted in the request's log: who
opened it, and why it ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

from daemon.auth import Identity
from daemon.errors import HostUnreachable, InUse, InvalidState, NotSupported
from daemon.errors import ProvisiondError
from daemon.store import RequestRecord
from statemachines.vm import VmState

if TYPE_CHECKING:
    from daemon.service.service import Service

log = logging.getLogger("provisiond.sessions")

TAKE_OVER_WAIT = 5.0
"""Seconds a forced console open waits for the session it ends to let go."""
ACTIVE = (VmState.RUNNING, VmState.PAUSED, VmState.STOPPING, VmState.REBOOTING,
          VmState.POWERING_OFF)
"""The VM states in which its domain runs: a console shows a shutdown or a reboot too."""
T = TypeVar("T")


@dataclass(eq=False)  # each session is itself (hashed by identity)
class Session:
    """One client's console or display of a VM, from open to close."""

    kind: str
    record: RequestRecord
    user: str
    since: float
    read: Callable[[], Awaitable[bytes]]
    write: Callable[[bytes], Awaitable[None]]
    closer: Callable[[], Awaitable[None]]
    ended_by: str | None = None
    """Why the daemon ends it (a take-over, the daemon stopping), once it does."""
    ending: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, why: str) -> None:
        """Ask the session's bridge to end it, saying why to its client."""
        if self.ended_by is None:
            self.ended_by = why
        self.ending.set()

    async def close(self, why: str) -> None:
        """Let go of the console or display (idempotent) and note why in the log."""
        if self.closed.is_set():
            return
        try:
            await self.closer()
        finally:
            self.closed.set()
            log.info("%s of %s closed: %s", self.kind, self.record.id, why)


class Sessions:
    """The open consoles and displays of the daemon's VMs."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._consoles: dict[str, Session | None] = {}
        """By request id; None while one is being opened."""
        self._all: set[Session] = set()

    def _active_record(self, who: Identity, request_id: str, what: str) -> RequestRecord:
        record = self.service.visible(who, request_id)
        if record.vm_state == VmState.UNKNOWN:
            raise HostUnreachable(f"host {record.host} of VM {record.name} is unreachable")
        if record.vm_state not in ACTIVE or not record.domain_uuid or not record.host:
            state = record.vm_state or record.state
            raise InvalidState(f"VM {record.name} is {state}: it has no {what} until it "
                               "runs (provctl start)")
        return record

    async def open_console(self, who: Identity, request_id: str, force: bool) -> Session:
        """The VM's serial console for ``who``; InUse if another session holds it and
        ``force`` is not given, else that session is ended first."""
        record = self._active_record(who, request_id, "console")
        held = self._consoles.get(record.id, False)
        if held is not False and not force:
            if held is None:
                raise InUse(f"the console of VM {record.name} is being opened by another "
                            "session; force takes it over")
            raise InUse(f"the console of VM {record.name} is in use by {held.user} since "
                        f"{time.strftime('%H:%M:%S', time.gmtime(held.since))} UTC; "
                        "force takes it over")
        self._consoles[record.id] = None  # ours from here: a second open waits its turn
        try:
            if held:
                held.end(f"taken over by {who.user}")
                try:
                    await asyncio.wait_for(held.closed.wait(), TAKE_OVER_WAIT)
                except TimeoutError:
                    log.warning("console of %s: the old session did not let go in %g s",
                                record.id, TAKE_OVER_WAIT)
            host = self.service.hosts.connection(record.host)
            stream = await _explained(host.open_console(record.domain_uuid, force), record,
                                      "console")
        except BaseException:
            if self._consoles.get(record.id, False) is None:
                del self._consoles[record.id]
            raise

        async def release() -> None:
            await stream.close()
            if self._consoles.get(record.id) is session:
                del self._consoles[record.id]

        session = self._add(Session("console", record, who.user, time.time(), stream.read,
                                    stream.write, release))
        self._consoles[record.id] = session
        self._note(record, f"console opened by {who.user}" + (" (forced)" if force else ""))
        return session

    async def open_display(self, who: Identity, request_id: str) -> Session:
        """A new connection to the VM's graphical display (VNC) for ``who``."""
        record = self._active_record(who, request_id, "display")
        host = self.service.hosts.connection(record.host)
        sock = await _explained(host.open_display(record.domain_uuid), record, "display")
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def close() -> None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

        async def read() -> bytes:
            try:
                return await reader.read(65536)
            except OSError:
                return b""

        session = self._add(Session("display", record, who.user, time.time(), read, write,
                                    close))
        self._note(record, f"display opened by {who.user}")
        return session

    async def close(self, session: Session, why: str) -> None:
        """Close a session (its bridge has ended) and note why in the request's log."""
        try:
            await session.close(why)
        finally:
            self._all.discard(session)
            self._note(session.record, f"{session.kind} of {session.user} closed: {why}")

    def end_all(self, why: str) -> None:
        """Ask every open session to end (the daemon is stopping)."""
        for session in list(self._all):
            session.end(why)

    def _add(self, session: Session) -> Session:
        self._all.add(session)
        return session

    def _note(self, record: RequestRecord, text: str) -> None:
        try:
            vm = self.service.store.get_vm(record.id)
            state = vm.state if vm is not None else record.state
            self.service.store.append_log(record.id, "note", state, "session", text)
        except Exception:  # an audit line must not break the session itself
            log.exception("cannot note %r for %s", text, record.id)


async def _explained(opening: Awaitable[T], record: RequestRecord, what: str) -> T:
    """Await a console or display opening; libvirt's refusals said in the user's terms."""
    try:
        return await opening
    except NotSupported as exc:
        raise NotSupported(f"host {record.host} cannot open a {what} for VM {record.name} "
                           f"(its libvirt driver does not support it: {exc.message})"
                           ) from None
    except ProvisiondError as exc:
        text = exc.message
        if "Active console session exists" in text:
            raise InUse(f"the console of VM {record.name} is in use by another libvirt "
                        "client (an administrator's virsh console?); force takes it over"
                        ) from None
        if "No graphics backend" in text or "no graphics" in text.lower():
            raise InvalidState(f"VM {record.name} has no graphical display (it was defined "
                               "without one)") from None
        if "file descriptors" in text or "fd passing" in text.lower():
            raise NotSupported(f"host {record.host} is reached over a connection that cannot "
                               f"pass a display's socket (a remote URI?): {text}") from None
        raise
