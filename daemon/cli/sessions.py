"""``provctl console`` and ``provctl display``: a VM's serial console and its screen.

Both go through provisiond's WebSockets (``GET /v1/requests/{id}/console`` and
``/display``); provctl never talks to libvirt or QEMU. The console is interactive like
``virsh console``: the terminal is put in raw mode, Ctrl-] leaves. The display is
relayed from a Unix socket that provctl makes in the caller's own runtime directory
(mode 0600: only the caller can connect), for ``remote-viewer vnc+unix://PATH``; each
viewer connection gets its own WebSocket.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys

from daemon.cli.client import EXIT_FAILED, EXIT_OK, CliError, Client, quote
from daemon.cli.contract import default_socket_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    import argparse
    import socket

    from daemon.cli.websocket import WebSocket

ESCAPE = b"\x1d"
"""Ctrl-]: leaves the console, as in virsh and telnet."""
NORMAL_CLOSES = (None, 1000, 1005)
TAKEN_OVER = 4001


def cmd_console(client: Client, args: argparse.Namespace) -> int:
    """``provctl console ID [--force]``: the VM's serial console, until Ctrl-]."""
    request = client.get(args.id)
    name = request.get("name") or args.id
    ws = client.websocket(f"/v1/requests/{quote(args.id)}/console" +
                          ("?force=true" if args.force else ""))
    sys.stderr.write(f"Connected to the console of VM {name} (request {request['id']}).\n"
                     "Escape character is ^] (Ctrl + ])\n")
    sys.stderr.flush()
    # In raw mode Ctrl-C is the guest's; a kill or a hang-up must still give the
    # terminal back as it was (the finally in _attach), so they end the session too.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end_on_signal)
    try:
        left = _attach(ws)
    except _Signalled as exc:
        sys.stderr.write(f"\nprovctl: left the console ({exc.name})\n")
        return 128 + exc.signum
    if left:
        sys.stderr.write("\n")
        return EXIT_OK
    why = ws.close_reason or "the connection to provisiond ended"
    if ws.close_code in NORMAL_CLOSES:
        sys.stderr.write(f"\nThe console closed: {why}\n")
        return EXIT_OK
    raise CliError(f"the console was closed by provisiond: {why}", EXIT_FAILED)


class _Signalled(Exception):
    """A signal that ends the console (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _end_on_signal(signum: int, _frame: object) -> None:
    raise _Signalled(signum)


def _attach(ws: WebSocket) -> bool:
    """Relay the terminal and the console until Ctrl-], end of input, or the daemon's
    close; True when the user left."""
    stdin = sys.stdin.fileno()
    out = sys.stdout.buffer
    saved = None
    try:
        if os.isatty(stdin):
            import termios
            import tty

            saved = termios.tcgetattr(stdin)
            tty.setraw(stdin)  # in the try: a signal from here on still restores it
        # What came with the handshake's answer is read already: select would not say so.
        for message in ws.messages():
            out.write(message)
        out.flush()
        while ws.close_code is None:
            ready = select.select([ws, stdin], [], [])[0]
            if ws in ready:
                if not ws.feed():
                    return False
                for message in ws.messages():
                    out.write(message)
                out.flush()
                if ws.close_code is not None:
                    return False
            if stdin in ready:
                data = os.read(stdin, 4096)
                cut = data.find(ESCAPE)
                if cut >= 0:
                    data = data[:cut]
                if data:
                    ws.send(data)
                if cut >= 0 or not data:
                    return True
        return False
    finally:
        try:
            if saved is not None:
                import termios

                try:
                    termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
                except termios.error:  # the terminal hung up: nothing left to restore
                    pass
        finally:
            ws.close()


# --------------------------------------------------------------------------- display


def display_socket_path(request_id: str) -> str:
    """Where ``provctl display`` listens by default: the caller's runtime directory."""
    directory = os.path.dirname(default_socket_path())
    return os.path.join(directory, f"display-{request_id}.sock")


