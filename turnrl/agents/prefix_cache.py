"""Reusing the KV cache of earlier turns (``GenerationEngine(reuse_kv_cache=True)``).

On by default; ``reuse_kv_cache=False`` turns it off. In a multi-turn episode
each prompt is the previous prompt + the sampled completion + the environment's
reply, token for token, so without reuse every turn prefills the whole
conversation again. With reuse, after each batch the engine keeps, per request,
the keys and values of its real tokens (prompt + completion, without pad
columns; the last sampled token was never fed to the model, so it has none),
keyed by that token sequence. When a batch is
cut, each request looks up the longest stored sequence that is a prefix of its
prompt, and the batch runs as one ``generate`` over a batched cache:

- Row layout ``[pad][c_i cached tokens] | [pad][n_i new tokens]``: the cached
  parts are left-padded to the longest one (C columns, passed as the
  cache), the uncached parts to the longest one (N columns, the
  only ones ``generate`` feeds). The attention mask is 0 on every pad, also the
  ones in the middle, and transformers derives position ids from the mask's
  cumulative sum, so each row still computes what it would alone.
- A row uses its cached prefix only if its prompt is longer than N, the widest
  uncached part in the batch: otherwise the cache would not shorten the
  prefill. When no row uses one, the batch runs exactly as without reuse.
- Rows that repeat a prompt nothing stored covers (the G samples of a GRPO
  group on their first turn) share one prefill: before the batch, each such
  prompt minus its last token runs once, in one forward over the distinct
  prompts, and is stored like any entry (:func:`share_prompts`), so the G rows
  then feed one token each. This is vLLM's automatic prefix caching, limited
  to whole repeated prompts.
- An entry is dropped once a request extends it (the request's own entry,
  longer, supersedes it); the store holds at most ``kv_cache_max_entries``
  entries (and ``kv_cache_max_tokens`` tokens, if set), evicting the least
  recently stored. All entries are dropped when the model's parameters change
  (an optimizer step or a new model bumps the tensors' version counters), as
  their keys and values belong to the old weights. The Trainer also empties
  the store after each rollout: the episodes are over, and during the update
  the entries would only hold memory.

Where reuse departs from a plain ``generate`` on the full prompt: the cached
keys and values were computed in an earlier call, on a differently padded
batch, so the logits differ by float rounding (about 1e-6 in fp32), the same
order as between two paddings; the batched cache is C + N columns wide, which
can exceed the longest prompt, so decode steps attend over more (masked)
columns. Reuse needs a model whose ``generate`` returns a plain
``DynamicCache`` (full attention in every layer, e.g. Llama or Qwen2 without
sliding windows) and whose forward takes ``position_ids``; for any other model
the engine logs ``kv_reuse_unsupported`` and turns reuse off.
"""

from __future__ import annotations

import inspect
from array import array
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)
"""The name of the KV-cache argument of ``generate`` and ``forward`` (``cache`` from
transformers 5.24 on, ``past_key_values`` before)."""

