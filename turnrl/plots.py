"""Learning curves of a run, drawn from its ``metrics.jsonl``.

:func:`plot_run` draws what says whether a run is healthy (rewards, KL, clip
fraction, gradient norm, entropy, the critic's fit) against step into a PNG
(the trainer's ``metrics.png``, and ``turnrl report``). It needs matplotlib,
imported only when called. :func:`series` and
:func:`moving_average` are the pieces a summary table uses too.
"""

from __future__ import annotations

import json
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
CLIP_FRAC = "train/clip_frac"
GRAD_NORM = "train/grad_norm"
ENTROPY = "train/entropy"
EXPLAINED_VARIANCE = "train/explained_variance"
VALUE_MEAN = "train/value_mean"
RETURN_MEAN = "train/return_mean"
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

    The panels against step say whether a run is healthy: rollout reward (raw,
    faint, and a trailing moving average over ~10% of the steps), the eval metric
    (``eval.metric`` from the run's ``config.json``, default ``reward_mean``) with
    a band of one standard error, KL to the reference, the fraction of clipped
    tokens, the gradient norm and the entropy. A run with a critic (GAE) gets a
    third row: explained variance, value and return means, and the value loss.
    The policy loss is not drawn: with group-normalized advantages it sits near
    zero whatever the run does (docs/algorithms.md, "Reading a run"). A panel
    whose metric was never logged says so.

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
    critic = bool(series(records, EXPLAINED_VARIANCE)[0])

    fig = Figure(figsize=(14, 10.5 if critic else 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{run_dir.resolve().name}  ({records[-1]['step']} steps)")
    axes = fig.subplots(3 if critic else 2, 3, sharex=True)

    ax = axes[0][0]
    steps, rewards = series(records, REWARD)
    if steps:
        window = max(1, len(rewards) // 10)
        ax.plot(steps, rewards, color="C0", alpha=0.3, linewidth=1, label="per step")
        ax.plot(steps, moving_average(rewards, window), color="C0", label=f"mean of last {window}")
        ax.legend(loc="best", fontsize="small")
    _panel(ax, "rollout reward", bool(steps), REWARD)

    _eval_panel(axes[0][1], records, eval_metric(run_dir)[0])
    for ax, (title, key, color) in zip(
        [axes[0][2], *axes[1]],
        [
            ("KL to reference", KL, "C2"),
            ("clipped tokens (fraction)", CLIP_FRAC, "C3"),
            ("gradient norm (before clipping)", GRAD_NORM, "C4"),
            ("entropy (nats per token)", ENTROPY, "C5"),
        ],
        strict=True,
    ):
        _line_panel(ax, records, title, [(key, color)])
    if critic:
        ax = axes[2][0]
        title = "critic explained variance (axis -1..1)"
        _line_panel(ax, records, title, [(EXPLAINED_VARIANCE, "C6")])
        ax.set_ylim(-1.05, 1.05)  # it can fall without bound when the returns barely vary
        _line_panel(
            axes[2][1], records, "critic value vs return", [(VALUE_MEAN, "C7"), (RETURN_MEAN, "C8")]
        )
        _line_panel(axes[2][2], records, "value loss", [(LOSS_VALUE, "C9")])

    for ax in axes[-1]:
        ax.set_xlabel("step")
    _save_atomic(fig, path)
    log.info("plot_written", path=str(path))
    return path


def eval_metric(run_dir: str | Path) -> tuple[str, str]:
    """The key of the run's ``eval.metric`` and its ``eval.mode`` (``max`` or ``min``).

    Read from ``config.json`` as plain JSON; a run without one (or of a version
    before ``eval.metric``) gets ``("eval/reward_mean", "max")``.
    """
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        metric, mode = config["eval"].get("metric"), config["eval"].get("mode")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        metric = mode = None
    if not isinstance(metric, str) or not metric:
        metric = EVAL_REWARD
    mode = mode if mode in ("max", "min") else "max"
    return (metric if metric.startswith("eval/") else f"eval/{metric}"), mode


def _eval_panel(ax: Any, records: Sequence[dict[str, Any]], key: str) -> None:
    steps, values = series(records, key)
    if steps:
        errors = dict(zip(*series(records, f"{key}_stderr"), strict=True))
        low = [v - errors.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
        high = [v + errors.get(s, 0.0) for s, v in zip(steps, values, strict=True)]
        ax.fill_between(steps, low, high, color="C1", alpha=0.2, label="± 1 stderr")
        ax.plot(steps, values, color="C1", marker="o")
        if errors:
            ax.legend(loc="best", fontsize="small")
    _panel(ax, f"eval: {key.removeprefix('eval/')}", bool(steps), key)


def _line_panel(
    ax: Any, records: Sequence[dict[str, Any]], title: str, keys: Sequence[tuple[str, str]]
) -> None:
    logged = []
    for key, color in keys:
        steps, values = series(records, key)
        if steps:
            ax.plot(steps, values, color=color, label=key)
            logged.append(key)
    if len(logged) > 1:
        ax.legend(loc="best", fontsize="small")
    _panel(ax, title, bool(logged), keys[0][0])


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
