"""What a sweep reports: per-scenario rewards, 95% confidence intervals, the ranked table.

The unit of every interval is one held-out scenario of one seed's run: its mean
reward over the ``eval.num_generations`` episodes it was played (failed
episodes left out, as ``eval/reward_mean`` leaves them out). For a setting run
with seeds ``S`` on held-out scenarios ``J``, the ``n = |S| x |J|`` values
``x`` give::

    mean +- t(0.975, n - 1) * std(x, ddof=1) / sqrt(n)

the two-sided 95% Student-t interval of the mean. The change (after - before)
is computed per seed and scenario first, a paired difference, so the spread
between easy and hard scenarios cancels out of it. The values of one seed
share its trained model, so with several seeds the interval treats them as
more independent than they are: it is a guide for ranking, not a test.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turnrl.types import Trajectory

T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""The 0.975 quantile of Student's t for 1 to 30 degrees of freedom."""


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (3 decimals).

    A table up to 30; beyond, the Cornish-Fisher expansion around the normal
    quantile (within 0.001 of the exact value there).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its 95% interval (None for fewer than two values)."""

    mean: float | None
    half_width: float | None
    n: int

    def __str__(self) -> str:
        if self.mean is None:
            return "-"
        if self.half_width is None:
            return f"{self.mean:.3f} (n=1)"
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_ci(values: Sequence[float]) -> Interval:
    """The mean of ``values`` and the half-width of its two-sided 95% t-interval."""
    n = len(values)
    if n == 0:
        return Interval(None, None, 0)
    x = np.asarray(values, dtype=np.float64)
    if n == 1:
        return Interval(float(x[0]), None, 1)
    half = t_quantile(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(float(x.mean()), half, n)


def scenario_means(trajectories: Iterable[Trajectory]) -> dict[str, float]:
    """``{scenario id: mean reward of its episodes}``, failed episodes left out.

    A scenario whose episodes all failed has no entry.
    """
    rewards: dict[str, list[float]] = {}
    for t in trajectories:
        if not t.failed:
            reward = t.reward if t.reward is not None else t.env_return
            rewards.setdefault(t.scenario.id, []).append(reward)
    return {sid: float(np.mean(values)) for sid, values in rewards.items()}


def summarize(
    runs: Sequence[Mapping[str, Any]], baselines: Mapping[int, Mapping[str, float]]
) -> list[dict[str, Any]]:
    """One row per setting (``lr``, ``beta``) with its intervals, ranked by the reward after.

    Args:
        runs: Finished runs, each with ``lr``, ``beta``, ``seed``, ``lr_used``,
            ``beta_used``, ``after`` (per-scenario means), ``kl`` (final
            ``train/kl``, or None) and optionally ``error``.
        baselines: ``{seed: per-scenario means before training}``.

    Returns:
        Rows with ``rank`` (1: the highest mean reward after), ``lr``, ``beta``,
        ``lr_used``, ``beta_used``, ``seeds``, ``failed`` (runs that stopped with
        an ``error``: they have no reward after), ``before``, ``after``,
        ``change`` (each an :class:`Interval`) and ``kl`` (mean over seeds).
    """
    settings: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for run in runs:
        settings.setdefault((run["lr"], run["beta"]), []).append(run)
    rows = []
    for (lr, beta), group in settings.items():
        before, after, change = [], [], []
        for run in group:
            start = baselines.get(run["seed"], {})
            before += list(start.values())
            after += list(run["after"].values())
            change += [v - start[sid] for sid, v in run["after"].items() if sid in start]
        kls = [run["kl"] for run in group if run["kl"] is not None]
        failed = sum(run.get("error") is not None for run in group)
        rows.append(
            {
                "lr": lr,
                "beta": beta,
                "lr_used": sorted({run["lr_used"] for run in group}),
                "beta_used": sorted({run["beta_used"] for run in group}),
                "seeds": sorted(run["seed"] for run in group),
                "failed": failed,
                "before": mean_ci(before),
                "after": mean_ci(after),
                "change": mean_ci(change),
                "kl": float(np.mean(kls)) if kls else None,
            }
        )
    # Best first; ties keep the grid's order; a setting without a value goes last.
    rows.sort(key=lambda row: (row["after"].mean is None, -(row["after"].mean or 0.0)))
    return [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table, best first (intervals are 95%)."""
    lines = [
        "| rank | lr | beta | seeds | held-out reward before | after | change | final KL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kl = "-" if row["kl"] is None else f"{row['kl']:.4f}"
        seeds = f"{len(row['seeds'])}" + (f" ({row['failed']} diverged)" if row["failed"] else "")
        lines.append(
            f"| {row['rank']} | {_lr_label(row)} | {_join(row['beta_used'])} | {seeds} | "
            f"{row['before']} | {row['after']} | {row['change']} | {kl} |"
        )
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV: each interval as ``<name>_mean``, ``<name>_ci95`` and ``n``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["rank", "lr", "beta", "lr_used", "beta_used", "seeds", "failed", "n"]
        + [f"{name}_{part}" for name in ("before", "after", "change") for part in ("mean", "ci95")]
        + ["kl"]
    )
    for row in rows:
        intervals = [row[name] for name in ("before", "after", "change")]
        writer.writerow(
            [row["rank"], row["lr"], row["beta"], _join(row["lr_used"]), _join(row["beta_used"])]
            + [_join(row["seeds"]), row["failed"], row["after"].n]
            + [_cell(value) for i in intervals for value in (i.mean, i.half_width)]
            + [_cell(row["kl"])]
        )
    return out.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each interval as ``{mean, ci95, n}``."""
    return [
        {
            key: (
                {"mean": v.mean, "ci95": v.half_width, "n": v.n} if isinstance(v, Interval) else v
            )
            for key, v in row.items()
        }
        for row in rows
    ]


def write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, whole or not at all."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def _lr_label(row: Mapping[str, Any]) -> str:
    used = _join(row["lr_used"])
    return f"auto ({used})" if row["lr"] == "auto" else used


def _join(values: Sequence[Any]) -> str:
    return ";".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
