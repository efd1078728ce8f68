"""What every handler needs: the service, who the caller is, and a query it can read."""

from __future__ import annotations

import socket
import struct

from aiohttp import web

from daemon.auth import Identity
from daemon.errors import InvalidInput, PermissionDenied
from daemon.service import Service

SERVICE = web.AppKey("service", Service)


def peer_identity(request: web.Request) -> Identity:
    """The caller, from the Unix socket's peer credentials."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise PermissionDenied("the caller's identity cannot be established")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    return Identity.from_uid(uid, gid)


def refuse_unknown_query(request: web.Request, *known: str) -> None:
    """400 naming the first query parameter that is not one of ``known``."""
    for key in request.query:
        if key not in known:
            expected = f": {', '.join(known)}" if known else " none"
            raise InvalidInput(f"unknown query parameter {key!r} (expected{expected})",
                               field=key)
