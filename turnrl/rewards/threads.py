"""Sync reward functions off the event loop: daemon threads, bounded, abandonable.

See :mod:`turnrl.rewards.base` for why sync rewards run here.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal
from anyio.lowlevel import RunVar

_T = TypeVar("_T")

REWARD_THREADS = 8
"""Most threads running sync reward functions at once (per event loop)."""

_thread_limiter: RunVar[anyio.CapacityLimiter] = RunVar("turnrl_reward_threads")


def _limiter() -> anyio.CapacityLimiter:
    try:
        return _thread_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(REWARD_THREADS)
        _thread_limiter.set(limiter)
        return limiter


async def run_in_thread(fn: Callable[..., _T], *args: Any, name: str = "call") -> _T:
    """``fn(*args)`` in a daemon thread; the caller may be cancelled (the thread is abandoned).

    Not ``anyio.to_thread.run_sync``: its worker threads are not daemons, so a
    reward stuck in ``time.sleep(3600)`` would keep the process alive after the
    run ended. At most :data:`REWARD_THREADS` calls run at once.

    Args:
        fn: The sync function.
        *args: Its arguments.
        name: Names the thread (``turnrl-reward-<name>``), for debuggers.

    Returns:
        What ``fn`` returned; what it raised is raised here.
    """
    async with _limiter(), BlockingPortal() as portal:
        done = anyio.Event()
        outcome: list[tuple[bool, Any]] = []
        context = contextvars.copy_context()  # structlog context, as on the loop

        def target() -> None:
            try:
                outcome.append((True, context.run(fn, *args)))
            except BaseException as e:  # handed to the awaiting task
                outcome.append((False, e))
            # Fails once the caller gave up (timeout) and closed the portal: nobody waits.
            with contextlib.suppress(Exception):
                portal.call(done.set)

        threading.Thread(target=target, name=f"turnrl-reward-{name}", daemon=True).start()
        await done.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
