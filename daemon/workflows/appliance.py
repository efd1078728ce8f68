"""Appliance templates: the VM's disk made from a base image, and its cloud-init seed.

The disk is a qcow2 overlay on the image (``<backingStore>`` with the image's format
always given) in a pool that holds files, or a full copy (``createXMLFrom``) where the
template asks for it or the pool cannot hold an overlay (logical, disk, rbd, ...). Its
capacity is the larger of the size's and the image's. The image is never claimed,
reused, wiped or deleted: placement counts it as a template volume.

The seed (``daemon.cloudinit``) is its own step, ``seeding``: durable before it acts,
its volume's name derived from the request id (a step that runs again adopts it and
uploads again the same content), deleted by the rollback and with the VM.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from daemon import cloudinit
from daemon.config import Template
from daemon.errors import VirtError
from daemon.placement.decision import QCOW2_POOL_TYPES
from daemon.store import RequestRecord
from daemon.virt import domain_xml
from daemon.virt.connection import HostConnection
from daemon.virt.inventory import VolumeInfo, gib
from statemachines.provisioning import Trigger

from daemon.engine import Outcome

log = logging.getLogger("provisiond.provisioning")


def template_of(ctx: Any, req: RequestRecord) -> Template | None:
    """The request's template, if still configured."""
    return ctx.config.templates.get(req.template)


def is_appliance(template: Template | None) -> bool:
    """Whether requests of this template get an image-backed disk and a seed."""
    return template is not None and template.kind == "appliance"


async def image_of(host: HostConnection, template: Template) -> VolumeInfo:
    """The appliance's base image on the host: from the live inventory, else asked of
    libvirt (a pool the hardware pool does not list is not in the inventory)."""
    assert template.volume is not None
    image = host.inventory.volume(template.volume.pool, template.volume.name)
    if image is None:
        image = await host.find_volume(template.volume.pool, template.volume.name)
    if image is None:
        raise VirtError(f"template {template.name}: image {template.volume.pool}/"
                        f"{template.volume.name} not found on host {host.name}")
    if image.backing:
        raise VirtError(backing_refusal(template, image.backing))
    return image


def backing_refusal(template: Template, backing: str) -> str:
    """Why an image that is itself an overlay is refused (as Nova refuses it)."""
    assert template.volume is not None
    return (f"template {template.name}: image {template.volume.pool}/{template.volume.name} "
            f"has a backing file ({backing}): an appliance's image must stand alone "
            "(flatten it with qemu-img convert)")


def disk_bytes(req: RequestRecord, image: VolumeInfo) -> int:
    """The disk's capacity: the size's, or the image's virtual size if larger."""
    return max(req.storage_gb * 1024**3, image.capacity)


async def create_disk(host: HostConnection, req: RequestRecord,
                      template: Template) -> tuple[VolumeInfo, str]:
    """Create the appliance's disk (overlay or copy); the volume and what was done."""
    assert req.volume_pool and req.volume_name and template.volume is not None
    image = await image_of(host, template)
    capacity = disk_bytes(req, image)
    found = host.inventory.pool(req.volume_pool)
    pool_type = found[0].type if found else None
    overlay = template.clone == "overlay" and pool_type in QCOW2_POOL_TYPES
    if overlay:
        xml = domain_xml.build_volume_xml(req.volume_name, capacity, "qcow2",
                                          backing_path=image.path,
                                          backing_format=image.format or "raw")
        vol = await host.create_volume(req.volume_pool, xml)
        return vol, (f"created volume {req.volume_pool}/{req.volume_name} ({gib(capacity)}, "
                     f"qcow2 overlay on {image.pool}/{image.name})")
    xml = domain_xml.build_volume_xml(req.volume_name, capacity, req.volume_format)
    vol = await host.clone_volume(req.volume_pool, xml, image.pool, image.name)
    why = "as the template asks" if template.clone == "full" else \
        f"pool {req.volume_pool} ({pool_type}) cannot hold an overlay"
    return vol, (f"created volume {req.volume_pool}/{req.volume_name} ({gib(capacity)}) as a "
                 f"full copy of {image.pool}/{image.name} ({why})")


def request_cloud_init(req: RequestRecord) -> dict[str, Any]:
    """What the request added for cloud-init (ssh_keys, user_data, network_config)."""
    return json.loads(req.cloud_init) if req.cloud_init else {}


def seed_content(req: RequestRecord, template: Template) -> bytes:
    """The seed ISO of a request: the template's defaults, the request's additions."""
    added = request_cloud_init(req)
    keys = [*template.cloud_init.ssh_keys,
            *[k for k in added.get("ssh_keys", []) if k not in template.cloud_init.ssh_keys]]
    user = cloudinit.user_data(added.get("user_data") or template.cloud_init.user_data, keys)
    network = added.get("network_config") or template.cloud_init.network_config
    return cloudinit.seed_iso(cloudinit.meta_data(req.id, req.name), user, network)


async def create_seed(ctx: Any, req: RequestRecord) -> Outcome:
    """seeding: make the seed volume (or adopt it) and upload the seed into it."""
    host = ctx.host(req.host)
    template = template_of(ctx, req)
    if template is None:
        raise VirtError(f"template {req.template} is no longer configured")
    assert req.volume_pool is not None
    name = domain_xml.seed_volume_name(req.id)
    data = seed_content(req, template)
    found = (await host.find_volume(req.volume_pool, name)
             if ctx.repeating(req.id) and host.inventory.has_volume(req.volume_pool, name)
             else None)
    if found is None:
        xml = domain_xml.build_volume_xml(name, len(data), None)
        try:
            await host.create_volume(req.volume_pool, xml)
        except VirtError:
            if await host.find_volume(req.volume_pool, name) is None:
                raise
    where = f"{req.volume_pool}/{name}"
    if await host.upload_volume(req.volume_pool, name, data):
        detail = (f"cloud-init seed {where} written ({len(data)} bytes: meta-data, "
                  "user-data" + (", network-config" if b"network-config" in data else "")
                  + ")")
    else:
        detail = (f"cloud-init seed volume {where} made, but its content was NOT stored: "
                  f"host {host.name}'s libvirt driver cannot upload (the test driver); the "
                  "guest will find no seed")
    return Outcome(Trigger.DEFINE, detail)
