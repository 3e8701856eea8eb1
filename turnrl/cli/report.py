"""The numbers of a finished (or running) training run, as a table: ``turnrl report``.

Everything here reads what the trainer leaves in a run directory:
``metrics.jsonl`` (one record per step; step 0 holds the eval before
training) and, when present, ``config.json``. Nothing needs the model.
:func:`summarize_run` and :func:`format_summary` give the numbers a person
compares between runs, as a dict and as an aligned text table; the plot is
:func:`turnrl.plots.plot_run`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from turnrl.plots import KL, REWARD, eval_metric, plot_run, run_records, series

log = structlog.get_logger(__name__)

STEP_S = "perf/step_s"


def command(args: argparse.Namespace) -> int:
    """``turnrl report RUN_DIR``: print the summary table and redraw the plot."""
    print(format_summary(summarize_run(args.run_dir)))
    print(f"\nplot: {plot_run(args.run_dir, args.output)}")
    return 0


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
        A dict with ``run_dir``, ``steps``, ``eval_metric`` (the run's
        ``eval.metric``; ``best`` follows its ``eval.mode``), ``eval_first``/``_step``,
        ``eval_last``/``_step``, ``eval_best``/``_step``,
        ``reward_first_10pct``, ``reward_last_10pct``, ``kl_final``,
        ``step_s_mean``, ``step_s_total``, and ``config``: None without a
        readable ``config.json``, else ``estimator``, ``lr``, ``model_path``
        (None is the embedded tiny model) and ``seed``.

    Raises:
        FileNotFoundError, ValueError: As :func:`turnrl.plots.run_records`.
    """
    run_dir = Path(run_dir)
    records = run_records(run_dir)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": records[-1]["step"]}

    summary["eval_metric"], mode = eval_metric(run_dir)
    eval_steps, evals = series(records, summary["eval_metric"])
    sign = 1 if mode == "max" else -1
    best = max(range(len(evals)), key=lambda i: (sign * evals[i], -eval_steps[i]), default=None)
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
        metric = summary.get("eval_metric", "eval/reward_mean").removeprefix("eval/")
        rows.append((f"eval {metric}, {name}", _fmt(value) + at))
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
