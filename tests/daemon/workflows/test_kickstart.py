"""Kickstart templates on a test-driver host: the installer's kernel booted directly, once.

The test driver emits STOPPED when a domain is destroyed: the installer's power-off.
A real installer run (a kernel and initrd that write the disk) is in tests/e2e.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from daemon.virt.domain_xml import domain_uuid_for
from statemachines.provisioning import State
from statemachines.vm import VmState
from tests.conftest import ALICE

CMDLINE = "console=ttyS0 inst.ks=http://example.invalid/ks.cfg"
TEMPLATES = {
    "ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
    "fedora-ks": {"kind": "kickstart", "kernel": {"pool": "pool-dir", "name": "vmlinuz"},
                  "initrd": "/srv/installer/initrd.img", "cmdline": CMDLINE},
}


def os_of(h, request_id: str) -> ET.Element:
    dom = h.conn.lookupByUUIDString(domain_uuid_for(request_id))
    found = ET.fromstring(dom.XMLDesc(0)).find("os")
    assert found is not None
    return found


async def until(h, request_id: str, state: VmState) -> None:
    import asyncio

    for _ in range(300):
        if h.store.get_vm(request_id).state == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"VM is {h.store.get_vm(request_id).state}, not {state}")


async def test_the_installer_boots_directly_once_then_the_disk(make_harness):
    h = await make_harness("host_appliance.xml", templates=TEMPLATES)
    done = await h.run(template="fedora-ks", size="small")
    assert done.state == State.DONE, done.reason
    assert done.volume_name != "vmlinuz"  # a template's kernel is never a free disk
    first = os_of(h, done.id)
    assert first.findtext("kernel") == "/pools/dir/vmlinuz"
    assert first.findtext("initrd") == "/srv/installer/initrd.img"
    assert first.findtext("cmdline") == CMDLINE
    assert h.store.get_vm(done.id).installing

    await h.service.operate(ALICE, done.id, "start")
    await until(h, done.id, VmState.RUNNING)
    h.conn.lookupByUUIDString(domain_uuid_for(done.id)).destroy()  # the installer is done
    await until(h, done.id, VmState.STOPPED)
    after = os_of(h, done.id)
    assert after.find("kernel") is None and after.find("cmdline") is None
    assert [b.get("dev") for b in after.findall("boot")] == ["hd"]
    vm = h.store.get_vm(done.id)
    assert not vm.installing
    moves = [(e.from_state, e.to_state) for e in h.store.get_log(done.id)
             if e.kind == "transition"][-3:]
    assert moves == [("starting", "running"), ("running", "installed"),
                     ("installed", "stopped")]
    redefined = [e.detail for e in h.store.get_log(done.id) if e.kind == "transition"][-1]
    assert "redefined to boot from its disk" in redefined

    # From now on a power-off is just that.
    await h.service.operate(ALICE, done.id, "start")
    await until(h, done.id, VmState.RUNNING)
    h.conn.lookupByUUIDString(domain_uuid_for(done.id)).destroy()
    await until(h, done.id, VmState.STOPPED)
    assert [e.to_state for e in h.store.get_log(done.id)
            if e.kind == "transition"][-1] == "stopped"
    assert "installed" not in [e.to_state for e in h.store.get_log(done.id)
                               if e.kind == "transition"][-3:]


async def test_a_kickstart_template_needs_kernel_initrd_and_cmdline(tmp_path):
    import pytest

    from daemon.config import load_config
    from daemon.errors import ConfigError
    from harness.daemon import write_config

    main = write_config(tmp_path, templates={"ks": {"kind": "kickstart",
                                                    "kernel": "vmlinuz", "initrd": "/i"}})
    with pytest.raises(ConfigError) as refused:
        load_config(main)
    assert any("ks.cmdline" in str(p) for p in refused.value.problems)
