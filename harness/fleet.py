"""A fleet of test-driver hosts: one node XML per host, for a hardware pool of many hosts.

Each host (``test:///<its XML>``: every connection gets its own private copy) has cpus
and memory drawn from a seed, the ``default`` network, and two storage pools:

- ``pool-dir``, a ``dir`` pool local to the host, holding ``ipxe.iso`` (the volume of
  ``harness.daemon.TEMPLATES['ipxe']``). Its path, ``/pools/dir``, is the same on every
  host, as ``/var/lib/libvirt/images`` is on real ones: same path, not the same storage;
- ``pool-shared``, a ``netfs`` pool with the same source (``nfs.example:/export/vms``)
  and path on every host, a stand-in for one NFS export mounted on all of them, holding
  the same free volumes ``free-000.qcow2``, ... (10 GiB, thin) on each.

The test driver gives every pool 100 GiB of capacity whatever the XML says and counts the
volumes' allocations against it; the generated volumes allocate nothing (the ISO 1 MiB).
"""

from __future__ import annotations

import random
from pathlib import Path

CPU_CHOICES = (4, 8, 16, 32)
MEMORY_GIB_CHOICES = tuple(range(8, 129, 8))
SHARED_SOURCE = ("nfs.example", "/export/vms")
SHARED_VOLUME_GIB = 10

_NODE = """<node>
  <cpu><mhz>2400</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes>
       <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{memory_kib}</memory>
  <network>
    <name>default</name>
    <bridge name="virbr0"/>
    <forward/>
    <ip address="192.168.122.1" netmask="255.255.255.0">
      <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp>
    </ip>
  </network>
{pools}</node>
"""
_POOL = """  <pool type="{type}">
    <name>{name}</name>
    <uuid>{uuid}</uuid>
{source}    <target><path>{path}</path></target>
{volumes}  </pool>
"""
_ISO = """    <volume type="file"><name>ipxe.iso</name><capacity unit="M">1</capacity>
      <allocation unit="M">1</allocation><target><format type="iso"/></target></volume>
"""
_FREE = """    <volume type="file"><name>{name}</name><capacity unit="G">{gib}</capacity>
      <allocation>0</allocation><target><format type="qcow2"/></target></volume>
"""


def host_name(index: int) -> str:
    """The name of the fleet's host number ``index``: host-00, host-01, ..."""
    return f"host-{index:02d}"


def shared_volume_name(index: int) -> str:
    """The name of the shared pool's free volume number ``index``: free-000.qcow2, ..."""
    return f"free-{index:03d}.qcow2"


def fleet_shapes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(cpus, memory in KiB) of each of ``n`` hosts, the same for the same seed."""
    rng = random.Random(seed)
    return [(rng.choice(CPU_CHOICES), rng.choice(MEMORY_GIB_CHOICES) * 1024**2)
            for _ in range(n)]


def node_xml(index: int, cpus: int, memory_kib: int, *, shared_volumes: int = 0,
             local_pool: bool = True) -> str:
    """The node XML of one host (see the module docstring); without ``local_pool`` there
    is no ``pool-dir`` and ``ipxe.iso`` is in ``pool-shared``."""
    host, export = SHARED_SOURCE
    free = "".join(_FREE.format(name=shared_volume_name(v), gib=SHARED_VOLUME_GIB)
                   for v in range(shared_volumes))
    pools = []
    if local_pool:
        pools.append(_POOL.format(type="dir", name="pool-dir",
                                  uuid=f"f1ee7000-0000-4000-8000-{index:010d}01",
                                  source="", path="/pools/dir", volumes=_ISO))
    # A pool defined on each host by its own libvirt: same source, its own uuid.
    pools.append(_POOL.format(
        type="netfs", name="pool-shared", uuid=f"f1ee7000-0000-4000-8000-{index:010d}02",
        source=(f'    <source><host name="{host}"/><dir path="{export}"/>'
                '<format type="nfs"/></source>\n'),
        path="/pools/shared", volumes=free + ("" if local_pool else _ISO)))
    return _NODE.format(cpus=cpus, memory_kib=memory_kib, pools="".join(pools))


def write_fleet(directory: Path, n: int, *, seed: int = 0, shared_volumes: int = 0,
                local_pool: bool = True) -> list[dict[str, str]]:
    """Write ``host-00.xml`` ... for ``n`` hosts into ``directory``; the ``hosts`` list
    for ``harness.daemon.write_config`` (names host-00 ..., ``test:///`` URIs)."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = []
    for index, (cpus, memory_kib) in enumerate(fleet_shapes(n, seed)):
        path = directory.resolve() / f"{host_name(index)}.xml"
        path.write_text(node_xml(index, cpus, memory_kib, shared_volumes=shared_volumes,
                                 local_pool=local_pool))
        hosts.append({"name": host_name(index), "uri": f"test://{path}"})
    return hosts
