"""SIGHUP: re-read the configuration and swap it in whole, or keep the old one."""

from __future__ import annotations

import logging

from daemon.config import Config, load_config
from daemon.errors import ConfigError
from daemon.process import systemd
from daemon.service import Service

log = logging.getLogger("provisiond")


def reload_config(service: Service) -> bool:
    """Re-read the service's configuration files and swap the result in if it is valid.

    Sizes, templates, pools and grants take effect at once; requests in flight keep
    their stored cpus, memory and storage. Libvirt hosts are not re-opened, so a new host
    or a changed URI refuses the reload (restart for that). On any problem the old
    configuration stays in force and each problem is logged on its own line.
    """
    old = service.config
    try:
        new = load_config(old.source)
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
    except Exception as exc:  # a bug must not take the serving daemon down
        log.exception("cannot reload the configuration from %s", old.source)
        problems = [f"{old.source}: {type(exc).__name__}: {exc}"]
    else:
        problems = host_changes_needing_restart(service, new)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        log.error("configuration not reloaded; the old one stays in force")
        return False

    for name in service.hosts:
        if not any(h.name == name for hw in new.hardware_pools.values() for h in hw.hosts):
            log.warning("host %s is no longer configured; its connection stays open until "
                        "provisiond restarts", name)
    for key in ("socket", "socket_group", "database", "libvirt_call_timeout"):
        before, after = getattr(old.daemon, key), getattr(new.daemon, key)
        if before != after:
            log.warning("daemon.%s changed (%s -> %s): that needs a restart; until then "
                        "%s stays in force", key, before, after, before)
    for record in service.store.live_requests():
        gone = [f"{what} {name}" for what, name, known in (
            ("resource pool", record.resource_pool, new.resource_pools),
            ("hardware pool", record.hardware_pool, new.hardware_pools),
            ("template", record.template, new.templates)) if name not in known]
        if gone:
            log.warning("request %s in progress uses %s, no longer configured: it will fail",
                        record.id, " and ".join(gone),
                        extra={"request_id": record.id, "state": str(record.state)})
    service.config = new  # one assignment: every step and handler sees old or new, never a mix
    service.relocate_claims()  # a pool newly declared shared: its claims under one key
    log.info("configuration reloaded from %s (%d sizes, %d templates, %d hardware pools, "
             "%d resource pools)", new.source, len(new.sizes), len(new.templates),
             len(new.hardware_pools), len(new.resource_pools))
    return True


def host_changes_needing_restart(service: Service, new: Config) -> list[str]:
    """Problems for hosts the new configuration names that the service has not opened."""
    problems = []
    pools_file = new.files.get("pools", new.source)
    for hw in new.hardware_pools.values():
        for host in hw.hosts:
            current = service.hosts[host.name] if host.name in service.hosts else None
            if current is None:
                problems.append(f"{pools_file}: hardware_pools.{hw.name}.hosts: host "
                                f"{host.name} ({host.uri}) is new: adding a host needs a "
                                "restart")
            elif current.uri != host.uri:
                problems.append(f"{pools_file}: hardware_pools.{hw.name}.hosts: host "
                                f"{host.name} changed its URI ({current.uri} -> {host.uri}): "
                                "that needs a restart")
    return problems


class Reloader:
    """SIGHUP's handler: reloads once the service runs; a signal during start-up waits."""

    def __init__(self) -> None:
        self.service: Service | None = None
        self.ready = False  # READY=1 sent: a reload is then framed by RELOADING=1/READY=1
        self.pending = False
        self.stopping = False
        self.status = "serving"

    def request(self) -> None:
        """Reload now, or as soon as the service has started."""
        if self.stopping:
            log.info("reload requested while shutting down: ignored")
            return
        if self.service is None:
            log.info("reload requested during start-up: done once the service runs")
            self.pending = True
            return
        log.info("reloading the configuration (SIGHUP)")
        if self.ready:
            systemd.notify("RELOADING=1", systemd.monotonic_usec(),
                           "STATUS=reloading the configuration")
        reload_config(self.service)
        if self.ready:
            systemd.notify("READY=1", f"STATUS={self.status}")

    def service_started(self, service: Service) -> None:
        """The service runs: carry out a reload asked for during start-up."""
        self.service = service
        if self.pending:
            self.pending = False
            self.request()
