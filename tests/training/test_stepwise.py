"""Step-wise samples: a trajectory trained as several rows counts as one trajectory everywhere."""

import pytest
import torch
from torch.testing import assert_close

from turnrl.training.advantages import gae_advantages
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.config import TrainingConfig
from turnrl.training.estimate import estimate
from turnrl.training.estimators import build_estimator
from turnrl.training.gvpo import gvpo_loss
from turnrl.training.losses import seq_mean_token_mean
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn


def turn(prompt, completion):
    return Turn(
        message=Message(role="assistant", content="x", token_ids=completion),
        prompt_ids=prompt,
        completion_ids=completion,
        logprobs=[-0.1] * len(completion),
    )


def trajectory(reward, *, rewritten):
    """Three turns; with ``rewritten`` turn 2's prompt drops turn 0 (two rows), else one row."""
    third = [1, 2, 3, 12, 4, 5] if rewritten else [1, 2, 3, 10, 11, 4, 5, 12, 4, 5]
    return Trajectory(
        scenario=Scenario(id="s"),
        turns=[
            turn([1, 2, 3], [10, 11]),
            turn([1, 2, 3, 10, 11, 4, 5], [12]),
            turn(third, [13, 14]),
        ],
        env_messages=[[], [], []],
        env_rewards=[0.0, 0.0, 0.0],
        reward=reward,
        terminated=True,
    )


def short(reward):
    return Trajectory(scenario=Scenario(id="s"), turns=[turn([1, 2, 3], [9])], reward=reward)


def batch_of(rewritten):
    groups = [
        TrajectoryGroup(
            scenario=Scenario(id="s"),
            trajectories=[trajectory(1.0, rewritten=rewritten), short(0.0), short(0.5)],
        ),
        TrajectoryGroup(
            scenario=Scenario(id="t"),
            trajectories=[short(0.25), trajectory(0.75, rewritten=rewritten)],
        ),
    ]
    return build_batch(groups, pad_token_id=0)


def per_turn(batch, advantages):
    """Each trajectory's advantage of each turn's tokens, as lists: [[turn 0's, ...], ...]."""
    out = []
    index = batch.trajectories()
    for m in range(index.count):
        rows = (index.of_row == m).nonzero().squeeze(-1)
        turns = batch.turn_ids[rows]
        values = advantages[rows]
        out.append([values[turns == k].tolist() for k in range(int(turns.max()) + 1)])
    return out


@pytest.mark.parametrize(
    "algorithm",
    [
        {"estimator": "grpo"},
        {"estimator": "grpo", "scale_rewards": "batch"},
        {"estimator": "rloo"},
        {"estimator": "gvpo", "beta": 0.5},
        {"estimator": "turn_grpo", "turn_gamma": 0.9},
    ],
    ids=lambda a: "-".join(map(str, a.values())),
)
def test_a_two_row_trajectory_gets_the_advantages_of_the_same_trajectory_in_one_row(algorithm):
    cfg = TrainingConfig.from_profile("balanced", algorithm=algorithm)
    estimator = build_estimator(cfg.algorithm)
    split, whole = batch_of(rewritten=True), batch_of(rewritten=False)
    assert (len(split), len(whole)) == (7, 5)  # the two rewritten trajectories have two rows
    expected = per_turn(whole, estimator(whole))
    assert per_turn(split, estimator(split)) == expected
    assert expected[0][0][0] != 0.0  # the advantages are not trivially equal


