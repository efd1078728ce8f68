"""provctl's commands: one function per subcommand, and ``main``."""

from __future__ import annotations

import os
import sys
import time

from daemon.cli.client import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CliError,
    Client,
    find_socket,
    one_line,
    reporting_errors,
)
from daemon.cli.contract import SOCKET_ENV, TERMINAL_STATES
from daemon.cli.jsontext import dumps, pretty
from daemon.cli.operations import operate
from daemon.cli.parser import build_parser, command_in, subcommand_parser
from daemon.cli.render import (
    Timeline,
    render_catalog,
    render_whoami,
    render_explain,
    render_list,
    render_log,
    render_outcome,
    render_reconcile,
    render_request,
    render_transition,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    import argparse
    from typing import Any, Callable, Sequence

POLL_INTERVAL = 0.2
"""Longest wait between two reads of a request's log under ``create --wait`` and
``log --follow`` (the daemon answers sooner when the request ends)."""
ROLLBACK_GRACE = 2.0
"""Seconds ``log --follow`` waits after ``failed`` for the rollback's note to be logged."""


def _print_json(data: Any) -> None:
    print(pretty(data))


def _out(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        _print_json(data)
    else:
        print(human(data))


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    """``provctl whoami``."""
    _out(args, client.whoami(), render_whoami)
    return EXIT_OK


def cmd_catalog(client: Client, args: argparse.Namespace) -> int:
    """``provctl catalog``."""
    _out(args, client.catalog(), render_catalog)
    return EXIT_OK


def _read_text(path: str, what: str) -> str:
    """A file's text for a request field ('-': standard input); a usage error if it
    cannot be read."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CliError(f"cannot read {what} {path}: {reason}", EXIT_USAGE) from None


def _cloud_init(args: argparse.Namespace) -> dict[str, Any]:
    """What ``--ssh-key``, ``--user-data`` and ``--network-config`` add to a create."""
    added: dict[str, Any] = {}
    if args.ssh_key:
        keys = []
        for path in args.ssh_key:
            keys += [line.strip() for line in _read_text(path, "SSH key file").splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
        added["ssh_keys"] = keys
    if args.user_data:
        added["user_data"] = _read_text(args.user_data, "user-data file")
    if args.network_config:
        added["network_config"] = _read_text(args.network_config, "network-config file")
    return added


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    """``provctl create``: submit, and with --wait follow the request to its end."""
    status, req = client.create(args.template, args.size, args.pool, args.name,
                                args.idempotency_key, _cloud_init(args))
    if not args.wait and not args.start:
        if args.json:
            _print_json(req)
        else:
            if status == 200:
                print("An earlier request had this idempotency key; it is shown instead.\n")
            print(render_request(req))
        return EXIT_OK
    code = wait_for(client, req, quiet=args.json, replay=status == 200,
                    final_json=not args.start)
    if code != EXIT_OK or not args.start:
        return code
    return operate(client, str(req.get("id")), "start", wait=args.wait, as_json=args.json)


def cmd_operate(client: Client, args: argparse.Namespace) -> int:
    """``provctl start|stop|reboot|delete ID [--wait]``."""
    return operate(client, args.id, args.command, force=getattr(args, "force", False),
                   wait=args.wait, as_json=args.json)


def pause_unless_ended(client: Client, request_id: str) -> None:
    """Wait ``POLL_INTERVAL`` seconds, or less if the request ends meanwhile: the daemon
    answers ``GET ?wait=`` as soon as the request has ended."""
    started = time.monotonic()
    if client.get(request_id, wait=POLL_INTERVAL).get("state") not in TERMINAL_STATES:
        # An older daemon answers at once: do not ask again sooner than before.
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))


def wait_for(client: Client, req: dict[str, Any], *, quiet: bool = False,
             replay: bool = False, final_json: bool = True) -> int:
    """Follow a request, print each state reached, end on done (0) or failed (1)."""
    request_id = str(req.get("id"))
    if not quiet:
        what = "already submitted" if replay else "accepted"
        print(f"request {request_id} ({req.get('name')}) {what}: {req.get('template')}/"
              f"{req.get('size')} in {req.get('resource_pool')}", flush=True)
    seen = 0
    try:
        while True:
            # Answered as soon as the request ends (else after POLL_INTERVAL): a quick
            # request costs this call and one read of its log.
            started = time.monotonic()
            current = client.get(request_id, wait=POLL_INTERVAL)
            ended = current.get("state") in TERMINAL_STATES
            while not quiet:  # the log up to the state the answer shows
                log = client.log(request_id).get("log") or []
                reached = False
                for entry in log[seen:]:
                    if entry.get("kind") != "transition":
                        continue
                    print(render_transition(entry), flush=True)
                    if entry.get("to") in TERMINAL_STATES:
                        reached = True
                        break
                seen = len(log)
                if reached or not ended:
                    break
            if ended:
                final = current
                break
            # A daemon that answers at once is not asked again sooner than this.
            time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; request {request_id} goes on "
              f"(see: {PROG} show {request_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if quiet and final_json:
        _print_json(final)
    if final.get("state") == "done":
        if not quiet:
            print(render_outcome(final))
        return EXIT_OK
    reason = one_line(final.get("reason") or "no reason given")
    print(f"{PROG}: request {request_id} {final.get('state')}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    """``provctl show ID``: the request, and its running VM's addresses."""
    _out(args, client.get(args.id, addresses=True), render_request)
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    """``provctl list``: filtered by state, owner, pool and age (the daemon filters)."""
    now = time.time()
    since = args.since.epoch(now) if args.since else None
    until = args.older_than.epoch(now) if args.older_than else None
    if since is not None and until is not None and until < since:
        raise CliError(f"--older-than {args.older_than.text} and --since {args.since.text} "
                       "leave no time between them", EXIT_USAGE)
    data = client.list(args.state or (), args.owner or (), args.pool or (), since, until)
    requests = data.get("requests") or []
    if args.quiet and args.json:  # ids only, as JSON
        _print_json([req.get("id") for req in requests])
    elif args.quiet:
        for req in requests:
            print(req.get("id"))
    elif args.json:
        _print_json(data)
    else:
        print(render_list(requests))
    return EXIT_OK


def cmd_log(client: Client, args: argparse.Namespace) -> int:
    """``provctl log ID [--follow]``."""
    if args.follow:
        return follow_log(client, args.id, as_json=args.json)
    entries = client.log(args.id).get("log") or []
    _out(args, entries, render_log)
    return EXIT_OK


def _rolled_back(entries: Sequence[dict[str, Any]]) -> bool:
    """Whether the rollback of a failed request has logged its outcome."""
    return any(e.get("kind") == "note" and e.get("trigger") == "rollback" for e in entries)


def follow_log(client: Client, request_id: str, *, as_json: bool = False) -> int:
    """Print a request's log as it grows until it is done (exit 0) or failed (exit 1).

    Reads the log every ``POLL_INTERVAL`` seconds, at once when the request ends. After
    ``failed`` it goes on until the rollback's note is in (at most ``ROLLBACK_GRACE``
    seconds more). With ``as_json`` each entry is one JSON line. A request already done
    or failed prints its whole log.
    """
    timeline = Timeline()
    seen: list[dict[str, Any]] = []
    terminal: str | None = None
    failed_at = 0.0
    header = not as_json  # once the daemon answered: not above an error that it did not
    try:
        while True:
            entries = client.log(request_id).get("log") or []
            if header:
                print(timeline.header(), flush=True)
                header = False
            for entry in entries[len(seen):]:
                print(dumps(entry) if as_json else timeline.line(entry), flush=True)
                if entry.get("kind") == "transition" and entry.get("to") in TERMINAL_STATES:
                    terminal = entry.get("to")
                    failed_at = time.monotonic()
            seen = list(entries)
            if terminal == "done" or (terminal == "failed" and (
                    _rolled_back(seen) or time.monotonic() - failed_at > ROLLBACK_GRACE)):
                break
            if terminal is None:
                pause_unless_ended(client, request_id)
            else:
                time.sleep(POLL_INTERVAL)  # for the rollback's note
        final = client.get(request_id)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; request {request_id} goes on "
              f"(see: {PROG} show {request_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = timeline.summary()
    if summary and not as_json:
        print(f"\n{summary}")
    if final.get("state") == "done":
        return EXIT_OK
    reason = one_line(final.get("reason") or "no reason given")
    print(f"{PROG}: request {request_id} {final.get('state')}: {reason}", file=sys.stderr)
    return EXIT_FAILED


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """``provctl cancel ID``."""
    req = client.cancel(args.id)
    if args.json:
        _print_json(req)
    else:
        print(f"cancel accepted for request {req.get('id', args.id)} "
              f"(state now: {req.get('state')})")
    return EXIT_OK


def cmd_explain(client: Client, args: argparse.Namespace) -> int:
    """``provctl explain``: the placement dry run."""
    _out(args, client.explain(args.template, args.size, args.pool), render_explain)
    return EXIT_OK


def cmd_reconcile(client: Client, args: argparse.Namespace) -> int:
    """``provctl reconcile``: list (and with --apply remove) orphaned volumes and domains."""
    _out(args, client.reconcile(args.apply), render_reconcile)
    return EXIT_OK


def cmd_completion(_client: Client, args: argparse.Namespace) -> int:
    """``provctl completion bash|zsh``: print the shell completion script."""
    from daemon.cli.completion import bash_completion, zsh_completion

    parser = build_parser()
    print(bash_completion(parser) if args.shell == "bash" else zsh_completion(parser), end="")
    return EXIT_OK

def cmd_console(client: Client, args: argparse.Namespace) -> int:
    """``provctl console ID``: the VM's serial console (``daemon.cli.sessions``)."""
    from daemon.cli.sessions import cmd_console as console

    return console(client, args)


def cmd_display(client: Client, args: argparse.Namespace) -> int:
    """``provctl display ID``: the VM's screen on a local socket (``daemon.cli.sessions``)."""
    from daemon.cli.sessions import cmd_display as display

    return display(client, args)


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "whoami": cmd_whoami, "catalog": cmd_catalog, "create": cmd_create, "show": cmd_show, "list": cmd_list,
    "log": cmd_log, "cancel": cmd_cancel, "start": cmd_operate, "stop": cmd_operate,
    "reboot": cmd_operate, "delete": cmd_operate, "console": cmd_console,
    "display": cmd_display, "explain": cmd_explain,
    "reconcile": cmd_reconcile,
    "completion": cmd_completion,
}
"""Each subcommand's function."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse provctl's command line and fill in the global options' defaults."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=command_in(words))
    args, extras = parser.parse_known_args(words)
    if extras:  # said with the command's own usage, not provctl's
        command = subcommand_parser(parser, args.command) or parser
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    if not hasattr(args, "json"):
        args.json = False
    if not hasattr(args, "socket"):
        args.socket = os.environ.get(SOCKET_ENV) or find_socket()
    return args


def main(argv: list[str] | None = None) -> int:
    """provctl's full command line (``daemon.cli.main`` takes the common operations'
    short cut first); returns the exit code."""
    def run() -> int:
        args = parse_args(argv)
        client = Client(args.socket)
        if getattr(args, "id", None) is not None:  # an id, or a VM's name: the request's id
            args.id = client.resolve(args.id)
        return COMMANDS[args.command](client, args)

    return reporting_errors(run)
