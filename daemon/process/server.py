"""The daemon process: start-up in order, serve on the Unix socket, shut down cleanly.

Start-up order: configuration (already loaded by the caller), store migrations, libvirt
connections with their events, resume of requests left in progress, and only then the
socket, after which systemd hears ``READY=1``. Resources live in aiohttp's
``cleanup_ctx``, so a failed start-up closes exactly what it opened. SIGTERM/SIGINT
(``STOPPING=1``) stop accepting, let handlers finish, stop the service (each request stays
in its last durable state, resumed at the next start) and close libvirt. SIGHUP re-reads
the configuration and swaps it in if valid; requests in flight carry on.

The socket is the one systemd passes (socket activation) when there is one, else our own
at ``daemon.socket``: a stale socket there is replaced, a live one is never stolen. Its
connections go through ``connections.ConnectionGuard`` (header and idle timeouts, a cap
per uid); a failed ``accept()`` is logged once a minute at most, and a low descriptor limit
is raised at start-up (or warned of).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import grp
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from daemon.process import connections, systemd
from daemon.virt import connection as virt
from daemon.api.routes import SERVICE, make_app
from daemon.config import Config
from daemon.errors import SocketInUse
from daemon.process.connections import AcceptFailureLog, ConnectionGuard, GuardedRunner
from daemon.process.reload import Reloader
from daemon.service import Service
from daemon.store import Store
from daemon.virt.connection import Opener, open_connection

log = logging.getLogger("provisiond")

STORE = web.AppKey("store", Store)
SHUTDOWN_TIMEOUT = 10.0


def build_app(config: Config, opener: Opener = open_connection) -> web.Application:
    """The application with its resources (store, service) in ``cleanup_ctx``, in order."""

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.daemon.database)
        version = store.migrate()
        log.info("database %s at schema version %d", config.daemon.database, version)
        app[STORE] = store
        yield
        store.close()

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        service = Service(config, app[STORE], opener=opener)
        app[SERVICE] = service
        try:
            await service.start()  # connections and events, then resume
        except BaseException:
            await service.stop()
            raise
        yield
        await service.stop(timeout=SHUTDOWN_TIMEOUT)

    async def release_waiting_clients(app: web.Application) -> None:
        # Before aiohttp waits (up to its shutdown timeout) for handlers in flight: a
        # GET ?wait= answers at once with the request as it is.
        if SERVICE in app:
            app[SERVICE].release_waiters()

    app = make_app()
    app.cleanup_ctx.extend([store_ctx, service_ctx])
    app.on_shutdown.append(release_waiting_clients)
    return app


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory; replace a stale socket, refuse to steal a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it or choose another "
                          "daemon.socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            log.info("replacing stale socket %s", path)
            path.unlink(missing_ok=True)
            return
        raise
    finally:
        probe.close()
    raise SocketInUse(f"another provisiond is already serving on {path}")


async def serve(config: Config, *, opener: Opener = open_connection,
                stop: asyncio.Event | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop`` is set); SIGHUP reloads."""
    virt.ensure_event_loop_registered()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    connections.check_descriptor_limit()
    accept_failures = AcceptFailureLog(loop)
    accept_failures.install()
    reloader = Reloader()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    # Pinged from the start: resuming many requests or a slow libvirt is still alive.
    interval = systemd.watchdog_interval()
    pinger = (asyncio.create_task(systemd.watchdog(interval), name="systemd-watchdog")
              if interval else None)
    if interval:
        log.info("systemd watchdog: pinging every %.3g s", interval)
    try:
        await _serve(config, opener, stop, reloader)
    finally:
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        accept_failures.uninstall()


async def _serve(config: Config, opener: Opener, stop: asyncio.Event,
                 reloader: Reloader) -> None:
    inherited = systemd.listening_socket()
    path = config.daemon.socket
    if inherited is None:
        prepare_socket_path(path)  # before any work: a second daemon must not resume requests
    app = build_app(config, opener)
    # Read at each accept: a reload changes the cap for the next connection.
    guard = ConnectionGuard(lambda: app[SERVICE].config.daemon.max_connections_per_user)
    app.middlewares.insert(0, guard.middleware())
    runner = GuardedRunner(app, guard, handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=connections.IDLE_TIMEOUT)
    await runner.setup()
    inode = None
    try:
        reloader.service_started(app[SERVICE])
        if inherited is not None:
            await connections.serve_socket(runner, inherited)
            where = inherited.getsockname() or "an unnamed socket"
            log.info("provisiond serving on %s (socket activation: the socket unit sets its "
                     "mode and group; daemon.socket is not used)", where)
        else:
            prepare_socket_path(path)
            own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
                try:
                    own.bind(str(path))
                finally:
                    os.umask(old_umask)
                await connections.serve_socket(runner, own)
            except BaseException:
                own.close()
                raise
            inode = path.stat().st_ino
            if config.daemon.socket_group:
                os.chown(path, -1, grp.getgrnam(config.daemon.socket_group).gr_gid)
            os.chmod(path, 0o660)
            where = str(path)
            log.info("provisiond serving on %s", path)
        reloader.status = f"serving on {where}"
        # What start-up made (modules, configuration, the hosts' inventories) lives as long
        # as the process: out of the collector's sight, a full collection no longer walks
        # it (those pauses were 20 ms with a large inventory, the latency tail).
        gc.freeze()
        if not stop.is_set():
            systemd.notify("READY=1", f"STATUS={reloader.status}")
            reloader.ready = True
        await stop.wait()
        systemd.notify("STOPPING=1", "STATUS=shutting down")
        log.info("shutting down")
    finally:
        reloader.stopping = True  # no reload while the service stops
        await runner.cleanup()
        try:  # never unlink an inherited socket: it belongs to the socket unit
            if inode is not None and path.stat().st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass
        await virt.drain_events(2.0)
