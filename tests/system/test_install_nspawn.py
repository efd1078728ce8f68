"""The system service as an administrator installs it: ``./dev install`` on a Debian 12
booted under a real systemd (systemd-nspawn), with Debian's own libvirtd and polkit.

One container for the module (``booted_debian.py`` says how it is made and cached); the
tests run in order on it: install, a VM through socket activation, the journal, reload and
restart with a request in flight, an upgrade over edited configuration, uninstall. The
user ``alice`` is in the group ``provisiond`` and nothing else, as the README tells.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from booted_debian import SRC, BootError, BootedDebian, missing_tools, rootfs

ALICE = "alice"
LIBVIRT_UNITS = ("libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket")
ALL_STATES = ("requested", "authorized", "storage-searching", "storage-creating",
              "defining", "done")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=(
    "boots a Debian 12 under systemd-nspawn and installs the system service in it: "
    "root only"))


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedDebian]:
    """A booted Debian 12 with libvirt's images on the host's disk (the overlay's tmpfs
    is too small for a VM's volume); the host's network interfaces are checked untouched."""
    missing = missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: scripts/setup installs them "
                    "(Debian packages mmdebstrap, systemd-container)", pytrace=False)
    work = tmp_path_factory.mktemp("nspawn")
    log = work / "nspawn.log"
    images = work / "images"
    images.mkdir()
    interfaces = set(os.listdir("/sys/class/net"))
    try:
        box = BootedDebian(rootfs(log), log, binds=[(images, "/var/lib/libvirt/images")])
        box.boot()
    except BootError as exc:
        pytest.fail(f"{exc}\n{tail(log)}", pytrace=False)
    try:
        yield box
    finally:
        box.stop()
    assert set(os.listdir("/sys/class/net")) == interfaces


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
        if path.exists() else ""


def pip_environment() -> dict[str, str]:
    """The host's PIP_* settings, for the install's pip inside."""
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def journal(box: BootedDebian, *matches: str) -> list[dict[str, Any]]:
    out = box.run("journalctl", "--no-pager", "-o", "json", *matches).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def service_log(box: BootedDebian) -> str:
    return box.run("journalctl", "--no-pager", "-u", "provisiond", "-n", "60",
                   check=False).stdout


def provctl(box: BootedDebian, *args: str, timeout: float = 120) -> Any:
    """``provctl ARGS --json`` as alice; its JSON answer."""
    result = box.run("provctl", *args, "--json", user=ALICE, check=False, timeout=timeout)
    assert result.returncode == 0, (f"provctl {' '.join(args)} exited {result.returncode}:\n"
                                    f"{result.stdout}{result.stderr}\n{service_log(box)}")
    return json.loads(result.stdout)


def main_pid(box: BootedDebian) -> int:
    return int(box.run("systemctl", "show", "-P", "MainPID", "provisiond.service")
               .stdout.strip())


def is_active(box: BootedDebian, unit: str) -> str:
    return box.run("systemctl", "is-active", unit, check=False).stdout.strip()


@pytest.fixture(scope="module")
def installed(debian: BootedDebian) -> str:
    """``./dev install`` from the checkout, then the user alice in the group provisiond."""
    result = debian.run(f"{SRC}/dev", "install", env=pip_environment(), check=False,
                        timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    debian.run("useradd", "--create-home", ALICE)
    debian.run("usermod", "-aG", "provisiond", ALICE)
    return result.stdout


def test_install_sets_up_the_service_and_leaves_it_to_socket_activation(
        debian: BootedDebian, installed: str) -> None:
    assert "/etc/provisiond/provisiond.yml: ok" in installed
    assert "defined libvirt's storage pool 'default'" in installed
    assert "warning" not in installed, installed
    assert is_active(debian, "provisiond.socket") == "active"
    assert is_active(debian, "provisiond.service") == "inactive"  # nothing connected yet
    assert debian.run("systemctl", "is-enabled", "provisiond.socket").stdout.strip() == \
        "enabled"
    for command in ("provctl", "provisiond"):
        assert debian.run("sh", "-c", f"command -v {command}", user=ALICE).stdout.strip() \
            == f"/usr/local/bin/{command}"
    # polkit's libvirt rule reads the user database: the membership must be there.
    members = debian.run("getent", "group", "libvirt").stdout.strip().split(":")[3]
    assert "provisiond" in members.split(",")
    assert debian.run("provisiond", "--check-config").returncode == 0  # --config implied
    pool = debian.run("virsh", "-c", "qemu:///system", "pool-info", "default").stdout
    assert re.search(r"^State:\s+running$", pool, re.M), pool
    assert re.search(r"^Autostart:\s+yes$", pool, re.M), pool
    # The container shares the host's network: libvirt must not have started one.
    assert debian.run("virsh", "-c", "qemu:///system", "net-list", "--name").stdout.strip() \
        == ""


def test_a_member_of_provisiond_gets_a_vm_through_socket_activation(
        debian: BootedDebian, installed: str) -> None:
    request = provctl(debian, "create", "--template", "ipxe", "--size", "small", "--wait")
    assert request["state"] == "done", request
    assert request["owner"] == ALICE
    assert is_active(debian, "provisiond.service") == "active"
    assert "(socket activation" in service_log(debian)

    virsh = ("virsh", "-c", "qemu:///system")
    dominfo = debian.run(*virsh, "dominfo", request["domain"]["uuid"]).stdout
    assert re.search(rf"^Name:\s+{re.escape(request['domain']['name'])}$", dominfo, re.M)
    volumes = debian.run(*virsh, "vol-list", "default").stdout
    assert request["volume"]["name"] in volumes
    assert request["volume"]["path"].startswith("/var/lib/libvirt/images/")

    entries = journal(debian, "-u", "provisiond", f"REQUEST_ID={request['id']}")
    states = [e.get("STATE") for e in entries if e.get("STATE")]
    assert states[-5:] == list(ALL_STATES[1:]), states
    assert states[0] == "requested", f"the journal lacks the 'requested' transition: {states}"
    assert all(e["_SYSTEMD_UNIT"] == "provisiond.service" for e in entries)


def test_reload_and_restart_keep_a_request_in_flight(debian: BootedDebian,
                                                     installed: str) -> None:
    # With libvirtd down the request waits for its host: in flight for as long as needed.
    debian.run("systemctl", "stop", *LIBVIRT_UNITS, "libvirtd.service")
    try:
        request = provctl(debian, "create", "--template", "ipxe", "--size", "tiny")
        deadline = time.monotonic() + 30
        while provctl(debian, "show", request["id"])["state"] != "storage-searching":
            assert time.monotonic() < deadline, provctl(debian, "log", request["id"])
            time.sleep(0.2)

        pid = main_pid(debian)
        debian.run("systemctl", "reload", "provisiond")
        assert main_pid(debian) == pid
        assert "configuration reloaded from /etc/provisiond/provisiond.yml" in \
            service_log(debian)
        assert provctl(debian, "show", request["id"])["state"] == "storage-searching"

        debian.run("systemctl", "restart", "provisiond")
        assert main_pid(debian) not in (0, pid)
        assert is_active(debian, "provisiond.service") == "active"
        assert f"resuming request {request['id']} in state storage-searching" in \
            service_log(debian)
        assert provctl(debian, "show", request["id"])["state"] == "storage-searching"
    finally:
        debian.run("systemctl", "start", *LIBVIRT_UNITS)

    follow = debian.run("provctl", "log", request["id"], "--follow", user=ALICE,
                        check=False, timeout=120)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    final = provctl(debian, "show", request["id"])
    assert final["state"] == "done", final
    states = [e.get("STATE") for e in
              journal(debian, "-u", "provisiond", f"REQUEST_ID={request['id']}")]
    assert "done" in states and "storage-creating" in states, states


def test_an_upgrade_keeps_edited_configuration_and_restarts_the_service(
        debian: BootedDebian, installed: str) -> None:
    etc = Path("/etc/provisiond")
    recorded = Path("/opt/provisiond/share/provisiond/config")
    debian.run("sh", "-c", f"echo '# the admin was here' >> {etc}/pools.yml")
    # As if the last install had shipped other defaults: pools.yml was edited since, so
    # it is kept and the new default goes beside it; templates.yml was not, so it follows.
    debian.run("sh", "-c", f"echo '# older default' >> {recorded}/pools.yml; "
               f"echo '# older default' >> {recorded}/templates.yml; "
               f"echo '# older default' >> {etc}/templates.yml")
    pid = main_pid(debian)

    result = debian.run(f"{SRC}/dev", "install", env=pip_environment(), timeout=600)
    assert f"kept {etc}/pools.yml (edited); the new default is beside it: " \
           f"{etc}/pools.yml.dist" in result.stdout, result.stdout
    assert f"updated {etc}/templates.yml to the new default" in result.stdout
    assert "# the admin was here" in debian.run("cat", f"{etc}/pools.yml").stdout
    assert "# older default" not in debian.run("cat", f"{etc}/templates.yml").stdout
    assert debian.run("cmp", f"{etc}/pools.yml.dist", f"{SRC}/config/system/pools.yml") \
        .returncode == 0
    assert main_pid(debian) not in (0, pid)  # the new code runs

    again = debian.run(f"{SRC}/dev", "install", env=pip_environment(), timeout=600)
    assert not re.search(r"wrote|kept|updated|defined|warning", again.stdout), again.stdout
    assert provctl(debian, "create", "--template", "ipxe", "--size", "tiny",
                   "--wait")["state"] == "done"


def test_uninstall_leaves_no_unit_user_or_group_and_purge_the_rest(
        debian: BootedDebian, installed: str) -> None:
    result = debian.run(f"{SRC}/dev", "uninstall")
    assert "kept /etc/provisiond and /var/lib/provisiond" in result.stdout
    units = debian.run("systemctl", "list-unit-files", "--no-legend", "provisiond*",
                       check=False)
    assert (units.returncode, units.stdout.strip()) == (1, ""), units.stdout  # none found
    for unit in ("provisiond.socket", "provisiond.service"):
        assert debian.run("systemctl", "show", "-P", "LoadState", unit).stdout.strip() == \
            "not-found"
    assert debian.run("getent", "passwd", "provisiond", check=False).returncode == 2
    assert debian.run("getent", "group", "provisiond", check=False).returncode == 2
    assert "provisiond" not in debian.run("getent", "group", "libvirt").stdout
    gone = ("/opt/provisiond", "/usr/local/bin/provctl", "/usr/local/bin/provisiond",
            "/usr/local/lib/systemd/system/provisiond.service",
            "/usr/local/lib/sysusers.d/provisiond.conf",
            "/usr/local/lib/tmpfiles.d/provisiond.conf", "/run/provisiond")
    for path in gone:
        assert debian.run("test", "-e", path, check=False).returncode == 1, path
    for path in ("/etc/provisiond/provisiond.yml", "/var/lib/provisiond/provisiond.db"):
        assert debian.run("test", "-e", path, check=False).returncode == 0, path

    assert debian.run(f"{SRC}/dev", "uninstall").returncode == 0  # nothing left: still fine
    debian.run(f"{SRC}/dev", "uninstall", "--purge")
    for path in ("/etc/provisiond", "/var/lib/provisiond"):
        assert debian.run("test", "-e", path, check=False).returncode == 1, path
