"""GenerationEngine: the Hugging Face implementation of the InferenceEngine protocol.

Concurrent requests are merged into padded ``generate`` calls by a
:class:`~turnrl.coalesce.Coalescer`; requests with different sampling settings
are never mixed in one call. Prompts are left-padded with an attention mask;
transformers derives the position ids from the mask, so a padded row computes
what it would alone. Sampling follows :func:`~turnrl.agents.sampling.sampling_config`
exactly (nothing from a checkpoint's ``generation_config.json``), and the
recorded log-probs are those the training forward pass computes
(:class:`~turnrl.agents.sampling.LogprobRecorder`), so the PPO ratio starts at 1.

Weights. ``weights="shared"`` (the default) samples from the very module the
trainer optimizes: no copy, and :meth:`GenerationEngine.update_weights` only
records the version and drops the KV cache. ``weights="copy"`` deep-copies the
model at construction and samples from the copy, which changes only when
``update_weights`` copies new tensors into it (under ``no_grad``, by name), so
generation can run while the trainer's parameters change. A peft (LoRA) model
is copied with its adapters; sending only the adapters' tensors syncs it.

KV-cache reuse across turns (``reuse_kv_cache=True``, the default) is
described in :mod:`turnrl.agents.prefix_cache`, which holds the store and
the cache layout; the engine decides when to use it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple, get_args

import structlog
import torch
from torch.profiler import record_function
from transformers import LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache

from turnrl.agents.inference import (
    Completion,
    ContextOverflowError,
    EngineStats,
    SamplingParams,
    Weights,
    WeightsMode,
)
from turnrl.agents.prefix_cache import (
    CACHE_KWARG,
    PrefixKVStore,
    keep_prefixes,
    layout_prompts,
    output_cache,
    share_prompts,
    supports_reuse,
    take_prefixes,
    weights_version,
)
from turnrl.agents.sampling import LogprobRecorder, sampling_config
from turnrl.coalesce import Coalescer

__all__ = [
    "Completion",
    "ContextOverflowError",
    "EngineStats",
    "GenerationEngine",
    "SamplingParams",
]

log = structlog.get_logger(__name__)


class _Request(NamedTuple):
    prompt_ids: list[int]
    params: SamplingParams


class GenerationEngine:
    """Batches concurrent generation requests for one causal LM (an :class:`InferenceEngine`).

    Args:
        model: The model to sample from (the trainer's policy).
        pad_token_id: Token used for left padding.
        eos_token_ids: Tokens that end a turn.
        max_batch_size: Most requests per ``generate`` call.
        max_context: Longest prompt + completion the model accepts (defaults
            to the model's ``max_position_embeddings`` when it has one).
        settle_rounds: How many event-loop rounds without a new request the
            dispatcher waits for before running a batch.
        reuse_kv_cache: Keep each request's KV cache and reuse it for a later
            prompt that extends it, and prefill a prompt that several requests
            of a batch repeat once (see :mod:`turnrl.agents.prefix_cache`).
            Turned off, with a ``kv_reuse_unsupported`` log line, for a model
            whose cache cannot be reused.
        kv_cache_max_entries: Most sequences the KV store holds (default: twice
            ``max_batch_size``).
        kv_cache_max_tokens: Most tokens the KV store holds in all (default: no
            limit beyond the entry count). One token costs
            ``2 x layers x kv_heads x head_dim`` numbers of the model's dtype.
        weights: ``"shared"`` samples from ``model`` itself; ``"copy"`` from a
            copy that :meth:`update_weights` syncs (see the module docstring).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        max_batch_size: int = 256,
        max_context: int | None = None,
        settle_rounds: int = 3,
        reuse_kv_cache: bool = True,
        kv_cache_max_entries: int | None = None,
        kv_cache_max_tokens: int | None = None,
        weights: WeightsMode = "shared",
    ) -> None:
        _check_batch_size(max_batch_size)
        _check_mode(weights)
        self.pad_token_id = pad_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.reuse_kv_cache = reuse_kv_cache
        self.kv_cache_max_entries = kv_cache_max_entries
        self.kv_cache_max_tokens = kv_cache_max_tokens
        self.kv_store = PrefixKVStore()
        self.stats = EngineStats()
        self._batcher: Coalescer[_Request, Completion] = Coalescer(
            self._generate,
            key=lambda r: r.params,
            max_batch_size=max_batch_size,
            settle_rounds=settle_rounds,
        )
        self._weights: WeightsMode = weights
        self._source = model  # the trainer's model
        self._model = _own_copy(model) if weights == "copy" else model
        self._version = 0
        self._closed = False

    @property
    def model(self) -> PreTrainedModel:
        """The module ``generate`` runs: the trainer's model, or the engine's copy of it."""
        return self._model

    @property
    def weights(self) -> WeightsMode:
        """``"shared"`` or ``"copy"`` (see the module docstring)."""
        return self._weights

    @property
    def policy_version(self) -> int:
        """The version of the weights new requests are sampled from (0 at construction)."""
        return self._version

    @property
    def max_batch_size(self) -> int:
        """Most requests per ``generate`` call."""
        assert self._batcher.max_batch_size is not None
        return self._batcher.max_batch_size

    @max_batch_size.setter
    def max_batch_size(self, value: int) -> None:
        _check_batch_size(value)
        self._batcher.max_batch_size = value

    def set_model(self, model: PreTrainedModel) -> None:
        """Serve ``model`` from now on (a copy of it in ``"copy"`` mode), between batches.

        For an agent whose model object is replaced, e.g. wrapped with LoRA
        adapters; the policy version is kept.
        """
        self._source = model
        self._model = _own_copy(model) if self._weights == "copy" else model
        self.kv_store.clear()

    def configure(
        self,
        *,
        max_batch_size: int | None = None,
        reuse_kv_cache: bool | None = None,
        weights: WeightsMode | None = None,
    ) -> None:
        """Apply run settings between batches; ``None`` keeps the current value.

        Switching ``weights`` to ``"copy"`` copies the model given at
        construction (or to :meth:`set_model`) as it is now; switching to
        ``"shared"`` drops the copy and samples from that model again.
        """
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size
        if reuse_kv_cache is not None:
            self.reuse_kv_cache = reuse_kv_cache
        if weights is not None and weights != self._weights:
            _check_mode(weights)
            self._weights = weights
            self.set_model(self._source)

    def update_weights(self, weights: Weights, version: int) -> None:
        """Serve policy ``version``; in ``"copy"`` mode, copy ``weights`` into the copy first.

        Call between batches. In ``"shared"`` mode ``weights`` is not read
        (the trainer's parameters are the engine's). Names are those of
        ``model.named_parameters()`` (tied weights under either name) or
        ``model.state_dict()``; a subset is fine (LoRA adapters only).

        Raises:
            KeyError: A name the engine's model does not have.
            ValueError: A tensor whose shape differs, or a version that is not an int.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"version must be an int (the trainer's step), got {version!r}")
        if self._weights == "copy":
            _copy_into(self._model, weights)
        self.kv_store.clear()
        self._version = version

    def release_cache(self) -> None:
        """Drop every stored KV cache, between batches.

        The engine does it by itself when the model's parameters change; call
        it when the episodes are over, to free the memory, or after changing
        weights in a way that bypasses version counters (writing through
        ``param.data``) without :meth:`update_weights`.
        """
        self.kv_store.clear()

    def close(self) -> None:
        """Drop the KV caches and the engine's copy of the weights; no request is served after."""
        self.kv_store.clear()
        self._model = self._source  # the copy, if any, is freed
        self._closed = True

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample a completion for ``prompt_ids``, batched with concurrent callers.

        Raises:
            ContextOverflowError: The prompt is too long for ``max_new_tokens``.
            RuntimeError: The engine is closed.
        """
        if self._closed:
            raise RuntimeError("the engine is closed; build a new agent to generate")
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if self.max_context and len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={params.max_new_tokens} "
                f"exceeds the model's context of {self.max_context} tokens"
            )
        self.stats.requests += 1
        return await self._batcher(_Request(list(prompt_ids), params))

    @torch.no_grad()
    def _generate(self, batch: list[_Request]) -> list[Completion]:
        params = batch[0].params
        prompts = [r.prompt_ids for r in batch]
        reuse = self.reuse_kv_cache  # read once: it may be switched while the batch runs
        greedy = params.temperature == 0
        config = sampling_config(
            params,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=reuse,  # to get the cache back
        )
        recorder = LogprobRecorder(1.0 if greedy else params.temperature)
        was_training = self.model.training
        self.model.eval()
        started = time.perf_counter()
        try:
            cached, past, shared_prefill = (
                self._cached_prefixes(prompts) if reuse else ([0] * len(batch), None, 0)
            )
            input_ids, attention_mask = layout_prompts(prompts, cached, self.pad_token_id)
            width = input_ids.shape[1]  # C + N
            with record_function("turnrl/generate"):
                out = self.model.generate(
                    input_ids=input_ids.to(self.model.device),
                    attention_mask=attention_mask.to(self.model.device),
                    generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                    **({CACHE_KWARG: past} if past is not None else {}),
                )
        finally:
            self.model.train(was_training)
            self.stats.generate_s += time.perf_counter() - started
        sequences = out.sequences if reuse else out  # (B, C + N + S)
        new_tokens = sequences[:, width:]  # (B, S)
        logprobs = recorder.finish(new_tokens).cpu()  # (B, S)
        new_tokens = new_tokens.cpu()

        eos = torch.isin(new_tokens, torch.tensor(self.eos_token_ids))  # (B, S)
        completions = []
        for row in range(len(batch)):
            hits = eos[row].nonzero()
            if len(hits):
                end, reason = int(hits[0]) + 1, "stop"
            else:
                end, reason = new_tokens.shape[1], "length"
            completions.append(
                Completion(
                    token_ids=new_tokens[row, :end].tolist(),
                    logprobs=logprobs[row, :end].tolist(),
                    finish_reason=reason,
                    policy_version=self._version,
                )
            )
        if reuse:
            self._keep_prefixes(prompts, completions, attention_mask, output_cache(out))
        self.stats.generate_calls += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.prefill_tokens.append(len(batch) * (width - max(cached)) + shared_prefill)
        self.stats.reused_tokens.append(sum(cached))
        self.stats.generated_tokens += sum(len(c.token_ids) for c in completions)
        return completions

    def _cached_prefixes(
        self, prompts: list[list[int]]
    ) -> tuple[list[int], DynamicCache | None, int]:
        """Cached tokens per row, the batched cache (see :func:`take_prefixes`), and the
        prompt tokens prefilled for prompts several rows share (see :func:`share_prompts`)."""
        version = weights_version(self.model)
        if version != self.kv_store.weights_version:
            self.kv_store.clear()
            self.kv_store.weights_version = version
        shared, prefilled = share_prompts(self.model, self.kv_store, prompts, self.pad_token_id)
        cached, past = take_prefixes(self.kv_store, prompts)
        for key in shared:  # not consumed: take_prefixes chose not to use it
            if key in self.kv_store.entries:
                self.kv_store.pop(key)
        return cached, past, prefilled

    def _keep_prefixes(
        self,
        prompts: list[list[int]],
        completions: list[Completion],
        attention_mask: torch.Tensor,
        cache: Cache | None,
    ) -> None:
        """Store each row's real tokens' keys and values, or turn reuse off if the model can't."""
        if not supports_reuse(self.model, cache):
            log.warning("kv_reuse_unsupported", cache=type(cache).__name__)
            self.reuse_kv_cache = False
            self.kv_store.clear()
            return
        assert isinstance(cache, DynamicCache)
        keep_prefixes(
            self.kv_store,
            prompts,
            [c.token_ids for c in completions],
            attention_mask,
            cache,
            max_entries=self.kv_cache_max_entries or 2 * self.max_batch_size,
            max_tokens=self.kv_cache_max_tokens,
        )


def _own_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` for the engine to sample from (it runs under ``no_grad``).

    ``requires_grad`` is left as it is: turning it off changes the last bits of
    the log-probs ``generate`` computes, and the copy must sample exactly what
    the trainer's model would.
    """
    return copy.deepcopy(model).eval()


@torch.no_grad()
def _copy_into(model: torch.nn.Module, weights: Weights) -> None:
    """Copy each named tensor of ``weights`` into ``model``'s parameter or buffer of that name."""
    own = dict(model.named_parameters(remove_duplicate=False))
    own |= dict(model.named_buffers(remove_duplicate=False))
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    for name, tensor in pairs:
        target = own.get(name)
        if target is None:
            raise KeyError(
                f"update_weights: {name!r} is not a parameter or buffer of the engine's "
                f"{type(model).__name__}; name tensors as the trainer's model.named_parameters() "
                "does, and wrap the agent's model (agent.model = ...) before syncing"
            )
        if target.shape != tensor.shape:
            raise ValueError(
                f"update_weights: {name!r} has shape {tuple(tensor.shape)}, the engine's "
                f"has {tuple(target.shape)}"
            )
        target.copy_(tensor)


def _check_batch_size(value: int) -> None:
    if value < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {value}")


def _check_mode(weights: str) -> None:
    if weights not in get_args(WeightsMode):
        raise ValueError(f"weights must be 'shared' or 'copy', got {weights!r}")
