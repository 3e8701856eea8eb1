"""Sweeps: short runs over learning rates and KL coefficients, compared on held-out reward.

:class:`Sweep` is what ``turnrl sweep`` runs. For each seed it first plays the
held-out scenarios with the starting policy (after the warm-start, if the
experiment has one) as a run's first evaluation plays them: the reward
*before*, the same for every setting of that seed, since lr and beta act only
once training starts. Then it trains each setting with that seed as a normal
run (``Experiment.from_yaml(...).run()``) in its own subdirectory, and reads
the held-out episodes of the run's last evaluation (``eval_samples.jsonl``),
the reward *after*, and the run's last ``train/kl``. The confidence intervals
and the ranked table: :mod:`.sweep_results`.

The results are written after every run (``sweep.json``, ``sweep.csv``,
``sweep.md``), so a sweep stopped by Ctrl-C keeps what finished. Started again
on the same output directory, a sweep reuses the finished runs and baselines
(new learning rates, betas or seeds may be added) and refuses a directory
whose sweep trained another experiment.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from turnrl.experiment.build import Experiment, build_environment
from turnrl.experiment.config import load_experiment
from turnrl.experiment.sweep_results import (
    csv_text,
    markdown_table,
    scenario_means,
    summarize,
    to_json,
    write_json,
    write_text,
)
from turnrl.logging import read_metrics
from turnrl.training.distributed import seed_everything
from turnrl.training.errors import NonFiniteError
from turnrl.training.rundir import config_changes
from turnrl.types import load_jsonl

__all__ = ["Setting", "Sweep"]

log = structlog.get_logger(__name__)

KL = "train/kl"
"""The metric reported as the final KL."""


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the learning rate (a number or ``"auto"``) and beta."""

    lr: float | str
    beta: float


