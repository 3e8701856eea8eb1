import pytest
import torch

from turnrl.training.batch import TokenMismatchError, build_batch
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


def test_mismatched_tokens_are_an_error():
    bad = two_turn_trajectory()
    bad.turns[1] = turn([1, 2, 99, 10, 11], [12])
    with pytest.raises(TokenMismatchError, match="turn 0"):
        build_batch(
            [TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[bad])], pad_token_id=0
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
