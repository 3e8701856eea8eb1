"""Plots and text summaries of a finished (or running) training run.

Everything here reads what the trainer leaves in a run directory:
``metrics.jsonl`` (one record per step; step 0 holds the eval before
training) and, when present, ``config.json``. Nothing needs the model.

- :func:`load_run_metrics` reads ``metrics.jsonl`` and tolerates the one
  defect a crash leaves behind: a truncated last line, skipped with a
  warning. A bad line anywhere else means the file was damaged some other
  way, so it raises with the line number rather than guess.
- :func:`plot_run` draws rollout reward, eval reward, KL and loss against
  step into a PNG. It needs matplotlib, imported only when called.
- :func:`summarize_run` and :func:`format_summary` give the numbers a
  person compares between runs, as a dict and as an aligned text table.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

REWARD = "rollout/reward_mean"
EVAL_REWARD = "eval/reward_mean"
KL = "train/kl"
LOSS_POLICY = "loss/policy"
LOSS_VALUE = "loss/value"
STEP_S = "perf/step_s"


def load_run_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in step order.

    Unlike :func:`turnrl.logging.read_metrics`, this checks the file: a run
    that crashed mid-write leaves a truncated last line, which is skipped
    with a ``metrics_line_skipped`` warning.

    Args:
        run_dir: The run directory (``run.output_dir``).

    Returns:
        One dict per logged step, each with an integer ``step``.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``metrics.jsonl`` does not exist.
        ValueError: The file has no records, or a line before the last is not
            a JSON object with an integer ``step`` (the message names the line).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir} (expected {path})")
    numbered = [
        (number, line)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    records = []
    for i, (number, line) in enumerate(numbered):
        record, problem = _parse_record(line)
        if problem is None:
            records.append(record)
        elif i == len(numbered) - 1:
            log.warning("metrics_line_skipped", path=str(path), line=number, reason=problem)
        else:
            raise ValueError(f"{path}, line {number}: {problem}; the file is corrupt")
    if not records:
        raise ValueError(f"{path} has no records yet: nothing to report")
    return sorted(records, key=lambda r: r["step"])


def _parse_record(line: str) -> tuple[dict[str, Any], str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return {}, f"not valid JSON ({e.msg})"
    if not isinstance(record, dict):
        return {}, f"expected a JSON object, got {type(record).__name__}"
    # bool is an int subclass; a step of true is still corruption.
    if not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
        return {}, "no integer 'step'"
    return record, None


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
        FileNotFoundError, ValueError: As :func:`load_run_metrics`.
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
    records = load_run_metrics(run_dir)
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


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """The numbers to compare between runs, as a flat dict.

    Values that the run did not log are None. ``reward_first_10pct`` and
    ``reward_last_10pct`` average the rollout reward over the first and
    last tenth of the steps that logged it (at least one step each).
    ``step_s_total`` sums ``perf/step_s``: rollout and update time, without
    evals and checkpoints, so it is less than the wall-clock time.

    Args:
        run_dir: The run directory.

    Returns:
        A dict with ``run_dir``, ``steps``, ``eval_first``/``_step``,
        ``eval_last``/``_step``, ``eval_best``/``_step``,
        ``reward_first_10pct``, ``reward_last_10pct``, ``kl_final``,
        ``step_s_mean``, ``step_s_total``, and ``config``: None without a
        readable ``config.json``, else ``estimator``, ``lr``, ``model_path``
        (None is the embedded tiny model) and ``seed``.

    Raises:
        FileNotFoundError, ValueError: As :func:`load_run_metrics`.
    """
    run_dir = Path(run_dir)
    records = load_run_metrics(run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": records[-1]["step"]}

    eval_steps, evals = series(records, EVAL_REWARD)
    best = max(range(len(evals)), key=lambda i: (evals[i], -eval_steps[i]), default=None)
    for name, i in (("first", 0), ("last", -1), ("best", best)):
        has = bool(evals) and i is not None
        summary[f"eval_{name}"] = evals[i] if has else None
        summary[f"eval_{name}_step"] = eval_steps[i] if has else None

    _, rewards = series(records, REWARD)
    tenth = max(1, len(rewards) // 10)
    summary["reward_first_10pct"] = _mean(rewards[:tenth])
    summary["reward_last_10pct"] = _mean(rewards[-tenth:])
    _, kls = series(records, KL)
    summary["kl_final"] = kls[-1] if kls else None
    _, step_s = series(records, STEP_S)
    summary["step_s_mean"] = _mean(step_s)
    summary["step_s_total"] = math.fsum(step_s) if step_s else None
    summary["config"] = _config_highlights(run_dir / "config.json")
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _config_highlights(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    # Plain JSON, not TrainingConfig.load: a report should still work for a
    # run saved by an older version whose config no longer validates.
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("config_unreadable", path=str(path), error=str(e))
        return None
    if not isinstance(config, dict):
        log.warning("config_unreadable", path=str(path), error="not a JSON object")
        return None

    def get(section: str, key: str) -> Any:
        value = config.get(section)
        return value.get(key) if isinstance(value, dict) else None

    return {
        "estimator": get("algorithm", "estimator"),
        "lr": get("optim", "lr"),
        "model_path": get("model", "path"),
        "seed": get("run", "seed"),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A :func:`summarize_run` dict as an aligned two-column text table."""
    config = summary.get("config")
    rows = [("run", summary["run_dir"])]
    if config is not None:
        model = config["model_path"] if config["model_path"] is not None else "embedded tiny model"
        rows += [
            ("estimator", _fmt(config["estimator"])),
            ("lr", _fmt(config["lr"])),
            ("model", str(model)),
            ("seed", _fmt(config["seed"])),
        ]
    rows.append(("steps", str(summary["steps"])))
    for name in ("first", "last", "best"):
        value, step = summary[f"eval_{name}"], summary[f"eval_{name}_step"]
        at = f"  (step {step})" if step is not None else ""
        rows.append((f"eval reward, {name}", _fmt(value) + at))
    rows += [
        ("rollout reward, first 10%", _fmt(summary["reward_first_10pct"])),
        ("rollout reward, last 10%", _fmt(summary["reward_last_10pct"])),
        ("final KL", _fmt(summary["kl_final"])),
        ("mean step time", _fmt_seconds(summary["step_s_mean"])),
        ("total step time", _fmt_seconds(summary["step_s_total"])),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
