"""GenerationEngine: merge concurrent generation requests into batched ``generate`` calls.

Many episodes run concurrently on one event loop, and each asks for one turn at
a time. Run one by one, a small model spends most of its time on per-call
overhead; batched, the same work costs little more than one call. The engine
therefore queues requests and runs them together:

- There is no background task. Whichever waiting request finds the engine
  idle becomes the dispatcher: it first lets the event loop run until no new
  request arrives (so episodes that just got their previous turn back can
  step their environments and queue the next one), then runs one padded
  ``generate`` in a worker thread, hands out the results and wakes everyone.
  Only one batch runs at a time because there is one model.
- Requests with different sampling settings are never mixed in one call.
- Prompts are left-padded with an attention mask; transformers derives the
  position ids from the mask, so a padded row computes what it would alone.
- Tokens are sampled from ``softmax(logits / temperature)`` truncated by
  ``top_p``, nothing else: the engine passes a complete generation config
  (:func:`sampling_config`), so what a checkpoint's ``generation_config.json``
  holds (a repetition penalty, top-k, min-p, suppressed or forced tokens,
  beams...) is not applied. Set sampling through :class:`SamplingParams`.
- Log-probabilities are those of the sampled tokens under the model's
  temperature-scaled distribution, without top-p or top-k truncation: the
  same quantity the training forward pass computes (see
  ``turnrl.training.logprobs``), so the PPO ratio starts at 1. They are
  gathered step by step by a logits processor that keeps one step's
  log-softmax at a time, instead of asking ``generate`` for every step's
  logits (``output_logits``), which for a 150k-token vocabulary would hold
  ``batch x new tokens x 150k`` floats.

Why padded ``generate`` calls and not transformers' continuous batching
(``generate_batch``): on the same 32 first-turn prompts, with the same model and
sampling, continuous batching generated 0.05x the tokens per second of one padded
``generate`` on this CPU, 0.11x on 128 (``benchmarks/continuous_batching.py``; its scheduler, worker
thread and warm-up cost more than the padding it saves at these sizes). Prompts are
not split into length buckets either: each bucket would decode separately, and with
the KV cache reused a later turn feeds only its new tokens (about 22 per row in the
demo task, nearly the same for every row), so there is little padding to save.

KV-cache reuse across turns (``reuse_kv_cache=True``, the default) is
described in :mod:`turnrl.agents.prefix_cache`, which holds the store and
the cache layout; the engine decides when to use it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import anyio
import structlog
import torch
from torch.profiler import record_function
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache

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
from turnrl.types import FinishReason

log = structlog.get_logger(__name__)


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
    """What one request gets back."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    result: Completion | None = None
    error: BaseException | None = None


@dataclass
class EngineStats:
    """Counters, for tests and benchmarks."""

    requests: int = 0
    generate_calls: int = 0
    generated_tokens: int = 0
    generate_s: float = 0.0  # wall time of the batches: cache preparation and model.generate
    batch_sizes: list[int] = field(default_factory=list)
    # Per generate call: prompt tokens the model computed, pads included (rows x columns fed),
    # and prompt tokens taken from the KV cache instead (reuse_kv_cache).
    prefill_tokens: list[int] = field(default_factory=list)
    reused_tokens: list[int] = field(default_factory=list)


class ContextOverflowError(ValueError):
    """A prompt plus ``max_new_tokens`` does not fit the model's context."""


