"""Event-loop watchdog: say which coroutine blocks the rollout's event loop.

Every episode, every agent request and every async reward function of a
rollout share one event loop. A coroutine that calls blocking code
(``time.sleep``, a sync HTTP client, a long computation) freezes all of them,
and no timeout can fire meanwhile: anyio cancels a task at its next
``await``, and a blocked coroutine reaches none. Python cannot interrupt such
a call from outside, so the watchdog's job is to say where it is:

* a daemon thread asks the loop to note the time (a heartbeat callback) every
  ``threshold_s / 4``, at most every second;
* when the loop has not run a heartbeat for more than ``threshold_s``, the
  thread logs ``event_loop_blocked`` once, naming the
  coroutine that blocks (the innermost coroutine on the loop thread's stack,
  e.g. ``MyEnv.step``), the line it is at, its task and the last frames of the
  stack; when the loop runs again it logs ``event_loop_unblocked`` with how
  long it was blocked.

The heartbeat is a callback, not a task, so the watchdog adds no task group
around the code it watches (whose exceptions pass through unchanged).

The fix for the user: make the call async (an async client,
``await anyio.sleep``), or move it to a thread with
``await anyio.to_thread.run_sync(blocking_fn, ...)``. :func:`~turnrl.training.rollout.collect`
and :func:`~turnrl.rewards.combine.score_groups` run under a watchdog.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger(__name__)

BLOCK_THRESHOLD_S = 5.0
"""Default: warn when the event loop has not run for this long (seconds).

Far above the loop's own pauses (tokenizing a prompt, scheduling hundreds of
episodes), far below a timeout, so a warning always means a blocking call.
"""

_COROUTINE_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


class LoopWatchdog:
    """Watches the event loop it was created on (see the module docstring).

    Use it through :func:`watch_event_loop`.

    Args:
        threshold_s: Warn when the loop has not run for longer than this (> 0).
        label: Names the watched phase in the warning (``rollout``, ``reward``).
        post: Schedules a callback on the watched loop from another thread
            (``loop.call_soon_threadsafe``).

    Attributes:
        blocks: How many times the loop was found blocked.
    """

    def __init__(
        self, threshold_s: float, label: str, post: Callable[[Callable[[], None]], Any]
    ) -> None:
        if isinstance(threshold_s, bool) or not (
            isinstance(threshold_s, int | float) and threshold_s > 0 and math.isfinite(threshold_s)
        ):
            raise ValueError(f"threshold_s must be a positive finite number, got {threshold_s!r}")
        self.threshold_s = float(threshold_s)
        self.label = label
        self.interval_s = min(self.threshold_s / 4, 1.0)
        self.blocks = 0
        self._post = post
        self._last_beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._task_of = _task_lookup()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="turnrl-watchdog", daemon=True)

    def _beat(self) -> None:
        self._last_beat = time.monotonic()

    def _watch(self) -> None:
        blocked_since: float | None = None
        while not self._stopped.wait(self.interval_s):
            with suppress(RuntimeError):  # the loop closed: stop() follows
                self._post(self._beat)
            last = self._last_beat
            if time.monotonic() - last > self.threshold_s:
                if blocked_since is None:
                    blocked_since = last
                    self.blocks += 1
                    self._warn(time.monotonic() - last)
            elif blocked_since is not None:
                log.info(
                    "event_loop_unblocked",
                    phase=self.label,
                    blocked_s=round(last - blocked_since, 2),
                )
                blocked_since = None

    def _warn(self, blocked_s: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        where = _describe(frame)
        log.warning(
            "event_loop_blocked",
            phase=self.label,
            blocked_s=round(blocked_s, 2),
            coroutine=where["coroutine"],
            at=where["at"],
            task=self._task_of(),
            stack=where["stack"],
            fix="a blocking call (time.sleep, sync I/O, long computation) inside async code "
            "freezes every episode and no timeout can fire; await an async version or use "
            "`await anyio.to_thread.run_sync(fn, ...)`",
        )

    def start(self) -> None:
        """Start the checking thread."""
        self._last_beat = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop the checking thread (it wakes at once; bounded wait in any case)."""
        self._stopped.set()
        self._thread.join(timeout=1.0)


@contextmanager
def watch_event_loop(
    threshold_s: float | None = None, *, label: str = "rollout"
) -> Iterator[LoopWatchdog | None]:
    """Watch the running event loop for the duration of the ``with`` body.

    Enter it from a coroutine (``with watch_event_loop(): await ...``).

    Args:
        threshold_s: Warn when the loop has not run for longer than this
            (default: :data:`BLOCK_THRESHOLD_S`, read at call time).
        label: Names the watched phase in the warning.

    Yields:
        The :class:`LoopWatchdog` (its ``blocks`` counts the blocks seen), or
        None outside an asyncio or trio event loop (nothing is watched).
    """
    post = _poster()
    if post is None:
        yield None
        return
    watchdog = LoopWatchdog(BLOCK_THRESHOLD_S if threshold_s is None else threshold_s, label, post)
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()


def _poster() -> Callable[[Callable[[], None]], Any] | None:
    """The running loop's thread-safe "call this soon", or None outside a loop."""
    import asyncio

    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        pass
    try:
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    except (ImportError, RuntimeError):
        return None


def _describe(frame: FrameType | None) -> dict[str, str | None]:
    """The innermost coroutine of the stack ending at ``frame``, where it is, the last frames."""
    if frame is None:
        return {"coroutine": None, "at": None, "stack": None}
    at = f"{frame.f_code.co_filename}:{frame.f_lineno}"
    coroutine = None
    f: FrameType | None = frame
    while f is not None:
        if f.f_code.co_flags & _COROUTINE_FLAGS:
            coroutine = getattr(f.f_code, "co_qualname", f.f_code.co_name)
            at = f"{f.f_code.co_filename}:{f.f_lineno}"
            break
        f = f.f_back
    stack = "".join(traceback.format_list(traceback.extract_stack(frame)[-8:]))
    return {"coroutine": coroutine, "at": at, "stack": stack}


def _task_lookup() -> Any:
    """A function naming the loop's current task (asyncio), callable from another thread."""
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): the stack alone names the culprit
        return lambda: None

    def current() -> str | None:
        # A read of asyncio's per-loop current-task slot; a stale answer is harmless here.
        task = asyncio.current_task(loop)
        return None if task is None else task.get_name()

    return current
