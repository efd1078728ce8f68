"""The short cut for provctl's VM operations: their plain command lines, read without argparse.

``provctl start|stop|reboot|delete ID [--wait] [--force] [--json] [--socket PATH]`` is
what people run most, and what is measured against ``virsh``. Building argparse's parser
and importing what it imports (``re``, ``gettext``) is ~10 ms of a run that should take
about as long as virsh's. This reads only the spellings whose meaning is beyond doubt;
anything else (``--help``, an abbreviated option, ``-wf``, ``--``, a missing or second ID)
is left to argparse (``daemon.cli.commands``), which says what is wrong.
``tests/daemon/cli/test_cli_quick.py`` checks that each command line read here means what
argparse makes of it.
"""

from __future__ import annotations

import os

from daemon.cli.client import Client, find_socket
from daemon.cli.contract import SOCKET_ENV
from daemon.cli.operations import OPERATIONS, operate

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from typing import Sequence


def read_operation(words: Sequence[str]) -> tuple[str, str, bool, bool, bool, str | None] | None:
    """(command, id, wait, force, json, socket) of a plain VM-operation command line;
    None for any other command line (argparse reads it)."""
    command = request_id = socket = None
    wait = force = as_json = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--json":
            as_json = True
        elif word == "--socket" or word.startswith("--socket="):
            if socket is not None:
                return None  # given twice: argparse's rule (the last) is not spelled out here
            if word == "--socket":
                if i == len(words) or words[i].startswith("-"):
                    return None
                socket, i = words[i], i + 1
            else:
                socket = word[len("--socket="):]
            if not socket:
                return None
        elif command is None:
            if word not in OPERATIONS:
                return None
            command = word
        elif word in ("--wait", "-w"):
            wait = True
        elif word in ("--force", "-f") and command == "stop":
            force = True
        elif word and not word.startswith("-") and request_id is None:
            request_id = word
        else:
            return None
    if command is None or request_id is None:
        return None
    return command, request_id, wait, force, as_json, socket


def run_operation(command: str, request_id: str, wait: bool, force: bool, as_json: bool,
                  socket: str | None) -> int:
    """Run a VM operation read by ``read_operation`` (raising as provctl's commands do)."""
    socket = socket or os.environ.get(SOCKET_ENV) or find_socket()
    client = Client(socket)
    return operate(client, client.resolve(request_id), command, force=force, wait=wait,
                   as_json=as_json)
