"""turnrl.plots: the PNG of a run's learning curves, and the moving average."""

import sys

import pytest

from turnrl.plots import eval_metric, moving_average, plot_run
from turnrl.training.config import TrainingConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_run_writes_a_valid_png(run_dir):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    path = plot_run(run_dir)
    assert path == run_dir / "metrics.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with image.open(path) as img:
        img.load()  # decodes every pixel: a truncated file fails here
        assert img.size == (1400, 750)  # figsize (14, 7.5) at 100 dpi: two rows, no critic
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "metrics.png",
    ]  # no temporary file left behind


def test_plot_run_with_metrics_missing(tmp_path, write_metrics):
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


def test_moving_average_hand_worked():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    # window 3: 1/1, (1+2)/2, (1+2+3)/3, (2+3+4)/3, (3+4+8)/3
    assert moving_average([1.0, 2.0, 3.0, 4.0, 8.0], 3) == [1.0, 1.5, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0], 0)


def test_a_critic_adds_a_row_and_the_eval_panel_follows_eval_metric(tmp_path, write_metrics):
    pytest.importorskip("matplotlib")
    image = pytest.importorskip("PIL.Image")
    records = [
        {"step": 0, "eval/reward/env_return": 0.2, "eval/reward/env_return_stderr": 0.05},
        *[
            {
                "step": s,
                "rollout/reward_mean": s / 10,
                "train/explained_variance": s / 5 - 0.5,
                "train/value_mean": s / 20,
                "train/return_mean": s / 10,
                "loss/value": 1 / s,
            }
            for s in range(1, 4)
        ],
    ]
    run_dir = write_metrics(tmp_path / "run", records)
    assert eval_metric(run_dir) == ("eval/reward_mean", "max")  # no config.json: the default
    chosen = {"metric": "reward/env_return", "mode": "min"}
    TrainingConfig.from_profile("balanced", eval=chosen).save(run_dir / "config.json")
    assert eval_metric(run_dir) == ("eval/reward/env_return", "min")
    with image.open(plot_run(run_dir)) as img:
        assert img.size == (1400, 1050)  # a third row for the critic
