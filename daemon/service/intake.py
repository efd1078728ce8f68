"""A new provisioning request: what a caller may ask, checked before anything is stored."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from daemon import cloudinit
from daemon.auth import CLOUD_CREATE, Identity, holds
from daemon.config import Config
from daemon.errors import InvalidInput, PermissionDenied

# \Z, not $, which also matches before a final newline ("web-1\n" would pass): with \Z,
# match() and fullmatch() both match the whole string.
VM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,200}\Z")


@dataclass(frozen=True)
class ProvisioningRequest:
    """What a caller asks for; checked by ``validate``."""

    template: str
    size: str
    resource_pool: str | None = None
    name: str | None = None
    idempotency_key: str | None = None
    ssh_keys: Any = None
    """OpenSSH public keys for cloud-init (appliance templates), as the caller sent them."""
    user_data: Any = None
    network_config: Any = None

    def cloud_init(self) -> dict[str, Any]:
        """What the request adds for cloud-init, checked (InvalidInput naming the field)."""
        added: dict[str, Any] = {}
        if self.ssh_keys is not None:
            added["ssh_keys"] = cloudinit.check_ssh_keys(self.ssh_keys)
        if self.user_data is not None:
            added["user_data"] = cloudinit.check_user_data(self.user_data)
        if self.network_config is not None:
            added["network_config"] = cloudinit.check_network_config(self.network_config)
        return added


def pools_granting(config: Config, identity: Identity, privilege: str) -> list[str]:
    """Names of the resource pools on which the caller holds ``privilege``."""
    return sorted(name for name, pool in config.resource_pools.items()
                  if holds(identity, pool, privilege))


NAME_RULE = ("name must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or "
             "digit")
"""What a VM's name may be, as the API says it."""


def validate(config: Config, identity: Identity, req: ProvisioningRequest) -> str:
    """Check names and the caller's right to create; return the resource pool."""
    if req.template not in config.templates:
        raise InvalidInput(f"unknown template {req.template!r} (known: "
                           f"{', '.join(sorted(config.templates))})", field="template")
    if req.size not in config.sizes:
        raise InvalidInput(f"unknown size {req.size!r} (known: "
                           f"{', '.join(sorted(config.sizes))})", field="size")
    pool_name = req.resource_pool
    if pool_name is None:
        mine = pools_granting(config, identity, CLOUD_CREATE)
        if not mine:
            raise PermissionDenied(f"{identity.user} holds CLOUD_CREATE on no resource pool")
        if len(mine) != 1:
            raise InvalidInput("name a resource pool: you may create in " + ", ".join(mine),
                               field="resource_pool")
        pool_name = mine[0]
    pool = config.resource_pools.get(pool_name)
    if pool is None:
        raise InvalidInput(f"unknown resource pool {pool_name!r}", field="resource_pool")
    if not holds(identity, pool, CLOUD_CREATE):
        raise PermissionDenied(
            f"{identity.user} does not hold CLOUD_CREATE on resource pool {pool_name}")
    template = config.templates[req.template]
    given = [f for f in ("ssh_keys", "user_data", "network_config")
             if getattr(req, f) is not None]
    if given and not template.takes_cloud_init:
        raise InvalidInput(f"template {req.template} ({template.kind}) takes no cloud-init: "
                           f"{', '.join(given)} are for appliance templates", field=given[0])
    req.cloud_init()  # each field checked now, before anything is stored
    if req.name is not None and not VM_NAME_RE.match(req.name):
        raise InvalidInput(NAME_RULE, field="name")
    if req.idempotency_key is not None and not IDEMPOTENCY_KEY_RE.match(req.idempotency_key):
        raise InvalidInput("idempotency key must be 1-200 printable ASCII characters",
                           field="idempotency_key")
    return pool_name


def new_request_row(config: Config, identity: Identity, req: ProvisioningRequest,
                    pool_name: str) -> dict[str, Any]:
    """The stored fields of a new request (its id derives every name it will make)."""
    size = config.sizes[req.size]
    request_id = uuid.uuid4().hex
    return {
        "id": request_id,
        "name": req.name or f"{req.template}-{request_id[:8]}",
        "owner": identity.user,
        "owner_groups": sorted(identity.groups),
        "template": req.template,
        "size": req.size,
        "resource_pool": pool_name,
        "hardware_pool": config.resource_pools[pool_name].hardware_pool,
        "cpus": size.cpus,
        "memory_kib": size.memory,
        "storage_gb": size.storage_size_in_gb,
        "network": size.network,
        "idempotency_key": req.idempotency_key,
        "cloud_init": json.dumps(added) if (added := req.cloud_init()) else None,
    }
