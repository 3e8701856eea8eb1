"""Tests for turnrl.environments.conversation: simulated users and ConversationEnvironment."""

from collections.abc import Sequence

import pytest

from turnrl.environments import (
    AgentUser,
    CallableUser,
    ConversationEnvironment,
    ScriptedUser,
)
from turnrl.environments.conversation import as_user, flip_roles
from turnrl.types import Message, Scenario, Turn, assistant, system, user

SCENARIO = Scenario(id="greet", prompt=[system("Be kind."), user("Hi!")], data={"persona": "P"})


def sampled(content: str) -> Message:
    """An assistant message as a turnrl agent returns it, with token ids."""
    return Message(role="assistant", content=content, token_ids=[5, 6, 7])


class FakeAgent:
    """Records what it was asked; always replies ``content``."""

    def __init__(self, content: str = "I am the user.") -> None:
        self.content = content
        self.seen: list[list[Message]] = []

    async def respond(self, conversation: Sequence[Message]) -> Turn:
        self.seen.append(list(conversation))
        return Turn(message=sampled(self.content), prompt_ids=[1], completion_ids=[5, 6, 7])


class Uncopyable:
    def __deepcopy__(self, memo):
        raise AssertionError("the user's model must be shared, not deep-copied")


async def start(env: ConversationEnvironment, scenario: Scenario = SCENARIO) -> list[Message]:
    observation, info = await env.reset(options={"scenario": scenario})
    assert info == {"scenario_id": scenario.id}
    return observation


@pytest.mark.anyio
async def test_reset_returns_a_copy_of_the_prompt():
    env = ConversationEnvironment([SCENARIO], ["ok"])
    observation = await start(env)
    assert observation == SCENARIO.prompt and observation is not SCENARIO.prompt
    observation.append(user("mutated"))
    assert len(SCENARIO.prompt) == 2
    with pytest.raises(ValueError, match="needs a scenario"):
        await env.reset()


@pytest.mark.anyio
async def test_scripted_user_replies_in_order_then_terminates():
    env = ConversationEnvironment([SCENARIO], ["one", "two"])
    assert isinstance(env.user, ScriptedUser)
    await start(env)
    first = await env.step(assistant("a"))
    assert first == ([user("one")], 0.0, False, False, {"turn": 1, "user_ended": False})
    second = await env.step(assistant("b"))
    assert second.observation == [user("two")] and not second.terminated
    third = await env.step(assistant("c"))
    assert third == ([], 0.0, True, False, {"turn": 3, "user_ended": True})
    assert [m.content for m in env.conversation] == ["Be kind.", "Hi!", "a", "one", "b", "two", "c"]


@pytest.mark.anyio
async def test_scripted_user_ignores_assistant_messages_in_the_prompt():
    few_shot = Scenario(id="fs", prompt=[user("2+2?"), assistant("4"), user("3+3?")])
    env = ConversationEnvironment([few_shot], ScriptedUser(["first"]))
    await start(env, few_shot)
    assert (await env.step(assistant("6"))).observation == [user("first")]


def test_scripted_user_rejects_a_bare_string():
    with pytest.raises(TypeError, match="sequence of strings"):
        ScriptedUser("hello")
    with pytest.raises(TypeError, match="user must be"):
        ConversationEnvironment([SCENARIO], "hello")


@pytest.mark.anyio
async def test_callable_user_sync_str_message_and_none():
    calls = []

    def reply(conversation: list[Message], scenario: Scenario) -> str | Message | None:
        calls.append((len(conversation), scenario.id))
        n = sum(m.role == "assistant" for m in conversation)
        return {1: "text", 2: Message(role="tool", content="{}")}.get(n)

    env = ConversationEnvironment([SCENARIO], reply)
    assert isinstance(env.user, CallableUser)
    await start(env)
    assert (await env.step(assistant("a"))).observation == [user("text")]
    assert (await env.step(assistant("b"))).observation == [Message(role="tool", content="{}")]
    last = await env.step(assistant("c"))
    assert (last.observation, last.terminated, last.truncated) == ([], True, False)
    assert calls == [(3, "greet"), (5, "greet"), (7, "greet")]  # prompt(2) + 1, 3, 5


@pytest.mark.anyio
async def test_callable_user_async():
    async def reply(conversation: list[Message], scenario: Scenario) -> str:
        return f"you said {conversation[-1].content}"

    env = ConversationEnvironment([SCENARIO], reply)
    await start(env)
    assert (await env.step(assistant("x"))).observation == [user("you said x")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (assistant("no"), ValueError, "must not reply with an assistant"),
        (42, TypeError, "returned int; expected str, Message or None"),
    ],
)
async def test_callable_user_bad_returns(returned, error, match):
    env = ConversationEnvironment([SCENARIO], lambda c, s: returned)
    await start(env)
    with pytest.raises(error, match=match):
        await env.step(assistant("a"))


def test_flip_roles_swaps_drops_system_and_tool_and_token_ids():
    conversation = [
        system("Be kind."),
        user("Hi!"),
        sampled("Hello"),
        Message(role="tool", content="{}"),
    ]
    assert flip_roles(conversation, "P") == [system("P"), assistant("Hi!"), user("Hello")]
    assert flip_roles(conversation) == [assistant("Hi!"), user("Hello")]
    assert all(m.token_ids is None for m in flip_roles(conversation))


