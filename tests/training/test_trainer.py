"""End-to-end: the Trainer on the tiny model, seeded, must learn."""

import json
import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import regex_format, reward_function
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer


def config(tmp_path, **overrides):
    base = {
        "optim": {"lr": 3e-3, "micro_batch_size": 16, "warmup_steps": 0},
        "generation": {"max_new_tokens": 4},
        "rollout": {"scenarios_per_step": 4, "num_generations": 8},
        "eval": {"every": 0, "num_generations": 4},
        "run": {"max_steps": 12, "output_dir": str(tmp_path / "run"), "seed": 0},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainingConfig.from_profile("balanced", **base)


@reward_function
def digits_only(trajectory):
    """Fraction of answer characters that are digits: about 0.1 for a random model."""
    text = "".join(t.message.content for t in trajectory.turns)
    return sum(c.isdigit() for c in text) / max(len(text), 1)


@pytest.mark.anyio
async def test_seeded_run_improves_reward_and_writes_run_dir(tiny_path, tmp_path):
    torch.manual_seed(0)
    agent = TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=4))
    scenarios = make_scenarios(n=20)
    cfg = config(tmp_path)
    trainer = Trainer(
        agent,
        ArithmeticEnvironment(scenarios),
        {digits_only: 1.0},
        cfg,
        eval_scenarios=make_scenarios(n=4, seed=1),
    )
    summary = await trainer.train()

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "rollout/reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    first = statistics.fmean(r["rollout/reward/digits_only"] for r in steps[:3])
    last = statistics.fmean(r["rollout/reward/digits_only"] for r in steps[-3:])
    assert last > first + 0.2, (first, last)

    for key in (
        "loss/policy",
        "loss/kl",
        "train/grad_norm",
        "train/lr",
        "perf/step_s",
        "perf/peak_rss_mb",
        "train/entropy",
        "train/kl",
        "perf/gen_tokens_per_s",
        "rollout/frac_zero_std",
    ):
        assert key in steps[-1], key
    # The evaluation before training holds every eval metric, each mean with its stderr.
    assert records[0]["step"] == 0
    for key in ("eval/reward_mean", "eval/reward/digits_only", "eval/reward/env_return"):
        assert key in records[0] and f"{key}_stderr" in records[0], key
        assert f"{key}_stderr" in steps[-1], key
    assert summary["eval_metric"] == "eval/reward_mean"
    assert summary["eval_before"] == records[0]["eval/reward_mean"]
    assert summary["eval_before_stderr"] == records[0]["eval/reward_mean_stderr"]
    assert summary["eval_after"] == steps[-1]["eval/reward_mean"]
    assert summary["steps"] == 12 and summary["stopped_by"] is None
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 3e-3
    reloaded = AutoModelForCausalLM.from_pretrained(run / "final")
    torch.testing.assert_close(reloaded.lm_head.weight, agent.model.lm_head.weight)
    assert (run / "eval_samples.jsonl").exists()


@pytest.mark.anyio
async def test_beta_zero_loads_no_reference_and_kl_is_logged(tiny_agent, tmp_path):
    scenarios = make_scenarios(n=4)
    env = ArithmeticEnvironment(scenarios)
    no_ref = Trainer(tiny_agent, env, None, config(tmp_path, algorithm={"beta": 0.0}))
    assert no_ref.ref_model is None
    no_ref.close()  # let the run directory go
    with_ref = Trainer(
        tiny_agent,
        env,
        [regex_format(r"\d+")],
        config(tmp_path, algorithm={"beta": 0.1}, run={"max_steps": 2, "overwrite": True}),
    )
    assert with_ref.ref_model is not None
    assert not any(p.requires_grad for p in with_ref.ref_model.parameters())
    metrics = await with_ref.step()
    assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    metrics = await with_ref.step()
    assert metrics["loss/kl"] > 0  # after one update they differ


def test_bad_setup_is_reported(tiny_agent, tmp_path):
    with pytest.raises(ValueError, match="no training scenarios"):
        Trainer(tiny_agent, ArithmeticEnvironment(), None, config(tmp_path))
    with pytest.raises(ValueError, match=r"fp16.*needs CUDA"):
        Trainer(
            tiny_agent,
            ArithmeticEnvironment(make_scenarios(n=2)),
            None,
            config(tmp_path, optim={"precision": "fp16"}),
        )


