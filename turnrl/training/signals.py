"""Stopping a run on SIGINT / SIGTERM: the first signal asks, a second one ends the process.

:class:`StopSignals` replaces the handlers of both signals while training. The
first signal only records itself (``received``); the trainer reads it between
steps, so the step in flight completes and the checkpoint written next is
exact. A second signal restores the default action and re-sends itself: the
process ends at once, as an impatient user expects. That is safe because
checkpoints are written into a temporary folder and renamed into place, the
run directory's lock dies with the process, and the next start removes the
temporary folder of a save the signal cut short.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

import structlog

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered (in the main thread), SIGINT/SIGTERM request a stop instead of killing.

    Attributes:
        received: The first signal received, or None.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():  # else handlers cannot be set
            self._previous = {s: signal.getsignal(s) for s in SIGNALS}
            for s in SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        log.warning(
            "stop_requested",
            signal=signal.Signals(signum).name,
            action="finishing the current step, then a checkpoint; signal again to quit at once",
        )
