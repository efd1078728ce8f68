"""provctl's command line: its argument parser (the completion scripts are made from it)."""

from __future__ import annotations

import argparse
import os
import re
import sys

from daemon.cli.client import PROG
from daemon.cli.contract import SOCKET_ENV, STATES, SYSTEM_SOCKET, default_socket_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from typing import Any



DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")


class TimeBound:
    """A time given on the command line: an age (``10m`` ago) or an absolute time."""

    __slots__ = ("text", "age", "at")

    def __init__(self, text: str, age: float | None = None, at: float | None = None) -> None:
        self.text = text
        self.age = age
        """Seconds before now."""
        self.at = at
        """Epoch seconds."""

    def epoch(self, now: float) -> float:
        """The bound as epoch seconds, ages counted back from ``now`` (no earlier than
        the epoch: nothing is older)."""
        return max(0.0, now - self.age if self.age is not None else float(self.at or 0.0))


def parse_time_bound(text: str) -> TimeBound:
    """argparse type: a duration (``90s``, ``10m``, ``2h``, ``7d``, ``1h30m``) or ISO time."""
    value = text.strip()
    if DURATION_RE.fullmatch(value):
        return TimeBound(text, age=sum(float(n) * DURATION_UNITS[u]
                                       for n, u in DURATION_PART_RE.findall(value)))
    from datetime import datetime, timezone  # only for --since/--older-than

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (e.g. 90s, 10m, 2h, 7d, 1h30m) nor an ISO-8601 "
            "time (e.g. 2026-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return TimeBound(text, at=when.timestamp())


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' and epilogs' line breaks (for the examples).

    The width is argparse's, ``shutil.get_terminal_size()``'s columns less 2, found the
    way it finds them without importing ``shutil``: argparse makes a formatter for every
    option it adds, and importing ``shutil`` is 3 ms of every provctl run.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


def _global_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's unset option must not overwrite the same option given
    # before the subcommand; real defaults are filled in by parse_args().
    parser.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS,
        help=f"provisiond's Unix socket (default: ${SOCKET_ENV}, else "
             f"{default_socket_path()} if it exists, else {SYSTEM_SOCKET})")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of tables")


COMMAND_NAMES = ("whoami", "catalog", "create", "show", "list", "log", "cancel", "start", "stop",
                 "reboot", "delete", "console", "display", "explain", "reconcile",
                 "completion")


class _Skipped:
    """Stands for a subcommand not built (``build_parser(only=...)``)."""

    def add_argument(self, *_args: Any, **_kwargs: Any) -> None:
        """Nothing: this command is not the one being parsed."""


def command_in(argv: list[str]) -> str | None:
    """The subcommand of a command line when only global options come before it, else None."""
    takes_value = False
    for word in argv:
        if takes_value:
            takes_value = False
            continue
        # argparse takes any unambiguous prefix of an option for it ("--so PATH")
        name, equals, _value = word.partition("=")
        if len(name) > 2 and "--json".startswith(name) and not equals:
            continue
        if len(name) > 2 and "--socket".startswith(name):
            takes_value = not equals
            continue
        return word if word in COMMAND_NAMES else None
    return None


