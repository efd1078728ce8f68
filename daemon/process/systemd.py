"""systemd integration with the standard library only: sd_notify and socket activation.

The notify protocol (``sd_notify(3)``): newline-separated ``KEY=VALUE`` assignments in one
datagram to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace). Outside systemd the variable is unset and every call is a no-op.

Socket activation (``sd_listen_fds(3)``): when ``$LISTEN_PID`` is our pid, ``$LISTEN_FDS``
sockets are inherited from fd 3 on. The variables are removed once read, so a child
process never mistakes them for its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("provisiond.systemd")

SD_LISTEN_FDS_START = 3


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to systemd; False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%s is neither a path nor an abstract name; ignored", address)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never stall the event loop on a busy manager: a lost datagram is the lesser evil.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", " ".join(assignments), exc)
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=…`` as systemd expects it next to ``RELOADING=1``."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if disabled.

    ``$WATCHDOG_PID``, when set, must be our pid: otherwise the watchdog is another
    process's (e.g. a wrapper's) and we must not ping for it.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%s is not a number; watchdog disabled", usec)
        return None
    return value / 2_000_000 if value > 0 else None


async def watchdog(interval: float) -> None:
    """Ping systemd's watchdog every ``interval`` seconds until cancelled.

    Runs on the event loop, so a loop blocked for longer than the watchdog timeout is
    exactly what gets the service restarted.
    """
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def listening_socket() -> socket.socket | None:
    """The listening AF_UNIX stream socket passed by socket activation, if any.

    Only ``LISTEN_FDS`` meant for this process count (``LISTEN_PID`` is our pid); the
    first one is used. The environment is cleared so children do not inherit it.
    """
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return None
    try:
        if int(pid) != os.getpid() or int(count) < 1:
            return None
        n = int(count)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%s LISTEN_FDS=%s", pid, count)
        return None
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        os.set_inheritable(fd, False)
    if n > 1:
        log.warning("systemd passed %d sockets; serving on the first (fd %d) only", n,
                    SD_LISTEN_FDS_START)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(f"the socket passed by systemd (fd {SD_LISTEN_FDS_START}) is not an "
                      "AF_UNIX stream socket; use ListenStream= with a path")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise OSError(f"the socket passed by systemd (fd {SD_LISTEN_FDS_START}) is not "
                      "listening; the socket unit must not set Accept=yes")
    return sock
