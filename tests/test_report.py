"""Run reports: the PNG, hand-worked summary values, and damaged metrics files."""

import json
import re
import sys

import pytest
from structlog.testing import capture_logs

from turnrl.report import (
    format_summary,
    load_run_metrics,
    moving_average,
    plot_run,
    summarize_run,
)
from turnrl.training.config import TrainingConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_records(steps=30, eval_every=10):
    """Step 0 holds only the eval before training, as the trainer writes it.

    Step s has rollout reward s/100, KL s/1000, policy loss -s/100, and takes
    2 s (odd s) or 4 s (even s). Evals at steps 0, 10, 20, 30: 0.1, 0.5, 0.7, 0.6.
    """
    evals = {0: 0.1, 10: 0.5, 20: 0.7, 30: 0.6}
    records = [{"step": 0, "eval/reward_mean": evals[0]}]
    for s in range(1, steps + 1):
        record = {
            "step": s,
            "rollout/reward_mean": s / 100,
            "train/kl": s / 1000,
            "loss/policy": -s / 100,
            "perf/step_s": 2.0 if s % 2 else 4.0,
        }
        if s % eval_every == 0:
            record["eval/reward_mean"] = evals[s]
        records.append(record)
    return records


def write_metrics(run_dir, records, tail=""):
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    run_dir = write_metrics(tmp_path / "run", synthetic_records())
    # The real writer, so a change to TrainingConfig's layout breaks this test.
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "rloo"},
        optim={"lr": 3e-4},
        model={"path": "/models/x"},
        run={"seed": 7},
    )
    config.save(run_dir / "config.json")
    return run_dir


def test_plot_run_writes_a_valid_png(run_dir):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    path = plot_run(run_dir)
    assert path == run_dir / "metrics.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with image.open(path) as img:
        img.load()  # decodes every pixel: a truncated file fails here
        assert img.size == (1100, 750)  # figsize (11, 7.5) at 100 dpi
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "metrics.png",
    ]  # no temporary file left behind


def test_plot_run_with_metrics_missing(tmp_path):
    pytest.importorskip("matplotlib")
    # Only the eval before training: three panels have nothing to draw.
    run_dir = write_metrics(tmp_path / "run", [{"step": 0, "eval/reward_mean": 0.5}])
    out = plot_run(run_dir, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_run_crash_leaves_no_file(run_dir, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")

    def crash(self, f, **kwargs):
        f.write(PNG_SIGNATURE + b"half an image")
        raise RuntimeError("disk full")

    monkeypatch.setattr(figure.Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_run(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.jsonl"]


def test_plot_run_without_matplotlib_says_how_to_install(run_dir, monkeypatch):
    # None in sys.modules makes the import fail, even if already imported.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_run(run_dir)


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


def test_summarize_run_without_config_or_evals(tmp_path):
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


def test_best_eval_tie_goes_to_the_earliest_step(tmp_path):
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


def test_format_summary_marks_missing_values(tmp_path):
    summary = summarize_run(write_metrics(tmp_path / "run", [{"step": 0}]))
    lines = format_summary(summary).splitlines()
    # run and steps, then 3 evals, 2 rollout rewards, KL and 2 times, none logged
    assert [line.split()[-1] for line in lines] == [str(tmp_path / "run"), "0"] + ["-"] * 8


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    # A crash mid-write: line 32 (step 31) stops halfway, without a newline.
    run_dir = write_metrics(tmp_path / "run", synthetic_records(), tail='{"step": 31, "rollout/re')
    with capture_logs() as logs:
        records = load_run_metrics(run_dir)
        s = summarize_run(run_dir)
    assert [r["step"] for r in records] == list(range(31))
    assert s["steps"] == 30
    skipped = [e for e in logs if e["event"] == "metrics_line_skipped"]
    assert skipped and skipped[0]["line"] == 32 and skipped[0]["log_level"] == "warning"


def test_corrupt_middle_line_raises_with_its_number(tmp_path):
    run_dir = write_metrics(tmp_path / "run", synthetic_records())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[4] = '{"step": 4, "rollout/rew\n'
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 5: not valid JSON"):
        summarize_run(run_dir)


def test_record_without_step_raises(tmp_path):
    run_dir = write_metrics(tmp_path / "run", [{"loss/policy": 1.0}, {"step": 1}])
    with pytest.raises(ValueError, match="line 1: no integer 'step'"):
        load_run_metrics(run_dir)


def test_missing_run_dir_or_metrics_file_or_records(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"run directory not found: {missing}")):
        summarize_run(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no metrics.jsonl in {tmp_path}")):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no records yet"):
        summarize_run(tmp_path)


def test_moving_average_hand_worked():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    # window 3: 1/1, (1+2)/2, (1+2+3)/3, (2+3+4)/3, (3+4+8)/3
    assert moving_average([1.0, 2.0, 3.0, 4.0, 8.0], 3) == [1.0, 1.5, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)
