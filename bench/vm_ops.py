"""VM operations on a real libvirtd with QEMU: provisiond against the raw calls, and
provctl against virsh, per operation, same run (issue 11, point 7).

    ./dev bench vm_ops [--n 8]

N VMs provisioned through provisiond (1 GiB qcow2 + a domain with the iPXE CD-ROM,
booted under TCG), then per VM, one VM at a time, each operation as a user asks for it:
start (``POST .../start``, answered when the VM is running: ``GET ?wait=``), forced stop
(``POST .../stop {"force": true}``), delete (undefine and the VM's own volume deleted).
Baseline, same run, same host: N domains of the same XML on volumes of their own, and the
raw calls provisiond makes for each operation (Python binding, in process): ``create()``,
``destroy()``, ``undefine()`` + the volume's ``delete()``. Then the same three operations
as processes: ``provctl start|stop --force|delete ID --wait`` against ``virsh
start|destroy|undefine`` (virsh does not delete the volume; provctl's delete does).
Targets: provisiond within 1.2x of the raw calls; provctl no slower than virsh.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost import (  # noqa: E402
    RealHost,
    code_version,
    interruptible,
    ms,
    require_root_and_packages,
    say,
    stats,
)

OPERATIONS = ("start", "force-stop", "delete")
PROVCTL = str(Path(sys.executable).parent / "provctl")


def through_provisiond(host: RealHost, ids: list[str]) -> dict[str, list[float]]:
    """Seconds per operation, from the POST until the VM is where it goes."""
    assert host.api is not None
    api = host.api
    out: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    for request_id in ids:
        for op, path, body, goal in (("start", "start", None, "running"),
                                     ("force-stop", "stop", {"force": True}, "stopped"),
                                     ("delete", "delete", None, "deleted")):
            t0 = time.perf_counter()
            status, answer = api.call("POST", f"/v1/requests/{request_id}/{path}", body)
            if status != 202:
                raise RuntimeError(f"{path}: {status} {answer}")
            while answer["vm"]["state"] != goal:
                answer = host.state(request_id, wait=60)
                if answer["vm"]["state"] not in ("starting", "powering-off", "deleting",
                                                 goal):
                    raise RuntimeError(f"{path}: VM is {answer['vm']}")
            out[op].append(time.perf_counter() - t0)
    return out


def raw_calls(host: RealHost, n: int) -> dict[str, list[float]]:
    """The same operations by the binding, on domains defined the same way."""
    domains = []
    for i in range(n):
        name = f"raw-{i}-{time.monotonic_ns()}"
        vol = host.storage_pool.createXML(host.volume_xml(f"{name}.qcow2"), 0)
        domains.append((host.conn.defineXML(host.domain_xml(name, f"{name}.qcow2")), vol))
    out: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    for dom, vol in domains:
        for op, act in (("start", lambda: dom.create()), ("force-stop", lambda: dom.destroy()),
                        ("delete", lambda: (dom.undefine(), vol.delete(0)))):
            t0 = time.perf_counter()
            act()
            out[op].append(time.perf_counter() - t0)
    return out


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def processes(host: RealHost, ids: list[str], virsh_names: list[str]
              ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """provctl (against provisiond) and virsh (against libvirtd), a process per operation."""
    assert host.daemon is not None
    sock = ["--socket", host.daemon.socket]
    provctl: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    for request_id in ids:
        provctl["start"].append(timed([PROVCTL, *sock, "start", request_id, "--wait"]))
        provctl["force-stop"].append(timed([PROVCTL, *sock, "stop", request_id, "--force",
                                            "--wait"]))
        provctl["delete"].append(timed([PROVCTL, *sock, "delete", request_id, "--wait"]))
    virsh: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    base = ["virsh", "-c", host.libvirtd.uri]
    for name in virsh_names:
        virsh["start"].append(timed([*base, "start", name]))
        virsh["force-stop"].append(timed([*base, "destroy", name]))
        virsh["delete"].append(timed([*base, "undefine", name]))
    return provctl, virsh


def provision(host: RealHost, n: int) -> list[str]:
    ids, _times = host.provision_sequential(n, 0)
    return ids


def define_raw(host: RealHost, n: int) -> list[str]:
    names = []
    for i in range(n):
        name = f"virsh-{i}-{time.monotonic_ns()}"
        host.storage_pool.createXML(host.volume_xml(f"{name}.qcow2"), 0)
        host.conn.defineXML(host.domain_xml(name, f"{name}.qcow2"))
        names.append(name)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="VMs per path (default 8)")
    args = parser.parse_args()
    require_root_and_packages()
    mean: Callable[[list[float]], float] = lambda v: sum(v) / len(v)  # noqa: E731
    with interruptible(), RealHost() as host:
        host.fresh_provisiond()
        say(f"provisiond: {args.n} VMs, each started, forced off, deleted ...")
        prov = through_provisiond(host, provision(host, args.n))
        host.reset()
        say(f"raw calls: {args.n} VMs ...")
        raw = raw_calls(host, args.n)
        host.reset()
        say(f"provctl and virsh: {args.n} VMs each ...")
        provctl, virsh = processes(host, provision(host, args.n), define_raw(host, args.n))
        host.reset()
    print(f"vm_ops measured: {code_version()}")
    rows: list[Any] = []
    for op in OPERATIONS:
        print(f"  {op:<10} provisiond {stats(prov[op])}")
        print(f"  {op:<10} raw calls  {stats(raw[op])}")
        print(f"  {op:<10} provctl    {stats(provctl[op])}")
        print(f"  {op:<10} virsh      {stats(virsh[op])}")
        rows.append((op, mean(prov[op]) / mean(raw[op]), mean(provctl[op]) / mean(virsh[op])))
    for op, over_raw, over_virsh in rows:
        print(f"vm_ops: {op}: provisiond/raw {over_raw:.2f} (target <= 1.2: "
              f"{'met' if over_raw <= 1.2 else 'MISSED'}), provctl/virsh {over_virsh:.2f} "
              f"(target <= 1: {'met' if over_virsh <= 1 else 'MISSED'}); means "
              f"{ms(mean(prov[op]))} / {ms(mean(raw[op]))} / {ms(mean(provctl[op]))} / "
              f"{ms(mean(virsh[op]))} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
