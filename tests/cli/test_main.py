"""The CLI end to end on the tiny model: train, dry-run, eval, report, chat, export."""

import io
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from turnrl.cli.main import build_parser, main
from turnrl.training.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "examples/configs/arithmetic_data.yaml"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 2-step `turnrl train` run with a checkpoint, shared by the tests below."""
    run = tmp_path_factory.mktemp("cli") / "run"
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    try:
        code = main(
            [
                "train",
                CONFIG,
                "--set",
                "run.max_steps=2",
                "--set",
                f"run.output_dir={run}",
                "--set",
                "run.checkpoint_every=2",
            ]
        )
    finally:
        mp.undo()
    assert code == 0
    return run


def test_train_writes_a_complete_run(trained_run):
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[-1]["eval/reward_mean"] is not None
    config = json.loads((trained_run / "config.json").read_text())
    assert config["environment"]["target"].endswith(":ArithmeticEnvironment")
    assert config["rollout"]["scenarios_per_step"] == 4  # from the file, over the profile
    assert config["algorithm"]["beta"] == 0.1  # from the file's profile (conservative)
    png = (trained_run / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModelForCausalLM.from_pretrained(trained_run / "final")
    assert model.num_parameters() > 1_000_000


def test_dry_run_builds_everything_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out_dir = tmp_path / "never"
    code = main(["train", CONFIG, "--dry-run", "--set", f"run.output_dir={out_dir}"])
    assert code == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "one group" in out and "4 episodes" in out
    assert re.search(r"4 episodes, reward \d\.\d{3}, failed \d\.\d{3}, \d+ trained tokens", out)
    assert "16 train, 4 held out" in out and "numeric_match x0.5" in out
    assert "check_env    passed; the probe episode ended terminated after 2 steps" in out
    assert "template     prefix, assistant content verbatim" in out
    assert not out_dir.exists()


def test_dry_run_shows_the_lr_auto_resolves_to(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["--set", f"run.output_dir={tmp_path}/never", "--set", "optim.lr=auto"]
    assert main(["train", CONFIG, "--dry-run", *args]) == 0
    # The file's profile is conservative: 0.5 x 2e-4 for the 3.4M-parameter model.
    assert "lr 0.0001 (auto), profile conservative" in capsys.readouterr().out


def test_eval_on_the_run_and_on_its_checkpoint(trained_run, capsys):
    assert main(["eval", str(trained_run), "--num-generations", "1"]) == 0
    results = json.loads((trained_run / "eval" / "eval_results.json").read_text())
    assert results["scenarios"] == 4 and 0.0 <= results["eval/reward_mean"] <= 1.0
    assert results["eval/reward_mean_stderr"] >= 0.0  # as the run's own evaluations report
    assert (trained_run / "eval" / "eval_samples.jsonl").exists()
    checkpoint = latest_checkpoint(trained_run)
    out = tmp = trained_run / "eval-ckpt"
    assert main(["eval", str(checkpoint), "--greedy", "--output", str(tmp)]) == 0
    assert json.loads((out / "eval_results.json").read_text())["model"] == str(checkpoint)
    assert "reward_mean" in capsys.readouterr().out


def test_checkpoint_and_final_hold_the_same_policy(trained_run):
    from turnrl.training.export import load_policy

    final = load_policy(trained_run / "final").model
    checkpoint = load_policy(latest_checkpoint(trained_run)).model
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(final(ids).logits, checkpoint(ids).logits)


def test_report_prints_a_summary_and_redraws_the_plot(trained_run, capsys, tmp_path):
    png = tmp_path / "plot.png"
    assert main(["report", str(trained_run), "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "eval reward_mean, best" in out and "grpo" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_chat_answers_each_line(trained_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2+3?\n/reset\nhello\n/quit\nnever\n"))
    assert main(["chat", str(trained_run), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2  # two messages; /reset is a command; /quit stops


def test_export_from_a_checkpoint_loads_with_transformers(trained_run, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(latest_checkpoint(trained_run)), str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out)
    final = AutoModelForCausalLM.from_pretrained(trained_run / "final")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(exported(ids).logits, final(ids).logits)
    assert (out / "tokenizer_config.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.lrr=1"], "optim.lrr"),
        (["--set", "optim.lr=-1"], "optim.lr"),
        (["--set", "optim.lr"], "KEY=VALUE"),
        (["--set", "environment.target=turnrl.nowhere:Env"], "turnrl.nowhere"),
        (
            ["--set", "environment={target: 'builtins:dict', args: null}"],
            "built a dict, not a turnrl Environment",
        ),
        (
            ["--set", "environment={target: 'turnrl.rewards:exact_match', args: null}"],
            "environment is built with scenarios=",
        ),
        (["--set", "model.path=/no/such/model"], "/no/such/model"),
        (["--set", "scenarios.train=/no/such/data.jsonl"], "/no/such/data.jsonl"),
        (["--set", "rewards=[{target: 'turnrl.rewards:nothing'}]"], "rewards[0]"),
    ],
)
def test_bad_input_is_one_clear_error(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    code = main(["train", CONFIG, "--dry-run", "--set", f"run.output_dir={tmp_path}/x", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert "turnrl train: error:" in err and message in err


def test_missing_experiment_file(capsys):
    assert main(["train", "no/such/file.yaml"]) == 2
    assert "no/such/file.yaml" in capsys.readouterr().err


def test_eval_of_a_script_run_asks_for_the_config(tmp_path, capsys, tiny_agent):
    tiny_agent.model.save_pretrained(tmp_path / "run" / "final")
    tiny_agent.tokenizer.save_pretrained(tmp_path / "run" / "final")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"run": {}}))
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "train", "eval", "report", "chat", "export"])
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_train_into_a_directory_holding_a_run_is_refused(trained_run, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = (trained_run / "metrics.jsonl").read_text()
    assert main(["train", CONFIG, "--set", f"run.output_dir={trained_run}"]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert (trained_run / "metrics.jsonl").read_text() == before
    assert main(["train", CONFIG, "--force-resume"]) == 2
    assert "--force-resume goes with --resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-generations", "0"], "num_generations must be >= 1"),
        (["--max-scenarios", "-1"], "max_scenarios must be >= 1"),
    ],
)
def test_eval_refuses_impossible_counts(trained_run, args, message, capsys):
    assert main(["eval", str(trained_run), *args]) == 2
    assert message in capsys.readouterr().err


def test_export_never_overwrites(trained_run, tmp_path, capsys):
    taken = tmp_path / "model.bin"
    taken.write_text("precious")
    assert main(["export", str(trained_run), str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and taken.read_text() == "precious"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", str(trained_run), str(tmp_path / "full")]) == 2


def test_max_new_tokens_beyond_the_context_fails_the_dry_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    args = ["--set", f"run.output_dir={tmp_path}/x", "--set", "generation.max_new_tokens=5000"]
    assert main(["train", CONFIG, "--dry-run", *args]) == 2
    assert "max_new_tokens=5000 does not fit the model's context of 1024" in capsys.readouterr().err


def test_dry_run_names_an_output_dir_that_is_a_file(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    (tmp_path / "file").write_text("")
    assert main(["train", CONFIG, "--dry-run", "--set", f"run.output_dir={tmp_path}/file"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def copy_checkpoint(trained_run, tmp_path):
    """A copy of the run's checkpoint, in a run directory without final/."""
    import shutil

    checkpoint = latest_checkpoint(trained_run)
    copy = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, copy)
    return copy