class Sweep:
    """Short runs of an experiment over a grid of ``optim.lr`` and ``algorithm.beta``.

    Everything is checked when the sweep is built, before anything runs or is
    written: the grid, the ``--set`` overrides, every setting's config, the
    held-out scenarios and the output directory.

    Args:
        experiment: The experiment file.
        lrs: Learning rates to try (numbers, or ``"auto"``); none: the file's.
        betas: KL coefficients to try; none: the file's.
        seeds: ``run.seed`` of each run of a setting (default: the file's).
        steps: ``run.max_steps`` of each run (default: the file's).
        profile: The profile, as ``turnrl train --profile``.
        overrides: ``"a.b=value"`` settings for every run, as ``--set``.
        output_dir: Where the runs and results go (default: the experiment's
            ``run.output_dir`` + ``-sweep``).
        overwrite: Start afresh: ignore the results a sweep left there and
            overwrite its runs.

    Raises:
        ValueError: An empty grid, a learning rate that is not a positive
            number or ``auto``, a negative beta, a value given twice, a
            ``--set`` of what the sweep sets itself, a setting that fails
            validation, an experiment without held-out scenarios, or an output
            directory that holds something else.
    """

    def __init__(
        self,
        experiment: str | Path,
        *,
        lrs: Sequence[float | str] | None = None,
        betas: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
        steps: int | None = None,
        profile: str | None = None,
        overrides: Sequence[str] = (),
        output_dir: str | Path | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(experiment)
        lrs, betas = _learning_rates(lrs or ()), _betas(betas or ())
        if not lrs and not betas:
            raise ValueError(
                "nothing to sweep: give learning rates and/or KL coefficients, e.g. "
                "--lr 1e-4 3e-4 1e-3 --beta 0 0.04"
            )
        if steps is not None and steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        _check_overrides(overrides, lrs=bool(lrs), betas=bool(betas), seeds=seeds, steps=steps)
        self.profile = profile
        self.overrides = [*overrides, *([f"run.max_steps={steps}"] if steps else [])]
        self.config = load_experiment(self.path, profile=profile, overrides=self.overrides)
        self.seeds = _seeds(seeds) if seeds is not None else [self.config.run.seed]
        self._set_seed = seeds is not None  # else the file's seed holds (no --set of it)
        self.settings = [
            Setting(lr, beta)
            for lr in lrs or [self.config.optim.lr]
            for beta in betas or [self.config.algorithm.beta]
        ]
        self._swept = (bool(lrs), bool(betas))
        for setting in self.settings:  # a value the config refuses fails now, not mid-sweep
            load_experiment(self.path, profile=profile, overrides=self._run_overrides(setting))
        if not build_environment(self.config)[2]:
            raise ValueError(
                f"{self.path}: a sweep compares held-out reward, and the experiment holds out "
                "no scenarios: add scenarios.eval, scenarios.eval_size or scenarios.eval_fraction"
            )
        own = Path(self.config.run.output_dir)
        self.output_dir = Path(output_dir) if output_dir else own.with_name(own.name + "-sweep")
        self.baselines: dict[int, dict[str, float]] = {}
        self.runs: list[dict[str, Any]] = []
        if not overwrite:
            self._load_previous()

    async def run(self, on_run: Callable[[dict[str, Any]], None] | None = None) -> list[dict]:
        """Train every setting with every seed not already done; the ranked rows.

        Args:
            on_run: Called with each finished run's record.

        Returns:
            :func:`~turnrl.experiment.sweep_results.summarize`'s rows, best first.

        Raises:
            KeyboardInterrupt: Ctrl-C (a :class:`TrainingInterrupted` during a
                run); the results of the finished runs are written already.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.write()
        done = {(r["lr"], r["beta"], r["seed"]) for r in self.runs}
        total, index = len(self.seeds) * len(self.settings), 0
        for seed in self.seeds:
            if seed not in self.baselines:
                log.info("sweep_baseline", seed=seed)
                self.baselines[seed] = await self._baseline(seed)
                self.write()
            for setting in self.settings:
                index += 1
                if (setting.lr, setting.beta, seed) in done:
                    continue
                log.info(
                    "sweep_run", run=f"{index}/{total}", lr=setting.lr, beta=setting.beta, seed=seed
                )
                self.runs.append(await self._train(setting, seed))
                self.write()
                if on_run is not None:
                    on_run(self.runs[-1])
        return self.rows()

    def rows(self) -> list[dict[str, Any]]:
        """The finished runs summarized per setting, best first."""
        return summarize(self.runs, self.baselines)

    def write(self) -> None:
        """Write ``sweep.json``, ``sweep.csv`` and ``sweep.md`` for the runs finished so far."""
        rows = self.rows()
        write_json(
            self.output_dir / "sweep.json",
            {
                "experiment": str(self.path.resolve()),
                "config": self.config.model_dump(mode="json"),
                "baselines": {str(seed): means for seed, means in self.baselines.items()},
                "runs": self.runs,
                "settings": to_json(rows),
            },
        )
        write_text(self.output_dir / "sweep.csv", csv_text(rows))
        header = (
            f"# Sweep of {self.path.name}\n\nHeld-out reward (mean ± 95% interval over seeds x "
            "held-out scenarios, per-scenario means), best first.\n\n"
        )
        write_text(self.output_dir / "sweep.md", header + markdown_table(rows))

    def run_dir(self, setting: Setting, seed: int) -> Path:
        """Where the run of ``setting`` with ``seed`` trains."""
        parts = []
        if self._swept[0]:
            parts.append("lrauto" if setting.lr == "auto" else f"lr{setting.lr:g}")
        if self._swept[1]:
            parts.append(f"beta{setting.beta:g}")
        return self.output_dir / "_".join(parts) / f"seed{seed}"

    def _run_overrides(
        self, setting: Setting, seed: int | None = None, run_dir: Path | None = None
    ) -> list[str]:
        """The ``--set`` items of a run: the sweep's, the setting's, the seed and the place."""
        out = list(self.overrides)
        if self._swept[0]:
            out.append(f"optim.lr={setting.lr}")
        if self._swept[1]:
            out.append(f"algorithm.beta={setting.beta}")
        return out + self._run_place(seed, run_dir)

    def _run_place(self, seed: int | None, run_dir: Path | None) -> list[str]:
        """The ``--set`` items that give a run (or a baseline) its seed and directory."""
        out = [f"run.seed={seed}"] if self._set_seed and seed is not None else []
        if run_dir is not None:  # a JSON string is YAML too: any path survives parsing
            out += [f"run.output_dir={json.dumps(str(run_dir))}", "run.overwrite=true"]
        return out

    async def _baseline(self, seed: int) -> dict[str, float]:
        """The starting policy's per-scenario held-out reward, as a run's first evaluation."""
        where = self.output_dir / "before" / f"seed{seed}"
        overrides = [*self.overrides, *self._run_place(seed, where)]
        experiment = Experiment.from_yaml(self.path, profile=self.profile, overrides=overrides)
        run_seed = experiment.config.run.seed
        seed_everything(run_seed)  # as Experiment.run, before the warm-start
        experiment.warmstart()
        trainer = experiment.trainer()
        try:
            seed_everything(run_seed)  # as Trainer.train, before its first evaluation
            await trainer.evaluate()
        finally:
            trainer.metrics.close()
            trainer.close()
        return scenario_means(load_jsonl(where / "eval_samples.jsonl"))

    async def _train(self, setting: Setting, seed: int) -> dict[str, Any]:
        """Train one run; its record for ``sweep.json``.

        A run whose gradients stay non-finite (a learning rate too large) is a
        result, not the end of the sweep: its record holds the ``error`` and no
        reward after.
        """
        where = self.run_dir(setting, seed)
        overrides = self._run_overrides(setting, seed, where)
        experiment = Experiment.from_yaml(self.path, profile=self.profile, overrides=overrides)
        started, summary, error = time.perf_counter(), {}, None
        try:
            summary = await experiment.run()
        except NonFiniteError as e:
            error = str(e)
            log.warning("sweep_run_diverged", lr=setting.lr, beta=setting.beta, seed=seed)
        del experiment
        gc.collect()  # the next run loads its own model
        config = json.loads((where / "config.json").read_text(encoding="utf-8"))
        kls = [r[KL] for r in read_metrics(where) if r.get(KL) is not None]
        # Without an error the last evaluation is the one after the last step.
        after = {} if error else scenario_means(load_jsonl(where / "eval_samples.jsonl"))
        return {
            "lr": setting.lr,
            "beta": setting.beta,
            "seed": seed,
            "lr_used": config["optim"]["lr"],
            "beta_used": config["algorithm"]["beta"],
            "run_dir": str(where.relative_to(self.output_dir)),
            "after": after,
            "kl": kls[-1] if kls else None,
            "error": error,
            "eval_before": summary.get("eval_before"),
            "eval_after": summary.get("eval_after"),
            "wall_s": round(time.perf_counter() - started, 1),
        }

    def _load_previous(self) -> None:
        """Take the finished runs of a sweep of the same experiment in the output directory."""
        file = self.output_dir / "sweep.json"
        if not file.is_file():
            if self.output_dir.exists() and any(self.output_dir.iterdir()):
                raise ValueError(
                    f"{self.output_dir} holds files but no sweep.json, so it is not a sweep's "
                    "directory: choose another --output (or pass --overwrite)"
                )
            return
        previous = json.loads(file.read_text(encoding="utf-8"))
        changes = config_changes(previous.get("config", {}), self.config.model_dump(mode="json"))
        changes.pop("base_dir", None)  # the same file, moved
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise ValueError(
                f"{self.output_dir} holds a sweep of other settings ({listed}); choose another "
                "--output, or pass --overwrite to start afresh"
            )
        self.baselines = {int(seed): m for seed, m in previous.get("baselines", {}).items()}
        self.runs = list(previous.get("runs", []))


def _learning_rates(values: Sequence[float | str]) -> list[float | str]:
    out: list[float | str] = []
    for value in values:
        if value == "auto":
            lr: float | str = "auto"
        else:
            lr = _number(value, "--lr", "a learning rate must be a positive number or 'auto'")
            if not lr > 0:
                raise ValueError(
                    f"--lr {value}: a learning rate must be a positive number or 'auto'"
                )
        if lr in out:
            raise ValueError(f"--lr {value} is given twice")
        out.append(lr)
    return out


def _betas(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for value in values:
        beta = _number(value, "--beta", "a KL coefficient must be a number >= 0")
        if beta < 0:
            raise ValueError(f"--beta {value}: a KL coefficient must be a number >= 0")
        if beta in out:
            raise ValueError(f"--beta {value} is given twice")
        out.append(beta)
    return out


def _seeds(values: Sequence[int]) -> list[int]:
    if not values:
        raise ValueError("--seeds: give at least one seed")
    if len(set(values)) != len(values):
        raise ValueError(f"--seeds {' '.join(map(str, values))}: a seed is given twice")
    return list(values)


def _number(value: Any, flag: str, rule: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {value!r}: {rule}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{flag} {value!r}: {rule}")
    return number


# What the sweep sets in every run, and the option that says how.
_OWN = {
    "optim.lr": "--lr",
    "algorithm.beta": "--beta",
    "run.seed": "--seeds",
    "run.max_steps": "--steps",
    "run.output_dir": "--output",
    "run.overwrite": "--overwrite",
}


def _check_overrides(
    overrides: Sequence[str], *, lrs: bool, betas: bool, seeds: Any, steps: Any
) -> None:
    """Refuse a ``--set`` of a setting the sweep gives every run itself."""
    used = {
        "optim.lr": lrs,
        "algorithm.beta": betas,
        "run.seed": seeds is not None,
        "run.max_steps": steps is not None,
        "run.output_dir": True,
        "run.overwrite": True,
    }
    for item in overrides:
        key = item.partition("=")[0].strip()
        for own, flag in _OWN.items():
            if used[own] and (key == own or own.startswith(key + ".")):
                raise ValueError(f"--set {item!r}: the sweep sets {own} in every run; use {flag}")
