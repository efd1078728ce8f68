"""The typed configuration: what the loader builds and the rest of the daemon reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PRIVILEGES = ("CLOUD_CREATE", "CLOUD_ADMIN")
"""CLOUD_CREATE: create VMs in the pool. CLOUD_ADMIN: see and cancel all its requests."""
ON_RELEASE = ("wipe", "keep", "delete")
"""What a storage pool does with a reused volume whose VM is deleted."""
HOST_POLICIES = ("spread", "pack")
"""How a hardware pool picks among the hosts that can hold a request."""


@dataclass(frozen=True)
class Size:
    """A VM size: the seed's VmSize.yml entry (memory in KiB)."""

    name: str
    cpus: int
    memory: int
    storage_size_in_gb: int
    network: str | None = None

    @property
    def storage_bytes(self) -> int:
        """The size's disk capacity in bytes (GiB, as libvirt's unit 'G')."""
        return self.storage_size_in_gb * 1024**3


@dataclass(frozen=True)
class VolumeRef:
    """A storage volume named by its libvirt pool and volume name."""

    pool: str
    name: str


@dataclass(frozen=True)
class CloudInit:
    """What a template gives cloud-init by default; a request may add keys and replace
    the user-data and network-config."""

    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = None
    network_config: str | None = None


@dataclass(frozen=True)
class BootFile:
    """A kernel or an initrd for a direct boot: a volume in a pool, or a path on the host."""

    path: str | None = None
    volume: VolumeRef | None = None


@dataclass(frozen=True)
class Template:
    """What gets installed.

    ``iso``: an installer ISO (``path`` on the host, or ``volume`` in a pool) booted from
    a CD-ROM. ``kickstart``: an installer's ``kernel`` and ``initrd`` booted directly
    with ``cmdline`` (the kickstart, preseed or autoinstall location) onto a blank disk,
    once: after its first power-off the domain boots from its disk. ``appliance``: a base image (``volume``, qcow2 or raw) that the VM's disk is
    an overlay on (``clone: overlay``) or a full copy of (``clone: full``), with a
    cloud-init NoCloud seed (``cloud_init``: defaults).
    """

    name: str
    kind: str
    description: str = ""
    path: str | None = None
    volume: VolumeRef | None = None
    clone: str = "overlay"
    cloud_init: CloudInit = CloudInit()
    kernel: BootFile | None = None
    """kickstart: the installer's kernel, booted directly the first time."""
    initrd: BootFile | None = None
    cmdline: str = ""
    """kickstart: the kernel command line (with the kickstart/preseed location)."""

    @property
    def takes_cloud_init(self) -> bool:
        """Whether a request of this template may carry SSH keys, user-data, network-config."""
        return self.kind == "appliance"


DOMAIN_TYPES = ("auto", "kvm", "qemu")


@dataclass(frozen=True)
class Host:
    """A libvirt host of a hardware pool, reached by its connection URI.

    ``domain_type``: ``auto`` defines kvm domains when the host offers kvm, else qemu
    (TCG); ``qemu`` forces TCG (e.g. where /dev/kvm exists but nested KVM is broken).
    """

    name: str
    uri: str
    domain_type: str = "auto"


@dataclass(frozen=True)
class StoragePoolRef:
    """A libvirt storage pool of a hardware pool, with its placement settings."""

    name: str
    overcommit: float = 1.0
    on_release: str = "wipe"
    """What becomes of a reused volume when its VM is deleted: wiped, then free again
    (wipe); free again as it is (keep); deleted (delete)."""
    templates_only: bool = False
    """Holds templates' volumes (ISOs, images, kernels) and never a VM's disk."""
    shared: bool | None = None
    """Whether the pool of this name on each host is one storage, seen by them all: a
    volume in it is claimed once and space reserved once, whichever host sees it. None
    (the default): so for network pool types (netfs, gluster, rbd, iscsi, ...) whose
    source is the same on the hosts; true: so for any type (a dir pool on an NFS mount
    made outside libvirt); false: each host's pool is its own."""


@dataclass(frozen=True)
class HardwarePool:
    """Hosts and their storage pools (in placement order)."""

    name: str
    hosts: tuple[Host, ...]
    storage_pools: tuple[StoragePoolRef, ...]
    reuse_tolerance_gb: int = 0
    host_policy: str = "spread"
    """Which host of those that can hold a request gets it: ``spread`` the one with the
    most free memory, ``pack`` the one with the least that still holds it."""
    cpu_allocation_ratio: float = 1.0
    """vCPUs placed on a host may reach this many times its cpus (Nova's ratio)."""
    ram_allocation_ratio: float = 1.0
    """Memory placed on a host may reach this many times its memory."""


@dataclass(frozen=True)
class Grant:
    """Who holds a privilege: user names and group names."""

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Quota:
    """Upper bounds for a resource pool (and, in ``per_user``, for each user in it); None
    means unbounded."""

    vms: int | None = None
    cpus: int | None = None
    memory: int | None = None
    storage_gb: int | None = None
    per_user: Quota | None = None
    """The same bounds for each user's share of the pool (``quota.per_user``)."""


@dataclass(frozen=True)
class ResourcePool:
    """What users provision into: a hardware pool, grants and an optional quota."""

    name: str
    hardware_pool: str
    grants: dict[str, Grant]
    quota: Quota = Quota()
    description: str = ""


@dataclass(frozen=True)
class DaemonSettings:
    """Where the daemon listens and stores, and its time bounds."""

    socket: Path
    database: Path
    socket_group: str | None = None
    define_event_timeout: float = 30.0
    libvirt_call_timeout: float = 120.0
    host_wait_timeout: float = 300.0
    body_timeout: float = 10.0
    """Seconds a client has to send a request's whole body once its headers are in."""
    stop_timeout: float = 60.0
    """Seconds a VM has to shut down after an ACPI request before it is forced off."""
    retention_days: float = 90.0
    """How long a deleted VM's request and log are kept before they are pruned."""
    session_idle_timeout: float = 900.0
    """Seconds a console or display client may send nothing before it is closed."""
    max_in_progress_per_user: int = 32
    """Requests and VM operations one user may have in progress; past it, 429."""
    max_connections_per_user: int = 32
    """Open connections to the socket one uid may hold; the excess is closed at once."""


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    source: Path
    daemon: DaemonSettings
    sizes: dict[str, Size]
    templates: dict[str, Template]
    hardware_pools: dict[str, HardwarePool]
    resource_pools: dict[str, ResourcePool]
    files: dict[str, Path] = field(default_factory=dict)

    def hardware_pool_of(self, resource_pool: str) -> HardwarePool:
        """The hardware pool a resource pool draws on."""
        return self.hardware_pools[self.resource_pools[resource_pool].hardware_pool]
