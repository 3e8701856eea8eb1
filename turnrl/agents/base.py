"""The Agent protocol: who speaks on the policy side.

An agent turns a conversation into its next assistant ``Turn``. Implementations
must not block the event loop: model work runs in a worker thread, and many
episodes call ``respond`` concurrently (see ``turnrl.agents.engine``).
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
