"""Shared fixtures: configurations over test-driver node XMLs, engines, fault injection.

Every test gets its own libvirt host: a ``test:///<abs path>`` connection to a node XML in
``tests/data/`` is private to that connection. The libvirt module itself is never faked;
``Faulty`` wraps a real connection to inject failures libvirt can't be made to produce.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import libvirt
import pytest

from daemon.auth import Identity
from daemon.config import Config, load_config
from daemon.service import ProvisioningRequest, Service
from daemon.store import Store
from harness.daemon import DATA, Daemon, daemon_config, write_config

ALICE = Identity("alice", frozenset({"staff"}))
BOB = Identity("bob", frozenset({"others"}))


class Faulty:
    """A real libvirt object whose named methods raise (or are replaced).

    Objects returned by its methods are wrapped too, so ``faults={"createXML": ...}``
    reaches a storage pool's ``createXML`` through the connection.
    """

    def __init__(self, inner: Any, faults: dict[str, Any]) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        fault = self._faults.get(name)
        if fault is not None:
            if callable(fault) and not isinstance(fault, BaseException):
                return fault
            def raising(*_a: Any, **_k: Any) -> Any:
                raise libvirt.libvirtError(f"injected fault: {fault}")
            return raising
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if isinstance(result, (libvirt.virStoragePool, libvirt.virStorageVol,
                                   libvirt.virDomain)):
                return Faulty(result, self._faults)
            return result
        return call


class Harness:
    """A service over one private test-driver host, with helpers for tests."""

    def __init__(self, config: Config, store: Store, service: Service,
                 connections: list[Any]) -> None:
        self.config = config
        self.store = store
        self.service = service
        self.connections = connections

    @property
    def conn(self) -> Any:
        """The raw libvirt connection the engine uses (the same private host)."""
        return self.connections[0]

    def submit(self, template: str = "ipxe", size: str = "small", who: Identity = ALICE,
               **kw: Any) -> Any:
        return self.service.submit(who, ProvisioningRequest(template, size, "rp", **kw))

    async def run(self, template: str = "ipxe", size: str = "small", who: Identity = ALICE,
                  **kw: Any) -> Any:
        record = self.submit(template, size, who, **kw)
        return await self.service.wait_terminal(record.id, timeout=20)

    def states(self, request_id: str) -> list[str]:
        return [e.to_state for e in self.store.get_log(request_id) if e.kind == "transition"]

    def volume_names(self, pool: str) -> set[str]:
        return {v.name() for v in self.conn.storagePoolLookupByName(pool).listAllVolumes()}


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_harness(node_xml, faults=..., **config options)``."""
    made: list[Harness] = []

    async def make(node_xml: str = "host_basic.xml", *, faults: dict[str, Any] | None = None,
                   **options: Any) -> Harness:
        main = write_config(tmp_path / f"cfg{len(made)}", node_xml, **options)
        config = load_config(main)
        store = Store(config.daemon.database)
        store.migrate()
        connections: list[Any] = []

        def opener(uri: str) -> Any:
            conn = libvirt.open(uri)
            connections.append(conn)
            return Faulty(conn, faults) if faults else conn

        service = Service(config, store, opener=opener)
        await service.start()
        harness = Harness(config, store, service, connections)
        made.append(harness)
        return harness

    yield make
    for h in made:
        await h.service.stop()
        h.store.close()


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> Harness:
    """A service on ``tests/data/host_basic.xml`` with the default test configuration."""
    return await make_harness()


@pytest.fixture
def daemon_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is private to its user)."""
    directory = Path(tempfile.mkdtemp(prefix="provisiond-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def make_daemon(daemon_dir: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: a started provisiond subprocess; stopped (SIGTERM, exit 0) at teardown."""
    started: list[Daemon] = []

    def make(node_xml: str = "host_basic.xml", start: bool = True, **options: Any) -> Daemon:
        sub = daemon_dir / f"d{len(started)}"
        sub.mkdir()
        sub.chmod(0o755)
        d = Daemon(sub, daemon_config(sub, node_xml, **options))
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop() == 0, d.log()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A provisiond process on tests/data/host_basic.xml."""
    return make_daemon()


# --------------------------------------------------------------------------- a host that comes late


class LateHost:
    """A test-driver host whose node XML appears only at ``arrive()``.

    A daemon started on it (``make_daemon(str(late.path))``) serves with the host
    unreachable; its requests wait in ``storage-searching`` until the host arrives and the
    engine reconnects (within a few seconds), then go on to ``done``.
    """

    def __init__(self, path: Path, node_xml: str = "host_basic.xml") -> None:
        self.path = path
        self.node_xml = node_xml

    def arrive(self) -> None:
        """Put the node XML in place: the daemon's next reconnect attempt succeeds."""
        partial = self.path.with_name(self.path.name + ".partial")
        shutil.copy(DATA / self.node_xml, partial)
        os.replace(partial, self.path)  # never a half-written file for libvirt to read


@pytest.fixture
def late_host(daemon_dir: Path) -> LateHost:
    """A host that is unreachable until ``late_host.arrive()``."""
    return LateHost(daemon_dir / "late-host.xml")
