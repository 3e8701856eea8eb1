"""The Agent and TrainableAgent protocols: who speaks on the policy side.

An agent turns a conversation into its next assistant ``Turn``. Implementations
must not block the event loop: model work runs in a worker thread, and many
episodes call ``respond`` concurrently (see ``turnrl.agents.engine``).

Tools are optional: an agent that can render tool schemas into its prompt
takes them as a keyword, ``respond(conversation, tools=[schema, ...])``. The
rollout passes ``tools=`` only when the environment offers tools and the
agent's ``respond`` accepts the keyword, so agents written without tools keep
working (they see the tools only if the environment describes them in a
message).

A :class:`TrainableAgent` is an agent the trainer can update: it exposes its
model, tokenizer and :class:`~turnrl.agents.inference.InferenceEngine`, and
encodes a conversation into the token ids it would be prompted with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from turnrl.agents.inference import InferenceEngine, SamplingParams
from turnrl.types import Message, Turn


@runtime_checkable
class Agent(Protocol):
    """Anything that can answer a conversation with an assistant turn."""

    async def respond(self, conversation: Sequence[Message]) -> Turn:
        """Sample the next assistant turn for ``conversation``.

        Args:
            conversation: The messages so far, oldest first. Assistant
                messages that carry ``token_ids`` are re-used token for token.

        Returns:
            The sampled turn, with its exact prompt and completion token ids.
        """
        ...


@runtime_checkable
class TrainableAgent(Protocol):
    """An agent whose policy a trainer can update (e.g. ``TransformersAgent``).

    Attributes:
        model: The policy module the optimizer updates. Assigning a new module
            (wrapping it with LoRA adapters) must also reach the engine.
        tokenizer: Its tokenizer (``pad_token_id`` set, a chat template).
        engine: Samples the agent's turns; the trainer syncs it after each
            update through :meth:`InferenceEngine.update_weights`.
    """

    model: torch.nn.Module
    tokenizer: Any
    engine: InferenceEngine

    def encode(
        self,
        conversation: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of ``conversation``, re-using sampled assistant tokens as they are."""
        ...

    async def respond(
        self,
        conversation: Sequence[Message],
        *,
        sampling: SamplingParams | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> Turn:
        """Sample the next assistant turn, recording its ``policy_version``."""
        ...