def test_gae_runs_across_a_row_boundary_hand_worked():
    # One trajectory of two rows: row 0 = [p a b] (a, b sampled), row 1 = [q q c] (c sampled),
    # then a one-row trajectory [p d]. gamma 0.9, lambda 0.8, gamma * lambda = 0.72.
    loss_mask = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 1, 0]], dtype=torch.float)
    values = torch.tensor([[0.5, 0.6, 9.0], [9.0, 0.7, 9.0], [0.2, 9.0, 9.0]])
    token_rewards = torch.tensor([[0.0, 0.0, 0.25], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    ids = torch.tensor([0, 0, 1])
    terminal = torch.tensor([False, False, False])
    advantages, returns = gae_advantages(
        token_rewards, values, loss_mask, terminal, torch.zeros(3), gamma=0.9, lam=0.8,
        trajectory_ids=ids,
    )  # fmt: skip
    # V(a) = 0.5, V(b) = 0.6, V(c) = 0.7: row 1's prompt is the state after b, not a terminal.
    # delta_c = 1.0 - 0.7 = 0.3; delta_b = 0.25 + 0.9 * 0.7 - 0.6 = 0.28;
    # delta_a = 0 + 0.9 * 0.6 - 0.5 = 0.04. A_c = 0.3; A_b = 0.28 + 0.72 * 0.3 = 0.496;
    # A_a = 0.04 + 0.72 * 0.496 = 0.39712. The other trajectory: A_d = 1.0 - 0.2 = 0.8.
    expected = torch.tensor([[0.0, 0.39712, 0.496], [0.0, 0.0, 0.3], [0.0, 0.8, 0.0]])
    assert_close(advantages, expected)
    assert_close(returns[0, 2], torch.tensor(0.496 + 0.6))
    # Truncated: the bootstrap is the last row's next value; row 0's is not read.
    # delta_c = 1.0 + 0.9 * 2.0 - 0.7 = 2.1; A_b = 0.28 + 0.72 * 2.1 = 1.792.
    cut, _ = gae_advantages(
        token_rewards, values, loss_mask, torch.tensor([True, True, False]),
        torch.tensor([5.0, 2.0, 0.0]), gamma=0.9, lam=0.8, trajectory_ids=ids,
    )  # fmt: skip
    assert_close(cut[1, 2], torch.tensor(2.1))
    assert_close(cut[0, 2], torch.tensor(1.792))


def test_seq_mean_token_mean_averages_over_a_trajectorys_rows():
    # Trajectory 0: losses 1, 2 in row 0 and 3 in row 1 (mean 2); trajectory 1: 4 (mean 4).
    per_token = torch.tensor([[1.0, 2.0], [3.0, 0.0], [4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    stepwise = seq_mean_token_mean(per_token, mask, 2, torch.tensor([0, 0, 1]))
    assert_close(stepwise, torch.tensor((2.0 + 4.0) / 2))
    one_row = seq_mean_token_mean(torch.tensor([[1.0, 2.0, 3.0], [4.0, 0, 0]]), mask.new_tensor(
        [[1, 1, 1], [1, 0, 0]]), 2)  # fmt: skip
    assert_close(stepwise, one_row)


def test_gvpo_counts_a_trajectory_once_per_group():
    # Group 0: trajectory 0 in two rows (log-ratios 0.1 and 0.2, Delta = 0.3), trajectory 1
    # in one (Delta = -0.1); rewards 1 and 0; beta 1. w_0 = 0.5 - (0.3 - 0.1) = 0.3, w_1 = -0.3;
    # loss = 1/(k-1) * sum 0.5 * w^2 with k = 2 trajectories = 0.09.
    logprobs = torch.tensor([[0.1], [0.2], [-0.1]])
    mask = torch.ones(3, 1)
    loss, _ = gvpo_loss(
        logprobs, torch.zeros(3, 1), mask, torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 0]),
        1.0, trajectory_ids=torch.tensor([0, 0, 1]),
    )  # fmt: skip
    assert_close(loss, torch.tensor(0.09))


def test_kl_in_the_reward_takes_a_trajectorys_whole_penalty_from_each_row():
    cfg = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "grpo", "kl_penalty": "reward", "kl_estimator": "k1", "beta": 0.1},
    )
    batch = batch_of(rewritten=True)
    old = batch.behavior_logprobs
    batch = RolloutBatch(**{**batch.__dict__, "old_logprobs": old, "ref_logprobs": old - 0.5})
    out, metrics = estimate(batch, build_estimator(cfg.algorithm), cfg)
    # k1 = 0.5 per sampled token, times beta, summed over all rows of a trajectory.
    tokens = batch.trajectories().sum(batch.loss_mask.sum(-1))  # (M,) sampled tokens
    penalty = cfg.algorithm.beta * 0.5 * tokens
    index = batch.trajectories()
    assert_close(out.rewards, batch.rewards - index.rows(penalty))
    assert metrics["train/kl_penalty"] == pytest.approx(penalty.mean().item())
