"""examples/reasoning_agent.py: a short run whose step-wise rows are checked token for token.

The oracle for a prompt is the spec of the reasoning template, written out here:
each earlier reply without its thinking span, rendered by the *default* tiny
template (which changes nothing) and tokenized.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import turnrl
from turnrl.agents.tiny import build_tiny_tokenizer
from turnrl.environments.tasks.quiz import QuizEnvironment, make_quiz_scenarios
from turnrl.types import assistant, flatten

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reasoning_agent.py"


def load():
    spec = importlib.util.spec_from_file_location("reasoning_agent", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_thinking(content):
    return content.split("</think>")[-1].lstrip() if "</think>" in content else content


def history(trajectory, k):
    """The conversation before turn ``k``, earlier thinking dropped."""
    messages = list(trajectory.initial_messages)
    for j in range(k):
        reply = trajectory.turns[j].message
        messages += [assistant(without_thinking(reply.content)), *trajectory.env_messages[j]]
    return messages


def check_trajectory(trajectory, rows, batch, tokenizer):
    """Rows hold each turn's exact prompt and completion; prompts drop earlier thinking."""
    eos = tokenizer.eos_token_id
    checked = 0
    for k, turn in enumerate(trajectory.turns):
        earlier = trajectory.turns[:k]
        # A reply the template keeps verbatim is re-used as sampled: the oracle's text
        # tokenization equals it only when it survives decode -> encode.
        if all(
            "</think>" in t.message.content
            or t.completion_ids
            == [*tokenizer(t.message.content, add_special_tokens=False).input_ids, eos]
            for t in earlier
        ):
            text = tokenizer.apply_chat_template(
                [m.to_chat() for m in history(trajectory, k)],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert turn.prompt_ids == tokenizer(text, add_special_tokens=False).input_ids
            checked += 1
        (row,) = [r for r in rows if bool((batch.turn_ids[r] == k).any())]
        start, end = len(turn.prompt_ids), len(turn.prompt_ids) + len(turn.completion_ids)
        ids = batch.input_ids[row].tolist()
        assert ids[:start] == turn.prompt_ids and ids[start:end] == turn.completion_ids
        assert (batch.turn_ids[row] == k).nonzero().squeeze(-1).tolist() == list(range(start, end))
    assert torch.equal(batch.loss_mask[rows].bool(), batch.turn_ids[rows] >= 0)
    # The template rewrites a reply exactly when it has a thinking span: a new row.
    rewritten = sum("</think>" in t.message.content for t in trajectory.turns[:-1])
    assert len(rows) == 1 + rewritten
    return checked, rewritten


@pytest.mark.anyio
async def test_reasoning_agent_trains_step_wise(tmp_path, monkeypatch):
    module = load()
    seen = []
    prepare = turnrl.Trainer.prepare_batch

    def spy(self, groups):
        batch = prepare(self, groups)
        seen.append(([t for t in flatten(groups) if not t.failed], batch))
        return batch

    monkeypatch.setattr(turnrl.Trainer, "prepare_batch", spy)
    result = await module.main(
        2,
        30,
        str(tmp_path / "run"),
        num_demos=64,
        batch_size=8,
        scenarios_per_step=2,
        num_generations=4,
        held_out_size=4,
    )
    assert result["steps"] == 2 and len(seen) == 2
    assert 0.0 <= result["eval_before"] <= 1.0 and 0.0 <= result["eval_after"] <= 1.0
    assert result["num_sequences"] > result["num_trajectories"] == 16
    tokenizer = build_tiny_tokenizer()
    checked = rewritten = 0
    for trajectories, batch in seen:
        index = batch.trajectories()
        assert index.count == len(trajectories)
        for m, trajectory in enumerate(trajectories):
            rows = (index.of_row == m).nonzero().squeeze(-1).tolist()
            assert rows == list(range(rows[0], rows[0] + len(rows)))  # consecutive
            c, r = check_trajectory(trajectory, rows, batch, tokenizer)
            checked, rewritten = checked + c, rewritten + r
    assert rewritten > 0  # the warm-started model thinks, so earlier thinking was dropped
    assert checked >= 16 + rewritten  # every first turn, and every prompt after a rewrite


@pytest.mark.anyio
async def test_context_policy_variant_runs(tmp_path):
    module = load()
    result = await module.main(
        1,
        1,
        str(tmp_path / "run"),
        "drop-reasoning",
        num_demos=4,
        batch_size=2,
        scenarios_per_step=1,
        num_generations=2,
        held_out_size=1,
    )
    assert result["steps"] == 1 and result["num_trajectories"] == 2


def test_demonstrations_think_and_the_environment_reads_the_answer():
    module = load()
    scenario = make_quiz_scenarios(1, questions=2)[0]
    (demo,) = module.demonstrations([scenario], accuracy=1.0)
    q = scenario.data["questions"]
    first = q[0]["a"] + q[0]["b"]
    assert demo[1].content == f"<think>{q[0]['a']}+{q[0]['b']}={first}</think>{first}"
    # Per-turn views of a context policy: earlier thinking dropped, the reply whole.
    views = module.per_turn([demo], lambda m: module.drop_reasoning(m, keep_last=0))
    assert [m.content for m in views[1]][1:3] == [str(first), demo[2].content]
    assert views[1][-1] == demo[3]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("<think>1+1=2</think> {s}", True),  # the quiz alone would read 1
        ("{s}", True),
        ("<think>{s}", False),  # unclosed: no answer, though the quiz alone would read s
        ("<think>{s}+0</think>9", False),
    ],
)
async def test_answer_after_thinking(reply, correct):
    module = load()
    scenario = make_quiz_scenarios(1, questions=1)[0]
    q = scenario.data["questions"][0]
    env = module.AnswerAfterThinking(QuizEnvironment([scenario]))
    await env.reset(options={"scenario": scenario})
    result = await env.step(assistant(reply.format(s=q["a"] + q["b"])))
    assert result.info["correct"] is correct
