"""A model as the simulated user: persona per scenario, frozen weights, masked out of the loss."""

from collections.abc import Sequence

import pytest
import torch

from turnrl.agents.engine import SamplingParams
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments import AgentUser, ConversationEnvironment
from turnrl.environments.conversation import freeze, frozen_copy, is_frozen
from turnrl.rewards import reward_function
from turnrl.training.batch import build_batch
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer
from turnrl.types import Message, Scenario, Turn, system, user

SCENARIOS = [
    Scenario(
        id="refund",
        prompt=[system("Help."), user("Broken blender.")],
        data={"persona": "You want a refund."},
    ),
    Scenario(
        id="shipping",
        prompt=[system("Help."), user("Late parcel.")],
        data={"persona": "Your parcel is late."},
    ),
    Scenario(id="plain", prompt=[system("Help."), user("Hello.")]),
]


class Recording:
    """Wraps the user's agent and keeps the decoded prompt of every reply."""

    def __init__(self, agent: TransformersAgent) -> None:
        self.agent, self.model = agent, agent.model
        self.prompts: list[str] = []

    async def respond(self, conversation: Sequence[Message]) -> Turn:
        turn = await self.agent.respond(conversation)
        self.prompts.append(self.agent.tokenizer.decode(turn.prompt_ids))
        return turn


def tiny_config(tmp_path, **rollout) -> TrainingConfig:
    return TrainingConfig.from_profile(
        "balanced",
        optim={"lr": 1e-3, "warmup_steps": 0},
        algorithm={"beta": 0.0},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": 2, "num_generations": 2, **rollout},
        run={"output_dir": str(tmp_path), "max_steps": 1, "save_final": False, "plot": False},
    )


@pytest.fixture
def user_agent(tiny_agent):
    return frozen_copy(tiny_agent, sampling=SamplingParams(max_new_tokens=5))


@pytest.mark.anyio
async def test_each_scenarios_persona_reaches_the_user_models_prompt(user_agent):
    recording = Recording(user_agent)
    env = ConversationEnvironment(SCENARIOS, AgentUser(recording, persona="Default persona."))
    for scenario in SCENARIOS:
        await env.reset(options={"scenario": scenario})
        (reply,) = (
            await env.step(Message(role="assistant", content="How can I help?"))
        ).observation
        assert reply.role == "user" and reply.token_ids is None
    # The user model's own view: its persona as system prompt, roles flipped.
    assert recording.prompts == [
        "<|system|>You want a refund.<|end|><|assistant|>Broken blender.<|end|>"
        "<|user|>How can I help?<|end|><|assistant|>",
        "<|system|>Your parcel is late.<|end|><|assistant|>Late parcel.<|end|>"
        "<|user|>How can I help?<|end|><|assistant|>",
        "<|system|>Default persona.<|end|><|assistant|>Hello.<|end|>"
        "<|user|>How can I help?<|end|><|assistant|>",
    ]


def test_a_trainable_user_model_is_refused_unless_self_play(tiny_agent):
    with pytest.raises(ValueError, match=r"frozen_copy\(agent\)"):
        AgentUser(tiny_agent)
    with pytest.raises(ValueError, match="trainable"):
        ConversationEnvironment(SCENARIOS, tiny_agent)  # the raw form is checked too
    assert AgentUser(tiny_agent, frozen=False).agent is tiny_agent  # self-play, on purpose


def test_frozen_copy_is_separate_and_frozen_and_freeze_is_in_place(tiny_agent, tiny_path):
    copy = frozen_copy(tiny_agent)
    assert is_frozen(copy) and not is_frozen(tiny_agent) and not copy.model.training
    assert copy.engine is not tiny_agent.engine and copy.tokenizer is tiny_agent.tokenizer
    policy, frozen = dict(tiny_agent.model.named_parameters()), dict(copy.model.named_parameters())
    assert all(frozen[k].data_ptr() != p.data_ptr() for k, p in policy.items())
    torch.testing.assert_close(frozen, {k: p.detach() for k, p in policy.items()})
    other = TransformersAgent.from_pretrained(tiny_path)
    assert freeze(other) is other and is_frozen(other)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.anyio
async def test_training_step_updates_the_policy_but_never_the_frozen_user(
    tiny_agent, user_agent, tmp_path
):
    env = ConversationEnvironment(SCENARIOS[:2], AgentUser(user_agent), max_turns=2)
    # Any reward that differs within a group gives the step something to learn.
    arbitrary = reward_function(lambda t: sum(map(ord, t.final_response)) % 7, name="arbitrary")
    trainer = Trainer(tiny_agent, env, arbitrary, tiny_config(tmp_path))
    policy_before, user_before = snapshot(tiny_agent.model), snapshot(user_agent.model)
    metrics = await trainer.step()
    assert metrics["rollout/failed"] == 0 and metrics["rollout/frac_zero_std"] < 1
    assert user_agent.engine.stats.requests > 0  # the user model did reply
    assert any(
        not torch.equal(policy_before[k], v) for k, v in tiny_agent.model.state_dict().items()
    )
    torch.testing.assert_close(user_agent.model.state_dict(), user_before, rtol=0, atol=0)
    assert all(p.grad is None and not p.requires_grad for p in user_agent.model.parameters())
    optimized = {id(p) for group in trainer.optim.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in user_agent.model.parameters()}


@pytest.mark.anyio
async def test_the_user_models_messages_are_masked_out_of_the_loss(
    tiny_agent, user_agent, tmp_path
):
    env = ConversationEnvironment(SCENARIOS, AgentUser(user_agent), max_turns=2)
    trainer = Trainer(tiny_agent, env, None, tiny_config(tmp_path, scenarios_per_step=3))
    groups = await trainer.collect_groups()
    batch = build_batch(groups, pad_token_id=tiny_agent.tokenizer.pad_token_id)
    trajectories = [t for g in groups for t in g]
    assert all(len(t.turns) == 2 and not t.failed for t in trajectories)
    for i, t in enumerate(trajectories):
        (reply,) = t.env_messages[0]  # the user model's answer to the first turn
        assert reply.role == "user" and reply.token_ids is None
        expected = torch.zeros(batch.loss_mask.shape[1])  # 1 exactly on the sampled tokens
        for turn in t.turns:
            start = len(turn.prompt_ids)
            expected[start : start + len(turn.completion_ids)] = 1.0
        torch.testing.assert_close(batch.loss_mask[i], expected)
        # The reply sits in the second turn's prompt, between the first turn and the second.
        first, second = t.turns
        first_end = len(first.prompt_ids) + len(first.completion_ids)
        between = batch.input_ids[i, first_end : len(second.prompt_ids)]
        closed = "<|end|>" if first.finish_reason == "length" else ""  # no sampled eos
        text = f"{closed}<|user|>{reply.content}<|end|><|assistant|>"
        assert tiny_agent.tokenizer.decode(between) == text
        assert batch.loss_mask[i, first_end : len(second.prompt_ids)].sum() == 0
