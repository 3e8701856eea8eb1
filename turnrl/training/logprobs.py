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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, :-1]  # (N, T-1, V): position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = F.pad(selective_log_softmax(logits, input_ids[:, 1:]), (1, 0))  # (N, T)
    ent = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = F.pad(chunked_entropy(logits), (1, 0))  # (N, T)
    return TokenForward(logprobs, ent, out.hidden_states[-1] if hidden else None)


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
