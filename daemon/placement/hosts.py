"""Host choice: which host of a hardware pool gets a request.

A host can hold a request when it is reachable and, counted with the allocation ratios
(as Nova's ``cpu_allocation_ratio`` / ``ram_allocation_ratio``), its cpus and memory
(libvirt's node info) minus what the VMs provisiond placed there and the requests bound
to it take, hold the request's. Among those, the hardware pool's policy picks: ``spread``
the most free memory (ties: fewer vCPUs placed, then configured order), ``pack`` the
least free memory that still holds it (ties: configured order). ``rank_hosts`` orders
every host that can hold it, for placement to go down the list when the first has no
storage for it. Pure: the caller reads the figures.
"""

from __future__ import annotations

from typing import NamedTuple

KIB_PER_MIB = 1024


class HostFigures(NamedTuple):
    """One host as host choice sees it."""

    name: str
    reachable: bool
    cpus: int = 0
    memory_kib: int = 0
    used_cpus: int = 0
    used_memory_kib: int = 0


class HostVerdict(NamedTuple):
    """Why a host was chosen, could take the request, or could not. The figures are
    kept and ``reason`` is written only when shown: host choice runs for every request,
    over every host, and most verdicts are never read (a named tuple: made fast)."""

    host: str
    fits: bool
    free_memory_kib: int = 0
    free_cpus: int = 0
    cpus_asked: int = 0
    memory_asked_kib: int = 0
    cpu_limit: int = 0
    memory_limit_kib: float = 0.0
    reachable: bool = True
    chosen_by: str | None = None
    """The policy that chose it, for the chosen host."""
    refusal: str | None = None
    """A reason from outside host choice (its template image is missing)."""

    @property
    def reason(self) -> str:
        """One line: the host's figures against the request's, or why it was left out."""
        if not self.reachable:
            return "unreachable"
        if self.refusal is not None:
            return self.refusal
        if self.fits:
            text = f"{_gib(self.free_memory_kib)} and {self.free_cpus} vcpus free"
            return f"chosen ({self.chosen_by}): {text}" if self.chosen_by else text
        short = []
        if self.cpus_asked > self.free_cpus:
            short.append(f"{self.cpus_asked} vcpus asked, {max(self.free_cpus, 0)} free of "
                         f"{self.cpu_limit}")
        if self.memory_asked_kib > self.free_memory_kib:
            short.append(f"{_gib(self.memory_asked_kib)} asked, "
                         f"{_gib(max(self.free_memory_kib, 0))} free of "
                         f"{_gib(self.memory_limit_kib)}")
        return "; ".join(short)


def _gib(kib: float) -> str:
    return f"{kib / 1024**2:.1f} GiB"


def rank_hosts(hosts: list[HostFigures], cpus: int, memory_kib: int, *, policy: str,
               cpu_ratio: float, ram_ratio: float) -> tuple[list[str], list[HostVerdict]]:
    """The hosts that can hold the request, best first by the policy, and every host's
    verdict (in configured order)."""
    verdicts: list[HostVerdict] = []
    keys: list[tuple[int, int, int]] = []
    for index, h in enumerate(hosts):
        if not h.reachable:
            verdicts.append(HostVerdict(h.name, False, reachable=False))
            continue
        cpu_limit = int(h.cpus * cpu_ratio)
        memory_limit = h.memory_kib * ram_ratio
        cpu_room = cpu_limit - h.used_cpus
        memory_room = int(memory_limit) - h.used_memory_kib
        fits = cpus <= cpu_room and memory_kib <= memory_room
        verdicts.append(HostVerdict(h.name, fits, memory_room, cpu_room, cpus, memory_kib,
                                    cpu_limit, memory_limit))
        if fits:
            keys.append((memory_room if policy == "pack" else -memory_room,
                         0 if policy == "pack" else h.used_cpus, index))
    keys.sort()
    return [hosts[index].name for _memory, _used, index in keys], verdicts


def chosen_first(chosen: str, policy: str, verdicts: list[HostVerdict]) -> list[HostVerdict]:
    """The verdicts with the chosen host's first, marked with the policy that chose it."""
    mine = next(v for v in verdicts if v.host == chosen)
    return [mine._replace(chosen_by=policy)] + [v for v in verdicts if v.host != chosen]


def choose_host(hosts: list[HostFigures], cpus: int, memory_kib: int, *, policy: str,
                cpu_ratio: float, ram_ratio: float) -> tuple[str | None, list[HostVerdict]]:
    """The chosen host's name (None if no host can hold the request) and every host's
    verdict, the chosen one first."""
    ranked, verdicts = rank_hosts(hosts, cpus, memory_kib, policy=policy,
                                  cpu_ratio=cpu_ratio, ram_ratio=ram_ratio)
    if not ranked:
        return None, verdicts
    return ranked[0], chosen_first(ranked[0], policy, verdicts)
