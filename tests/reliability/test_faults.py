"""Faults that must not kill a run, and the ones that must stop it with a clear message."""

import anyio
import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.base import Environment, StepResult, scenario_from_options
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import reward_function
from turnrl.training.advantages import per_token
from turnrl.training.checkpoint import CheckpointError
from turnrl.training.config import TrainingConfig
from turnrl.training.errors import NonFiniteError, RolloutFailureError
from turnrl.training.trainer import Trainer


class Flaky(Environment):
    """One turn; fails (raises or hangs) for scenarios whose id is in ``bad``."""

    def __init__(self, scenarios, bad=(), mode="raise"):
        self.scenarios = list(scenarios)
        self.bad, self.mode = set(bad), mode

    async def reset(self, *, seed=None, options=None):
        self.scenario = scenario_from_options(options)
        return list(self.scenario.prompt), {}

    async def step(self, message):
        if self.scenario.id in self.bad:
            if self.mode == "raise":
                raise RuntimeError(f"environment broke on {self.scenario.id}")
            await anyio.sleep(3600)
        return StepResult([], 1.0, True, False, {})


def config(tmp_path, **sections):
    base = {
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "generation": {"max_new_tokens": 3},
        "rollout": {"scenarios_per_step": 4, "num_generations": 2},
        "run": {"output_dir": str(tmp_path / "run"), "max_steps": 3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainingConfig.from_profile("balanced", **base)


@pytest.fixture
def agent(tiny_path):
    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))


@pytest.mark.anyio
async def test_a_raising_environment_drops_its_episodes_and_the_step_goes_on(agent, tmp_path):
    scenarios = make_scenarios(n=4)
    env = Flaky(scenarios, bad={scenarios[0].id})
    trainer = Trainer(agent, env, None, config(tmp_path))
    metrics = await trainer.step()
    assert metrics["rollout/failed"] == 2.0  # one scenario x G = 2
    assert metrics["rollout/groups_dropped"] == 1.0
    assert "train/grad_norm" in metrics


@pytest.mark.anyio
async def test_too_many_failures_stop_the_run_with_a_summary(agent, tmp_path):
    scenarios = make_scenarios(n=4)
    env = Flaky(scenarios, bad={s.id for s in scenarios[:3]})
    trainer = Trainer(agent, env, None, config(tmp_path, rollout={"max_failed_frac": 0.5}))
    with pytest.raises(RolloutFailureError, match=r"6 of 8 episodes failed.*environment broke"):
        await trainer.step()


@pytest.mark.anyio
async def test_a_hanging_environment_times_out(agent, tmp_path):
    scenarios = make_scenarios(n=4)
    env = Flaky(scenarios, bad={scenarios[1].id}, mode="hang")
    trainer = Trainer(agent, env, None, config(tmp_path, rollout={"env_timeout_s": 0.5}))
    with anyio.fail_after(60):
        metrics = await trainer.step()
    assert metrics["rollout/failed"] == 2.0


@pytest.mark.anyio
async def test_hanging_and_badly_typed_rewards_fail_their_trajectories(agent, tmp_path):
    @reward_function
    async def slow(trajectory):
        await anyio.sleep(3600)
        return 1.0

    @reward_function
    def wrong_type(trajectory):
        return "high"

    scenarios = make_scenarios(n=4)
    cfg = config(tmp_path, rollout={"reward_timeout_s": 0.5, "max_failed_frac": 1.0})
    trainer = Trainer(agent, ArithmeticEnvironment(scenarios), {slow: 1.0}, cfg)
    with anyio.fail_after(60):
        groups = await trainer.collect_groups()
        metrics = await trainer.step(groups)
    assert metrics["rollout/failed"] == 8.0
    assert all("timed out" in t.error for g in groups for t in g)
    cfg = config(tmp_path / "typed", rollout={"reward_timeout_s": 0.5, "max_failed_frac": 1.0})
    trainer = Trainer(agent, ArithmeticEnvironment(scenarios), {wrong_type: 1.0}, cfg)
    groups = await trainer.collect_groups()
    await trainer.step(groups)
    assert all("wrong_type" in t.error for g in groups for t in g)


def nan_estimator(batch, values=None):
    return per_token(torch.full_like(batch.rewards, float("nan")), batch.loss_mask)


@pytest.mark.anyio
async def test_nan_gradients_skip_the_step_and_repeated_ones_stop_the_run(agent, tmp_path):
    trainer = Trainer(
        agent,
        ArithmeticEnvironment(make_scenarios(n=4)),
        None,
        config(tmp_path, optim={"max_nonfinite_steps": 2}),
        estimator=nan_estimator,
    )
    before = [p.detach().clone() for p in agent.model.parameters()]
    metrics = await trainer.step()
    assert metrics["train/skipped_nonfinite"] == 1.0
    assert all(torch.equal(p, b) for p, b in zip(agent.model.parameters(), before, strict=True))
    assert not trainer.optim.optimizer.state  # AdamW never stepped: no moments
    with pytest.raises(NonFiniteError, match="2 steps in a row"):
        await trainer.step()
    assert all(torch.equal(p, b) for p, b in zip(agent.model.parameters(), before, strict=True))


def test_no_checkpoint_holds_nan_weights(agent, tmp_path):
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config(tmp_path))
    with torch.no_grad():
        next(agent.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        trainer.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


class Endless(Environment):
    """Always answers with a long message, so the conversation outgrows any context."""

    def __init__(self, scenarios):
        self.scenarios = list(scenarios)

    async def reset(self, *, seed=None, options=None):
        return list(scenario_from_options(options).prompt), {}

    async def step(self, message):
        from turnrl.types import user

        return StepResult([user("x" * 300)], 0.0, False, False, {})


@pytest.mark.anyio
async def test_context_overflow_truncates_the_episode_and_is_counted(agent, tmp_path):
    agent.engine.max_context = 400  # tiny model: 1024 positions; make it overflow sooner
    trainer = Trainer(agent, Endless(make_scenarios(n=4)), None, config(tmp_path))
    groups = await trainer.collect_groups()
    assert all(t.truncated and not t.failed and len(t.turns) == 2 for g in groups for t in g)
    metrics = await trainer.step(groups)
    assert metrics["rollout/context_overflow"] == 8.0
    assert metrics["rollout/failed"] == 0.0


@pytest.mark.anyio
async def test_empty_and_cut_off_turns_are_counted(agent, tmp_path):
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=4)), None, config(tmp_path))
    groups = await trainer.collect_groups()
    from turnrl.types import Message

    eos = agent.eos_token_ids[0]
    # One turn that said nothing (end of turn at once), one cut at max_new_tokens.
    turns = groups[0].trajectories[0].turns
    turns[0] = turns[0].model_copy(
        update={
            "message": Message(role="assistant", content="", token_ids=[eos]),
            "completion_ids": [eos],
            "logprobs": [-1.0],
            "finish_reason": "stop",
        }
    )
    cut = groups[1].trajectories[0].turns
    cut[0] = cut[0].model_copy(update={"finish_reason": "length"})
    from turnrl.training.rollout_metrics import rollout_metrics

    metrics = rollout_metrics(groups)
    assert metrics["rollout/empty_turns"] >= 1.0
    assert metrics["rollout/finish_length_frac"] > 0
