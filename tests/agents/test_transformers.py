import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from turnrl.agents.transformers import ChatTemplateError, TransformersAgent
from turnrl.training.batch import build_batch
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, user


async def three_turns(agent):
    conversation = [Message(role="system", content="Be brief."), user("What is 5+7?")]
    trajectory = Trajectory(scenario=Scenario(id="s"), initial_messages=list(conversation))
    for reply in ("Wrong. Try again.", "No.", None):
        turn = await agent.respond(conversation)
        trajectory.turns.append(turn)
        conversation.append(turn.message)
        env = [user(reply)] if reply else []
        trajectory.env_messages.append(env)
        trajectory.env_rewards.append(0.0)
        conversation += env
    return trajectory, conversation


@pytest.mark.anyio
async def test_loss_mask_matches_tokenizer_for_three_turns(tiny_agent, scripted_engine):
    scripted_engine(tiny_agent, ["11", "13", "12"])
    trajectory, conversation = await three_turns(tiny_agent)
    batch = build_batch(
        [TrajectoryGroup(scenario=trajectory.scenario, trajectories=[trajectory])],
        pad_token_id=tiny_agent.tokenizer.pad_token_id,
    )
    reference = tiny_agent.tokenizer.apply_chat_template(
        [m.to_chat() for m in conversation], return_dict=True, return_assistant_tokens_mask=True
    )
    assert batch.input_ids[0].tolist() == reference["input_ids"]
    assert batch.loss_mask[0].long().tolist() == reference["assistant_masks"]
    assert batch.num_tokens == 9  # "11<|end|>", "13<|end|>", "12<|end|>"


@pytest.mark.anyio
async def test_sampled_tokens_reused_not_retokenized(tiny_agent):
    turn = await tiny_agent.respond([user("What is 1+1?")])
    # An assistant message whose text would tokenize differently keeps its ids.
    odd = Message(role="assistant", content="2", token_ids=[tiny_agent.tokenizer.unk_token_id])
    ids = tiny_agent.encode([user("What is 1+1?"), odd, user("again")])
    assert ids[: len(turn.prompt_ids)] == turn.prompt_ids
    assert ids[len(turn.prompt_ids)] == tiny_agent.tokenizer.unk_token_id


@pytest.mark.anyio
async def test_logprobs_agree_with_training_forward(tiny_agent, sampled_logprobs):
    from turnrl.agents.engine import SamplingParams

    tiny_agent.sampling = SamplingParams(max_new_tokens=6, temperature=0.7)
    train, behaviour = await sampled_logprobs(tiny_agent, 12)
    assert len(train) > 12
    torch.testing.assert_close(train, behaviour, atol=1e-4, rtol=0)


def test_from_pretrained_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model at"):
        TransformersAgent.from_pretrained(tmp_path / "nope")


def test_tokenizer_without_chat_template(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.chat_template = None
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        TransformersAgent(model, tokenizer)


def test_a_template_that_rewrites_history_gets_its_own_text_as_the_prompt(tiny_agent):
    # A template that only renders the last message drops the sampled turn: the prompt
    # is what the model sees, the template's text, not the sampled ids.
    tiny_agent.tokenizer.chat_template = "{{ messages[-1]['content'] }}"
    sampled = Message(role="assistant", content="7", token_ids=[30, 2])
    ids = tiny_agent.encode([user("What is 3+4?"), sampled, user("again")])
    assert ids == tiny_agent.tokenizer("again", add_special_tokens=False).input_ids


def test_save_pretrained_round_trips_the_agent(tiny_agent, tmp_path):
    from turnrl.agents.engine import SamplingParams

    tiny_agent.sampling = SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9)
    with torch.no_grad():
        next(tiny_agent.model.parameters()).add_(0.5)  # not the weights on disk any more
    tiny_agent.save_pretrained(tmp_path / "agent")
    loaded = TransformersAgent.from_pretrained(tmp_path / "agent")
    assert loaded.sampling == tiny_agent.sampling
    assert loaded.tokenizer.chat_template == tiny_agent.tokenizer.chat_template
    for (name, saved), original in zip(
        loaded.model.state_dict().items(), tiny_agent.model.state_dict().values(), strict=True
    ):
        assert torch.equal(saved, original), name
    # Sampling given to from_pretrained wins over the saved one.
    other = SamplingParams(max_new_tokens=2)
    assert TransformersAgent.from_pretrained(tmp_path / "agent", sampling=other).sampling == other


def test_a_bad_saved_sampling_file_is_named(tiny_agent, tmp_path):
    from turnrl.agents.transformers import ModelLoadError

    tiny_agent.save_pretrained(tmp_path / "agent")
    (tmp_path / "agent" / "sampling.json").write_text('{"max_new_tokens": 0}')
    with pytest.raises(ModelLoadError, match=r"sampling\.json: not the sampling settings"):
        TransformersAgent.from_pretrained(tmp_path / "agent")
