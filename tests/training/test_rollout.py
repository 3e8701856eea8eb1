import pytest

from turnrl.environments import Environment, StepResult
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.rewards import reward_function, score_groups
from turnrl.training.rollout import collect
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.types import user


class ExplodingEnv(Environment):
    """Raises on the second step of scenario 'boom'."""

    async def reset(self, *, seed=None, options=None):
        self.scenario = options["scenario"]
        self.turns = 0
        return [user("go")], {}

    async def step(self, message):
        self.turns += 1
        if self.scenario.id == "boom" and self.turns == 2:
            raise RuntimeError("environment exploded")
        return StepResult([user("more")], 0.0, self.turns >= 3, False, {})


@pytest.mark.anyio
async def test_32_episodes_share_generate_calls(tiny_agent):
    scenarios = make_scenarios(n=4)
    groups = await collect(tiny_agent, ArithmeticEnvironment(scenarios), scenarios, 8)
    assert [len(g) for g in groups] == [8, 8, 8, 8]
    episodes_turns = sum(len(t.turns) for g in groups for t in g)
    stats = tiny_agent.engine.stats
    assert stats.requests == episodes_turns >= 32
    assert stats.generate_calls <= 3 < 32  # at most one call per turn depth (3 attempts)
    for group in groups:
        for t in group:
            assert t.error is None and t.terminated and not t.truncated
            assert t.scenario.id == group.scenario.id


@pytest.mark.anyio
async def test_failing_environment_drops_only_its_episodes(tiny_agent):
    from turnrl.types import Scenario

    scenarios = [Scenario(id="ok"), Scenario(id="boom")]
    groups = await collect(tiny_agent, ExplodingEnv(), scenarios, 3)
    assert all(t.error is None and len(t.turns) == 3 for t in groups[0])
    for t in groups[1]:
        assert t.error == "RuntimeError: environment exploded"
        assert len(t.turns) == 1  # the turn played before the failure is kept
    metrics = rollout_metrics(groups)
    assert metrics["rollout/failed"] == 3 and metrics["rollout/episodes"] == 6


@pytest.mark.anyio
async def test_failing_reward_counted_not_fatal(tiny_agent):
    scenarios = make_scenarios(n=2)

    @reward_function
    def picky(trajectory):
        if trajectory.scenario.id == scenarios[0].id:
            raise ValueError("cannot judge")
        return 1.0

    groups = await collect(tiny_agent, ArithmeticEnvironment(scenarios), scenarios, 2)
    metrics = await score_groups(groups, picky)
    assert metrics["reward/failed"] == 2
    assert all(t.failed for t in groups[0]) and not any(t.failed for t in groups[1])
    assert all(t.reward == t.env_return + 1.0 for t in groups[1])
    assert rollout_metrics(groups)["rollout/failed"] == 2


@pytest.mark.anyio
async def test_capacity_limit_bounds_batches(tiny_agent):
    scenarios = make_scenarios(n=2)
    await collect(tiny_agent, ArithmeticEnvironment(scenarios), scenarios, 4, max_concurrency=3)
    assert max(tiny_agent.engine.stats.batch_sizes) <= 3
