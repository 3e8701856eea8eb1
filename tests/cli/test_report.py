"""Run reports: the PNG, hand-worked summary values, and damaged metrics files."""

import json
import re

import pytest
from structlog.testing import capture_logs

from turnrl.cli.report import format_summary, summarize_run
from turnrl.logging import read_metrics
from turnrl.plots import plot_run


def test_summarize_run_hand_worked(run_dir):
    s = summarize_run(run_dir)
    assert s["run_dir"] == str(run_dir)
    assert s["steps"] == 30
    assert (s["eval_first"], s["eval_first_step"]) == (0.1, 0)
    assert (s["eval_last"], s["eval_last_step"]) == (0.6, 30)
    assert (s["eval_best"], s["eval_best_step"]) == (0.7, 20)
    # 10% of 30 steps = 3: (0.01 + 0.02 + 0.03) / 3 and (0.28 + 0.29 + 0.30) / 3
    assert s["reward_first_10pct"] == pytest.approx(0.02)
    assert s["reward_last_10pct"] == pytest.approx(0.29)
    assert s["kl_final"] == pytest.approx(0.030)
    # 15 steps of 2 s and 15 of 4 s
    assert s["step_s_mean"] == pytest.approx(3.0)
    assert s["step_s_total"] == pytest.approx(90.0)
    assert s["config"] == {"estimator": "rloo", "lr": 3e-4, "model_path": "/models/x", "seed": 7}


def test_summarize_run_without_config_or_evals(tmp_path, write_metrics, synthetic_records):
    records = [r for r in synthetic_records(steps=5) if r["step"] > 0]
    for r in records:
        r.pop("eval/reward_mean", None)
        r.pop("train/kl")
    s = summarize_run(write_metrics(tmp_path / "run", records))
    assert s["steps"] == 5
    assert s["config"] is None
    assert s["eval_first"] is s["eval_best_step"] is s["kl_final"] is None
    # 10% of 5 steps rounds down to 0; at least one step is used.
    assert s["reward_first_10pct"] == pytest.approx(0.01)
    assert s["reward_last_10pct"] == pytest.approx(0.05)
    assert "final KL" in format_summary(s)


def test_best_eval_tie_goes_to_the_earliest_step(tmp_path, write_metrics):
    records = [{"step": s, "eval/reward_mean": v} for s, v in ((0, 0.5), (10, 0.8), (20, 0.8))]
    s = summarize_run(write_metrics(tmp_path / "run", records))
    assert (s["eval_best"], s["eval_best_step"]) == (0.8, 10)


def test_format_summary_is_an_aligned_table(run_dir):
    text = format_summary(summarize_run(run_dir))
    for expected in (
        "rloo",
        "0.0003",
        "/models/x",
        "0.1  (step 0)",
        "0.6  (step 30)",
        "0.7  (step 20)",
        "0.02\n",
        "0.29\n",
        "0.03\n",
        "3.00 s",
        "1m 30s",
    ):
        assert expected in text
    lines = text.splitlines()
    column = max(len(line.split("  ")[0]) for line in lines) + 2
    for line in lines:
        assert line[column - 2 : column] == "  " and line[column] != " ", line


def test_format_summary_marks_missing_values(tmp_path, write_metrics):
    summary = summarize_run(write_metrics(tmp_path / "run", [{"step": 0}]))
    lines = format_summary(summary).splitlines()
    # run and steps, then 3 evals, 2 rollout rewards, KL and 2 times, none logged
    assert [line.split()[-1] for line in lines] == [str(tmp_path / "run"), "0"] + ["-"] * 8


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, write_metrics, synthetic_records):
    # A crash mid-write: line 32 (step 31) stops halfway, without a newline.
    run_dir = write_metrics(tmp_path / "run", synthetic_records(), tail='{"step": 31, "rollout/re')
    with capture_logs() as logs:
        records = read_metrics(run_dir)
        s = summarize_run(run_dir)
    assert [r["step"] for r in records] == list(range(31))
    assert s["steps"] == 30
    skipped = [e for e in logs if e["event"] == "metrics_line_skipped"]
    assert skipped and skipped[0]["line"] == 32 and skipped[0]["log_level"] == "warning"


def test_corrupt_middle_line_raises_with_its_number(tmp_path, write_metrics, synthetic_records):
    run_dir = write_metrics(tmp_path / "run", synthetic_records())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"step": 4, "rollout/rew\n'
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5: not valid JSON"):
        summarize_run(run_dir)


def test_missing_run_dir_or_metrics_file_or_records(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"run directory not found: {missing}")):
        summarize_run(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no metrics.jsonl in {tmp_path}")):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no records yet"):
        summarize_run(tmp_path)


def test_summary_follows_eval_metric_and_mode(run_dir, write_metrics):
    records = [{"step": s, "eval/turns_mean": v} for s, v in ((0, 3.0), (10, 1.5), (20, 2.0))]
    write_metrics(run_dir, records)
    config = json.loads((run_dir / "config.json").read_text())
    config["eval"] |= {"metric": "turns_mean", "mode": "min"}
    (run_dir / "config.json").write_text(json.dumps(config))
    s = summarize_run(run_dir)
    assert s["eval_metric"] == "eval/turns_mean"
    assert (s["eval_best"], s["eval_best_step"]) == (1.5, 10)  # min: fewer turns is better
    assert "eval turns_mean, best" in format_summary(s)
