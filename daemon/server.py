"""The daemon process: start-up in order, serve on the Unix socket, shut down cleanly.

Start-up order: configuration (already loaded by the caller), store migrations, libvirt
connections with their events, resume of requests left in progress, and only then the
socket. Resources live in aiohttp's ``cleanup_ctx``, so a failed start-up closes exactly
what it opened. SIGTERM/SIGINT stop accepting, let handlers finish, stop the engine (each
request stays in its last durable state, resumed at the next start) and close libvirt.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import AsyncIterator

import libvirt
from aiohttp import web

from daemon import virt
from daemon.api import ENGINE, make_app
from daemon.config import Config
from daemon.engine import Engine
from daemon.store import Store
from daemon.virt import Opener

log = logging.getLogger("provisiond")

STORE = web.AppKey("store", Store)
SHUTDOWN_TIMEOUT = 10.0


class SocketInUse(Exception):
    """Another live process serves on the socket path."""


def build_app(config: Config, opener: Opener = libvirt.open) -> web.Application:
    """The application with its resources (store, engine) in ``cleanup_ctx``, in order."""

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(config.daemon.database)
        version = store.migrate()
        log.info("database %s at schema version %d", config.daemon.database, version)
        app[STORE] = store
        yield
        store.close()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = Engine(config, app[STORE], opener=opener)
        app[ENGINE] = engine
        try:
            await engine.start()  # connections and events, then resume
        except BaseException:
            await engine.stop()
            raise
        yield
        await engine.stop(timeout=SHUTDOWN_TIMEOUT)

    app = make_app()
    app.cleanup_ctx.extend([store_ctx, engine_ctx])
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


async def serve(config: Config, *, opener: Opener = libvirt.open,
                stop: asyncio.Event | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop`` is set)."""
    virt.ensure_event_loop_registered()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    path = config.daemon.socket
    prepare_socket_path(path)  # before any work: a second daemon must not resume requests
    runner = web.AppRunner(build_app(config, opener), handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    inode = None
    try:
        prepare_socket_path(path)
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old_umask)
        inode = path.stat().st_ino
        if config.daemon.socket_group:
            os.chown(path, -1, grp.getgrnam(config.daemon.socket_group).gr_gid)
        os.chmod(path, 0o660)
        log.info("provisiond serving on %s", path)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        try:
            if inode is not None and path.stat().st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass
        await virt.drain_events(2.0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
