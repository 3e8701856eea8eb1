"""Tests for turnrl.rewards.judge: rule items, the model judge and the rubric."""

import math
import re
from collections.abc import Sequence

import anyio
import pytest
import torch

from turnrl.environments.conversation import frozen_copy
from turnrl.rewards import combine, reward_function, score_groups
from turnrl.rewards.judge import ModelJudge, RubricJudge, matches, mentions, transcript
from turnrl.types import (
    Message,
    Scenario,
    Trajectory,
    TrajectoryGroup,
    Turn,
    assistant,
    system,
    user,
)

REFUND = Scenario(id="refund", data={"goal": "refund", "keywords": ["refund", "money back"]})


def conversation(*replies: str, customer: Sequence[str] = (), scenario=REFUND) -> Trajectory:
    """The agent's ``replies``, each answered by the next ``customer`` line."""
    turns = [
        Turn(message=assistant(r), prompt_ids=[], completion_ids=[1] * len(r)) for r in replies
    ]
    answers = [[user(c)] for c in customer] + [[] for _ in replies[len(customer) :]]
    return Trajectory(
        scenario=scenario,
        initial_messages=[system("Help. Say refund."), user("I want a refund.")],
        turns=turns,
        env_messages=answers,
    )


def group_of(*trajectories: Trajectory) -> TrajectoryGroup:
    return TrajectoryGroup(scenario=trajectories[0].scenario, trajectories=list(trajectories))


def test_mentions_modes_per_scenario_words_and_roles():
    t = conversation("Sorry! Your Refund is sent.", "Thanks.", customer=["ok, money back?"])
    assert mentions(["refund", "tracking"]).fn(t) == 1.0  # any: "Refund" matches case-insensitively
    assert mentions(["refund", "tracking"], mode="all").fn(t) == 0.0
    assert mentions(["sorry", "thank", "please"], mode="fraction").fn(t) == pytest.approx(2 / 3)
    per_scenario = mentions(lambda s: s.data["keywords"], mode="fraction")
    assert per_scenario.fn(t) == 0.5  # "refund" yes, "money back" only from the customer
    assert mentions("money back", role="user").fn(t) == 1.0
    # The scenario's opening messages never count: only the system prompt says "Say refund".
    assert mentions("say refund", role=None).fn(conversation("no")) == 0.0
    assert mentions("i want", role=None).fn(conversation("no")) == 0.0
    with pytest.raises(ValueError, match="mode"):
        mentions("x", mode="most")


def test_mentions_without_words_is_an_error_for_the_trajectory():
    empty = mentions(lambda s: [], name="goal")
    (result,) = anyio.run(empty, group_of(conversation("hi")))
    assert result.error == "goal: raised ValueError: no words to look for in scenario 'refund'"


def test_matches_searches_the_roles_messages():
    t = conversation("Order #1234 ships today.", customer=["Where is #99?"])
    assert matches(r"#\d{4}").fn(t) == 1.0
    assert matches(r"#\d{2}\b").fn(t) == 0.0  # only the customer wrote #99
    assert matches(r"#\d{2}\b", role="user").fn(t) == 1.0
    assert matches(re.compile("ORDER")).fn(t) == 0.0  # a compiled pattern keeps its own flags


def test_transcript_labels_drops_system_and_keeps_the_end():
    messages = [
        system("secret"),
        user("Hi"),
        assistant("Hello!"),
        Message(role="tool", content="{}"),
    ]
    text = transcript(messages, labels={"user": "Customer", "assistant": "Agent"})
    assert text == "Customer: Hi\nAgent: Hello!\nTool: {}"
    assert transcript(messages, max_chars=11) == "...Tool: {}"  # "..." + the last 8 characters


