"""Environments that break the contract: the episode fails with a named error, the run goes on."""

import math

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments import Environment, StepResult, TurnLimit
from turnrl.environments.base import scenario_from_options
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import RewardResult, combine, score_groups
from turnrl.training.config import TrainingConfig
from turnrl.training.rollout import collect
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.training.trainer import Trainer
from turnrl.types import Scenario, Trajectory, TrajectoryGroup, user

OK_STEP = StepResult([], 1.0, True, False, {})
OK_RESET = object()  # reset plays the scenario's prompt


class Broken(Environment):
    """One turn; scenarios whose id is in ``bad`` get ``step_result`` / ``reset_result``."""

    def __init__(self, scenarios, bad=(), step_result=OK_STEP, reset_result=OK_RESET):
        self.scenarios = list(scenarios)
        self.bad, self.step_result, self.reset_result = set(bad), step_result, reset_result
        self.break_reset = reset_result is not OK_RESET  # decided here: clones copy the sentinel

    async def reset(self, *, seed=None, options=None):
        self.scenario = scenario_from_options(options)
        if self.scenario.id in self.bad and self.break_reset:
            return self.reset_result
        return list(self.scenario.prompt), {}

    async def step(self, message):
        return self.step_result if self.scenario.id in self.bad else OK_STEP


BAD_STEPS = [
    # (step result, words the error must contain)
    (StepResult([], float("nan"), True, False, {}), ["Broken.step()", "reward nan"]),
    (StepResult([], float("inf"), True, False, {}), ["Broken.step()", "reward inf"]),
    (StepResult([], -1e308, True, False, {}), ["Broken.step()", "-1e+308", "<= 1e+06"]),
    (StepResult([], "0.5", True, False, {}), ["Broken.step()", "reward str '0.5'"]),
    (StepResult([], None, True, False, {}), ["Broken.step()", "reward None"]),
    (StepResult([], torch.tensor(1.0), True, False, {}), ["Broken.step()", "reward Tensor"]),
    (StepResult([], 1.0, "no", False, {}), ["Broken.step()", "terminated=str 'no'", "bool"]),
    (StepResult([], 1.0, True, 0, {}), ["Broken.step()", "truncated=int 0", "bool"]),
    (StepResult("hello", 1.0, True, False, {}), ["observation str 'hello'", "list[Message]"]),
    (StepResult([{"role": "user"}], 1.0, True, False, {}), ["observation[0] dict", "user(text)"]),
    (StepResult([], 1.0, True, False, None), ["Broken.step()", "info None", "dict"]),
    (([], 1.0, True, {}), ["a tuple of 4 values", "StepResult(observation: list[Message]"]),
    ("done", ["Broken.step() returned str 'done'", "StepResult("]),
    (None, ["Broken.step() returned None", "StepResult("]),
    ({"reward": 1.0}, ["Broken.step() returned dict", "StepResult("]),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("result", "words"), BAD_STEPS, ids=[repr(r)[:30] for r, _ in BAD_STEPS])
async def test_a_bad_step_result_fails_only_its_episodes_naming_env_and_value(
    tiny_agent, result, words
):
    scenarios = make_scenarios(n=2)
    env = Broken(scenarios, bad={scenarios[0].id}, step_result=result)
    groups = await collect(tiny_agent, env, scenarios, 2)
    for t in groups[0]:
        assert t.error.startswith("EnvContractError: ")
        for word in words:
            assert word in t.error
    assert not any(t.failed for t in groups[1])
    metrics = rollout_metrics(groups)
    assert metrics["rollout/failed"] == 2.0 and metrics["rollout/reward_mean"] == 1.0


BAD_RESETS = [
    "hello",
    None,
    [user("hi")],  # the observation alone, no info
    ([user("hi")], {}, {}),
    ([user("hi")], None),
    ("hi", {}),
]


@pytest.mark.anyio
@pytest.mark.parametrize("result", BAD_RESETS, ids=[repr(r)[:30] for r in BAD_RESETS])
async def test_a_bad_reset_result_names_the_contract(tiny_agent, result):
    scenarios = make_scenarios(n=2)
    env = Broken(scenarios, bad={scenarios[0].id}, reset_result=result)
    groups = await collect(tiny_agent, env, scenarios, 2)
    for t in groups[0]:
        assert "Broken.reset() returned" in t.error
        assert "reset() must return (observation: list[Message], info: dict)" in t.error
    assert not any(t.failed for t in groups[1])


class SyncStep(Broken):
    def step(self, message):  # forgot async
        return OK_STEP


@pytest.mark.anyio
async def test_a_sync_step_is_named_not_async(tiny_agent):
    scenarios = make_scenarios(n=1)
    (group,) = await collect(tiny_agent, SyncStep(scenarios), scenarios, 2)
    assert all("SyncStep.step() is not async" in t.error for t in group)
    assert all("async def step" in t.error for t in group)


