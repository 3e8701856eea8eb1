"""agent_view: the hook, its contract check, its record on the turns, and the context policies."""

import json

import anyio
import pytest

from turnrl.environments import (
    DropReasoning,
    EnvContractError,
    Environment,
    KeepLastTurns,
    Summarize,
    Timeout,
    TurnLimit,
    check_env,
)
from turnrl.environments.base import checked_agent_view
from turnrl.environments.context import (
    characters,
    drop_reasoning,
    edited,
    keep_last_turns,
    split_turns,
    summarize_with,
    token_count,
)
from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.environments.wrappers import EnvTimeoutError
from turnrl.training.rollout import run_episode
from turnrl.training.rollout_metrics import rollout_metrics
from turnrl.types import Message, Trajectory, TrajectoryGroup, Turn, assistant, user

pytestmark = pytest.mark.anyio


class EchoAgent:
    """Replies ``replies`` in order; records every prompt; token ids are the reply's code points."""

    def __init__(self, replies):
        self.replies = iter(replies)
        self.prompts = []

    async def respond(self, conversation):
        self.prompts.append(list(conversation))
        text = next(self.replies)
        ids = [ord(c) for c in text]
        prompt = [ord(c) for m in conversation for c in m.content]
        return Turn(
            message=Message(role="assistant", content=text, token_ids=ids),
            prompt_ids=prompt,
            completion_ids=ids,
            logprobs=[-0.1] * len(ids),
        )


SCENARIO = make_scenarios(n=1)[0]  # a question whose answer is never "x"


async def test_rollout_prompts_with_the_view_and_records_it_on_the_turn():
    agent = EchoAgent(["x", "y", "z"])
    env = KeepLastTurns(ArithmeticEnvironment([SCENARIO]), 1)
    t = await run_episode(agent, env, SCENARIO)
    question, retry = SCENARIO.prompt[0], user("Wrong. Try again.")
    x, y = (turn.message for turn in t.turns[:2])
    # Turns 0 and 1 see the whole conversation; turn 2 sees the question and the last turn.
    assert agent.prompts == [[question], [question, x, retry], [question, y, retry]]
    assert [turn.view for turn in t.turns] == [None, None, [question, y, retry]]
    assert len(t.conversation) == 6  # the trajectory keeps everything
    assert rollout_metrics([TrajectoryGroup(scenario=SCENARIO, trajectories=[t])])[
        "rollout/view_frac"
    ] == pytest.approx(1 / 3)


async def test_views_survive_jsonl_and_old_records_still_load(tmp_path):
    env = KeepLastTurns(ArithmeticEnvironment([SCENARIO]), 1)
    t = await run_episode(EchoAgent("xyz"), env, SCENARIO)
    assert Trajectory.model_validate_json(t.model_dump_json()) == t
    old = json.loads(t.model_dump_json())
    for turn in old["turns"]:
        del turn["view"]  # a record written before views existed
    assert Trajectory.model_validate(old).turns[2].view is None


async def test_wrappers_forward_the_view():
    env = TurnLimit(KeepLastTurns(ArithmeticEnvironment([SCENARIO]), 1), 8)
    conversation = [user("q"), assistant("a"), user("no"), assistant("b"), user("no")]
    assert [m.content for m in await env.agent_view(conversation)] == ["q", "b", "no"]
    assert [m.content for m in await env.clone().agent_view(conversation)] == ["q", "b", "no"]


class BadView(Environment):
    def __init__(self, view):
        self.view = view

    async def agent_view(self, conversation):
        return self.view(conversation)


@pytest.mark.parametrize(
    ("view", "error"),
    [
        (lambda c: [], "returned an empty view"),
        (lambda c: "hello", "returned view str"),
        (lambda c: [*c[:-1], c[-1].model_copy(update={"content": "edited"})], "token_ids"),
    ],
)
async def test_a_broken_view_names_the_problem(view, error):
    conversation = [user("q"), Message(role="assistant", content="a", token_ids=[1])]
    with pytest.raises(EnvContractError, match=error):
        await checked_agent_view(BadView(view), conversation)


async def test_a_sync_agent_view_is_refused():
    class Sync(Environment):
        def agent_view(self, conversation):
            return conversation

    with pytest.raises(EnvContractError, match="is not async"):
        await checked_agent_view(Sync(), [user("q")])


def test_split_and_keep_last_turns():
    conversation = [
        Message(role="system", content="s"),
        user("q"),
        assistant("a"),
        user("no"),
        assistant("b"),
        Message(role="tool", content="t"),
        user("no"),
        assistant("c"),
    ]
    head, turns = split_turns(conversation)
    assert [m.content for m in head] == ["s", "q"]
    assert [[m.content for m in turn] for turn in turns] == [["a", "no"], ["b", "t", "no"], ["c"]]
    assert [m.content for m in keep_last_turns(conversation, 2)] == ["s", "q", "b", "t", "no", "c"]
    assert keep_last_turns(conversation, 5) == conversation
    with pytest.raises(ValueError, match="turns must be an integer >= 1"):
        KeepLastTurns(Environment(), 0)


