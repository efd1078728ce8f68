"""provisiond versus the usual tools on a real libvirtd with QEMU: per-VM time through
provisiond, ``virt-install``, and ``virsh vol-create-as`` + ``virsh define``; same run, same
host (issue 6, point 7).

    ./dev bench vs_tools [--n 20] [--rounds 1] [--poll 0] [--provctl K]

One VM = a 1 GiB qcow2 volume in a dir pool + a domain defined on it (not started), one VM
at a time (sequential), each path starting on an empty pool:

- provisiond: ``POST /v1/requests`` on its socket, then ``GET /v1/requests/{id}?wait=300``,
  answered once the request is ``done`` (``--poll S``: a plain GET every S s instead;
  fresh provisiond and database, warmed up by 2 VMs first). Volume: createXML flags 0,
  ``allocation 0`` (thin qcow2, no preallocation), as provisiond does.
- virt-install (Debian package ``virtinst``, installed with apt when missing), one process
  per VM: ``--disk pool=P,size=1,format=qcow2 --disk vol=P/ipxe.iso,device=cdrom --import
  --noreboot`` (defines, does not start), ``--osinfo detect=on,require=off --virt-type qemu
  --network none --graphics none``. virtinst always creates a new qcow2 with
  ``VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA`` (qemu-img ``preallocation=metadata``).
- virsh: two processes per VM, ``vol-create-as P NAME 1G --allocation 0 --format qcow2``
  (flags 0, the same volume XML as provisiond's) and ``define FILE`` of provisiond's own
  domain XML (daemon/virt/domain_xml.py); and again with ``--prealloc-metadata``, the flag
  virt-install uses, to compare like with like: the difference is what preallocation costs
  per VM. (``--allocation 0`` matters there: without it allocation = capacity, and
  libvirt then asks qemu-img for ``preallocation=falloc``, a fully allocated file.)
- for reference, the raw calls (Python binding, in this process: createXML + defineXML).
- provctl: ``provctl create --wait`` (a process per VM, as a user would run it; it prints
  each state and returns when the daemon says the request ended), ``--provctl K`` VMs
  per round (default: ``--n``), against the same provisiond. Its per-VM time is printed
  beside virsh's two processes (target: provctl no slower).

Tools and provctl get one warm-up call each (not counted); provisiond is stopped while the
tools run (it would otherwise handle their domains' events). Everything is removed at the
end (domains, volumes, pool, provisiond, libvirtd, temp dirs), also on error or Ctrl-C. The
figures come last on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost import (  # noqa: E402
    ISO,
    SIZE,
    RealHost,
    code_version,
    interruptible,
    ms,
    require_root_and_packages,
    say,
    stats,
)

TARGET_VIRT_INSTALL = 30.0
TARGET_VIRSH = 3.0


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {run.returncode}:\n{run.stderr}{run.stdout}")
    return seconds


def virt_install_argv(host: RealHost, name: str) -> list[str]:
    return ["virt-install", "--connect", host.libvirtd.uri, "--name", name,
            "--memory", str(SIZE["memory"] // 1024), "--vcpus", str(SIZE["cpus"]),
            "--virt-type", "qemu",
            "--disk", f"pool={host.pool},size={SIZE['storage_size_in_gb']},format=qcow2",
            "--disk", f"vol={host.pool}/{ISO},device=cdrom",
            "--boot", "cdrom,hd", "--import", "--noreboot", "--noautoconsole",
            "--osinfo", "detect=on,require=off", "--network", "none", "--graphics", "none"]


def run_virt_install(host: RealHost, prefix: str, n: int) -> list[float]:
    return [timed(virt_install_argv(host, f"{prefix}-{i}")) for i in range(n)]


def run_virsh(host: RealHost, prefix: str, n: int, prealloc: bool, tmp: Path) -> list[float]:
    uri = host.libvirtd.uri
    jobs = []
    for i in range(n):
        vol = f"{prefix}-{i}.qcow2"
        xml = tmp / f"{prefix}-{i}.xml"
        xml.write_text(host.domain_xml(f"{prefix}-{i}", vol))
        jobs.append((vol, xml))
    out = []
    for vol, xml in jobs:
        create = ["virsh", "-q", "-c", uri, "vol-create-as", host.pool, vol,
                  f"{SIZE['storage_size_in_gb']}G", "--allocation", "0", "--format", "qcow2"]
        if prealloc:
            create.append("--prealloc-metadata")
        t0 = time.perf_counter()
        timed(create)
        timed(["virsh", "-q", "-c", uri, "define", str(xml)])
        out.append(time.perf_counter() - t0)
    return out


def run_raw(host: RealHost, prefix: str, n: int) -> list[float]:
    inputs = []
    for i in range(n):
        vol = f"{prefix}-{i}.qcow2"
        inputs.append((host.volume_xml(vol), host.domain_xml(f"{prefix}-{i}", vol)))
    out = []
    for vol_xml, dom_xml in inputs:
        t0 = time.perf_counter()
        host.storage_pool.createXML(vol_xml, 0)
        host.conn.defineXML(dom_xml)
        out.append(time.perf_counter() - t0)
    return out


def run_provctl(host: RealHost, n: int) -> list[float]:
    assert host.daemon is not None
    argv = [str(Path(sys.executable).parent / "provctl"), "--socket", host.daemon.socket,
            "create", "--template", "ipxe", "--size", "bench", "--pool", "rp", "--wait"]
    return [timed(argv) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="VMs per path (default 20)")
    parser.add_argument("--poll", type=float, default=0,
                        help="seconds between two GETs while waiting for done; 0 (default): "
                             "one GET ?wait= the daemon answers when the request is done")
    parser.add_argument("--provctl", type=int, default=None, metavar="K",
                        help="VMs through 'provctl create --wait' per round (default: --n; "
                             "0 skips it)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat all paths this many times, in turn, and pool the "
                             "samples (default 1)")
    args = parser.parse_args(argv)
    n = args.n
    provctl_n = n if args.provctl is None else args.provctl

    require_root_and_packages(extra_apt=("virtinst",))
    version = code_version()
    load0 = os.getloadavg()[0]
    host = RealHost()
    tmp = Path(tempfile.mkdtemp(prefix="provisiond-bench-tools-"))
    report: list[str] = []
    with interruptible():
        try:
            host.start()

            prov: list[float] = []
            provctl: list[float] = []
            vi: list[float] = []
            vs: list[float] = []
            vsp: list[float] = []
            raw: list[float] = []
            for r in range(args.rounds):
                of = f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""
                host.warm_provisiond(args.poll)
                say(f"provisiond: {n} VMs{of} ...")
                prov += host.provision_sequential(n, args.poll)[1]
                host.reset()
                if provctl_n:
                    say(f"provctl create --wait: {provctl_n} VMs{of} ...")
                    if r == 0:  # one unmeasured call, as the tools get, on an empty pool
                        run_provctl(host, 1)
                        host.reset()
                    provctl += run_provctl(host, provctl_n)
                    host.reset()
                host.stop_provisiond()  # idle while the tools run: no event handling there
                host.reset()

                def measured(run: Any, prefix: str, *extra: Any,
                             warm: bool = True) -> list[float]:
                    # One unmeasured call in the first round; the pool emptied after each.
                    if warm and r == 0:
                        run(host, f"{prefix}-warm", 1, *extra)
                        host.reset()
                    times = run(host, f"{prefix}{r}", n, *extra)
                    host.reset()
                    return times

                say(f"virt-install: {n} VMs (one process each){of} ...")
                vi += measured(run_virt_install, "vi")
                say(f"virsh vol-create-as + define: {n} VMs{of} ...")
                vs += measured(run_virsh, "vs", False, tmp)
                say(f"virsh vol-create-as --prealloc-metadata + define: {n} VMs{of} ...")
                vsp += measured(run_virsh, "vsp", True, tmp, warm=False)
                say(f"raw calls (reference): {n} VMs{of} ...")
                raw += measured(run_raw, "raw")
        finally:
            say("cleaning up ...")
            try:
                host.stop()
            finally:
                for f in tmp.glob("*"):
                    f.unlink()
                os.rmdir(tmp)

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    p, i, s, sp, r = mean(prov), mean(vi), mean(vs), mean(vsp), mean(raw)
    prealloc_measured = sp - s
    prealloc = max(prealloc_measured, 0.0)
    report += [
        "flags per path (qcow2, 1 GiB, dir pool; domain defined, not started):",
        "  provisiond     createXML flags=0, allocation 0 (no preallocation); API over its socket",
        "  virt-install   createXML flags=PREALLOC_METADATA (virtinst always, for new qcow2); "
        "one process per VM",
        "  virsh          vol-create-as --allocation 0 --format qcow2 (flags=0, as provisiond) "
        "+ define FILE; two processes per VM",
        "  virsh+prealloc vol-create-as --allocation 0 --format qcow2 --prealloc-metadata "
        "(flags=PREALLOC_METADATA, as virt-install) + define FILE",
        "  raw calls      createXML flags=0 + defineXML, Python binding, in-process",
        f"provisiond      {stats(prov)}",
        f"virt-install    {stats(vi)}",
        f"virsh           {stats(vs)}",
        f"virsh+prealloc  {stats(vsp)}  (preallocation costs {ms(prealloc_measured)} ms/VM"
        f"{'; below 0: noise, taken as 0' if prealloc_measured < 0 else ''})",
        f"raw calls       {stats(raw)}  (virt-install/raw {i / r:.1f}x, virsh/raw {s / r:.2f}x)",
    ]
    if provctl:
        report.append(f"provctl create --wait (a process per VM; "
                      f"n={len(provctl)}): {stats(provctl)}")
    report.append(f"like with like: virt-install / (provisiond + preallocation) "
                  f"{i / (p + prealloc):.1f}x; virsh+prealloc / (provisiond + preallocation) "
                  f"{sp / (p + prealloc):.2f}x")

    def median(v: list[float]) -> float:
        o = sorted(v)
        return o[len(o) // 2] if len(o) % 2 else (o[len(o) // 2 - 1] + o[len(o) // 2]) / 2
    report.append(f"ratios of medians: virt-install/provisiond {median(vi) / median(prov):.1f}x, "
                  f"virsh/provisiond {median(vs) / median(prov):.2f}x")

    def verdict(ratio: float, target: float) -> str:
        return f"target >= {target:g}x: {'met' if ratio >= target else 'MISSED'}"

    print(f"provisiond measured: {version}; load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    print("\n".join(report))
    print()
    rounds = f" x {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"vs_tools: provisiond {p:.4f} s/VM, virt-install {i:.3f} s/VM, "
          f"virsh {s:.4f} s/VM (n={n}{rounds} each, sequential)")
    print(f"vs_tools: virt-install/provisiond {i / p:.1f}x ({verdict(i / p, TARGET_VIRT_INSTALL)})"
          f", virsh/provisiond {s / p:.2f}x ({verdict(s / p, TARGET_VIRSH)})")
    if provctl:
        c = mean(provctl)
        print(f"vs_tools: per call, provctl create --wait {ms(c)} ms/VM (one process), virsh "
              f"vol-create-as + define {ms(s)} ms/VM (two processes): provctl/virsh "
              f"{c / s:.2f} (target <= 1: {'met' if c <= s else 'MISSED'}; medians "
              f"{ms(median(provctl))} vs {ms(median(vs))} ms)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