def test_rubric_is_the_weighted_sum_over_the_positive_weights():
    @reward_function(name="half")
    def half(t):
        return 0.5

    rubric = RubricJudge(
        {mentions("refund", name="keyword"): 2.0, half: 1.0, mentions("sorry", name="sorry"): -1.0}
    )
    (result,) = anyio.run(rubric, group_of(conversation("Sorry, refund sent.")))
    # (2 * 1.0 + 1 * 0.5 - 1 * 1.0) / (2 + 1) = 1.5 / 3 = 0.5
    assert result.score == pytest.approx(0.5)
    assert result.components == {"keyword": 1.0, "half": 0.5, "sorry": 1.0}  # raw scores
    assert rubric.weights == {"keyword": 2.0, "half": 1.0, "sorry": -1.0}
    with pytest.raises(ValueError, match="positive weight"):
        RubricJudge({half: 0.0})


def test_rubric_item_failure_fails_the_trajectory_unless_weight_zero():
    def broken(t):
        raise RuntimeError("boom")

    failing = RubricJudge({mentions("refund", name="keyword"): 1.0, broken: 1.0})
    (result,) = anyio.run(failing, group_of(conversation("refund")))
    assert result.error == "broken: raised RuntimeError: boom"
    metric_only = RubricJudge({mentions("refund", name="keyword"): 1.0, broken: 0.0})
    (result,) = anyio.run(metric_only, group_of(conversation("refund")))
    assert (result.score, result.error, result.components) == (1.0, None, {"keyword": 1.0})


def test_rubric_components_reach_the_step_metrics():
    rubric = RubricJudge(
        {mentions("refund", name="keyword"): 1.0, mentions("sorry", name="polite"): 1.0}
    )
    reward = combine({rubric: 1.0, reward_function(lambda t: -1.0, name="length"): 0.5})
    group = group_of(conversation("refund"), conversation("sorry, refund"))
    metrics = anyio.run(score_groups, [group], reward)
    # rubric: (1 + 0) / 2 = 0.5 and (1 + 1) / 2 = 1.0; total: rubric - 0.5
    assert metrics["reward/rubric_mean"] == pytest.approx(0.75)
    assert metrics["reward/rubric/keyword_mean"] == 1.0
    assert metrics["reward/rubric/polite_mean"] == 0.5
    assert metrics["reward/length_mean"] == -1.0
    assert metrics["reward/combined_mean"] == pytest.approx(0.25)
    assert [t.reward for t in group] == [0.0, 0.5]


class FixedAnswers:
    """A judge agent (no model) answering with ``answers`` in turn."""

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[list[Message]] = []

    async def respond(self, conversation: Sequence[Message]) -> Turn:
        self.prompts.append(list(conversation))
        text = self.answers[len(self.prompts) - 1]
        return Turn(message=assistant(text), prompt_ids=[1], completion_ids=[2])


@pytest.mark.anyio
async def test_number_judge_parses_scores_and_reports_unparseable_answers():
    group = group_of(*(conversation(f"reply {k}") for k in range(4)))
    judge = ModelJudge(
        FixedAnswers(["7", "Score: 2.5/10", "great job", "42"]), "Rate it.", answer="number"
    )
    results = await judge(group)
    assert [r.score for r in results[:2]] == [0.7, 0.25]
    assert results[0].components == {"parsed": 1.0}
    assert results[2].error == (
        "judge: ValueError: no score in [0, 10] in the judge's answer 'great job'; "
        "pass fallback= to score such answers instead"
    )
    assert "'42'" in results[3].error  # out of range is not a score either
    lenient = ModelJudge(
        FixedAnswers(["7", "?", "?", "11"]), "Rate it.", answer="number", fallback=0.0
    )
    results = await lenient(group)
    assert [(r.score, r.components["parsed"], r.error) for r in results] == [
        (0.7, 1.0, None),
        (0.0, 0.0, None),
        (0.0, 0.0, None),
        (0.0, 0.0, None),
    ]


