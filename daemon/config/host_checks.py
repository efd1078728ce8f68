"""Checks of a valid configuration against this host: things that load but look wrong.

A grant to a user or group the host does not know is not an error (the account may be
made later, or come from a directory service that is down), but it grants nothing now:
``--check-config`` and the daemon's start-up say so, naming the file and key.
"""

from __future__ import annotations

import grp
import pwd

from daemon.config.loader import shown_path
from daemon.config.model import Config


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
