"""Per-token log-probabilities of a batch under a model.

``token_logprobs(model, input_ids, attention_mask)[i, t]`` is
``log p(input_ids[i, t] | input_ids[i, :t])``, with position 0 set to 0, so the
result lines up with the RolloutBatch tensors. The temperature used for
sampling divides the logits here too, so training and sampling measure the
same distribution.

The log-softmax is taken a slice of rows at a time (selective log-softmax):
only the picked token's logit and the row's logsumexp are kept, in fp32,
instead of a full (N, T, V) fp32 log-prob tensor.
"""

from __future__ import annotations

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
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1]  # (N, T-1, V): position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    picked = selective_log_softmax(logits, input_ids[:, 1:])  # (N, T-1)
    return F.pad(picked, (1, 0))  # (N, T)