KVLayers = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values of one sequence, (heads, T, head_dim) each, one pair per layer."""


def layout_prompts(
    prompts: Sequence[Sequence[int]], cached: Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask for rows whose first ``cached[i]`` tokens are in a KV cache.

    Row ``i`` is ``[pad][prompt[:c_i]] [pad][prompt[c_i:]]``: the cached parts
    right-aligned in the first ``C = max(cached)`` columns, the rest right-aligned
    in the last ``N = max(len(prompt) - c_i)`` columns. The mask is 0 on every
    pad. With nothing cached this is plain left padding.

    Returns:
        input_ids and attention_mask, both (B, C + N).
    """
    width = max(cached)
    new_width = max(len(p) - c for p, c in zip(prompts, cached, strict=True))
    input_ids = torch.full((len(prompts), width + new_width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (prompt, c) in enumerate(zip(prompts, cached, strict=True)):
        input_ids[row, width - c : width] = torch.tensor(prompt[:c], dtype=torch.long)
        attention_mask[row, width - c : width] = 1
        input_ids[row, width + new_width - (len(prompt) - c) :] = torch.tensor(prompt[c:])
        attention_mask[row, width + new_width - (len(prompt) - c) :] = 1
    return input_ids, attention_mask


def take_prefixes(
    store: PrefixKVStore, prompts: list[list[int]]
) -> tuple[list[int], DynamicCache | None]:
    """Take each prompt's longest stored prefix from ``store``; batch the ones worth using.

    Every matched entry is removed from the store, used or not.

    Returns:
        The number of cached tokens per row (0: none) and the batched cache,
        (B, heads, C, head_dim) per layer, left-padded with zeros (None when no
        row uses a prefix).
    """
    matches = [store.longest_prefix(p) for p in prompts]
    matched = {m[0] for m in matches if m}  # rows may share one
    entries = {key: store.pop(key) for key in matched}  # consumed
    # At least one token per row must be fed, for its next-token logits.
    cached = [min(m[1], len(p) - 1) if m else 0 for p, m in zip(prompts, matches, strict=True)]
    new_width = max(len(p) - c for p, c in zip(prompts, cached, strict=True))  # N
    # A prompt no longer than N costs N columns with or without its cache.
    cached = [c if len(p) > new_width else 0 for p, c in zip(prompts, cached, strict=True)]
    if not any(cached):
        return cached, None
    width = max(cached)  # C
    first = next(iter(entries.values()))
    layers = []
    for layer, (like, _) in enumerate(first):
        heads, _, head_dim = like.shape
        keys = like.new_zeros((len(prompts), heads, width, head_dim))  # (B, H, C, D)
        values = torch.zeros_like(keys)
        for row, (match, c) in enumerate(zip(matches, cached, strict=True)):
            if c:
                k, v = entries[match[0]][layer]
                keys[row, :, width - c :] = k[:, :c]
                values[row, :, width - c :] = v[:, :c]
        layers.append((keys, values))
    return cached, DynamicCache(layers)


def keep_prefixes(
    store: PrefixKVStore,
    prompts: list[list[int]],
    completions: list[list[int]],
    attention_mask: torch.Tensor,
    cache: DynamicCache,
    *,
    max_entries: int,
    max_tokens: int | None,
) -> None:
    """Store each row's keys and values of its real tokens in ``store``, keyed by those tokens.

    Args:
        completions: The sampled token ids per row.
        attention_mask: (B, W), the mask of the prompt columns fed to ``generate``.
        cache: ``generate``'s cache: (B, H, W + S - 1, D) per layer for S
            sampled tokens (the last one was never fed).
    """
    width = attention_mask.shape[1]
    fed_steps = cache.get_seq_length() - width  # S - 1
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        fed = min(len(completion), fed_steps)
        columns = torch.cat(
            [attention_mask[row].nonzero().squeeze(-1), torch.arange(width, width + fed)]
        ).to(cache.layers[0].keys.device)  # (T,)
        layers = [(x.keys[row][:, columns], x.values[row][:, columns]) for x in cache.layers]
        store.put(prompt + completion[:fed], layers, max_entries=max_entries, max_tokens=max_tokens)


@torch.no_grad()
def share_prompts(
    model: torch.nn.Module, store: PrefixKVStore, prompts: list[list[int]], pad_token_id: int
) -> tuple[list[bytes], int]:
    """Prefill once each prompt that several rows repeat and nothing in ``store`` covers.

    Each such prompt minus its last token (which the batch must still feed, for
    its logits) runs once, in one left-padded forward over the distinct ones,
    and its keys and values are stored, so :func:`take_prefixes` gives every
    row that repeats it a cached prefix. Skipped when the batch's widest
    uncached part (another row's) is at least as long as a repeated prompt,
    since ``take_prefixes`` would then not use the cache.

    Returns:
        The keys stored (the caller removes those ``take_prefixes`` did not
        consume) and the number of prompt tokens the forward computed, pads
        included.
    """
    matches = [store.longest_prefix(p) for p in prompts]
    counts = Counter(tuple(p[:-1]) for p, m in zip(prompts, matches, strict=True) if not m)
    repeated = {k for k, n in counts.items() if n > 1 and k}
    # Widest part the batch will feed for rows that don't repeat a prompt.
    rest = max(
        (
            len(p) - (min(m[1], len(p) - 1) if m else 0)
            for p, m in zip(prompts, matches, strict=True)
            if m or tuple(p[:-1]) not in repeated
        ),
        default=1,
    )
    shared = [list(k) for k in repeated if len(k) + 1 > rest]
    if not shared:
        return [], 0
    input_ids, attention_mask = layout_prompts(shared, [0] * len(shared), pad_token_id)
    cache = prefill(model, input_ids, attention_mask)
    if cache is None:
        return [], input_ids.numel()
    no_completions: list[list[int]] = [[] for _ in shared]
    bound = len(store) + len(shared)  # evict nothing: these are consumed right away
    keep_prefixes(
        store, shared, no_completions, attention_mask, cache, max_entries=bound, max_tokens=None
    )
    return [_token_key(s) for s in shared], input_ids.numel()


def prefill(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> DynamicCache | None:
    """The KV cache of a (left-padded) batch of prompts, or None when the model's cache
    cannot be reused (see :func:`supports_reuse`). Logits are kept for the last column only.
    """
    params = getattr(model, "parameters", None)  # a wrapper without them: keep the inputs'
    device = next(params()).device if params else input_ids.device
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(model) else {}
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0).to(device),
        use_cache=True,
        **kwargs,
    )
    cache = output_cache(out)
    return cache if supports_reuse(model, cache) else None  # type: ignore[return-value]


def output_cache(output: object) -> Cache | None:
    """The KV cache a forward or ``generate`` returned.

    transformers 5.24 renamed ``past_key_values`` to ``cache``; both are read.
    """
    for name in ("cache", "past_key_values"):
        cache = output.get(name) if isinstance(output, dict) else None
        if cache is not None:
            return cache
    return None


def forward_parameters(model: object) -> Mapping[str, inspect.Parameter]:
    """The parameters of the transformers model's ``forward`` under DDP, peft and
    turnrl's adapter-free reference wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP
            model = model.module
        elif isinstance(getattr(model, "policy", None), torch.nn.Module):  # lora reference
            model = model.policy
        else:
            return inspect.signature(model.forward).parameters


def supports_reuse(model: torch.nn.Module, cache: Cache | None) -> bool:
    """Whether rows of ``cache`` can be stored and batched again with middle padding.

    Only plain full-attention layers hold one column per token; and a model
    whose forward takes no ``position_ids`` would number positions by cache
    column instead of by the attention mask.
    """
    return (
        type(cache) is DynamicCache
        and all(type(layer) is DynamicLayer for layer in cache.layers)
        and "position_ids" in forward_parameters(model)
    )


def weights_version(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes when a parameter is replaced or modified in place (e.g. by an optimizer step)."""
    return (id(model), *(v for p in model.parameters() for v in (id(p), p._version)))


class PrefixKVStore:
    """KV caches of token sequences, found by the longest stored prefix of a prompt.

    Keys are the sequences' token ids as bytes, so a lookup hashes one slice
    of the prompt per distinct stored length (no Python loop over tokens) and
    a dict hit is an exact match. Entries are kept in the order they were
    stored; the oldest go first when a bound is exceeded.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, KVLayers] = OrderedDict()
        self.lengths: Counter[int] = Counter()  # entries per sequence length
        self.tokens = 0
        self.weights_version: object = None

    def __len__(self) -> int:
        return len(self.entries)

    def longest_prefix(self, prompt: Sequence[int]) -> tuple[bytes, int] | None:
        """The key and length of the longest stored sequence that starts ``prompt``."""
        key = _token_key(prompt)
        for n in sorted(self.lengths, reverse=True):
            if n <= len(prompt) and key[: n * _ITEM] in self.entries:
                return key[: n * _ITEM], n
        return None

    def put(
        self, tokens: Sequence[int], layers: KVLayers, *, max_entries: int, max_tokens: int | None
    ) -> None:
        """Store ``layers`` for ``tokens``, then evict the oldest entries beyond the bounds."""
        key = _token_key(tokens)
        if key in self.entries:
            self.pop(key)
        self.entries[key] = layers
        self.lengths[len(tokens)] += 1
        self.tokens += len(tokens)
        while len(self.entries) > max_entries or (max_tokens and self.tokens > max_tokens):
            self.pop(next(iter(self.entries)))

    def pop(self, key: bytes) -> KVLayers:
        """Remove and return an entry."""
        layers = self.entries.pop(key)
        n = len(key) // _ITEM
        self.lengths[n] -= 1
        if not self.lengths[n]:
            del self.lengths[n]
        self.tokens -= n
        return layers

    def clear(self) -> None:
        self.entries.clear()
        self.lengths.clear()
        self.tokens = 0


_ITEM = array("i").itemsize


def _token_key(tokens: Sequence[int]) -> bytes:
    return array("i", tokens).tobytes()
