"""Running libvirt's blocking calls off the event loop, and what a late answer leaves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger("provisiond.virt")


def in_own_thread(fn: Callable[[], T], discard: Callable[[T], None]) -> asyncio.Future[T]:
    """Run ``fn`` on a daemon thread of its own; its result (or error) settles the future.

    Not the host's worker pool: a call that hangs (a connection to a host that never
    answers) must neither take a worker nor hold up the process's exit. A result that
    arrives after the future was cancelled (timed out) goes to ``discard``.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            if error is None:  # discarding talks to the slow host too: not on the loop
                threading.Thread(target=discard, args=(result,), daemon=True,
                                 name=f"libvirt-discard-{fn.__name__}").start()
        elif error is None:
            future.set_result(result)  # type: ignore[arg-type]
        else:
            future.set_exception(error)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop as is
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            if error is None:
                discard(result)  # type: ignore[arg-type]

    threading.Thread(target=run, name=f"libvirt-open-{fn.__name__}", daemon=True).start()
    return future


def discard_late(call: concurrent.futures.Future[T], discard: Callable[[T], None]) -> None:
    """Give what ``call`` answers, when it does, to ``discard`` (nobody waits for it):
    a console stream or a display's descriptor is not left open."""

    def done(finished: concurrent.futures.Future[T]) -> None:
        if not finished.cancelled() and finished.exception() is None:
            # On the thread that ran the call; at once (on the loop) if it is over already.
            try:
                discard(finished.result())
            except Exception:  # noqa: BLE001 - best effort: it is a leftover
                log.warning("cannot discard what a late libvirt call answered",
                            exc_info=True)

    call.add_done_callback(done)
