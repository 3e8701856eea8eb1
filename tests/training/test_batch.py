import pytest
import torch

from turnrl.training.batch import TokenMismatchError, TrajectoryIndex, build_batch
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, Turn


def turn(prompt, completion, logprobs=None):
    return Turn(
        message=Message(role="assistant", content="x", token_ids=completion),
        prompt_ids=prompt,
        completion_ids=completion,
        logprobs=logprobs if logprobs is not None else [-0.1] * len(completion),
    )


def two_turn_trajectory(reward=1.0):
    # sequence: [1 2 3] [10 11] [4 5] [12] -> turn spans (3, 5) and (7, 8)
    turns = [turn([1, 2, 3], [10, 11], [-0.1, -0.2]), turn([1, 2, 3, 10, 11, 4, 5], [12], [-0.3])]
    return Trajectory(
        scenario=Scenario(id="s"),
        turns=turns,
        env_messages=[[], []],
        env_rewards=[0.25, 0.5],
        reward=reward,
        terminated=True,
    )


def test_layout_mask_logprobs_and_rewards():
    short = Trajectory(
        scenario=Scenario(id="t"),
        turns=[turn([1], [9])],
        env_messages=[[]],
        env_rewards=[0.0],
        reward=0.0,
        truncated=True,
    )
    groups = [
        TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[two_turn_trajectory()]),
        TrajectoryGroup(scenario=Scenario(id="t"), trajectories=[short]),
    ]
    batch = build_batch(groups, pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 10, 11, 4, 5, 12], [1, 9, 0, 0, 0, 0, 0, 0]]
    assert batch.attention_mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    torch.testing.assert_close(
        batch.behavior_logprobs[0], torch.tensor([0, 0, 0, -0.1, -0.2, 0, 0, -0.3])
    )
    # env rewards at each turn's last token; reward-function part (1.0 - 0.75) at the last
    torch.testing.assert_close(batch.token_rewards[0], torch.tensor([0, 0, 0, 0, 0.25, 0, 0, 0.75]))
    assert batch.rewards.tolist() == [1.0, 0.0]
    assert batch.group_ids.tolist() == [0, 1]
    assert batch.terminated.tolist() == [True, False] and batch.truncated.tolist() == [False, True]
    assert batch.num_tokens == 4 and batch.has_behavior_logprobs


def test_failed_trajectories_dropped_and_select_trims():
    failed = two_turn_trajectory()
    failed.error = "boom"
    short = Trajectory(
        scenario=Scenario(id="s"),
        turns=[turn([1], [9])],
        env_messages=[[]],
        env_rewards=[0.0],
        reward=0.0,
    )
    group = TrajectoryGroup(
        scenario=Scenario(id="s"), trajectories=[two_turn_trajectory(), failed, short]
    )
    batch = build_batch([group], pad_token_id=0)
    assert len(batch) == 2
    assert batch.select(slice(1, 2)).input_ids.tolist() == [[1, 9]]


def dropped_turn_trajectory():
    """Turn 2's prompt drops turn 0 (an agent_view keeping the last turn):
    [1 2 3] [10 11] [4 5] [12] then [1 2 3 12 4 5] [13 14]."""
    turns = [
        turn([1, 2, 3], [10, 11], [-0.1, -0.2]),
        turn([1, 2, 3, 10, 11, 4, 5], [12], [-0.3]),
        turn([1, 2, 3, 12, 4, 5], [13, 14], [-0.4, -0.5]),
    ]
    return Trajectory(
        scenario=Scenario(id="s"),
        turns=turns,
        env_messages=[[], [], []],
        env_rewards=[0.25, 0.0, 0.5],
        reward=1.0,
        terminated=True,
    )


def test_a_prompt_that_does_not_extend_starts_a_new_row():
    one_row = Trajectory(
        scenario=Scenario(id="s"), turns=[turn([1, 2, 3], [9])], env_rewards=[0.0], reward=0.0
    )
    group = TrajectoryGroup(
        scenario=Scenario(id="s"), trajectories=[dropped_turn_trajectory(), one_row]
    )
    batch = build_batch([group], pad_token_id=0)
    # Turns 0 and 1 extend one another: one row; turn 2 is its own row with its exact tokens.
    assert batch.input_ids.tolist() == [
        [1, 2, 3, 10, 11, 4, 5, 12],
        [1, 2, 3, 12, 4, 5, 13, 14],
        [1, 2, 3, 9, 0, 0, 0, 0],
    ]
    assert batch.loss_mask.tolist() == [
        [0, 0, 0, 1, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 1, 0, 0, 0, 0],
    ]
    assert batch.turn_ids.tolist() == [
        [-1, -1, -1, 0, 0, -1, -1, 1],
        [-1, -1, -1, -1, -1, -1, 2, 2],
        [-1, -1, -1, 0, -1, -1, -1, -1],
    ]
    torch.testing.assert_close(
        batch.behavior_logprobs[1], torch.tensor([0, 0, 0, 0, 0, 0, -0.4, -0.5])
    )
    # Env rewards at each turn's last token; the reward functions' 1.0 - 0.75 only at the
    # last sampled token of the trajectory's last row.
    torch.testing.assert_close(
        batch.token_rewards,
        torch.tensor(
            [[0, 0, 0, 0, 0.25, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0.75], [0, 0, 0, 0, 0, 0, 0, 0]]
        ),
    )
    assert batch.trajectory_ids.tolist() == [0, 0, 1]
    assert batch.rewards.tolist() == [1.0, 1.0, 0.0] and batch.group_ids.tolist() == [0, 0, 0]
    assert batch.terminated.tolist() == [True, True, False]
    index = batch.trajectories()
    assert (index.of_row.tolist(), index.first.tolist(), index.count) == ([0, 0, 1], [0, 2], 2)


def test_trajectory_index_numbers_trajectories_by_first_row():
    index = TrajectoryIndex.of(torch.tensor([7, 3, 3, 7, 5]), 5)
    assert index.of_row.tolist() == [0, 1, 1, 0, 2] and index.first.tolist() == [0, 1, 4]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert index.sum(x).tolist() == [5.0, 5.0, 5.0] and index.pick(x).tolist() == [1.0, 2.0, 5.0]
    assert index.rows(torch.tensor([10.0, 20.0, 30.0])).tolist() == [10, 20, 20, 10, 30]
    identity = TrajectoryIndex.of(None, 3)
    assert identity.is_identity and identity.of_row.tolist() == [0, 1, 2]


def test_a_trajectory_without_turns_is_an_error():
    empty = Trajectory(scenario=Scenario(id="e"))
    with pytest.raises(TokenMismatchError, match="has no turns"):
        build_batch(
            [TrajectoryGroup(scenario=Scenario(id="e"), trajectories=[empty])], pad_token_id=0
        )


def test_missing_logprobs_flagged_and_empty_batch_error():
    t = two_turn_trajectory()
    t.turns[0] = t.turns[0].model_copy(update={"logprobs": None})
    batch = build_batch(
        [TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[t])], pad_token_id=0
    )
    assert not batch.has_behavior_logprobs
    with pytest.raises(ValueError, match="no trajectories"):
        build_batch([], pad_token_id=0)
