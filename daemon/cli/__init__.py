"""``provctl``: the command-line client of provisiond's HTTP API over its Unix socket.

Standard library only, and as little of it as will do: it starts once per command, so
import time is its latency. Human output is plain aligned tables; ``--json`` prints the
API's JSON instead. Exit codes:

    0  success
    1  the request failed, or the daemon refused it (409 wrong_state / quota_exceeded, 5xx)
    2  invalid input (400, and command-line usage errors)
    3  permission denied (403)
    4  the daemon cannot be reached (socket missing, connection refused, timeout)
    5  not found (404)
    130 interrupted (Ctrl-C)

Every error is one line on stderr: ``provctl: <message>``. Modules: ``contract`` (what
provctl shares with the daemon), ``wire`` and ``client`` (HTTP over the socket),
``jsontext`` (JSON without ``json``'s import), ``quick`` and ``operations`` (the VM
operations' short cut past argparse), ``parser``, ``commands``, ``render``,
``completion``, ``sessions`` and ``websocket`` (console and display).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``provctl``; returns the exit code (run as the command, with
    ``argv`` None, it exits without the interpreter's teardown)."""
    import sys

    from daemon.cli.quick import read_operation

    words = sys.argv[1:] if argv is None else list(argv)
    operation = read_operation(words)
    if operation is not None:  # the common VM operations, without argparse (quick's why)
        from daemon.cli.client import reporting_errors
        from daemon.cli.quick import run_operation

        code = reporting_errors(lambda: run_operation(*operation))
    else:
        from daemon.cli.commands import main as run

        code = run(words)
    if argv is None:
        _exit(code)
    return code


def _exit(code: int) -> None:
    """Exit now: the interpreter's teardown (freeing every module) is ~2 ms of a command
    that takes ~20, and provctl has nothing left to clean up by then. What is still
    buffered is written first; a write that fails is said in one line (not a pipe closed
    by its reader: that is quiet, as in the commands)."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: provctl was started with that fd closed
                stream.flush()
        except BrokenPipeError:  # the reader went away (`provctl ... | head`): quietly
            code = code or 1
        except (OSError, ValueError) as exc:
            code = code or 1
            if stream is sys.stdout and sys.stderr is not None:
                reason = getattr(exc, "strerror", None) or str(exc)
                try:
                    print(f"provctl: cannot write the output: {reason}", file=sys.stderr)
                except (OSError, ValueError):
                    pass
    os._exit(code)
