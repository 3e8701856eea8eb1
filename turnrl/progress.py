"""A live progress line for training: steps, and within a step the rollout and update.

One tqdm bar counts training steps; its description says what the current
step is doing (``rollout 37/128``, ``update 3/8``, ``eval 120/400``) and its
postfix shows the last step's reward and KL, and ``eval.metric`` after an
evaluation. tqdm comes with transformers, so this adds no dependency.

By default the bar is drawn only when stderr is a terminal (``run.progress``
overrides it), so logs written to files and CI output stay clean. Log lines
go through ``tqdm.write`` (see :func:`turnrl.logging.configure_logging`) and
do not break the bar.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """The progress bar of a training run.

    Args:
        total_steps: Steps the run will take.
        initial: Steps already done (a resumed run).
        enabled: Draw the bar; None draws it when stderr is a terminal.
        min_interval_s: Least time between redraws of the description.
        eval_key: The eval metric shown after an evaluation (``eval.metric``).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        initial: int = 0,
        enabled: bool | None = None,
        min_interval_s: float = 0.1,
        eval_key: str = "eval/reward_mean",
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.eval_key = eval_key
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self.bar = tqdm(
            total=total_steps,
            initial=initial,
            unit="step",
            disable=not self.enabled,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def phase(self, name: str, done: int, total: int) -> None:
        """Show that the current step is in ``name`` (rollout, update, eval), ``done/total``."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval_s:
            return  # redrawing on every episode would cost more than the episode
        self._last = now
        self.bar.set_description_str(f"{name} {min(done, total)}/{total}", refresh=True)

    def step_done(self, metrics: dict[str, Any]) -> None:
        """Advance one step and show its reward and KL."""
        if not self.enabled:
            return
        shown = {}
        for key, short in (("rollout/reward_mean", "reward"), ("train/kl", "kl")):
            value = metrics.get(key)
            if isinstance(value, int | float):
                shown[short] = f"{value:.3f}"
        if isinstance(metrics.get(self.eval_key), int | float):
            shown["eval"] = f"{metrics[self.eval_key]:.3f}"
        self.bar.set_description_str("train", refresh=False)
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Remove the bar from the terminal's last line."""
        self.bar.close()