@pytest.mark.anyio
async def test_turn_limit_takes_a_plain_tuple_and_names_the_inner_env(tiny_agent):
    scenarios = make_scenarios(n=2)
    plain = Broken(
        scenarios, bad={s.id for s in scenarios}, step_result=([], 1.0, False, False, {})
    )
    groups = await collect(tiny_agent, TurnLimit(plain, 1), scenarios, 2)
    assert all(not t.failed and t.truncated for g in groups for t in g)  # no _replace crash
    bad = Broken(scenarios, bad={scenarios[0].id}, step_result=StepResult([], math.nan, 0, 0, {}))
    groups = await collect(tiny_agent, TurnLimit(bad, 1), scenarios, 2)
    assert all("Broken.step() returned reward nan" in t.error for t in groups[0])


def config(tmp_path, **rollout):
    return TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 0},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 4, "num_generations": 2, **rollout},
        eval={"num_generations": 2},
        run={"output_dir": str(tmp_path / "run"), "max_steps": 3},
    )


@pytest.fixture
def agent(tiny_path):
    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=3))


@pytest.mark.anyio
@pytest.mark.parametrize("reward", [float("nan"), float("-inf"), -1e308, 1e300])
async def test_absurd_env_rewards_fail_their_episodes_in_training_and_evaluation(
    agent, tmp_path, reward
):
    scenarios = make_scenarios(n=4)
    env = Broken(
        scenarios, bad={scenarios[0].id}, step_result=StepResult([], reward, True, False, {})
    )
    trainer = Trainer(agent, env, None, config(tmp_path), eval_scenarios=scenarios)
    metrics = await trainer.step()
    assert metrics["rollout/failed"] == 2.0  # one scenario x G = 2
    assert math.isfinite(metrics["rollout/reward_mean"]) and "train/grad_norm" in metrics
    evaluation = await trainer.evaluate()
    assert evaluation["eval/failed"] == 2.0 and evaluation["eval/reward_mean"] == 1.0


def test_trainer_rejects_bad_scenarios_and_env_at_construction(agent, tmp_path):
    env = ArithmeticEnvironment(make_scenarios(n=2))
    with pytest.raises(TypeError, match=r"scenarios\[0\] is a str \('text'\).*Scenario\(id="):
        Trainer(agent, env, None, config(tmp_path), scenarios=["text"])
    with pytest.raises(TypeError, match=r"scenarios must be a list of Scenario, got str"):
        Trainer(agent, env, None, config(tmp_path), scenarios="text")
    with pytest.raises(TypeError, match=r"scenarios must be a list of Scenario, got int"):
        Trainer(agent, env, None, config(tmp_path), scenarios=3)
    with pytest.raises(TypeError, match=r"eval_scenarios\[1\] is a dict"):
        Trainer(agent, env, None, config(tmp_path), eval_scenarios=[Scenario(id="a"), {"id": 1}])
    with pytest.raises(TypeError, match=r"env must be a turnrl Environment, got NoneType"):
        Trainer(agent, None, None, config(tmp_path), scenarios=make_scenarios(n=2))
    env.scenarios = ["what is 2+2?"]
    with pytest.raises(TypeError, match=r"env\.scenarios\[0\] is a str"):
        Trainer(agent, env, None, config(tmp_path))


def test_metrics_never_raise_on_huge_or_nan_values():
    scenario = Scenario(id="s")
    trajectories = [Trajectory(scenario=scenario, env_rewards=[1e308]) for _ in range(3)]
    trajectories[0].reward_components = {"x": math.nan}
    # statistics.fmean raised OverflowError here, pstdev AttributeError on nan.
    metrics = rollout_metrics([TrajectoryGroup(scenario=scenario, trajectories=trajectories)])
    assert metrics["rollout/reward_mean"] == math.inf
    assert math.isnan(metrics["rollout/reward/x"])


class Components:
    """A hand-written RewardFunction whose components hold a NaN."""

    name = "components"

    async def __call__(self, group):
        return [RewardResult(1.0, components={"inner": math.nan}) for _ in group]


@pytest.mark.anyio
async def test_reward_outputs_obey_the_same_bound():
    scenario = Scenario(id="s")

    def group():
        return TrajectoryGroup(scenario=scenario, trajectories=[Trajectory(scenario=scenario)])

    def huge(trajectory):
        return -1e308

    g = group()
    metrics = await score_groups([g], combine(huge))
    assert metrics["reward/failed"] == 1.0 and "huge: returned -1e+308" in g.trajectories[0].error
    g = group()
    await score_groups([g], Components())
    assert "components['inner']" in g.trajectories[0].error

    def big(trajectory):
        return 1e6

    g = group()  # each part within the bound, the weighted sum is not
    await score_groups([g], combine({big: 1e303}))
    assert "combined: bad RewardResult.score (returned inf" in g.trajectories[0].error
    assert g.trajectories[0].reward is None
