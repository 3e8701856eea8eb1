"""turnrl.logging: the one reader of metrics.jsonl, and what it tolerates."""

import doctest
import re

import pytest
from structlog.testing import capture_logs

import turnrl.logging
from turnrl.logging import MetricsLogger, console_line, read_metrics


def test_reads_what_the_metrics_logger_writes_in_step_order(tmp_path):
    logger = MetricsLogger(tmp_path, console=False)
    logger.log(2, {"a": 1.0}, echo=False)
    logger.log(1, {"a": float("nan")}, echo=False)  # NaN is written as null
    logger.close()
    assert read_metrics(tmp_path) == [{"step": 1, "a": None}, {"step": 2, "a": 1.0}]


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, write_metrics, synthetic_records):
    # A crash mid-write: line 32 (step 31) stops halfway, without a newline.
    run_dir = write_metrics(tmp_path / "run", synthetic_records(), tail='{"step": 31, "rollout/re')
    with capture_logs() as logs:
        records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(31))
    skipped = [e for e in logs if e["event"] == "metrics_line_skipped"]
    assert skipped and skipped[0]["line"] == 32 and skipped[0]["log_level"] == "warning"


def test_corrupt_middle_line_raises_with_its_number(tmp_path, write_metrics, synthetic_records):
    run_dir = write_metrics(tmp_path / "run", synthetic_records())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"step": 4, "rollout/rew\n'
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5: not valid JSON"):
        read_metrics(run_dir)


@pytest.mark.parametrize(
    ("first", "problem"),
    [({"loss/policy": 1.0}, "no integer 'step'"), ({"step": True}, "no integer 'step'")],
)
def test_record_without_integer_step_raises(tmp_path, write_metrics, first, problem):
    run_dir = write_metrics(tmp_path / "run", [first, {"step": 1}])
    with pytest.raises(ValueError, match=f"line 1: {problem}"):
        read_metrics(run_dir)


def test_missing_run_dir_or_file_raises_and_an_empty_file_has_no_records(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"run directory not found: {missing}")):
        read_metrics(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no metrics.jsonl in {tmp_path}")):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    assert read_metrics(tmp_path) == []


def test_console_line_shows_health_not_the_policy_loss():
    metrics = {
        "rollout/reward_mean": 0.5,
        "loss/policy": -1e-8,  # near zero whatever the run does: not shown
        "train/kl": 0.01,
        "train/clip_frac": 0.125,
        "train/entropy": 1.5,
        "train/grad_norm": 0.75,
        "train/explained_variance": 0.25,
        "train/value_mean": 0.375,
        "eval/reward_mean": 0.5,
        "eval/reward/env_return": 0.25,
        "eval/reward/env_return_stderr": 0.0625,
    }
    assert console_line(7, metrics, "eval/reward/env_return") == (
        "step    7 | reward 0.500 | eval 0.250±0.062 | kl 0.010 | clip 0.125 | entropy 1.500"
        " | gnorm 0.750 | ev 0.250 | value 0.375"
    )
    assert "eval 0.500 |" in console_line(7, metrics)  # the default eval.metric, no stderr
    assert doctest.testmod(turnrl.logging).failed == 0