@pytest.mark.anyio
async def test_bf16_autocast_step_runs(tiny_agent, tmp_path):
    trainer = Trainer(
        tiny_agent,
        ArithmeticEnvironment(make_scenarios(n=2)),
        None,
        config(
            tmp_path,
            optim={"precision": "bf16"},
            rollout={"scenarios_per_step": 2, "num_generations": 4},
        ),
    )
    metrics = await trainer.step()
    assert metrics["train/skipped_nonfinite"] == 0.0


def test_estimator_resolution(tiny_agent, tmp_path):
    from turnrl.training.advantages import make_rloo
    from turnrl.training.estimators import estimator_factory as resolve_estimator

    assert resolve_estimator("rloo") is make_rloo
    assert resolve_estimator("turnrl.training.advantages:make_grpo").__name__ == "make_grpo"
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        resolve_estimator("turnrl.training.advantages:nope")
    with pytest.raises(ValueError, match="no module named 'no_such_module_xyz'"):
        resolve_estimator("no_such_module_xyz:factory")
    env = ArithmeticEnvironment(make_scenarios(n=2))
    with pytest.raises(ValueError, match="has its own loss"):
        Trainer(
            tiny_agent,
            env,
            None,
            config(tmp_path, algorithm={"estimator": "gvpo"}),
            estimator=lambda b, v=None: b,
        )
    gae = Trainer(tiny_agent, env, None, config(tmp_path, algorithm={"estimator": "gae"}))
    assert gae.value_model is not None and gae.value_model.shared
    assert len(gae.optim.optimizer.param_groups) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("estimator", ["rloo", "gae", "gvpo", "turn_grpo", "turn_gae"])
async def test_each_estimator_runs_a_training_step(tiny_agent, tmp_path, estimator):
    algorithm = {"estimator": estimator, "num_iterations": 2, "num_minibatches": 2}
    if estimator == "gvpo":
        algorithm["beta"] = 0.5
    trainer = Trainer(
        tiny_agent,
        ArithmeticEnvironment(make_scenarios(n=4)),
        [regex_format(r"\d+")],
        config(tmp_path, algorithm=algorithm, run={"max_steps": 1}),
    )
    head = trainer.value_model.head.weight.detach().clone() if trainer.value_model else None
    metrics = await trainer.step()
    assert metrics["train/optimizer_steps"] == 4.0
    assert metrics["train/skipped_nonfinite"] == 0.0
    if estimator in ("gae", "turn_gae"):  # the table gives them a critic
        assert "loss/value" in metrics
        # The head starts at zero: every value is 0 and explains nothing yet.
        assert metrics["train/value_mean"] == 0.0
        assert metrics["train/explained_variance"] == pytest.approx(0.0, abs=1e-6)
        assert not torch.equal(head, trainer.value_model.head.weight)
        trainer.save(tmp_path / "saved")
        assert (tmp_path / "saved" / "value_model.safetensors").exists()
    if estimator == "gvpo":
        assert "gvpo/weight_abs_mean" in metrics


@pytest.mark.anyio
async def test_tied_groups_can_be_skipped(tiny_agent, tmp_path):
    @reward_function
    def constant(trajectory):
        return 1.0

    trainer = Trainer(
        tiny_agent,
        ArithmeticEnvironment(make_scenarios(n=4), attempt_rewards=(0.0, 0.0, 0.0)),
        {constant: 1.0},
        config(tmp_path, algorithm={"skip_tied_groups": True}),
    )
    metrics = await trainer.step()
    # Every group ties (all rewards 1.0): counted, and no update happens.
    assert metrics["rollout/frac_zero_std"] == 1.0
    assert "train/grad_norm" not in metrics


@pytest.mark.anyio
async def test_rollouts_reuse_kv_cache_unless_configured_off(tiny_agent, tmp_path):
    scenarios = make_scenarios(n=4)
    trainer = Trainer(tiny_agent, ArithmeticEnvironment(scenarios), None, config(tmp_path))
    stats = tiny_agent.engine.stats
    await trainer.collect_groups()
    # A group's 8 episodes share their first prompt: one prefill, then 1 token per row.
    assert stats.reused_tokens[0] > 0 and max(stats.reused_tokens[1:]) > 0
    assert len(tiny_agent.engine.kv_store) == 0  # released once the episodes are over

    off = config(tmp_path / "off", generation={"reuse_kv_cache": False})  # its own run dir
    Trainer(tiny_agent, ArithmeticEnvironment(scenarios), None, off)
    assert tiny_agent.engine.reuse_kv_cache is False
    calls = stats.generate_calls
    await trainer.collect_groups()
    assert stats.generate_calls > calls and not any(stats.reused_tokens[calls:])
