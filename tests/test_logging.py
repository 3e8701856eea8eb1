"""turnrl.logging: the one reader of metrics.jsonl, and what it tolerates."""

import re

import pytest
from structlog.testing import capture_logs

from turnrl.logging import MetricsLogger, read_metrics


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