def cmd_display(client: Client, args: argparse.Namespace) -> int:
    """``provctl display ID``: relay the VM's screen to a Unix socket for a VNC viewer."""
    import threading

    request = client.get(args.id)
    name = request.get("name") or args.id
    target = f"/v1/requests/{quote(args.id)}/display"
    client.websocket(target).close()  # refused now (not running, no display), not later
    path = _private_path(args.listen or display_socket_path(request["id"]))
    listener = _listen(path)
    viewer = None
    try:
        sys.stderr.write(f"The display of VM {name} (request {request['id']}) is at {path}\n"
                         f"Open it with: remote-viewer vnc+unix://{path}\n"
                         "Ctrl-C ends it.\n")
        sys.stderr.flush()
        if args.viewer:
            import subprocess

            try:
                viewer = subprocess.Popen(["remote-viewer", f"vnc+unix://{path}"])
            except OSError as exc:
                raise CliError(f"cannot start remote-viewer: {exc.strerror or exc} (install "
                               "virt-viewer, or connect another VNC viewer to the socket)",
                               EXIT_FAILED) from None
        signal.signal(signal.SIGTERM, _interrupt)
        listener.settimeout(0.5)
        while viewer is None or viewer.poll() is None:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            relay = threading.Thread(target=_relay, args=(client, target, conn), daemon=True)
            relay.start()
            if args.once:
                relay.join()
                break
    except KeyboardInterrupt:
        sys.stderr.write("\n")
    finally:
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()
    return EXIT_OK


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _private_path(path: str) -> str:
    """``path`` with its directory made if missing and resolved (no symlink left on the
    way); CliError if another user could put a socket of their own there."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=0o700)
        except OSError as exc:
            raise CliError(f"cannot make {directory}: {exc.strerror or exc} (see --listen)",
                           EXIT_FAILED) from None
    real = os.path.realpath(directory)
    why = unsafe_directory(real)
    if why is not None:
        raise CliError(f"will not make the display's socket in {directory}: {why}, so "
                       "another user could replace the socket and see what you type into "
                       "the viewer; give --listen a path in a directory only you can write",
                       EXIT_FAILED)
    return os.path.join(real, os.path.basename(path))


def unsafe_directory(directory: str) -> str | None:
    """Why another user could replace a socket made in ``directory`` (a resolved path):
    it, or a directory above it, is theirs or writable by others (but sticky, as /tmp);
    None if nobody else can."""
    me = os.geteuid()
    path = directory
    while True:
        try:
            info = os.stat(path)
        except OSError as exc:
            return f"{path} cannot be checked ({exc.strerror or exc})"
        if info.st_uid not in (0, me):
            return f"{path} belongs to another user (uid {info.st_uid})"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{path} is writable by other users"
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _listen(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` that only the caller can use."""
    import socket

    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None  # nothing there (or nothing we may see: bind says which)
    if mode is not None and not stat.S_ISSOCK(mode):
        raise CliError(f"{path} exists and is not a socket; see --listen", EXIT_FAILED)
    if mode is not None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            try:
                os.unlink(path)  # a socket a display left behind
            except OSError as exc:
                raise CliError(f"cannot remove the old socket {path}: "
                               f"{exc.strerror or exc}; see --listen", EXIT_FAILED) from None
        else:
            raise CliError(f"{path} is in use (another provctl display?); see --listen",
                           EXIT_FAILED)
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)  # 0600 from the start: no moment where others could connect
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise CliError(f"cannot listen on {path}: {exc.strerror or exc}", EXIT_FAILED) from None
    finally:
        os.umask(old_mask)
    listener.listen(8)
    return listener


def _relay(client: Client, target: str, conn: socket.socket) -> None:
    """Relay one viewer's connection to a new display WebSocket until either side ends."""
    try:
        ws = client.websocket(target)
    except CliError as exc:
        sys.stderr.write(f"provctl: {exc.message}\n")
        conn.close()
        return
    try:
        # What came with the handshake's answer (often the VNC server's greeting) is read
        # already: select would wait for more, and the viewer for its greeting.
        for message in ws.messages():
            conn.sendall(message)
        while ws.close_code is None:
            ready = select.select([ws, conn], [], [])[0]
            if ws in ready:
                if not ws.feed():
                    break
                for message in ws.messages():
                    conn.sendall(message)
                if ws.close_code is not None:
                    if ws.close_code not in NORMAL_CLOSES:
                        sys.stderr.write(f"provctl: the display was closed by provisiond: "
                                         f"{ws.close_reason}\n")
                    break
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    break
                ws.send(data)
    except Exception as exc:  # the viewer or the daemon went away, or a protocol error
        sys.stderr.write(f"provctl: a display connection ended: {type(exc).__name__}: "
                         f"{exc}\n")
    finally:
        ws.close()
        conn.close()
