"""Checks of a valid configuration against this host: things that load but look wrong.

Refused (``host_problems``, by ``--check-config`` and at start): a socket group the host
does not know, a database whose directory cannot be made. Warned of, naming the file and
key: a grant to a user or group the host does not know (the account may be made later, or
come from a directory service that is down, but the grant gives nothing now); a storage
pool or a template's volume missing on its libvirt host (``--check-config`` only: it opens
the hosts).
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

from daemon.config.loader import shown_path
from daemon.config.model import Config
from daemon.errors import ConfigProblem, ProvisiondError
from daemon.virt.connection import HostConnection, Opener, open_connection


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def grant_warnings(config: Config) -> list[str]:
    """One line per granted user or group that does not exist on this host."""
    shown = shown_path(config.files.get("pools", config.source))
    warnings = []
    for pool in config.resource_pools.values():
        for privilege, grant in sorted(pool.grants.items()):
            key = f"resource_pools.{pool.name}.grants.{privilege}"
            warnings += [f"{shown}: {key}.users: user {user!r} does not exist on this host; "
                         "the grant gives nothing until it does"
                         for user in sorted(grant.users) if not _user_exists(user)]
            warnings += [f"{shown}: {key}.groups: group {group!r} does not exist on this "
                         "host; the grant gives nothing until it does"
                         for group in sorted(grant.groups) if not _group_exists(group)]
    return warnings


def host_problems(config: Config) -> list[ConfigProblem]:
    """What this host refuses in a loaded configuration, each naming the main file's key."""
    main = shown_path(config.source)
    problems = []
    group = config.daemon.socket_group
    if group is not None and not _group_exists(group):
        problems.append(ConfigProblem(main, "daemon.socket_group",
                                      f"group {group!r} does not exist on this host"))
    why = _database_unusable(config.daemon.database)
    if why is not None:
        problems.append(ConfigProblem(main, "daemon.database", why))
    return problems


def _database_unusable(path: Path) -> str | None:
    """Why this user could not open or create the database at ``path``, or None."""
    as_user = f"(as user {getpass.getuser()})"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        return f"cannot use {path}: {exc.strerror} {as_user}"
    if mode is not None and not stat.S_ISREG(mode):
        return f"{path} exists and is not a file"
    if mode is not None and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable {as_user}"
    nearest = next(d for d in (path.parent, *path.parent.parents) if _lexists(d))
    if not nearest.is_dir():
        return f"cannot make directory {path.parent}: {nearest} is not a directory"
    # Tried, not asked of access(): root is allowed everything by access(), yet cannot make
    # a directory in /proc. What the store will make (its directory, or its -wal and -shm
    # files beside the database) needs what making this directory needs.
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".provisiond-check-", dir=nearest))
    except OSError as exc:
        what = f"directory {path.parent}" if nearest != path.parent else f"files in {nearest}"
        return f"cannot make {what} {as_user}: {exc.strerror}"
    return None


def _lexists(path: Path) -> bool:
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except NotADirectoryError:  # a component above is a file
        return False
    return True


async def libvirt_warnings(config: Config, opener: Opener = open_connection, *,
                           problems: list[str] | None = None) -> list[str]:
    """One line per storage pool or template volume missing on a host that should have it,
    and per host that cannot be reached to tell; opens each host once. What the host
    refuses outright (an appliance's image that is itself an overlay) goes to
    ``problems``."""
    pools_file = shown_path(config.files.get("pools", config.source))
    templates_file = shown_path(config.files.get("templates", config.source))
    opened: dict[str, HostConnection | str] = {}
    warnings: list[str] = []
    try:
        for hw in config.hardware_pools.values():
            for i, host in enumerate(hw.hosts):
                key = f"hardware_pools.{hw.name}.hosts[{i}] ({host.name})"
                if host.name not in opened:
                    opened[host.name] = await _open(HostConnection(
                        host.name, host.uri, opener=opener,
                        call_timeout=config.daemon.libvirt_call_timeout))
                conn = opened[host.name]
                if isinstance(conn, str):
                    warnings.append(f"{pools_file}: {key}: {conn}; its storage pools and "
                                    "templates were not checked")
                    continue
                warnings += _missing_on(conn, hw.name, pools_file, templates_file, config)
                if problems is not None:
                    problems += _layered_images(conn, templates_file, config)
    finally:
        for conn in opened.values():
            if not isinstance(conn, str):
                await conn.close()
    return warnings


async def _open(conn: HostConnection) -> HostConnection | str:
    """The open connection, or why it could not be opened."""
    try:
        await conn.open(lambda _event: None)
    except ProvisiondError as exc:
        await conn.close()
        return exc.message
    return conn


def _layered_images(conn: HostConnection, templates_file: str, config: Config) -> list[str]:
    """Appliance images on the host that have a backing file of their own."""
    found = []
    for template in sorted(config.templates.values(), key=lambda t: t.name):
        vol = template.volume
        image = conn.inventory.volume(vol.pool, vol.name) if vol is not None else None
        if template.kind == "appliance" and image is not None and image.backing:
            found.append(f"{templates_file}: {template.name}.volume: image {vol.pool}/"
                         f"{vol.name} on host {conn.name} has a backing file "
                         f"({image.backing}): an appliance's image must stand alone "
                         "(flatten it with qemu-img convert)")
    return found


def _missing_on(conn: HostConnection, hw: str, pools_file: str, templates_file: str,
                config: Config) -> list[str]:
    warnings = []
    for j, ref in enumerate(config.hardware_pools[hw].storage_pools):
        key = f"hardware_pools.{hw}.storage_pools[{j}] ({ref.name})"
        found = conn.inventory.pool(ref.name)
        if found is None:
            warnings.append(f"{pools_file}: {key}: no such storage pool on host {conn.name}; "
                            "placement skips it")
        elif not found[0].active:
            warnings.append(f"{pools_file}: {key}: not active on host {conn.name}; placement "
                            "skips it until it is")
    for template in sorted(config.templates.values(), key=lambda t: t.name):
        vol = template.volume
        if vol is None or conn.inventory.has_volume(vol.pool, vol.name):
            continue
        found = conn.inventory.pool(vol.pool)
        why = (f"no storage pool {vol.pool}" if found is None else
               f"storage pool {vol.pool} is not active" if not found[0].active else
               f"no volume {vol.name} in storage pool {vol.pool}")
        warnings.append(f"{templates_file}: {template.name}.volume: {why} on host {conn.name} "
                        f"(hardware pool {hw}); a VM of this template fails there")
    return warnings
