"""Token in, token out on a real vocabulary: the Qwen2/2.5 BPE with real chat templates.

Small random Llamas over the 151k-token vocabulary (turnrl.testing.real_vocab) play
multi-turn episodes with a tool answer in between; the tests check the prompts token
for token against the tokenizer, the loss mask against the sampled tokens, the
engine's log-probs against the training forward, and two training steps.
"""

import anyio
import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.testing.real_vocab import real_vocab_model
from turnrl.tools.calls import HermesParser
from turnrl.training.batch import build_batch
from turnrl.training.logprobs import token_logprobs
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, user

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'


def make_agent(tokenizer, **kwargs):
    kwargs.setdefault("sampling", SamplingParams(max_new_tokens=8))
    return TransformersAgent(real_vocab_model(tokenizer), tokenizer, **kwargs)


async def play(agent, scenario_id="s", replies=("391", "Thanks.", None)):
    """An episode: a question, a tool answer, a user follow-up; the model speaks 3 times."""
    conversation = [Message(role="system", content="Be brief."), user("What is 17*23?")]
    trajectory = Trajectory(scenario=Scenario(id=scenario_id), initial_messages=list(conversation))
    answers = [[Message(role="tool", content=replies[0])], [user(replies[1])], []]
    for env in answers:
        turn = await agent.respond(conversation)
        trajectory.turns.append(turn)
        trajectory.env_messages.append(env)
        trajectory.env_rewards.append(0.0)
        conversation += [turn.message, *env]
    return trajectory


def batch_of(trajectories, agent):
    group = TrajectoryGroup(scenario=trajectories[0].scenario, trajectories=list(trajectories))
    return build_batch([group], pad_token_id=agent.tokenizer.pad_token_id)


@pytest.mark.anyio
@pytest.mark.parametrize("template", ["qwen2.5", "qwen3", "llama3"])
async def test_scripted_episode_is_token_for_token_the_tokenizers(
    real_vocab, scripted_engine, template
):
    tokenizer = real_vocab(template)
    agent = make_agent(tokenizer)
    scripted_engine(agent, [CALL, "17*23 = 391.", "You are welcome."])
    trajectory = await play(agent)
    conversation = list(trajectory.initial_messages)
    for turn, env in zip(trajectory.turns, trajectory.env_messages, strict=True):
        text = agent.render(conversation, add_generation_prompt=True)
        assert turn.prompt_ids == tokenizer(text, add_special_tokens=False).input_ids
        conversation += [turn.message, *env]
    batch = batch_of([trajectory], agent)
    last = trajectory.turns[-1]
    assert batch.input_ids[0].tolist() == last.prompt_ids + last.completion_ids
    mask = batch.loss_mask[0].bool()
    sampled = [i for t in trajectory.turns for i in t.completion_ids]
    assert batch.input_ids[0][mask].tolist() == sampled  # the tool answer is not trained
    assert trajectory.turns[0].message.content == CALL


@pytest.mark.anyio
async def test_qwen3_prompts_are_what_the_model_sees_when_reasoning_is_dropped(
    real_vocab, scripted_engine
):
    tokenizer = real_vocab("qwen3")
    agent = make_agent(tokenizer)
    thought = f"<think>\nUse the tool.\n</think>\n\n{CALL}"
    scripted_engine(agent, [thought, "17*23 = 391.", "You are welcome."])
    trajectory = await play(agent)
    first, second, third = trajectory.turns
    # After the tool answer the reasoning is still in history: the prompt extends turn 1.
    assert second.prompt_ids[: len(first.prompt_ids) + len(first.completion_ids)] == (
        first.prompt_ids + first.completion_ids
    )
    # After the next user query the template drops it: the prompt is the template's text.
    conversation = [*trajectory.initial_messages]
    for turn, env in zip(trajectory.turns[:2], trajectory.env_messages[:2], strict=True):
        conversation += [turn.message, *env]
    text = agent.render(conversation, add_generation_prompt=True)
    assert "Use the tool." not in text
    assert third.prompt_ids == tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.anyio
