"""Learning curves of a run, drawn from its ``metrics.jsonl``.

:func:`plot_run` draws rollout reward, eval reward, KL and loss against step
into a PNG (the trainer's ``metrics.png``, and ``turnrl report``). It needs
matplotlib, imported only when called. :func:`series` and
:func:`moving_average` are the pieces a summary table uses too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from turnrl.logging import read_metrics

log = structlog.get_logger(__name__)

REWARD = "rollout/reward_mean"
EVAL_REWARD = "eval/reward_mean"
KL = "train/kl"
LOSS_POLICY = "loss/policy"
LOSS_VALUE = "loss/value"


def run_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (see :func:`turnrl.logging.read_metrics`).

    Raises:
        FileNotFoundError, ValueError: As :func:`~turnrl.logging.read_metrics`;
            ``ValueError`` also when the file has no records yet.
    """
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'} has no records yet: nothing to report")
    return records


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric, leaving out steps that lack it.

    A metric logged as None (NaN, or an eval where every episode failed)
    counts as missing.
    """
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start).

    Trailing rather than centred so that the curve at a step only uses what
    was known by then, and does not shift when more steps arrive.

    >>> moving_average([1.0, 2.0, 3.0, 4.0], 2)
    [1.0, 1.5, 2.5, 3.5]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Draw a run's learning curves into a PNG.

    Four panels against step: rollout reward (raw, faint, and a trailing
    moving average over ~10% of the steps), eval reward, KL to the reference
    (``train/kl``), and the policy loss (with the value loss when logged).
    A panel whose metric was never logged says so.

    The PNG is written to a temporary file and renamed, so a crash while
    plotting never leaves a half-written image.

    Args:
        run_dir: The run directory.
        path: Where to write the PNG; default ``run_dir/metrics.png``.

    Returns:
        The path of the PNG.

    Raises:
        ImportError: matplotlib is not installed.
        FileNotFoundError, ValueError: As :func:`run_records`.
    """
    try:
        # Figure + the Agg canvas directly, not pyplot: no global backend
        # switch, no figure registry to leak in a long-running process.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plot_run needs matplotlib, which turnrl does not install by default: "
            "pip install matplotlib"
        ) from e

    run_dir = Path(run_dir)
    records = run_records(run_dir)
    path = Path(path) if path is not None else run_dir / "metrics.png"

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{run_dir.resolve().name}  ({records[-1]['step']} steps)")
    (ax_reward, ax_eval), (ax_kl, ax_loss) = fig.subplots(2, 2, sharex=True)

    steps, rewards = series(records, REWARD)
    if steps:
        window = max(1, len(rewards) // 10)
        ax_reward.plot(steps, rewards, color="C0", alpha=0.3, linewidth=1, label="per step")
        ax_reward.plot(
            steps, moving_average(rewards, window), color="C0", label=f"mean of last {window}"
        )
        ax_reward.legend(loc="best", fontsize="small")
    _panel(ax_reward, "rollout reward", bool(steps), REWARD)

    steps, evals = series(records, EVAL_REWARD)
    if steps:
        ax_eval.plot(steps, evals, color="C1", marker="o")
    _panel(ax_eval, "eval reward", bool(steps), EVAL_REWARD)

    steps, kls = series(records, KL)
    if steps:
        ax_kl.plot(steps, kls, color="C2")
    _panel(ax_kl, "KL to reference", bool(steps), KL)

    logged = False
    for key, color in ((LOSS_POLICY, "C3"), (LOSS_VALUE, "C4")):
        steps, losses = series(records, key)
        if steps:
            ax_loss.plot(steps, losses, color=color, label=key)
            logged = True
    if logged:
        ax_loss.legend(loc="best", fontsize="small")
    _panel(ax_loss, "loss", logged, LOSS_POLICY)

    for ax in (ax_kl, ax_loss):
        ax.set_xlabel("step")
    _save_atomic(fig, path)
    log.info("plot_written", path=str(path))
    return path


def _panel(ax: Any, title: str, logged: bool, key: str) -> None:
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if not logged:
        ax.text(
            0.5, 0.5, f"not logged\n({key})", ha="center", va="center",
            transform=ax.transAxes, color="0.5",
        )  # fmt: skip


def _save_atomic(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so the rename stays on one filesystem.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def try_plot_run(run_dir: str | Path) -> None:
    """:func:`plot_run`, logging instead of raising: a finished run never fails on its picture."""
    try:
        plot_run(run_dir)
    except Exception as e:  # the run is done and saved; the picture is a bonus
        structlog.get_logger(__name__).warning("plot_skipped", reason=f"{type(e).__name__}: {e}")
