import pytest

from turnrl.types import (
    Message,
    Scenario,
    Trajectory,
    TrajectoryGroup,
    Turn,
    load_jsonl,
    save_jsonl,
    user,
)


def trajectory(answer="7"):
    turn = Turn(
        message=Message(role="assistant", content=answer, token_ids=[30, 2]),
        prompt_ids=[4, 5],
        completion_ids=[30, 2],
        logprobs=[-0.5, -0.1],
    )
    return Trajectory(
        scenario=Scenario(id="add-3-4", prompt=[user("What is 3+4?")], data={"answer": 7}),
        initial_messages=[user("What is 3+4?")],
        turns=[turn, turn],
        env_messages=[[user("Wrong. Try again.")], []],
        env_rewards=[0.0, 0.5],
        terminated=True,
        reward=0.5,
        reward_components={"env_return": 0.5},
    )


def test_conversation_order_and_helpers():
    t = trajectory()
    assert [m.content for m in t.conversation] == ["What is 3+4?", "7", "Wrong. Try again.", "7"]
    assert t.env_return == 0.5 and t.final_response == "7" and not t.failed
    group = TrajectoryGroup(
        scenario=t.scenario, trajectories=[t, t.model_copy(update={"error": "x"})]
    )
    assert len(group) == 2 and len(group.ok) == 1


def test_jsonl_round_trip(tmp_path):
    items = [trajectory(), trajectory("8")]
    path = save_jsonl(items, tmp_path / "sub" / "t.jsonl")
    assert load_jsonl(path) == items


def test_policy_version_round_trips_and_old_files_still_load(tmp_path):
    sampled = trajectory()
    sampled.turns[0] = sampled.turns[0].model_copy(update={"policy_version": 3})
    path = save_jsonl([sampled], tmp_path / "t.jsonl")
    (loaded,) = load_jsonl(path)
    assert [t.policy_version for t in loaded.turns] == [3, None]
    # A file written before turns recorded their version: no such key at all.
    old = path.read_text().replace(', "policy_version":3', "").replace(',"policy_version":3', "")
    old = old.replace(',"policy_version":null', "")
    assert "policy_version" not in old
    path.write_text(old)
    assert [t.policy_version for t in load_jsonl(path)[0].turns] == [None, None]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = save_jsonl([trajectory()], tmp_path / "t.jsonl")
    path.write_text(path.read_text() + '{"scenario": 3}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: not a valid trajectory"):
        load_jsonl(path)


def test_messages_are_strict():
    with pytest.raises(ValueError):
        Message(role="robot", content="hi")
    with pytest.raises(ValueError):
        Message(role="user", content="hi", extra=1)
    assert Message(role="user", content="hi").to_chat() == {"role": "user", "content": "hi"}
