"""End to end: the tiny model trains on an environment whose agent_view keeps only the last turn.

Every turn from the third on is prompted without the first ones, so the
trajectories train as step-wise samples; each row is checked token for token
against ``agent.encode`` of the turn's view.
"""

import pytest
import torch

from turnrl.environments import KeepLastTurns
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer
from turnrl.types import flatten


def first_reply_variety(trajectory):
    """A reward that differs between episodes of a group, so every estimator has signal."""
    return len(set(trajectory.turns[0].message.content)) / 10


def prompt_messages(trajectory, k):
    """The messages turn ``k`` was prompted with: its view, or the conversation before it."""
    turn = trajectory.turns[k]
    if turn.view is not None:
        return turn.view
    messages = list(trajectory.initial_messages)
    for j in range(k):
        messages += [trajectory.turns[j].message, *trajectory.env_messages[j]]
    return messages


def check_rows(batch, trajectories, agent):
    """Each turn's prompt is encode(its view); its row holds its prompt and completion exactly."""
    index = batch.trajectories()
    assert index.count == len(trajectories)
    for m, trajectory in enumerate(trajectories):
        rows = (index.of_row == m).nonzero().squeeze(-1).tolist()
        assert rows == list(range(rows[0], rows[0] + len(rows)))  # consecutive
        for k, turn in enumerate(trajectory.turns):
            assert turn.prompt_ids == agent.encode(prompt_messages(trajectory, k))
            (row,) = [r for r in rows if bool((batch.turn_ids[r] == k).any())]
            start, end = len(turn.prompt_ids), len(turn.prompt_ids) + len(turn.completion_ids)
            ids = batch.input_ids[row].tolist()
            assert ids[:start] == turn.prompt_ids and ids[start:end] == turn.completion_ids
            at = (batch.turn_ids[row] == k).nonzero().squeeze(-1).tolist()
            assert at == list(range(start, end))
        mask = batch.loss_mask[rows].bool()
        assert torch.equal(mask, batch.turn_ids[rows] >= 0)


def check_next_states(batch, trajectories, agent):
    """A truncated episode's next state continues its last row: the last view, reply, answer."""
    index = batch.trajectories()
    cut = [m for m, t in enumerate(trajectories) if t.truncated and not t.terminated]
    assert cut
    for m in cut:
        t, rows = trajectories[m], (index.of_row == m).nonzero().squeeze(-1).tolist()
        last = t.turns[-1]
        state = agent.encode(
            [*prompt_messages(t, len(t.turns) - 1), last.message, *t.env_messages[-1]]
        )
        assert batch.next_input_ids[rows[-1], : len(state)].tolist() == state
        assert int(batch.next_attention_mask[rows[-1]].sum()) == len(state)
        assert not bool(batch.next_attention_mask[rows[:-1]].any())


@pytest.mark.anyio
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "gae", "gvpo", "turn_grpo", "turn_gae"])
async def test_training_on_a_last_turn_view_uses_stepwise_rows(estimator, tiny_agent, tmp_path):
    scenarios = make_scenarios(n=8)
    env = KeepLastTurns(
        ArithmeticEnvironment(scenarios, max_attempts=4, attempt_rewards=(1, 0.5, 0.25, 0.125)), 1
    )
    algorithm = {"estimator": estimator, "skip_tied_groups": False}
    if estimator == "gvpo":
        algorithm["beta"] = 0.5
    cfg = TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        generation={"max_new_tokens": 4},
        rollout={"scenarios_per_step": 2, "num_generations": 3, "max_turns": 3},
        eval={"every": 0},
        run={"max_steps": 2, "output_dir": str(tmp_path / "run")},
    )
    trainer = Trainer(tiny_agent, env, first_reply_variety, cfg, scenarios=scenarios)
    seen = []
    original = trainer.estimator

    def spy(batch, values=None):
        seen.append(batch)
        return original(batch, values)

    trainer.estimator = spy
    try:
        for step in range(2):
            groups = await trainer.collect_groups()
            metrics = await trainer.step(groups)
            trajectories = [t for t in flatten(groups) if not t.failed]
            check_rows(seen[step], trajectories, tiny_agent)
            assert metrics["train/optimizer_steps"] >= 1.0
            assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
            # The untrained model answers wrong: turn 2 saw only turn 1, a row of its own.
            assert any(t.turns[-1].view is not None for t in trajectories)
            assert metrics["train/num_sequences"] > metrics["train/num_trajectories"]
            if estimator in ("gae", "turn_gae"):
                check_next_states(seen[step], trajectories, tiny_agent)
    finally:
        trainer.close()