async def test_enable_thinking_reaches_the_prompt(real_vocab, scripted_engine):
    agent = make_agent(real_vocab("qwen3"), chat_template_kwargs={"enable_thinking": False})
    scripted_engine(agent, ["391"])
    turn = await agent.respond([user("What is 17*23?")])
    prompt = agent.tokenizer.decode(turn.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert agent.check_template().template_kwargs == {"enable_thinking": False}


@pytest.mark.anyio
async def test_tool_call_tags_a_tokenizer_marks_special_reach_the_parser(
    real_vocab, scripted_engine
):
    tokenizer = real_vocab("qwen2.5", special_tool_tags=True)
    agent = make_agent(tokenizer)
    scripted_engine(agent, [f"Let me compute.\n{CALL}"])
    turn = await agent.respond([user("What is 17*23?")])
    ids = turn.completion_ids
    assert tokenizer.convert_tokens_to_ids("<tool_call>") in ids
    assert "<tool_call>" not in tokenizer.decode(ids, skip_special_tokens=True)  # the old loss
    assert turn.message.content == f"Let me compute.\n{CALL}"  # eos stripped, tags kept
    calls = HermesParser().parse(turn.message.content)
    assert [(c.name, c.arguments) for c in calls] == [("calculator", {"expression": "17*23"})]


async def sampled_episodes(agent, n):
    trajectories = []

    async def episode(i):
        trajectories.append(await play(agent, scenario_id=str(i)))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(episode, i)
    return sorted(trajectories, key=lambda t: int(t.scenario.id))


@pytest.mark.anyio
@pytest.mark.parametrize("template", ["qwen2.5", "qwen3", "llama3"])
async def test_sampled_turns_keep_their_tokens_and_log_probs(real_vocab, template):
    torch.manual_seed(0)
    agent = make_agent(real_vocab(template), sampling=SamplingParams(max_new_tokens=6))
    trajectories = await sampled_episodes(agent, 8)
    turns = [t for tr in trajectories for t in tr.turns]
    # Random BPE tokens often do not survive decode -> encode (merges across pieces,
    # partial UTF-8); the prompts keep the sampled ids regardless.
    lost = [
        t
        for t in turns
        if agent.tokenizer(t.message.content, add_special_tokens=False).input_ids
        != [i for i in t.completion_ids if i not in agent.eos_token_ids]
    ]
    assert 0 < len(lost) < len(turns)
    for turn in turns:
        ids = torch.tensor([turn.prompt_ids + turn.completion_ids])
        with torch.no_grad():
            logprobs = token_logprobs(agent.model, ids, torch.ones_like(ids), temperature=1.0)
        completion = logprobs[0, len(turn.prompt_ids) :]  # column t: log-prob of token t
        torch.testing.assert_close(completion, torch.tensor(turn.logprobs), atol=1e-4, rtol=0)
    if template == "llama3":
        return  # trimmed replies make step-wise samples: see test_step_wise_batches
    batch = batch_of(trajectories, agent)
    sampled = [i for tr in trajectories for t in tr.turns for i in t.completion_ids]
    assert batch.input_ids[batch.loss_mask.bool()].tolist() == sampled


@pytest.mark.anyio
async def test_step_wise_batches(real_vocab, scripted_engine):
    agent = make_agent(real_vocab("qwen3"), chat_template_kwargs={"enable_thinking": False})
    scripted_engine(agent, [CALL, "17*23 = 391.", "You are welcome."])
    trajectory = await play(agent)
    assert agent.check_template().mode == "step-wise"
    batch = batch_of([trajectory], agent)
    sampled = [i for t in trajectory.turns for i in t.completion_ids]
    assert batch.input_ids[batch.loss_mask.bool()].tolist() == sampled


@pytest.mark.anyio
async def test_truncated_episode_next_state_when_the_template_rewrites_the_last_reply(
    real_vocab, scripted_engine
):
    # Qwen3 with thinking: the last reply's reasoning is dropped once a user answer
    # follows it, so the next state is the template's text, not the row continued.
    agent = make_agent(real_vocab("qwen3"))
    thought = "<think>\nAsk the tool.\n</think>\n\n" + CALL
    scripted_engine(agent, ["391", "<think>\nDone.\n</think>\n\nIt is 391.", thought])
    trajectory = await play(agent)
    trajectory.env_messages[-1] = [user("And 2*3?")]
    trajectory.truncated = True
    group = TrajectoryGroup(scenario=trajectory.scenario, trajectories=[trajectory])
    batch = build_batch([group], pad_token_id=agent.tokenizer.pad_token_id, encode=agent.encode)
    conversation = trajectory.conversation
    expected = agent.tokenizer(
        agent.render(conversation, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    assert "Ask the tool" not in agent.render(conversation, add_generation_prompt=True)
    state = batch.next_input_ids[-1][batch.next_attention_mask[-1].bool()].tolist()
    assert state == expected
    last = trajectory.turns[-1]
    row = last.prompt_ids + last.completion_ids
    assert state[: len(row)] != row  # not the row continued