@pytest.mark.anyio
async def test_judge_prompt_has_the_transcript_and_the_scenarios_question():
    agent = FixedAnswers(["5"])
    judge = ModelJudge(
        agent,
        "Was the {goal} handled?",
        answer="number",
        instructions="Judge!",
        labels={"assistant": "Agent"},
    )
    await judge(group_of(conversation("Refund sent.", customer=["thanks"])))
    (prompt,) = agent.prompts
    assert prompt == [
        system("Judge!"),
        user(
            "User: I want a refund.\nAgent: Refund sent.\nUser: thanks\n\n"
            "Question: Was the refund handled?\nAnswer with a number from 0 to 10."
        ),
    ]
    missing = ModelJudge(FixedAnswers(["5"]), "Was the {mood} ok?", answer="number")
    (result,) = await missing(group_of(conversation("x")))
    assert result.error == (
        "judge: LookupError: the question needs scenario.data['mood'], which scenario "
        "'refund' lacks"
    )


@pytest.fixture
def judge_agent(tiny_agent):
    return frozen_copy(tiny_agent)


def test_model_judge_refuses_a_trainable_model(tiny_agent):
    with pytest.raises(ValueError, match="frozen_copy"):
        ModelJudge(tiny_agent, "Good?")


def plain_answer_logprob(agent, prompt: list[Message], answer: str) -> float:
    """log P(answer | prompt), one unpadded forward per answer (the reference)."""
    prompt_ids = agent.encode(prompt)
    answer_ids = agent.tokenizer(answer, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(agent.model(ids).logits[0].float(), -1)  # (T, V)
    return sum(logp[len(prompt_ids) + i - 1, tok].item() for i, tok in enumerate(answer_ids))


@pytest.mark.anyio
async def test_yes_no_judge_is_p_yes_over_p_yes_plus_p_no_batched_across_groups(judge_agent):
    judge = ModelJudge(judge_agent, "Did the agent give a {goal}?", max_transcript_chars=300)
    sizes = []
    forward = judge._forward.fn
    judge._forward.fn = lambda rows: sizes.append(len(rows)) or forward(rows)
    first = group_of(conversation("Refund sent!"), conversation("zq"))
    second = group_of(conversation("Sorry.", customer=["ok"]), conversation("a" * 500))
    results: dict[int, list] = {}

    async def score(i, group):
        results[i] = await judge(group)

    async with anyio.create_task_group() as tg:
        tg.start_soon(score, 0, first)
        tg.start_soon(score, 1, second)
    assert sizes == [8]  # both groups' 4 transcripts x (yes, no) in one forward pass
    for group, group_results in ((first, results[0]), (second, results[1])):
        for t, result in zip(group, group_results, strict=True):
            assert result.error is None and 0.0 <= result.score <= 1.0
            prompt = judge.prompt(t)
            yes = plain_answer_logprob(judge_agent, prompt, "yes")
            no = plain_answer_logprob(judge_agent, prompt, "no")
            assert result.score == pytest.approx(math.exp(yes) / (math.exp(yes) + math.exp(no)))
    assert len(results[1][1].components) == 0


@pytest.mark.anyio
async def test_yes_no_judge_too_long_transcript_is_an_error(judge_agent):
    judge = ModelJudge(judge_agent, "Good?")
    (result,) = await judge(group_of(conversation("x" * 2000)))
    assert result.error.startswith("judge: ValueError: the judge prompt (")
    assert "set max_transcript_chars" in result.error


@pytest.mark.anyio
async def test_number_judge_with_the_tiny_model_scores_in_range_or_falls_back(judge_agent):
    judge = ModelJudge(
        judge_agent, "Rate the {goal}.", answer="number", fallback=0.0, max_transcript_chars=200
    )
    results = await judge(group_of(*(conversation(f"reply {k}") for k in range(4))))
    assert all(r.error is None and 0.0 <= r.score <= 1.0 for r in results)
    assert {r.components["parsed"] for r in results} <= {0.0, 1.0}
    strict = ModelJudge(judge_agent, "Rate the {goal}.", answer="number", max_transcript_chars=200)
    for r in await strict(group_of(*(conversation(f"reply {k}") for k in range(4)))):
        assert (r.error is None and 0.0 <= r.score <= 1.0) or "judge's answer" in r.error