def test_drop_reasoning_edits_older_replies_and_drops_their_tokens():
    older = Message(role="assistant", content="<think>a\nb</think>\n7", token_ids=[1, 2])
    plain = Message(role="assistant", content="8", token_ids=[3])
    last = Message(role="assistant", content="<think>c</think>9", token_ids=[4])
    view = drop_reasoning([user("q"), older, user("no"), plain, user("no"), last])
    assert [m.content for m in view] == ["q", "7", "no", "8", "no", "<think>c</think>9"]
    assert [m.token_ids for m in view if m.role == "assistant"] == [None, [3], [4]]
    custom = drop_reasoning([older, last], r"\d", keep_last=0)
    assert [m.content for m in custom] == ["<think>a\nb</think>\n", "<think>c</think>"]
    assert edited(plain, "8") is plain
    with pytest.raises(ValueError, match="not a regular expression"):
        DropReasoning(Environment(), "(")


async def test_summarize_folds_older_turns_with_the_previous_summary():
    calls = []

    async def summarize(messages):
        calls.append([m.content for m in messages])
        return f"S{len(calls)}"

    env = Summarize(ArithmeticEnvironment([SCENARIO]), summarize, max_size=6, keep_turns=1)
    await env.reset(options={"scenario": SCENARIO})
    q = user("q")
    small = [q, assistant("a"), user("no")]
    assert await env.agent_view(small) == small  # 4 characters: under the limit
    longer = [*small, assistant("bbbb"), user("no")]  # 10 characters: fold turn "a"
    view = await env.agent_view(longer)
    summary = "Summary of the conversation so far: S1"
    assert [m.content for m in view] == ["q", summary, "bbbb", "no"]
    assert calls == [["a", "no"]] and view[1].role == "user"
    # The summary is kept; the next fold starts from it.
    longest = [*longer, assistant("cc"), user("no")]
    view = await env.agent_view(longest)
    assert calls[1] == [summary, "bbbb", "no"]
    assert [m.content for m in view][2:] == ["cc", "no"]
    clone = env.clone()
    assert clone.summarize is summarize and clone.summary is None
    await env.reset(options={"scenario": SCENARIO})
    assert env.summary is None and env.folded == 0


async def test_summarize_is_not_a_turn_of_the_episode():
    summaries = EchoAgent(["summary"] * 3)

    async def summarize(messages):
        return (await summaries.respond(messages)).message.content

    agent = EchoAgent(["x", "y", "z"])
    env = Summarize(ArithmeticEnvironment([SCENARIO]), summarize, max_size=30)
    t = await run_episode(agent, env, SCENARIO)
    assert [turn.message.content for turn in t.turns] == ["x", "y", "z"]
    assert summaries.prompts and t.turns[2].view is not None
    assert "summary" in t.turns[2].view[1].content


def test_policies_compose_innermost_first():
    env = Summarize(KeepLastTurns(DropReasoning(Environment()), 2), lambda m: None, max_size=10)
    assert isinstance(env.env.env, DropReasoning) and env.unwrapped.__class__ is Environment


def test_token_count_measures_the_rendered_prompt(tiny_agent):
    messages = [user("What is 3+4?"), assistant("8"), user("Wrong. Try again.")]
    count = token_count(tiny_agent.tokenizer)
    assert count(messages) == len(tiny_agent.encode(messages)) > characters(messages)


async def test_summarize_with_asks_the_agent_and_returns_its_reply(tiny_agent, scripted_engine):
    scripted_engine(tiny_agent, ["it said 8"])
    seen = []
    respond = tiny_agent.respond

    async def spy(conversation, **kwargs):
        seen.append([(m.role, m.content) for m in conversation])
        return await respond(conversation, **kwargs)

    tiny_agent.respond = spy
    summarize = summarize_with(tiny_agent, "Summarize.")
    assert await summarize([user("q"), assistant("8")]) == "it said 8"
    assert seen == [[("system", "Summarize."), ("user", "user: q\nassistant: 8")]]


async def test_timeout_limits_a_slow_view():
    class SlowView(Environment):
        async def agent_view(self, conversation):
            await anyio.sleep(5)
            return conversation

    with pytest.raises(EnvTimeoutError, match=r"agent_view\(\) did not finish"):
        await Timeout(SlowView(), 0.05).agent_view([user("q")])


async def test_check_env_reports_a_broken_view():
    class Forgetful(ArithmeticEnvironment):
        async def agent_view(self, conversation):
            return []

    with pytest.raises(EnvContractError, match="agent_view\\(\\) returned an empty view"):
        await check_env(Forgetful([SCENARIO]))
