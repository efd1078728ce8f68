"""Run provisiond, but SIGKILL it at a named point: a test-only way to crash on purpose.

    PROVISIOND_CRASH_AT=after:create_volume python -m tests.e2e.crashpoint --config FILE

Points: ``before:<call>`` / ``after:<call>`` for the libvirt adapter's calls that change
something (create_volume, clone_volume, upload_volume, define_domain, power,
undefine_domain, delete_volume, wipe_volume, remove_direct_boot),
``before:power:<action>`` / ``after:power:<action>`` for one power action
(start, shutdown, destroy, reboot: a stop's fallback destroy, say), and ``after:<state>``
right after the transition into that state (a request's or its VM's) is committed. Only
the first matching moment kills, and only for requests whose template is listed in
``PROVISIOND_CRASH_TEMPLATE`` (default: every request). Production code is not changed:
this module wraps it from outside.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
from typing import Any, Callable

from daemon.store import store as store_module
from daemon.virt import connection as virt
from daemon.__main__ import main

CRASH_AT = os.environ.get("PROVISIOND_CRASH_AT", "")


def die(point: str) -> None:
    sys.stderr.write(f"crashpoint: SIGKILL at {point}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def wrap_call(name: str) -> None:
    original: Callable[..., Any] = getattr(virt.HostConnection, name)

    def hit(moment: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if CRASH_AT == f"{moment}:{name}":
            return True
        action = kwargs.get("action", args[1] if len(args) > 1 else None)
        return name == "power" and CRASH_AT == f"{moment}:power:{action}"

    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if hit("before", args, kwargs):
            die(CRASH_AT)
        result = await original(self, *args, **kwargs)
        if hit("after", args, kwargs):
            die(CRASH_AT)
        return result

    setattr(virt.HostConnection, name, wrapper)


def wrap_transitions() -> None:
    for name in ("record_transition", "record_vm_transition"):  # a request's, a VM's
        original = getattr(store_module.Store, name)

        def wrapper(self: Any, request_id: str, from_state: Any, to_state: Any, *args: Any,
                    _original: Callable[..., None] = original, **kwargs: Any) -> None:
            _original(self, request_id, from_state, to_state, *args, **kwargs)
            if CRASH_AT == f"after:{to_state}":
                # The transition may sit inside a larger transaction (a claim and its
                # state): the loop runs this callback once that synchronous block commits.
                asyncio.get_running_loop().call_soon(die, CRASH_AT)

        setattr(store_module.Store, name, functools.wraps(original)(wrapper))


if CRASH_AT:
    for call in ("create_volume", "clone_volume", "upload_volume", "define_domain", "power",
                 "undefine_domain", "delete_volume", "wipe_volume", "remove_direct_boot"):
        wrap_call(call)
    wrap_transitions()

if __name__ == "__main__":
    sys.exit(main())