@pytest.mark.anyio
async def test_agent_user_sees_flipped_roles_and_scenario_persona():
    agent = FakeAgent("Thanks, bye.")
    env = ConversationEnvironment([SCENARIO], agent)
    assert isinstance(env.user, AgentUser)
    await start(env)
    result = await env.step(sampled("Hello"))
    assert result.observation == [user("Thanks, bye.")]
    assert result.observation[0].token_ids is None
    assert agent.seen == [[system("P"), assistant("Hi!"), user("Hello")]]
    assert agent.seen[0][-1].token_ids is None


@pytest.mark.anyio
async def test_agent_user_default_persona_and_none():
    plain = Scenario(id="plain", prompt=[user("Hi!")])
    agent = FakeAgent()
    env = ConversationEnvironment([plain], AgentUser(agent, persona="Grumpy."))
    await start(env, plain)
    await env.step(assistant("Hello"))
    assert agent.seen[-1][0] == system("Grumpy.")
    await start(env, SCENARIO)  # the scenario's persona wins over the default
    await env.step(assistant("Hello"))
    assert agent.seen[-1][0] == system("P")

    bare = ConversationEnvironment([plain], AgentUser(agent))
    await start(bare, plain)
    await bare.step(assistant("Hello"))
    assert agent.seen[-1] == [assistant("Hi!"), user("Hello")]


def test_as_user_converts_raw_forms_and_rejects_others():
    scripted = ScriptedUser(["x"])
    assert as_user(scripted) is scripted
    assert isinstance(as_user(["x"]), ScriptedUser)
    assert isinstance(as_user(lambda c, s: None), CallableUser)
    assert isinstance(as_user(FakeAgent()), AgentUser)
    with pytest.raises(TypeError, match="user must be"):
        as_user(42)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_max_turns_truncates_and_keeps_the_users_reply():
    env = ConversationEnvironment([SCENARIO], lambda c, s: "more", max_turns=2)
    await start(env)
    assert not (await env.step(assistant("a"))).truncated
    second = await env.step(assistant("b"))
    assert (second.terminated, second.truncated) == (False, True)
    assert second.observation == [user("more")]
    assert second.info["turn_limit"] is True
    with pytest.raises(RuntimeError, match="after the episode ended"):
        await env.step(assistant("c"))


@pytest.mark.anyio
async def test_user_ending_on_the_last_turn_terminates_not_truncates():
    env = ConversationEnvironment([SCENARIO], ["only"], max_turns=2)
    await start(env)
    await env.step(assistant("a"))
    result = await env.step(assistant("b"))
    assert (result.terminated, result.truncated) == (True, False)
    assert "turn_limit" not in result.info


def test_max_turns_validated():
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1"):
        ConversationEnvironment([SCENARIO], ["x"], max_turns=0)


@pytest.mark.anyio
async def test_turn_reward_sync_and_async_see_the_users_reply():
    def by_length(conversation: list[Message], scenario: Scenario) -> float:
        return float(len(conversation))

    async def mentions_thanks(conversation: list[Message], scenario: Scenario) -> float:
        return 1.0 if conversation[-1].content == "thanks" else 0.0

    env = ConversationEnvironment([SCENARIO], ["thanks"], turn_reward=by_length)
    await start(env)
    assert (await env.step(assistant("a"))).reward == 4.0  # system, user, assistant, reply

    env = ConversationEnvironment([SCENARIO], ["thanks"], turn_reward=mentions_thanks)
    await start(env)
    assert (await env.step(assistant("a"))).reward == 1.0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value", "error"), [("1", TypeError), (True, TypeError), (float("nan"), ValueError)]
)
async def test_turn_reward_must_be_a_finite_number(value, error):
    env = ConversationEnvironment([SCENARIO], ["x"], turn_reward=lambda c, s: value)
    await start(env)
    with pytest.raises(error, match="turn_reward must return"):
        await env.step(assistant("a"))


@pytest.mark.anyio
async def test_step_misuse_is_reported():
    env = ConversationEnvironment([SCENARIO], ["x"])
    with pytest.raises(RuntimeError, match="before reset"):
        await env.step(assistant("a"))
    await start(env)
    with pytest.raises(ValueError, match="assistant's message, got role 'user'"):
        await env.step(user("a"))


@pytest.mark.anyio
async def test_clone_shares_user_and_scenarios_and_starts_fresh():
    agent = FakeAgent()
    agent.model = Uncopyable()
    env = ConversationEnvironment([SCENARIO], agent, max_turns=3)
    await start(env)
    await env.step(assistant("a"))

    clone = env.clone()
    assert type(clone) is ConversationEnvironment
    assert clone.user is env.user and clone.scenarios is env.scenarios
    assert clone.max_turns == 3 and clone.conversation == []
    with pytest.raises(RuntimeError, match="before reset"):
        await clone.step(assistant("b"))

    await start(clone)
    for _ in range(3):
        await clone.step(assistant("b"))
    assert len(env.conversation) == 4  # prompt(2) + a + reply: untouched by the clone
    assert not (await env.step(assistant("c"))).truncated  # the original is at turn 2 of 3