class GenerationEngine:
    """Batches concurrent generation requests for one causal LM.

    Args:
        model: The model to sample from.
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
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None)
        self.settle_rounds = settle_rounds
        self.reuse_kv_cache = reuse_kv_cache
        self.kv_cache_max_entries = kv_cache_max_entries
        self.kv_cache_max_tokens = kv_cache_max_tokens
        self.kv_store = PrefixKVStore()
        self.stats = EngineStats()
        self._pending: list[_Request] = []
        self._busy = False
        self._wakeup = anyio.Event()

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample a completion for ``prompt_ids``, batched with concurrent callers.

        Raises:
            ContextOverflowError: The prompt is too long for ``max_new_tokens``.
        """
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        if self.max_context and len(prompt_ids) + params.max_new_tokens > self.max_context:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={params.max_new_tokens} "
                f"exceeds the model's context of {self.max_context} tokens"
            )
        request = _Request(list(prompt_ids), params)
        self._pending.append(request)
        self.stats.requests += 1
        while request.result is None and request.error is None:
            if self._busy:
                await self._wakeup.wait()
                continue
            self._busy = True
            try:
                await self._settle()
                batch = self._take_batch()
                await anyio.to_thread.run_sync(self._run_batch, batch)
            finally:
                self._busy = False
                wakeup, self._wakeup = self._wakeup, anyio.Event()
                wakeup.set()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def _settle(self) -> None:
        """Let other episodes queue their requests before a batch is cut."""
        quiet, seen = 0, -1
        for _ in range(100 * self.settle_rounds):
            if len(self._pending) >= self.max_batch_size:
                return
            await anyio.lowlevel.checkpoint()
            quiet = quiet + 1 if len(self._pending) == seen else 0
            seen = len(self._pending)
            if quiet >= self.settle_rounds:
                return

    def _take_batch(self) -> list[_Request]:
        params = self._pending[0].params
        batch = [r for r in self._pending if r.params == params][: self.max_batch_size]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            completions = self._generate(batch)
        except BaseException as e:  # every waiter must hear about it
            for request in batch:
                request.error = e
            return
        for request, completion in zip(batch, completions, strict=True):
            request.result = completion

    def clear_kv_cache(self) -> None:
        """Drop every stored KV cache, between batches.

        The engine does it by itself when the model's parameters change; call
        it after changing weights in a way that bypasses version counters
        (writing through ``param.data``).
        """
        self.kv_store.clear()

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
        recorder = _LogprobRecorder(1.0 if greedy else params.temperature)
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


class _SealedGenerationConfig(GenerationConfig):
    """A GenerationConfig that ``generate`` cannot fill in from ``model.generation_config``.

    ``generate`` completes a passed config with ``update(defaults_only=True)``:
    every field left ``None`` is taken from the model's saved generation config
    (a ``repetition_penalty``, ``top_k``, ``min_p``, ``suppress_tokens``,
    ``num_beams``... shipped with the checkpoint), then from transformers' global
    defaults. Those calls are ignored here, so the config holds exactly the
    values it was built with (see :func:`sampling_config`). Explicit updates
    (``defaults_only=False``) still apply. This leans on how ``generate`` merges;
    ``tests/reliability/test_sampling_distribution.py`` fails if that changes.
    """

    def update(
        self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        if defaults_only:
            return kwargs
        return super().update(
            defaults_only=False, allow_custom_entries=allow_custom_entries, **kwargs
        )


def sampling_config(
    params: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    return_dict_in_generate: bool = False,
) -> GenerationConfig:
    """The complete generation config for ``params``, whatever the model's own holds.

    Every field is set: transformers' global defaults (no penalty, no forced
    or suppressed token, one beam, one sequence), then ``params``. Sampling
    is then from ``softmax(logits / temperature)`` truncated by ``top_p`` only
    (argmax when ``temperature`` is 0), the distribution the engine records
    and training recomputes.

    Args:
        params: Temperature, top-p and length of the turn.
        eos_token_ids: Tokens that end a turn.
        pad_token_id: Token used for padding.
        return_dict_in_generate: Ask ``generate`` for its output object (and cache).
    """
    greedy = params.temperature == 0
    fields = GenerationConfig._get_default_generation_params()
    fields.update(
        max_new_tokens=params.max_new_tokens,
        do_sample=not greedy,
        eos_token_id=list(eos_token_ids),
        pad_token_id=pad_token_id,
        return_dict_in_generate=return_dict_in_generate,
    )
    if not greedy:
        # top_k=0: the global default is a top-k of 50. Greedy decoding builds no warpers;
        # leaving their defaults then avoids transformers' "flags not valid" warning.
        fields.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
    fields.pop("max_length")  # max_new_tokens sets it from the prompt length
    return _SealedGenerationConfig(**fields)


class _LogprobRecorder(LogitsProcessor):
    """Records the log-prob of each sampled token, keeping one step's distribution.

    ``generate`` runs user processors before its temperature and top-p
    warpers, so ``scores`` here are the model's raw logits. At step ``t`` the
    token sampled at step ``t - 1`` is the last column of ``input_ids``; its
    log-prob is gathered from the stored distribution of step ``t - 1``, and
    step ``t``'s distribution replaces it. :meth:`finish` gathers the last
    step's token.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.picked: list[torch.Tensor] = []  # (B,) per finished step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.picked.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs of ``new_tokens`` (B, S), the tokens generated after the prompt."""
        if self.previous is not None and len(self.picked) < new_tokens.shape[1]:
            last = new_tokens[:, len(self.picked) : len(self.picked) + 1]
            self.picked.append(self.previous.gather(-1, last.to(self.previous.device)).squeeze(-1))
        if not self.picked:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.picked, dim=1)[:, : new_tokens.shape[1]]  # (B, S)
