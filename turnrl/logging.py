"""structlog setup and metric sinks (metrics.jsonl, console, wandb).

Library code logs structlog events in snake_case with key-value pairs
(``log.info("step_done", step=3)``); metrics are flat dicts keyed
``namespace/name``. :class:`MetricsLogger` sends each step's metrics to every
sink: ``metrics.jsonl`` in the run directory (always), a short console line,
and wandb when enabled.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from turnrl.types import Trajectory

log = structlog.get_logger(__name__)

# The few numbers that say whether a run is healthy; everything else is in
# metrics.jsonl. No policy loss: with group-normalized advantages it sits near zero
# whatever happens (docs/algorithms.md, "Reading a run"). The eval metric
# (eval.metric) is shown after the reward, with its standard error.
CONSOLE_KEYS = (
    ("rollout/reward_mean", "reward"),
    ("train/kl", "kl"),
    ("train/clip_frac", "clip"),
    ("train/entropy", "entropy"),
    ("train/grad_norm", "gnorm"),
    ("train/explained_variance", "ev"),
    ("train/value_mean", "value"),
    ("rollout/turns_mean", "turns"),
    ("perf/step_s", "sec"),
)


def configure_logging(level: str | int = "INFO", *, json_logs: bool = False) -> None:
    """Route structlog events to stderr, readable (or as JSON lines)."""
    level_no = logging.getLevelName(level) if isinstance(level, str) else level
    renderer = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), pad_event_to=18)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *args: _BarSafeLogger(),
        cache_logger_on_first_use=False,
    )


class _BarSafeLogger:
    """Prints log lines to stderr through ``tqdm.write``, so a progress bar is not torn."""

    def msg(self, message: str) -> None:
        from tqdm.auto import tqdm

        # Look sys.stderr up at each use: it may have been replaced (pytest,
        # notebooks) since logging was configured, and the old stream closed.
        tqdm.write(message, file=sys.stderr)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def ensure_logging() -> None:
    """Configure logging once with the defaults, unless the user already did."""
    if not structlog.is_configured():
        configure_logging()


def console_line(step: int, metrics: dict[str, Any], eval_key: str = "eval/reward_mean") -> str:
    """A one-line summary of a step's metrics (``eval_key`` as ``eval value±stderr``).

    >>> console_line(3, {"rollout/reward_mean": 0.5, "eval/reward_mean": 0.25,
    ...                  "eval/reward_mean_stderr": 0.05, "train/clip_frac": 0.0123})
    'step    3 | reward 0.500 | eval 0.250±0.050 | clip 0.012'
    """
    parts = [f"step {step:>4}"]
    for key, short in CONSOLE_KEYS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{short} {_number(value)}")
        if key == "rollout/reward_mean" and isinstance(metrics.get(eval_key), int | float):
            stderr = metrics.get(f"{eval_key}_stderr")
            shown = _number(metrics[eval_key])
            parts.append(f"eval {shown}" + (f"±{_number(stderr)}" if stderr is not None else ""))
    return " | ".join(parts)


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"


class MetricsLogger:
    """Writes each step's metrics to metrics.jsonl, the console and wandb.

    Args:
        run_dir: Where ``metrics.jsonl`` goes.
        wandb_run: An initialized wandb run, or None.
        console: Print a line per logged step to stderr.
        append: Keep an existing ``metrics.jsonl`` (resuming) instead of
            starting it afresh.
        eval_key: The eval metric the console line shows (``eval.metric``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        wandb_run: Any = None,
        console: bool = True,
        append: bool = False,
        eval_key: str = "eval/reward_mean",
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("", encoding="utf-8")
        self.wandb_run = wandb_run
        self.console, self.eval_key = console, eval_key
        self._log = structlog.get_logger("turnrl.metrics")

    def log(self, step: int, metrics: dict[str, Any], *, echo: bool = True) -> None:
        """Append one step's metrics (and echo a console line if asked)."""
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self.console and echo:
            self._log.info(console_line(step, metrics, self.eval_key))

    def log_samples(
        self, step: int, trajectories: Sequence[Trajectory], *, table: str, limit: int = 16
    ) -> None:
        """Send the first ``limit`` conversations to wandb as a table (no-op without wandb).

        Columns: step, scenario id, the conversation as text, reward, turns and
        error. The full samples are in the run directory's JSONL files.
        """
        if self.wandb_run is None:
            return
        import wandb

        rows = [
            [
                step,
                t.scenario.id,
                "\n".join(f"{m.role}: {m.content}" for m in t.conversation),
                t.reward,
                len(t.turns),
                t.error,
            ]
            for t in trajectories[:limit]
        ]
        columns = ["step", "scenario", "conversation", "reward", "turns", "error"]
        self.wandb_run.log({table: wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        """Finish the wandb run, if any."""
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class NullMetrics:
    """The metrics sink of ranks other than 0 under torchrun: they do not write."""

    def log(self, step: int, metrics: dict[str, Any], *, echo: bool = True) -> None:
        """Drop the record."""

    def log_samples(self, step: int, trajectories: Sequence[Trajectory], *, table: str) -> None:
        """Drop the samples."""

    def close(self) -> None:
        """Nothing to close."""


def init_wandb(settings: Any, run_dir: Path, config: dict[str, Any]) -> Any:
    """A wandb run for ``settings`` (a ``WandbConfig``), or None when it is disabled."""
    if not settings.enabled:
        return None
    import wandb

    return wandb.init(
        project=settings.project,
        name=settings.name,
        tags=settings.tags,
        mode=settings.mode,
        dir=str(run_dir),
        config=config,
    )


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in step order.

    A run that crashed mid-write leaves a truncated last line, which is
    skipped with a ``metrics_line_skipped`` warning. A bad line anywhere else
    means the file was damaged some other way, so it raises with the line
    number rather than guess.

    Args:
        run_dir: The run directory (``run.output_dir``).

    Returns:
        One dict per logged record, each with an integer ``step`` (empty for
        an empty file).

    Raises:
        FileNotFoundError: ``run_dir`` or its ``metrics.jsonl`` does not exist.
        ValueError: A line before the last is not a JSON object with an
            integer ``step`` (the message names the line).
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


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks it
    if hasattr(value, "item"):
        return _clean(value.item())
    return value