def subcommand_parser(parser: argparse.ArgumentParser,
                      command: str | None) -> argparse.ArgumentParser | None:
    """The parser ``build_parser`` made for ``command``, if it made one."""
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subparsers there
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action.choices.get(command or "")
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """provctl's argument parser; global options are accepted before or after the command.

    With ``only``, just that subcommand is built: each parser argparse makes costs about
    a millisecond, and provctl starts once per command.
    """
    from daemon.cli.commands import POLL_INTERVAL as poll_interval  # commands imports us

    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    _global_options(common.add_argument_group("global options"))
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], formatter_class=_Formatter,
        description="Ask provisiond for VMs, and follow your requests.",
        epilog="exit codes: 0 ok, 1 request failed or refused (409, 5xx), 2 invalid input,\n"
               "3 permission denied, 4 daemon unreachable, 5 not found, 130 interrupted\n\n"
               "examples:\n"
               "  provctl catalog\n"
               "  provctl create --template ipxe --size small --wait\n"
               "  provctl list --state failed --since 1d\n"
               "  provctl log --follow 3f2a9c...\n"
               "  source <(provctl completion bash)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="what to do; 'provctl COMMAND --help' says more")

    def add(name: str, summary: str, description: str, epilog: str = "") -> Any:
        if only is not None and name != only:
            return _Skipped()
        return sub.add_parser(name, help=summary, description=description,
                              epilog=epilog or None, parents=[common],
                              formatter_class=_Formatter)

    p = add("whoami", "say who you are to provisiond, and where you may create and administer",
            "Your user and groups as provisiond sees them (the socket's peer credentials),\n"
            "and the resource pools where you hold CLOUD_CREATE and CLOUD_ADMIN.")

    p = add("catalog", "list the templates, sizes and resource pools you may use",
            "List the templates (what gets installed), the sizes (cpus, memory, disk) and "
            "the\nresource pools you hold CLOUD_CREATE on, with their quotas.")

    p = add("create", "request a VM",
            "Request a VM of a template and size. provisiond checks your grant and the "
            "pool's\nquota, finds or creates a volume, and defines the domain in libvirt. "
            "Without\n--wait it prints the accepted request; follow it with 'provctl show' "
            "or 'provctl log'.",
            "examples:\n"
            "  provctl create --template ipxe --size small\n"
            "  provctl create --template ipxe --size small --pool rp --name web1 --wait\n"
            "  provctl create -t ipxe -s small --idempotency-key web1-2026 --wait\n"
            "  provctl create -t debian-cloud -s small --ssh-key ~/.ssh/id_ed25519.pub "
            "--start --wait\n\n"
            "With --wait: exit 0 when the VM is defined, 1 when the request failed.")
    p.add_argument("--template", "-t", required=True, help="template name (see 'catalog')")
    p.add_argument("--size", "-s", required=True, help="size name (see 'catalog')")
    p.add_argument("--pool", "-p", metavar="POOL",
                   help="resource pool (default: chosen by provisiond when you may use only "
                        "one)")
    p.add_argument("--name", "-n", help="the VM's name (default: chosen by provisiond)")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="send the request at most once: a retry with the same key returns "
                        "the earlier request")
    p.add_argument("--wait", "-w", action="store_true",
                   help="follow the request, printing each state it reaches, until done or "
                        "failed (with --json: print the final request)")
    p.add_argument("--ssh-key", action="append", metavar="FILE",
                   help="an OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub) for the VM's "
                        "cloud-init; repeatable (appliance templates)")
    p.add_argument("--user-data", metavar="FILE",
                   help="#cloud-config user-data for the VM, replacing the template's "
                        "(appliance templates; '-': standard input)")
    p.add_argument("--network-config", metavar="FILE",
                   help="cloud-init network config (version 1 or 2) for the VM "
                        "(appliance templates)")
    p.add_argument("--start", action="store_true",
                   help="start the VM once the request is done (waits for done; with "
                        "--wait, for the VM to run too)")

    p = add("show", "show one request",
            "Show a request: its state (and the reason if it failed), what it asked for, "
            "and\nthe volume and domain it got.")
    p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")

    p = add("list", "list your requests (all of a pool's for its admins)",
            "List the requests you can see: your own, and all those of the pools you hold\n"
            "CLOUD_ADMIN on, oldest first. The filters narrow that down; each repeatable one\n"
            "matches any of its values, and all the filters given must match.",
            "examples:\n"
            "  provctl list\n"
            "  provctl list --state failed --state done\n"
            "  provctl list --pool rp --owner alice --since 1d\n"
            "  provctl list --state defining --older-than 10m    # stuck?\n"
            "  provctl list --since 2026-01-31T00:00:00Z -q      # ids only\n\n"
            "AGE is a duration back from now (90s, 10m, 2h, 7d, 1h30m) or an ISO-8601 time\n"
            "(UTC unless it has an offset).")
    p.add_argument("--state", action="append", choices=STATES, metavar="STATE",
                   help=f"only requests in this state; repeat for several "
                        f"({', '.join(STATES)})")
    p.add_argument("--owner", "-o", action="append", metavar="USER",
                   help="only requests of this user; repeat for several (you see others' "
                        "requests only in pools you hold CLOUD_ADMIN on)")
    p.add_argument("--pool", "-p", action="append", metavar="POOL",
                   help="only requests in this resource pool; repeat for several")
    p.add_argument("--since", type=parse_time_bound, metavar="AGE",
                   help="only requests created at or after this (e.g. 10m: in the last 10 "
                        "minutes)")
    p.add_argument("--older-than", type=parse_time_bound, metavar="AGE",
                   help="only requests created before this (e.g. 2h: more than 2 hours ago)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only the ids, one per line (with --json: a JSON list)")

    p = add("log", "show a request's state log, or follow it live",
            "Show a request's log: every transition, libvirt event (e.g. libvirt:DEFINED) and\n"
            "note, with the time spent in each state (TOOK: time since the previous\n"
            "transition, i.e. in the state that was left).\n\n"
            "With --follow, print the entries as they come until the request is done or\n"
            f"failed (polling every {poll_interval:g} s); exit 0 when done, 1 when failed. A "
            "request that\nis already done or failed prints its log and exits the same way.",
            "examples:\n"
            "  provctl log 3f2a9c...\n"
            "  provctl log --follow 3f2a9c...\n"
            "  provctl log -f --json 3f2a9c...    # one JSON entry per line")
    p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")
    p.add_argument("--follow", "-f", action="store_true",
                   help="stream new entries until the request is done or failed (with "
                        "--json: one JSON object per line)")

    p = add("cancel", "cancel a request in progress",
            "Cancel a request that is still in progress: it fails, and what it held (a "
            "volume\nit created, a domain it defined, quota) is released. A request that is "
            "done or\nfailed cannot be cancelled (exit 1).")
    p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")

    for name, summary, description in (
            ("start", "start a VM", "Start the VM of a done request."),
            ("stop", "stop a VM (ACPI shutdown; --force: forced off)",
             "Stop the VM of a done request: an ACPI shutdown, forced off if the guest has "
             "not\nstopped within the daemon's stop_timeout; --force forces it off at once."),
            ("reboot", "reboot a running VM", "Ask a running VM's guest to reboot (ACPI)."),
            ("delete", "delete a VM and give its storage back",
             "Delete the VM of a done request: forced off if running, undefined, its volume\n"
             "deleted (one it created) or wiped and freed (one it reused), its quota given\n"
             "back. Deleting while a delete runs is not an error.")):
        p = add(name, summary, description + "\n\nWith --wait: exit 0 when the VM got "
                "there, 1 when the operation failed.")
        p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")
        p.add_argument("--wait", "-w", action="store_true",
                       help="wait until the operation is over (with --json: print the "
                            "request then)")
        if name == "stop":
            p.add_argument("--force", "-f", action="store_true",
                           help="force it off at once (virsh destroy)")

    p = add("console", "attach to a running VM's serial console (Ctrl-] leaves)",
            "Attach the terminal to the serial console of a running VM, as 'virsh console'\n"
            "does, through provisiond. One console session per VM: while another is open,\n"
            "this one is refused unless --force takes it over. Ctrl-] (or the end of input)\n"
            "leaves; provisiond closes a session that sent nothing for the daemon's\n"
            "session_idle_timeout.",
            "examples:\n"
            "  provctl console 3f2a9c...\n"
            "  provctl console --force 3f2a9c...    # take it from another session\n\n"
            "exit 0 when you leave or the console closes (the VM stopped), 1 when provisiond\n"
            "ends the session (taken over, idle) or refuses it (409: not running or in use;\n"
            "501: the host cannot open consoles).")
    p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")
    p.add_argument("--force", "-f", action="store_true",
                   help="take the console over from the session that holds it")

    p = add("display", "relay a running VM's screen to a local VNC socket",
            "Relay the graphical display (VNC) of a running VM through provisiond to a Unix\n"
            "socket that only you can open (mode 0600, in your runtime directory), for\n"
            "remote-viewer or any VNC viewer that takes a socket; the VM's display listens\n"
            "on no network port. Runs until Ctrl-C (with --viewer: until the viewer exits).",
            "examples:\n"
            "  provctl display 3f2a9c...             # then: remote-viewer vnc+unix://PATH\n"
            "  provctl display --viewer 3f2a9c...    # starts remote-viewer itself\n"
            "  provctl display --listen ./vm.sock --once 3f2a9c...")
    p.add_argument("id", metavar="ID", help="request id, or the VM's name (see 'list')")
    p.add_argument("--listen", "-l", metavar="PATH",
                   help="the Unix socket to make (default: $XDG_RUNTIME_DIR/provisiond/"
                        "display-ID.sock)")
    p.add_argument("--viewer", action="store_true",
                   help="start remote-viewer on the socket; end when it exits")
    p.add_argument("--once", action="store_true",
                   help="end after the first viewer disconnects")

    p = add("explain", "show where a request would get its storage (dry run)",
            "Dry run of storage placement: whether a request of this template and size "
            "would\nreuse a free volume or create one, and the verdict on every candidate. "
            "Nothing is\nreserved or created.")
    p.add_argument("--template", "-t", required=True, help="template name (see 'catalog')")
    p.add_argument("--size", "-s", required=True, help="size name (see 'catalog')")
    p.add_argument("--pool", "-p", metavar="POOL", help="resource pool")

    p = add("reconcile", "list (and remove) volumes and domains no request owns (admin)",
            "List the volumes and domains that carry provisiond's tags (volume name\n"
            "provisiond-<request id>, domain <metadata>) but belong to no request in\n"
            "progress or done. With --apply, undefine those domains and delete those\n"
            "volumes (a volume some domain still uses is kept). Needs CLOUD_ADMIN.")
    p.add_argument("--apply", action="store_true", help="remove what is listed")

    p = add("completion", "print a shell completion script (bash or zsh)",
            "Print a completion script for provctl's commands, options, state names and\n"
            "(for show, log and cancel) request ids, generated from provctl's own options.",
            "examples:\n"
            "  source <(provctl completion bash)        # this shell only\n"
            "  provctl completion bash > ~/.local/share/bash-completion/completions/provctl\n"
            "  source <(provctl completion zsh)         # in ~/.zshrc, after compinit")
    p.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL",
                   help="bash or zsh")
    return parser
