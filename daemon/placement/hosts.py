"""Host choice: which host of a hardware pool gets a request.

A host can hold a request when it is reachable and, counted with the allocation ratios
(as Nova's ``cpu_allocation_ratio`` / ``ram_allocation_ratio``), its cpus and memory
(libvirt's node info) minus what the VMs provisiond placed there and the requests bound
to it take, hold the request's. Among those, the hardware pool's policy picks: ``spread``
the most free memory (ties: fewer vCPUs placed, then configured order), ``pack`` the
least free memory that still holds it. Pure: the caller reads the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB_PER_MIB = 1024


@dataclass(frozen=True)
class HostFigures:
    """One host as host choice sees it."""

    name: str
    reachable: bool
    cpus: int = 0
    memory_kib: int = 0
    used_cpus: int = 0
    used_memory_kib: int = 0


@dataclass(frozen=True)
class HostVerdict:
    """Why a host was chosen, could take the request, or could not."""

    host: str
    fits: bool
    reason: str
    free_memory_kib: int = 0


def _gib(kib: float) -> str:
    return f"{kib / 1024**2:.1f} GiB"


def choose_host(hosts: list[HostFigures], cpus: int, memory_kib: int, *, policy: str,
                cpu_ratio: float, ram_ratio: float) -> tuple[str | None, list[HostVerdict]]:
    """The chosen host's name (None if no host can hold the request) and every host's
    verdict, the chosen one first."""
    verdicts: list[HostVerdict] = []
    for index, h in enumerate(hosts):
        if not h.reachable:
            verdicts.append(HostVerdict(h.name, False, "unreachable"))
            continue
        cpu_room = int(h.cpus * cpu_ratio) - h.used_cpus
        memory_room = int(h.memory_kib * ram_ratio) - h.used_memory_kib
        short = []
        if cpus > cpu_room:
            short.append(f"{cpus} vcpus asked, {max(cpu_room, 0)} free of "
                         f"{int(h.cpus * cpu_ratio)}")
        if memory_kib > memory_room:
            short.append(f"{_gib(memory_kib)} asked, {_gib(max(memory_room, 0))} free of "
                         f"{_gib(h.memory_kib * ram_ratio)}")
        if short:
            verdicts.append(HostVerdict(h.name, False, "; ".join(short)))
        else:
            verdicts.append(HostVerdict(
                h.name, True, f"{_gib(memory_room)} and {cpu_room} vcpus free", memory_room))
    fitting = [v for v in verdicts if v.fits]
    if not fitting:
        return None, verdicts
    order = {h.name: i for i, h in enumerate(hosts)}
    used = {h.name: h.used_cpus for h in hosts}
    if policy == "pack":
        best = min(fitting, key=lambda v: (v.free_memory_kib, order[v.host]))
    else:
        best = min(fitting, key=lambda v: (-v.free_memory_kib, used[v.host], order[v.host]))
    chosen = HostVerdict(best.host, True, f"chosen ({policy}): {best.reason}",
                         best.free_memory_kib)
    return best.host, [chosen] + [v for v in verdicts if v.host != best.host]
