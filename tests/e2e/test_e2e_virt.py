"""The libvirt adapter (``daemon.virt.connection``) on the real libvirtd, where the test driver differs.

The test driver finds a storage pool object by its name; libvirtd's storage driver finds
it by its UUID. So a pool object kept across calls goes stale when the pool is replaced by
another of the same name, which only shows here.
"""

from __future__ import annotations

from harness.libvirtd import LibvirtDaemon

from daemon.virt import domain_xml
from daemon.virt.connection import HostConnection


async def test_a_pool_replaced_under_its_name_still_takes_new_volumes(
        libvirtd: LibvirtDaemon) -> None:
    d = libvirtd
    d.create_dir_pool("e2e-replaced")
    host = HostConnection("e2e", d.uri)
    try:
        await host.open(lambda _e: None)  # its events are not seen: the worst case
        await host.create_volume("e2e-replaced", domain_xml.build_volume_xml(
            "first.qcow2", 1 << 20, "qcow2"))
        old_uuid = d.virsh("pool-uuid", "e2e-replaced").strip()
        d.virsh("pool-destroy", "e2e-replaced")
        d.virsh("pool-undefine", "e2e-replaced")
        d.create_dir_pool("e2e-replaced")
        assert d.virsh("pool-uuid", "e2e-replaced").strip() != old_uuid

        created = await host.create_volume("e2e-replaced", domain_xml.build_volume_xml(
            "second.qcow2", 1 << 20, "qcow2"))

        assert created.name == "second.qcow2" and created.capacity == 1 << 20
        assert created.path == d.virsh("vol-path", "second.qcow2", "--pool",
                                       "e2e-replaced").strip()
    finally:
        await host.close()
        d.virsh("pool-destroy", "e2e-replaced", check=False)
        d.virsh("pool-undefine", "e2e-replaced", check=False)