def test_stray_checkpoint_folders_are_ignored_by_eval(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    copy = copy_checkpoint(trained_run, tmp_path)
    (copy.parent / "step-best").mkdir()  # a hand-made folder: not a checkpoint
    assert main(["eval", str(tmp_path / "run"), "--max-scenarios", "1", "--greedy"]) == 0
    assert f"model      : {copy}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: (c / "trainer.json").write_text('{"step": "two"}'), r"trainer.json: expected"),
        (lambda c: (c / "trainer.json").write_text("{not json"), r"trainer.json: not valid JSON"),
        (lambda c: (c / "model.safetensors").write_bytes(b"junk"), r"cannot load the weights"),
        (lambda c: (c / "config.json").write_text("[]"), r"config.json: expected a JSON object"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_corrupt_checkpoint_is_named(
    trained_run, tmp_path, capsys, monkeypatch, damage, message, command
):
    import re

    monkeypatch.chdir(ROOT)
    copy = copy_checkpoint(trained_run, tmp_path)
    damage(copy)
    args = (
        [str(copy), "--config", CONFIG] if command == "eval" else [str(copy), str(tmp_path / "o")]
    )
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.mark.parametrize(
    "error",
    [
        "turnrl.training.errors:RolloutFailureError",
        "turnrl.training.errors:NonFiniteError",
        "builtins:PermissionError",
        "turnrl.environments.checker:EnvContractError",
        "turnrl.training.rundir:RunDirError",
    ],
)
def test_user_errors_during_training_are_one_line(error, capsys, monkeypatch):
    from turnrl.imports import import_object

    kind = import_object(error)

    async def fails(*args, **kwargs):
        raise kind("what went wrong, and the fix")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("turnrl.cli.train.run_experiment", fails)
    assert main(["train", CONFIG]) == 2
    err = capsys.readouterr().err
    assert err == "turnrl train: error: what went wrong, and the fix\n"


def test_grouped_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    try:
        from builtins import ExceptionGroup
    except ImportError:  # Python 3.10: the backport anyio depends on
        from exceptiongroup import ExceptionGroup

    from turnrl.training.errors import RolloutFailureError

    monkeypatch.chdir(ROOT)

    async def grouped(*args, **kwargs):
        raise ExceptionGroup("tasks", [RolloutFailureError("3 of 4 episodes failed")])

    monkeypatch.setattr("turnrl.cli.train.run_experiment", grouped)
    assert main(["train", CONFIG]) == 2
    assert capsys.readouterr().err == "turnrl train: error: 3 of 4 episodes failed\n"

    async def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("turnrl.cli.train.run_experiment", bug)
    with pytest.raises(KeyError):
        main(["train", CONFIG])


def test_eval_never_writes_into_a_training_run(trained_run, capsys, tmp_path):
    before = (trained_run / "metrics.jsonl").read_text()
    assert main(["eval", str(trained_run), "--output", str(trained_run)]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert (trained_run / "metrics.jsonl").read_text() == before
    out = tmp_path / "ev"
    for _ in range(2):  # evaluating again replaces the previous evaluation
        assert main(["eval", str(trained_run), "--max-scenarios", "1", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json", "eval_samples.jsonl"]


def test_demo_refuses_a_used_directory_before_the_warm_start(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    assert main(["demo", "--output", str(tmp_path), "--steps", "1"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'


def test_cli_demo_short_run(tmp_path, capsys):
    code = main(["demo", "--steps", "1", "--warmstart-steps", "2", "--output", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out reward before RL" in out and "gain" in out
    assert (tmp_path / "d" / "metrics.jsonl").exists()


def test_cli_help_and_bad_arguments(capsys):
    assert "demo" in build_parser().format_help()
    assert main(["demo", "--steps", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_a_dry_run_that_would_train_nothing_fails(tmp_path, capsys, monkeypatch):
    from turnrl.training.trainer import Trainer
    from turnrl.types import Trajectory, TrajectoryGroup

    async def all_failed(self):
        s = self.scenarios[0]
        broken = [Trajectory(scenario=s, error="ValueError: the tool server is down") for _ in "ab"]
        return [TrajectoryGroup(scenario=s, trajectories=broken)]

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Trainer, "collect_groups", all_failed)
    assert main(["train", CONFIG, "--dry-run", "--set", f"run.output_dir={tmp_path}/x"]) == 2
    err = capsys.readouterr().err
    assert "would train 0 tokens: 2 of 2 episodes failed" in err
    assert "2 x ValueError: the tool server is down" in err
