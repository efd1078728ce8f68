"""Issue 12, point 12: provctl in an environment that is not quite its own (another user's
``XDG_RUNTIME_DIR``, kept by ``su`` or ``setpriv``), and the OS errors of this machine:
one line, the right exit code, never "unexpected error"."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from daemon.cli import commands, sessions
from daemon.cli.client import CliError
from harness.daemon import OTHER_GROUP, OTHER_USER, REPO, SYSTEM_PYTHON, Daemon

RID = "0123456789abcdef0123456789abcdef"
# provctl with the system service's socket moved to argv[1] (the real one is /run's).
PROVCTL_AS_OTHER = """
import sys
from daemon.cli import client, main
client.SYSTEM_SOCKET = sys.argv[1]
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def foreign_runtime_dir() -> Iterator[str]:
    """An XDG_RUNTIME_DIR that OTHER_USER cannot enter (this uid's, mode 0700)."""
    directory = tempfile.mkdtemp(prefix="provisiond-xdg-")
    yield os.path.join(directory, "runtime")
    shutil.rmtree(directory, ignore_errors=True)


def provctl_as_other(runtime_dir: str, *args: str,
                     system_socket: str = "/nonexistent/provisiond.sock"
                     ) -> subprocess.CompletedProcess[str]:
    """provctl run by OTHER_USER with ``XDG_RUNTIME_DIR=runtime_dir`` (as after su)."""
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": runtime_dir,
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([SYSTEM_PYTHON, "-c", PROVCTL_AS_OTHER, system_socket, *args],
                          user=OTHER_USER, group=OTHER_GROUP, extra_groups=[], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def unreachable(runtime_dir: str) -> str:
    """provctl's line for a socket in a runtime directory it cannot enter."""
    where = f"{runtime_dir}/provisiond"
    return (f"provctl: cannot reach provisiond at {where}/provisiond.sock: Permission denied "
            f"(cannot enter {where}: another user's XDG_RUNTIME_DIR? see --socket)\n")


def test_another_users_runtime_dir_is_not_quietly_swapped_for_the_system_socket(
        daemon: Daemon, foreign_runtime_dir: str) -> None:
    # The system service's socket is there (a daemon OTHER_USER may reach), but the
    # environment names another runtime directory: say that one cannot be reached.
    result = provctl_as_other(foreign_runtime_dir, "list", system_socket=daemon.socket)
    assert (result.returncode, result.stdout) == (4, ""), result
    assert result.stderr == unreachable(foreign_runtime_dir)
    # Where the runtime directory is readable and has no socket, the system's is used.
    readable = tempfile.mkdtemp(prefix="provisiond-xdg-")
    try:
        os.chmod(readable, 0o755)
        result = provctl_as_other(readable, "list", "--json", system_socket=daemon.socket)
        assert result.returncode == 0, result.stderr
    finally:
        os.rmdir(readable)


@pytest.mark.parametrize("argv", [
    ["whoami"], ["catalog"], ["list"], ["show", RID], ["log", RID], ["log", RID, "--follow"],
    ["create", "-t", "ipxe", "-s", "small", "--wait"], ["cancel", RID],
    ["start", RID, "--wait"], ["delete", RID], ["console", RID], ["display", RID],
    ["explain", "-t", "ipxe", "-s", "small"], ["reconcile"],
])
def test_every_command_says_it_cannot_reach_the_daemon_there_and_exits_4(
        foreign_runtime_dir: str, argv: list[str]) -> None:
    result = provctl_as_other(foreign_runtime_dir, *argv)
    assert (result.returncode, result.stdout) == (4, ""), result
    assert result.stderr == unreachable(foreign_runtime_dir)


def test_completion_needs_no_daemon(foreign_runtime_dir: str) -> None:
    result = provctl_as_other(foreign_runtime_dir, "completion", "bash")
    assert result.returncode == 0 and "complete -F" in result.stdout, result.stderr


def test_display_never_removes_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    with pytest.raises(CliError) as exc:
        sessions._listen(str(precious))
    assert exc.value.message == f"{precious} exists and is not a socket; see --listen"
    assert precious.read_text() == "keep me"
    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))  # nobody listens: a display that died
    dead.close()
    sessions._listen(str(stale)).close()  # replaced


def test_display_makes_its_socket_only_where_no_other_user_can_replace_it(
        tmp_path: Path) -> None:
    # Without XDG_RUNTIME_DIR the socket's directory is /tmp/provisiond-UID, a name anyone
    # can make first: made by another user (or open to all), they could swap the socket
    # for theirs and see what the victim types into the viewer.
    shared = tmp_path / "open-to-all"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CliError) as exc:
        sessions._private_path(str(shared / "display.sock"))
    assert f"{shared} is writable by other users" in exc.value.message
    assert "give --listen a path in a directory only you can write" in exc.value.message
    sticky = tmp_path / "sticky"  # as /tmp: others cannot remove what is not theirs
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert sessions._private_path(str(sticky / "d.sock")) == str(sticky / "d.sock")
    fresh = tmp_path / "fresh"  # made when missing, for the caller alone
    assert sessions._private_path(str(fresh / "d.sock")) == str(fresh / "d.sock")
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o700
    (tmp_path / "link").symlink_to(fresh)  # the path told the viewer has no symlink
    assert sessions._private_path(str(tmp_path / "link" / "d.sock")) == str(fresh / "d.sock")
    if os.geteuid() == 0:  # (CI runs as root) a directory another user made first
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(CliError) as exc:
            sessions._private_path(str(theirs / "display.sock"))
        assert f"{theirs} belongs to another user (uid 65534)" in exc.value.message


def test_an_os_error_is_one_line_not_an_unexpected_error(monkeypatch, capsys) -> None:
    def denied(_client: object, _args: object) -> int:
        raise PermissionError(13, "Permission denied", "/run/user/1000/provisiond")

    monkeypatch.setitem(commands.COMMANDS, "catalog", denied)
    assert commands.main(["--socket", "/nonexistent.sock", "catalog"]) == 1
    err = capsys.readouterr().err
    assert err == "provctl: Permission denied (/run/user/1000/provisiond)\n"
