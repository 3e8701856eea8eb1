"""The Agent protocol: who speaks on the policy side.

An agent turns a conversation into its next assistant ``Turn``. Implementations
must not block the event loop: model work runs in a worker thread, and many
episodes call ``respond`` concurrently (see ``turnrl.agents.engine``).

Tools are optional: an agent that can render tool schemas into its prompt
takes them as a keyword, ``respond(conversation, tools=[schema, ...])``. The
rollout passes ``tools=`` only when the environment offers tools and the
agent's ``respond`` accepts the keyword, so agents written without tools keep
working (they see the tools only if the environment describes them in a
message).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

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
