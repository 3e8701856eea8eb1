"""`turnrl train` with the eval section's metric, early stopping and best model."""

import json

from turnrl.cli.main import main

EXPERIMENT = """\
environment: {target: turnrl.environments.tasks:ArithmeticEnvironment}
scenarios:
  train: {target: turnrl.environments.tasks:make_scenarios, args: {n: 8}}
  eval_size: 2
generation: {max_new_tokens: 3}
rollout: {scenarios_per_step: 2, num_generations: 2}
eval: {every: 1, num_generations: 1}
run: {max_steps: 5, plot: false}
"""


def test_early_stopping_and_keep_best_from_the_command_line(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    run = tmp_path / "run"
    # eval/failed stays 0: the evaluation after step 1 does not improve on the one
    # before training, so patience 1 stops there and best/ holds the starting policy.
    settings = ["eval.metric=failed", "eval.mode=min", "eval.patience=1", "eval.keep_best=true"]
    args = [arg for s in [f"run.output_dir={run}", *settings] for arg in ("--set", s)]
    assert main(["train", str(tmp_path / "exp.yaml"), *args]) == 0
    out = capsys.readouterr().out
    assert "held-out metric         : failed" in out
    assert "before                  : 0.000" in out
    assert "stopped by              : early stopping: eval/failed did not improve" in out
    assert json.loads((run / "best" / "best.json").read_text())["step"] == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1
