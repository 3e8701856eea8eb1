"""Turn-level credit: turn_grpo and turn_gae on hand-built batches, the arithmetic written out."""

import dataclasses

import pytest
import torch
from pydantic import ValidationError
from torch.testing import assert_close

from turnrl.training.advantages import gae_advantages, make_grpo
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import AlgorithmConfig, TrainingConfig
from turnrl.training.estimate import estimate
from turnrl.training.turn_credit import (
    make_turn_gae,
    make_turn_grpo,
    turn_ids_from_mask,
    turn_table,
)

EPS = 1e-4  # scale_rewards adds it to the std


def hand_batch(trajectories, groups, *, width=12, truncated=None, terminated=None):
    """One row per trajectory: a prompt token, then each turn's tokens, one environment
    token before every turn after the first. A trajectory is a list of turns
    ``(tokens, reward)``; the reward lands on the turn's last token, as build_batch puts it.

    Returns:
        The batch and, per row, each turn's token positions.
    """
    n = len(trajectories)
    mask = torch.zeros(n, width)
    token_rewards = torch.zeros(n, width)
    positions = []
    for i, turns in enumerate(trajectories):
        t, spans = 1, []
        for k, (tokens, reward) in enumerate(turns):
            t += 1 if k else 0
            spans.append(list(range(t, t + tokens)))
            mask[i, t : t + tokens] = 1.0
            token_rewards[i, t + tokens - 1] = reward
            t += tokens
        positions.append(spans)
    truncated = torch.zeros(n, dtype=torch.bool) if truncated is None else truncated
    terminated = ~truncated if terminated is None else terminated
    batch = RolloutBatch(
        input_ids=torch.zeros(n, width, dtype=torch.long),
        attention_mask=torch.ones(n, width, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=torch.zeros(n, width),
        has_behavior_logprobs=True,
        token_rewards=token_rewards,
        rewards=token_rewards.sum(-1),
        group_ids=torch.tensor(groups),
        terminated=terminated,
        truncated=truncated,
    )
    return batch, positions


def per_token(positions, per_turn, width=12):
    """Expected (N, T) advantages: ``per_turn[i][k]`` on every token of row i's turn k."""
    out = torch.zeros(len(positions), width)
    for i, spans in enumerate(positions):
        for k, span in enumerate(spans):
            out[i, span] = per_turn[i][k]
    return out


# Two groups. Group 0: three trajectories of two turns. Group 1: one of three
# turns and one of two. Turn rewards r_k, turns of 1-2 tokens.
TRAJECTORIES = [
    [(2, 1.0), (1, 0.0)],
    [(1, 0.0), (2, 1.0)],
    [(1, 0.0), (1, 0.0)],
    [(1, 1.0), (1, 1.0), (2, 1.0)],
    [(2, 0.0), (1, 1.0)],
]
GROUPS = [0, 0, 0, 1, 1]


def test_turn_grpo_hand_worked_with_discount():
    batch, positions = hand_batch(TRAJECTORIES, GROUPS)
    # turn_gamma 0.5: G_k = r_k + 0.5 G_{k+1}
    #   row 0: G_1 = 0, G_0 = 1 + 0.5 * 0 = 1      row 1: G_1 = 1, G_0 = 0 + 0.5 * 1 = 0.5
    #   row 2: G_1 = 0, G_0 = 0                    row 3: G_2 = 1, G_1 = 1.5, G_0 = 1.75
    #   row 4: G_1 = 1, G_0 = 0 + 0.5 * 1 = 0.5
    # Comparison sets (group, turn index) and their means, scale_rewards none:
    #   (0, 0): 1, 0.5, 0 -> mean 0.5 -> A = 0.5, 0, -0.5
    #   (0, 1): 0, 1, 0 -> mean 1/3 -> A = -1/3, 2/3, -1/3
    #   (1, 0): 1.75, 0.5 -> mean 1.125 -> A = 0.625, -0.625
    #   (1, 1): 1.5, 1 -> mean 1.25 -> A = 0.25, -0.25
    #   (1, 2): row 3 alone -> no baseline -> A = 0
    estimator = make_turn_grpo(AlgorithmConfig(turn_gamma=0.5, scale_rewards="none"))
    expected = [[0.5, -1 / 3], [0.0, 2 / 3], [-0.5, -1 / 3], [0.625, 0.25, 0.0], [-0.625, -0.25]]
    assert_close(estimator(batch), per_token(positions, expected))

    # scale_rewards group: divided by each set's Bessel std (+ eps)
    #   (0, 0): deviations 0.5, 0, -0.5 -> variance 0.5 / 2 = 0.25 -> std 0.5
    #   (0, 1): deviations -1/3, 2/3, -1/3 -> variance (6/9) / 2 = 1/3 -> std 0.57735
    #   (1, 0): deviations +-0.625 -> variance 2 * 0.390625 / 1 = 0.78125 -> std 0.88388
    #   (1, 1): deviations +-0.25 -> variance 2 * 0.0625 / 1 = 0.125 -> std 0.35355
    #   (1, 2): std 0, centered 0 -> 0
    s00, s01, s10, s11 = 0.5 + EPS, (1 / 3) ** 0.5 + EPS, 0.78125**0.5 + EPS, 0.125**0.5 + EPS
    estimator = make_turn_grpo(AlgorithmConfig(turn_gamma=0.5))  # scale_rewards defaults to group
    expected = [
        [0.5 / s00, -1 / 3 / s01],
        [0.0, 2 / 3 / s01],
        [-0.5 / s00, -1 / 3 / s01],
        [0.625 / s10, 0.25 / s11, 0.0],
        [-0.625 / s10, -0.25 / s11],
    ]
    assert_close(estimator(batch), per_token(positions, expected))

    # scale_rewards batch: divided by the std of all 11 turn returns of the batch
    returns = torch.tensor([1, 0, 0.5, 1, 0, 0, 1.75, 1.5, 1, 0.5, 1])
    s = returns.std().item() + EPS
    estimator = make_turn_grpo(AlgorithmConfig(turn_gamma=0.5, scale_rewards="batch"))
    expected = [[0.5, -1 / 3], [0.0, 2 / 3], [-0.5, -1 / 3], [0.625, 0.25, 0.0], [-0.625, -0.25]]
    expected = [[a / s for a in row] for row in expected]
    assert_close(estimator(batch), per_token(positions, expected))


def test_turn_grpo_credits_each_turn_where_grpo_credits_the_trajectory():
    batch, positions = hand_batch(TRAJECTORIES, GROUPS)
    config = AlgorithmConfig(turn_gamma=1.0, scale_rewards="none")
    turn = make_turn_grpo(config)(batch)
    trajectory = make_grpo(config)(batch)
    # turn_gamma 1: turn 0's return is the trajectory's total reward and every
    # trajectory has a turn 0, so turn 0 gets exactly GRPO's advantage.
    first = torch.zeros_like(batch.loss_mask, dtype=torch.bool)
    for i, spans in enumerate(positions):
        first[i, spans[0]] = True
    assert_close(turn[first], trajectory[first])
    # Later turns differ: row 0 (total 1, group mean 2/3) gets +1/3 on both turns
    # from GRPO, but its second turn (r = 0, against the set 0, 1, 0) gets -1/3.
    assert trajectory[0, positions[0][1][0]].item() == pytest.approx(1 / 3)
    assert turn[0, positions[0][1][0]].item() == pytest.approx(-1 / 3)


def test_with_one_turn_per_trajectory_turn_grpo_is_grpo():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(7, generator=gen).round(decimals=1).tolist()
    trajectories = [[(1 + i % 3, r)] for i, r in enumerate(rewards)]
    batch, _ = hand_batch(trajectories, [0, 0, 0, 1, 1, 1, 1])
    for scale in ("group", "batch", "none"):
        config = AlgorithmConfig(scale_rewards=scale, turn_gamma=0.3)  # no later turn to discount
        assert_close(make_turn_grpo(config)(batch), make_grpo(config)(batch))


def _values(width, rows):
    """Values that are 9 everywhere except ``rows[i][p] = v`` (as {row: {position: value}})."""
    values = torch.full((len(rows), width), 9.0)
    for i, at in enumerate(rows):
        for p, v in at.items():
            values[i, p] = v
    return values


def test_turn_gae_hand_worked_terminated_truncated_and_discounted():
    # Rows 0 and 1: turns r = 0.5, 1.0 at positions (1, 2) and (4); V_0 = values[0]
    # (the prompt before turn 0), V_1 = values[3] (the prompt before turn 1).
    # Row 2: three turns r = 0, 0, 1 at (1), (3), (5). Row 3 as row 0, truncated and
    # terminated: terminal, no bootstrap. Every other value is 9 and must be ignored:
    # the state inside a turn is not a turn-level state, and values[last] is no bootstrap.
    two = [(2, 0.5), (1, 1.0)]
    batch, positions = hand_batch(
        [two, two, [(1, 0.0), (1, 0.0), (1, 1.0)], two],
        [0, 0, 1, 1],
        truncated=torch.tensor([False, True, False, True]),
        terminated=torch.tensor([True, False, True, True]),
    )
    batch.next_values = torch.tensor([7.0, 0.8, 7.0, 7.0])  # read on row 1 only
    v = {0: 0.2, 3: 0.4}
    values = _values(12, [v, v, {0: 0.5, 2: 0.5, 4: 0.5}, v])
    gamma, lam = 0.5, 0.5
    # Row 0, terminated: delta_1 = 1.0 + 0 - 0.4 = 0.6; A_1 = 0.6
    #   delta_0 = 0.5 + 0.5 * 0.4 - 0.2 = 0.5; A_0 = 0.5 + 0.25 * 0.6 = 0.65
    # Row 1, truncated: V after turn 1 is next_values = 0.8
    #   delta_1 = 1.0 + 0.5 * 0.8 - 0.4 = 1.0; A_1 = 1.0
    #   delta_0 = 0.5 (as row 0); A_0 = 0.5 + 0.25 * 1.0 = 0.75
    # Row 2: delta_2 = 1 - 0.5 = 0.5; A_2 = 0.5
    #   delta_1 = 0 + 0.5 * 0.5 - 0.5 = -0.25; A_1 = -0.25 + 0.25 * 0.5 = -0.125
    #   delta_0 = -0.25; A_0 = -0.25 + 0.25 * -0.125 = -0.28125
    expected = [[0.65, 0.6], [0.75, 1.0], [-0.28125, -0.125, 0.5], [0.65, 0.6]]
    estimator = make_turn_gae(AlgorithmConfig(turn_gamma=gamma, gae_lambda=lam))
    assert_close(estimator(batch, values), per_token(positions, expected))

    # turn_gamma = lambda = 1: A_k = sum of the rewards from turn k on + bootstrap - V_k
    estimator = make_turn_gae(AlgorithmConfig(turn_gamma=1.0, gae_lambda=1.0))
    expected = [
        [1.5 - 0.2, 1.0 - 0.4],
        [1.5 + 0.8 - 0.2, 1.0 + 0.8 - 0.4],
        [1 - 0.5, 1 - 0.5, 1 - 0.5],
        [1.5 - 0.2, 1.0 - 0.4],
    ]
    assert_close(estimator(batch, values), per_token(positions, expected))

    with pytest.raises(ValueError, match="needs values"):
        estimator(batch)
    batch.next_values = None
    with pytest.raises(ValueError, match=r"next state.*encode=agent.encode"):
        estimator(batch, values)


def test_turn_gae_value_targets_are_the_turn_returns_on_every_token_of_the_turn():
    two = [(2, 0.5), (1, 1.0)]
    batch, positions = hand_batch([two, two], [0, 0])
    v = {0: 0.2, 3: 0.4}
    values = _values(12, [v, v])
    batch = dataclasses.replace(batch, values=values)
    config = TrainingConfig.from_profile(
        "balanced", algorithm={"estimator": "turn_gae", "turn_gamma": 0.5, "gae_lambda": 0.5}
    )
    estimated, metrics = estimate(batch, make_turn_gae(config.algorithm), config)
    # As row 0 above: A = 0.65, 0.6, so the targets are A_k + V_k = 0.85 on both
    # tokens of turn 0 and 1.0 on turn 1, not A_k + the value before each token
    # (0.65 + 9 on the second token of turn 0). Computed before whitening.
    expected = per_token(positions, [[0.85, 1.0], [0.85, 1.0]])
    assert_close(estimated.returns, expected)
    # The critic is judged against the same turn values: it predicted 0.2, 0.2, 0.4.
    assert metrics["train/value_mean"] == pytest.approx((0.2 + 0.2 + 0.4) / 3)
    # Token-level gae's targets differ on the same batch (A_t + the value before token t).
    gae_config = TrainingConfig.from_profile("balanced", algorithm={"estimator": "gae"})
    token_level, _ = estimate(batch, make_turn_gae(config.algorithm), gae_config)
    assert token_level.returns[0, 2].item() == pytest.approx(0.65 + 9.0)


def test_with_one_turn_per_trajectory_turn_gae_is_outcome_minus_the_prompt_value():
    # One turn: A = R + turn_gamma * bootstrap - V(prompt) on every token, which is
    # token-level GAE's advantage of the turn's first token with gamma = lambda = 1.
    batch, _ = hand_batch(
        [[(3, 1.0)], [(2, 0.5)], [(1, 0.0)]],
        [0, 0, 0],
        truncated=torch.tensor([True, False, False]),
    )
    batch.next_values = torch.tensor([0.3, 0.0, 0.0])
    gen = torch.Generator().manual_seed(1)
    values = torch.rand(3, 12, generator=gen)
    turn = make_turn_gae(AlgorithmConfig(turn_gamma=1.0, gae_lambda=0.7))(batch, values)
    # V(prompt) = values[:, 0]: row 0: 1 + 0.3 - v, row 1: 0.5 - v, row 2: 0 - v
    outcome = torch.tensor([1.3, 0.5, 0.0]) - values[:, 0]
    assert_close(turn, outcome[:, None] * batch.loss_mask)
    token, _ = gae_advantages(
        batch.token_rewards,
        values,
        batch.loss_mask,
        batch.truncated,
        batch.next_values,
        gamma=1.0,
        lam=1.0,
    )
    assert_close(turn, token[:, 1:2] * batch.loss_mask)  # column 1: each row's first token
    assert not torch.allclose(turn, token)  # later tokens: token-level GAE's own values


def test_turn_grpo_groups_by_observation_hand_worked():
    # Rows: prompt token 5, turn 0 at position 1, an observation token at 2, turn 1 at 3.
    # The observation says 7 (right) or 8 (wrong) in group 0; in group 1, row 4's second
    # observation is 5 again, the same as every turn 0's prompt.
    rewards = [(1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (1.0, 0.0)]
    batch, positions = hand_batch([[(1, a), (1, b)] for a, b in rewards], [0, 0, 0, 1, 1])
    batch.input_ids[:, 0] = 5
    batch.input_ids[:, 2] = torch.tensor([7, 7, 8, 9, 5])
    # turn_gamma 0: G_k = r_k. Sets (group, observation), scale_rewards none:
    #   (0, [5]): rows 0, 1, 2 turn 0: 1, 1, 0 -> mean 2/3 -> 1/3, 1/3, -2/3
    #   (0, [7]): rows 0, 1 turn 1: 0, 1 -> mean 0.5 -> -0.5, 0.5
    #   (0, [8]): row 2 turn 1 alone -> 0
    #   (1, [5]): rows 3, 4 turn 0 and row 4 turn 1: 0, 1, 0 -> mean 1/3 -> -1/3, 2/3, -1/3
    #   (1, [9]): row 3 turn 1 alone -> 0
    config = AlgorithmConfig(turn_gamma=0.0, scale_rewards="none", turn_groups="observation")
    expected = [[1 / 3, -0.5], [1 / 3, 0.5], [-2 / 3, 0.0], [-1 / 3, 0.0], [2 / 3, -1 / 3]]
    assert_close(make_turn_grpo(config)(batch), per_token(positions, expected))
    # By index instead: turn 1 of group 0 is 0, 1, 1 (mean 2/3); group 1: 0, 1 then 1, 0.
    config = AlgorithmConfig(turn_gamma=0.0, scale_rewards="none")
    assert config.turn_groups == "index"
    expected = [[1 / 3, -2 / 3], [1 / 3, 1 / 3], [-2 / 3, 1 / 3], [-0.5, 0.5], [0.5, -0.5]]
    assert_close(make_turn_grpo(config)(batch), per_token(positions, expected))


def test_turn_ids_from_the_mask_fallback():
    mask = torch.tensor([[0.0, 1, 1, 0, 1, 0, 1], [0, 0, 1, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0]])
    assert turn_ids_from_mask(mask).tolist() == [
        [-1, 0, 0, -1, 1, -1, 2],
        [-1, -1, 0, -1, -1, 1, 1],
        [-1, 0, -1, -1, -1, -1, -1],
    ]
    # Rows 0 and 1 one trajectory (its rows consecutive, in turn order): row 1 goes on from 3.
    ids = turn_ids_from_mask(mask, torch.tensor([4, 4, 9]))
    assert ids[1].tolist() == [-1, -1, 3, -1, -1, 4, 4]
    assert ids[2].tolist() == [-1, 0, -1, -1, -1, -1, -1]


def test_explicit_turn_ids_are_read_and_agree_with_the_fallback():
    batch, positions = hand_batch(TRAJECTORIES, GROUPS)
    config = AlgorithmConfig(turn_gamma=0.5, scale_rewards="none")
    fallback = make_turn_grpo(config)(batch)
    batch.turn_ids = turn_ids_from_mask(batch.loss_mask)
    batch.trajectory_ids = torch.arange(len(batch))
    assert_close(make_turn_grpo(config)(batch), fallback)
    # Turn ids that the mask cannot show: row 0's first turn split into two turns
    # of one token (no token between them). Row 0 now has turns r = 0, 1, 0:
    # G = 0 + 0.5 * 1 = 0.5, 1, 0; its turn 0 set: 0.5, 0.5, 0 (mean 1/3),
    # turn 1 set: 1, 1, 0 (mean 2/3), turn 2 alone.
    batch.turn_ids[0, positions[0][0][1]] = 1
    batch.turn_ids[0, positions[0][1]] = 2
    out = make_turn_grpo(config)(batch)
    assert out[0, positions[0][0]].tolist() == pytest.approx([0.5 - 1 / 3, 1 - 2 / 3])
    assert out[0, positions[0][1]].tolist() == pytest.approx([0.0])
    assert out[1, positions[1][0]].tolist() == pytest.approx([0.5 - 1 / 3])


def test_a_trajectory_of_two_rows_is_credited_as_one():
    # Trajectory A: turns r = 0.5 (2 tokens), 1.0 (1 token); trajectory B: r = 0, 0.
    # As one row each, then with A split in two rows (step-wise samples: the second
    # row's prompt was rewritten, 3 tokens, so turn 1 sits at position 3).
    one_row, positions = hand_batch([[(2, 0.5), (1, 1.0)], [(1, 0.0), (1, 0.0)]], [0, 0])
    values = _values(12, [{0: 0.2, 3: 0.4}, {0: 0.1, 2: 0.3}])
    mask = torch.zeros(3, 12)
    mask[0, 1:3], mask[1, 3], mask[2, [1, 3]] = 1.0, 1.0, 1.0
    token_rewards = torch.zeros(3, 12)
    token_rewards[0, 2], token_rewards[1, 3] = 0.5, 1.0
    turn_ids = torch.full((3, 12), -1)
    turn_ids[0, 1:3], turn_ids[1, 3], turn_ids[2, 1], turn_ids[2, 3] = 0, 1, 0, 1
    two_rows = dataclasses.replace(
        one_row,
        input_ids=torch.zeros(3, 12, dtype=torch.long),
        attention_mask=torch.ones(3, 12, dtype=torch.long),
        loss_mask=mask,
        behavior_logprobs=torch.zeros(3, 12),
        token_rewards=token_rewards,
        rewards=torch.tensor([1.5, 1.5, 0.0]),
        group_ids=torch.tensor([0, 0, 0]),
        terminated=torch.tensor([False, False, True]),
        truncated=torch.tensor([True, True, False]),
        next_values=torch.tensor([0.0, 0.8, 0.0]),  # on the trajectory's last row
    )
    two_rows.trajectory_ids = torch.tensor([0, 0, 1])
    two_rows.turn_ids = turn_ids
    two_values = _values(12, [{0: 0.2}, {2: 0.4}, {0: 0.1, 2: 0.3}])
    one_row = dataclasses.replace(
        one_row,
        terminated=torch.tensor([False, True]),
        truncated=torch.tensor([True, False]),
        next_values=torch.tensor([0.8, 0.0]),
    )
    config = AlgorithmConfig(turn_gamma=0.5, gae_lambda=0.5)

    def rows_of(advantages, layout):
        """Each turn's tokens' advantages, read from wherever they are."""
        return [a for r, p in layout for a in advantages[r, p].tolist()]

    one_layout = [(0, positions[0][0]), (0, positions[0][1]), (1, [1]), (1, [3])]
    two_layout = [(0, [1, 2]), (1, [3]), (2, [1]), (2, [3])]
    for make in (make_turn_gae, make_turn_grpo):
        a = rows_of(make(config)(one_row, values), one_layout)
        b = rows_of(make(config)(two_rows, two_values), two_layout)
        assert a == pytest.approx(b)
    # turn_gae by hand, A truncated with V after its last turn 0.8:
    #   delta_1 = 1 + 0.5 * 0.8 - 0.4 = 1.0; delta_0 = 0.5 + 0.5 * 0.4 - 0.2 = 0.5
    #   A_1 = 1.0, A_0 = 0.5 + 0.25 * 1.0 = 0.75
    out = make_turn_gae(config)(two_rows, two_values)
    assert rows_of(out, two_layout[:2]) == pytest.approx([0.75, 0.75, 1.0])
    table = turn_table(two_rows)
    assert table.last_row.tolist() == [1, 2]
    assert table.rewards.tolist() == [[0.5, 1.0], [0.0, 0.0]]


def test_turn_gamma_is_checked():
    with pytest.raises(ValidationError, match="turn_gamma"):
        AlgorithmConfig(estimator="turn_gae", turn_gamma=1.5)
    with pytest.raises(ValidationError, match="turn_gamma"):
        AlgorithmConfig(estimator="turn_grpo", turn_gamma=-0.1)
    assert AlgorithmConfig().turn_gamma == 1.0
    with pytest.raises(ValidationError, match="turn_groups"):
        AlgorithmConfig(estimator="turn_grpo", turn_groups="state")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "algorithm",
    [
        {"estimator": "turn_grpo"},
        {"estimator": "turn_grpo", "turn_groups": "observation"},
        {"estimator": "turn_gae"},
    ],
    ids=lambda a: "-".join(a.values()),
)
async def test_a_training_step_on_the_quiz_credits_each_turn(
    tiny_agent, tmp_path, monkeypatch, algorithm
):
    """The Trainer on a multi-turn task: every turn's tokens share one advantage, and
    turn_gae's critic targets are one per turn too."""
    from turnrl.environments.tasks import QuizEnvironment, make_quiz_scenarios
    from turnrl.training import trainer as trainer_module
    from turnrl.training.trainer import Trainer

    estimator = algorithm["estimator"]
    seen = []

    def recording(batch, *args, **kwargs):
        out = estimate(batch, *args, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr(trainer_module, "estimate", recording)
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm={**algorithm, "turn_gamma": 0.9},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 4},
        run={"max_steps": 1, "output_dir": str(tmp_path / "run")},
    )
    env = QuizEnvironment(make_quiz_scenarios(4, questions=2))
    trainer = Trainer(tiny_agent, env, None, config)
    if trainer.value_model is not None:  # the head starts at 0: give it values that vary
        torch.nn.init.normal_(trainer.value_model.head.weight, std=0.5)
    metrics = await trainer.step()
    trainer.close()
    assert metrics["rollout/turns_mean"] == 2.0
    assert metrics["train/optimizer_steps"] == 1.0
    (batch,) = seen
    table = turn_table(batch)
    assert table.present.all()  # two turns in every episode
    for per_token_values in (batch.advantages, batch.returns):
        if per_token_values is None:  # turn_grpo has no critic
            assert estimator == "turn_grpo"
            continue
        # One value per turn: every token of a turn holds its turn's first token's value.
        first = per_token_values.flatten()[table.first]  # (M, K)
        assert_close(per_token_values, table.broadcast(first) * batch.loss_mask)
    assert ("loss/value" in metrics) == (estimator == "turn_gae")
