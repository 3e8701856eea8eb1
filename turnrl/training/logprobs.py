"""Per-token log-probabilities (and entropies, hidden states) of a batch under a model.

``token_logprobs(model, input_ids, attention_mask)[i, t]`` is
``log p(input_ids[i, t] | input_ids[i, :t])``, with position 0 set to 0, so the
result lines up with the RolloutBatch tensors. The temperature used for
sampling divides the logits here too, so training and sampling measure the
same distribution.

The log-softmax is taken a slice of rows at a time (selective log-softmax):
only the picked token's logit and the row's logsumexp are kept, in fp32,
instead of a full (N, T, V) fp32 log-prob tensor. Entropies, when asked for,
are computed the same way, a slice at a time.

Shared prefixes (``shared_prefix=P``): the G episodes of a group start with the
same prompt, so a batch holds G copies of it. The distinct ``P``-token prefixes
run once, and each row's remaining columns run over its prefix's keys and
values (expanded to the rows, in the autograd graph, so the gradient reaching
the prefix is the sum over its rows): the Prefix Grouper idea (Liu et al.
2025, "Prefix Grouper: Efficient GRPO Training through Shared-Prefix Forward",
arXiv 2506.05433), done here with the model's own KV cache instead of a
modified attention. It gives the same log-probs up to float rounding; logits
are computed only for columns ``P`` on, so columns ``0..P`` of the result are
0, and ``P`` must leave every scored token after it. It needs a model whose
cache holds one column per token (see :func:`~turnrl.agents.prefix_cache.supports_reuse`);
for any other, or when no prefix repeats, the forward runs as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers.cache_utils import DynamicCache

from turnrl.agents.prefix_cache import CACHE_KWARG, prefill


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, *, chunk_rows: int = 8
) -> torch.Tensor:
    """``log_softmax(logits)`` gathered at ``index``, in fp32.

    Args:
        logits: Shape (N, T, V), any float dtype.
        index: Shape (N, T), token ids to pick.
        chunk_rows: Rows of N processed at once.

    Returns:
        Shape (N, T), fp32.
    """
    out = []
    for rows, idx in zip(logits.split(chunk_rows), index.split(chunk_rows), strict=True):
        rows = rows.float()  # (n, T, V)
        picked = rows.gather(-1, idx.unsqueeze(-1)).squeeze(-1)  # (n, T)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out)


def chunked_entropy(logits: torch.Tensor, *, chunk_rows: int = 8) -> torch.Tensor:
    """Entropy of each position's distribution, in fp32. (N, T, V) -> (N, T)."""
    out = []
    for rows in logits.split(chunk_rows):
        logp = torch.log_softmax(rows.float(), dim=-1)  # (n, T, V)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)


@dataclass
class TokenForward:
    """What one forward pass gives the losses. All (N, T), aligned with the batch.

    Attributes:
        logprobs: Log-prob of each token given the ones before it (column 0 is 0).
        entropy: Entropy of the distribution token ``t`` was drawn from
            (column 0 is 0), or None when not asked for.
        hidden: The last hidden state at each position, shape (N, T, H), or None.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def forward_tokens(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = False,
    hidden: bool = False,
    shared_prefix: int = 0,
) -> TokenForward:
    """One forward pass: per-token log-probs, optionally entropies and hidden states.

    Args:
        model: A causal LM returning ``.logits`` (and ``.hidden_states``).
        input_ids: Shape (N, T), right-padded.
        attention_mask: Shape (N, T).
        temperature: The sampling temperature (logits are divided by it).
        entropy: Also compute per-position entropies.
        entropy_grad: Keep the entropies in the autograd graph (for an
            entropy bonus); otherwise they are computed without gradients.
        hidden: Also return the last hidden state (for a shared value head).
        shared_prefix: Run the distinct first ``shared_prefix`` columns once
            (see the module docstring); the log-probs and entropies of columns
            ``0..shared_prefix`` are then 0. Ignored when ``hidden`` is asked for.
    """
    start, logits = 0, None
    if shared_prefix > 1 and not hidden:
        logits = _logits_over_shared_prefix(model, input_ids, attention_mask, shared_prefix)
        start = shared_prefix if logits is not None else 0
    if logits is None:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=hidden,
        )
        logits = out.logits
    logits = logits[:, :-1]  # (N, T-1-start, V): position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = F.pad(selective_log_softmax(logits, input_ids[:, start + 1 :]), (start + 1, 0))
    ent = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = F.pad(chunked_entropy(logits), (start + 1, 0))  # (N, T)
    return TokenForward(logprobs, ent, out.hidden_states[-1] if hidden else None)


def _logits_over_shared_prefix(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: int
) -> torch.Tensor | None:
    """Logits of columns ``prefix..T-1``, the distinct prefixes run once; None when no
    prefix repeats or the model's cache cannot be expanded to the rows."""
    heads, inverse = torch.unique(input_ids[:, :prefix], dim=0, return_inverse=True)  # (U, P)
    if len(heads) == len(input_ids) or not bool(attention_mask[:, :prefix].all()):
        return None
    # Under DDP the prefix runs through the inner module: the wrapper expects one forward
    # per backward, and the parameters' gradients (which its hooks reduce) still sum both.
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    cache = prefill(inner, heads, torch.ones_like(heads))
    if cache is None:
        return None
    rows = DynamicCache(
        [(x.keys.index_select(0, inverse), x.values.index_select(0, inverse)) for x in cache.layers]
    )  # (N, H, P, D) per layer
    out = model(
        input_ids=input_ids[:, prefix:],
        attention_mask=attention_mask,
        use_cache=True,
        **{CACHE_KWARG: rows},
    )
    return out.logits  # (N, T - P, V)


def unscored_prefix(loss_mask: torch.Tensor) -> int:
    """The largest ``shared_prefix`` that leaves every scored token of a batch after it.

    A token scored at column ``s`` needs the logits of column ``s - 1``, so this
    is the first scored column over all rows, less one (0 if nothing is scored).
    """
    scored = loss_mask.bool()  # (N, T)
    rows = scored.any(-1)
    if not bool(rows.any()):
        return 0
    first = scored.int().argmax(-1)  # (N,) first scored column of each row
    return max(int(first[rows].min()) - 1, 0)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Log-prob of each token given the ones before it.

    Args:
        model: A causal LM returning ``.logits``.
        input_ids: Shape (N, T), right-padded.
        attention_mask: Shape (N, T).
        temperature: The sampling temperature (logits are divided by it).

    Returns:
        Shape (N, T), fp32; column 0 is 0.
    """
    return forward_tokens(model, input_ids, attention_mask, temperature=temperature).logprobs
