"""The InferenceEngine protocol: what every generation backend provides.

An engine samples completions of token-id prompts and serves one *policy
version* at a time. The trainer talks to it through this protocol only, so a
backend that batches requests itself (the Hugging Face
:class:`~turnrl.agents.engine.GenerationEngine` today; a vLLM ``AsyncLLM``
has the same shape) can replace another without touching the training loop.

Policy version. An integer naming the weights an engine samples from. It
starts at 0 (the weights the engine was built with) and changes only through
:meth:`InferenceEngine.update_weights`; the trainer passes its step count, so
a completion of version ``v`` was sampled from the weights after ``v`` training
steps (each may take several optimizer steps). Every :class:`Completion`
carries the version it was sampled under, and the agent copies it onto the
:class:`~turnrl.types.Turn`.

Updating weights. ``update_weights(weights, version)`` may be called between
batches, never while a request is in flight: the caller waits until every
``generate`` it started has returned (the trainer syncs after the rollout and
the update are over). A request started after it returns is sampled from the
new weights and carries the new version. An update drops every stored KV
cache (a cache computed by the old weights would mix two policies in one
completion); the prefix cache then fills again from the next batch.

Weights are given as a state dict or an iterable of ``(name, tensor)`` pairs,
named as the trainer's model names them (``model.named_parameters()``). A
subset is allowed: a LoRA trainer sends its adapters only. An engine that
shares the trainer's parameters ignores ``weights`` (they are its own
already) and does not iterate them, so a lazy iterable costs nothing there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Literal, Protocol, runtime_checkable

import torch

from turnrl.types import FinishReason

Weights = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
"""New policy weights: a state dict, or ``(name, tensor)`` pairs."""

WeightsMode = Literal["shared", "copy"]
"""Where an engine's weights live: the trainer's own parameters, or a copy it syncs."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn.

    Attributes:
        max_new_tokens: Most tokens to generate for one turn.
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling threshold (1.0 disables it).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        # A bool is an int to Python; max_new_tokens=True would silently mean 1.
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, Integral):
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    """What one request gets back.

    Attributes:
        token_ids: The sampled tokens, with the final eos when one ended the turn.
        logprobs: Each sampled token's log-prob under the temperature-scaled
            distribution (no top-p truncation).
        finish_reason: ``stop`` (an eos token) or ``length`` (max new tokens).
        policy_version: The version of the weights it was sampled from (None
            when no engine sampled it, e.g. a scripted test reply).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    policy_version: int | None = None


@dataclass
class EngineStats:
    """Counters, for metrics, tests and benchmarks."""

    requests: int = 0
    generate_calls: int = 0
    generated_tokens: int = 0
    generate_s: float = 0.0  # wall time of the batches: cache preparation and generation
    batch_sizes: list[int] = field(default_factory=list)
    # Per generate call: prompt tokens the model computed, pads included (rows x columns fed),
    # and prompt tokens taken from the KV cache instead.
    prefill_tokens: list[int] = field(default_factory=list)
    reused_tokens: list[int] = field(default_factory=list)


class ContextOverflowError(ValueError):
    """A prompt plus ``max_new_tokens`` does not fit the model's context."""


@runtime_checkable
class InferenceEngine(Protocol):
    """A generation backend: batched sampling from one policy version at a time.

    See the module docstring for what a version is and when weights may change.
    """

    @property
    def policy_version(self) -> int:
        """The version of the weights new requests are sampled from."""
        ...

    @property
    def max_context(self) -> int | None:
        """Longest prompt + completion the model accepts (None: unknown)."""
        ...

    @property
    def stats(self) -> EngineStats:
        """Counters since the engine was built."""
        ...

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample a completion of ``prompt_ids``; concurrent callers are batched together.

        Raises:
            ContextOverflowError: The prompt is too long for ``params.max_new_tokens``.
        """
        ...

    def update_weights(self, weights: Weights, version: int) -> None:
        """Serve ``weights`` as policy ``version`` from the next batch on.

        Call it between batches only (no request in flight). Drops every
        stored KV cache.

        Raises:
            KeyError: A name the engine's model does not have.
            ValueError: A tensor whose shape differs from the engine's.
        """
        ...

    def configure(
        self,
        *,
        max_batch_size: int | None = None,
        reuse_kv_cache: bool | None = None,
        weights: WeightsMode | None = None,
    ) -> None:
        """Apply run settings (``None`` keeps the current value), between batches.

        The trainer receives an agent that is already built, and a run's
        ``config.generation`` is the source of truth for these settings, so
        they are applied through this one method rather than by rebuilding
        the engine or writing its attributes.

        Args:
            max_batch_size: Most requests in one batch.
            reuse_kv_cache: Keep KV caches across turns (a backend without a
                prefix cache ignores it).
            weights: ``"shared"`` (sample from the trainer's own parameters)
                or ``"copy"`` (hold a copy that :meth:`update_weights` syncs).

        Raises:
            ValueError: A value the backend cannot honour (a backend that
                always holds its own weights refuses ``"shared"``).
        """
        ...

    def release_cache(self) -> None:
        """Drop every stored KV cache (between batches), to free memory."""
        ...

    def close(self) -> None:
        """Free the engine's memory; it serves no request afterwards."""
        ...
