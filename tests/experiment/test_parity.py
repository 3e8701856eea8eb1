"""A script and an experiment file are two spellings of one run: each gives the other.

The same experiment runs four ways (``turnrl train FILE``, ``Experiment.from_yaml(FILE).run()``,
a script that builds every part by hand, and ``turnrl train`` on the run directory's
``config.json`` that script left), and the metrics of every step (timings aside) are
identical; the file written from a script loads back to the config it came from.
"""

import json
import textwrap

import anyio
import torch
from safetensors.torch import load_file

import turnrl
from turnrl.agents.tiny import tiny_model_path
from turnrl.cli.evaluate import evaluate_run
from turnrl.cli.main import main
from turnrl.environments.tasks import ArithmeticEnvironment, demonstrations, make_scenarios
from turnrl.rewards import regex_format
from turnrl.scenarios import split_scenarios

PATTERN = r"\s*-?\d+\s*"

EXPERIMENT = textwrap.dedent(
    r"""
    profile: balanced
    environment:
      target: turnrl.environments.tasks:ArithmeticEnvironment
      args: {max_attempts: 2}
    scenarios:
      train: {target: turnrl.environments.tasks:make_scenarios, args: {n: 12}}
      eval_size: 2
    warmstart:
      demonstrations: {target: turnrl.environments.tasks:demonstrations, args: {}}
      steps: 2
      lr: 1.0e-2
      batch_size: 4
    rewards:
      - {target: turnrl.rewards:regex_format, args: {pattern: '\s*-?\d+\s*'}, weight: 0.5}
    generation: {max_new_tokens: 3}
    rollout: {scenarios_per_step: 2, num_generations: 2}
    optim: {lr: 1.0e-2, warmup_steps: 1}
    eval: {num_generations: 2}
    run: {max_steps: 3, output_dir: OUTPUT, plot: false, progress: false}
    """
)


def write_experiment(tmp_path):
    file = tmp_path / "experiment.yaml"
    file.write_text(EXPERIMENT.replace("OUTPUT", str(tmp_path / "cli")))
    return file


def script_config(output_dir):
    """The experiment file above, written as a script writes it."""
    return turnrl.ExperimentConfig.from_profile(
        "balanced",
        environment={
            "target": "turnrl.environments.tasks:ArithmeticEnvironment",
            "args": {"max_attempts": 2},
        },
        scenarios={
            "train": {"target": "turnrl.environments.tasks:make_scenarios", "args": {"n": 12}},
            "eval_size": 2,
        },
        warmstart={
            "demonstrations": {"target": "turnrl.environments.tasks:demonstrations", "args": {}},
            "steps": 2,
            "lr": 1e-2,
            "batch_size": 4,
        },
        rewards=[
            {"target": "turnrl.rewards:regex_format", "args": {"pattern": PATTERN}, "weight": 0.5}
        ],
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        optim={"lr": 1e-2, "warmup_steps": 1},
        eval={"num_generations": 2},
        run={"max_steps": 3, "output_dir": str(output_dir), "plot": False, "progress": False},
    )


def metrics(run_dir):
    """Every step's metrics, timings aside."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]


def same_run(run_dir, reference):
    """The same metrics at every step and, bit for bit, the same final weights."""
    weights, expected = (load_file(d / "final" / "model.safetensors") for d in (run_dir, reference))
    return metrics(run_dir) == metrics(reference) and all(
        torch.equal(weights[name], tensor) for name, tensor in expected.items()
    )


def test_yaml_to_script_to_yaml_gives_the_same_experiment(tmp_path, tiny_agent):
    file = write_experiment(tmp_path)
    loaded = turnrl.load_experiment(file)
    experiment = turnrl.Experiment.from_yaml(file, agent=tiny_agent)
    trainer = experiment.trainer()
    try:
        written = trainer.config.to_yaml(tmp_path / "written.yaml")
    finally:
        trainer.close()
    assert turnrl.load_experiment(tmp_path / "written.yaml") == loaded
    # The script's spelling is the same experiment, and writes the same file; the
    # file's own directory (where its targets are looked up) is all the script lacks.
    script = script_config(tmp_path / "cli")
    assert script.base_dir is None and loaded.base_dir == str(tmp_path.resolve())
    assert script.model_copy(update={"base_dir": loaded.base_dir}) == loaded
    assert script.model_copy(update={"base_dir": loaded.base_dir}).to_yaml() == written
    # Every setting is spelled out, the experiment's own parts first.
    assert written.startswith("profile: balanced\nenvironment:\n")
    assert "clip_eps_high: 0.2" in written


def test_the_same_run_from_the_cli_a_script_and_the_runs_own_config(tmp_path, capsys):
    file = write_experiment(tmp_path)
    assert main(["train", str(file)]) == 0
    cli = tmp_path / "cli"
    steps = metrics(cli)
    assert [row["step"] for row in steps] == [0, 1, 2, 3]  # the eval before step 1, 3 steps
    assert any(row.get("train/grad_norm", 0) > 0 for row in steps)  # the policy was updated

    # A script running the file: Experiment.run() is `turnrl train`.
    overrides = [f"run.output_dir={tmp_path / 'from_yaml'}"]
    summary = anyio.run(turnrl.Experiment.from_yaml(file, overrides=overrides).run)
    assert summary["steps"] == 3
    assert same_run(tmp_path / "from_yaml", cli)

    # A script building every part by hand, with the experiment named in its config.
    train, held_out = split_scenarios(make_scenarios(n=12), eval_size=2, seed=0)
    agent = turnrl.TransformersAgent.from_pretrained(tiny_model_path())
    turnrl.supervised_warmstart(agent, demonstrations(train), steps=2, lr=1e-2, batch_size=4)
    trainer = turnrl.Trainer(
        agent,
        ArithmeticEnvironment(train, max_attempts=2),
        {regex_format(PATTERN): 0.5},
        script_config(tmp_path / "script"),
        eval_scenarios=held_out,
    )
    anyio.run(trainer.train)
    assert same_run(tmp_path / "script", cli)

    # The run directory's config is the experiment file: `turnrl train` runs it again...
    again = ["--set", f"run.output_dir={tmp_path / 'again'}"]
    assert main(["train", str(tmp_path / "script" / "config.json"), *again]) == 0
    assert same_run(tmp_path / "again", cli)
    # ...and `turnrl eval` finds the script run's environment without --config.
    result = anyio.run(lambda: evaluate_run(tmp_path / "script", max_scenarios=1))
    assert result["scenarios"] == 1 and "eval/reward_mean" in result
