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
provctl shares with the daemon), ``client`` (HTTP over the socket), ``parser``,
``commands``, ``render``, ``completion``.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``provctl``; returns the exit code."""
    from daemon.cli.commands import main as run

    return run(argv)
