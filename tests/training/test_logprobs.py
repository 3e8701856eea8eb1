"""Log-prob forwards that run a repeated prompt once (forward_tokens(shared_prefix=P))."""

import pytest
import torch

from turnrl.training.logprobs import forward_tokens, unscored_prefix
from turnrl.types import user


def batch(agent):
    """Two prompts, three rows each, with completions of different lengths, right-padded."""
    prompts = [agent.encode([user(q)]) for q in ("What is 12+30?", "What is 7+8?")]
    rows = [p + [5 + k] * (1 + k) for p in prompts for k in range(3)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), agent.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    loss = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        loss[i, len(prompts[i // 3]) : len(row)] = 1
    return ids, mask, loss


def test_unscored_prefix_leaves_every_scored_token_after_it():
    loss = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
    assert unscored_prefix(loss) == 2  # column 3 is scored: its logits come from column 2
    assert unscored_prefix(torch.zeros(2, 4)) == 0


@pytest.mark.parametrize("grad", [False, True])
def test_shared_prefix_gives_the_plain_forward(tiny_agent, grad):
    model = tiny_agent.model
    ids, mask, loss = batch(tiny_agent)
    prefix = unscored_prefix(loss)
    assert prefix > 5
    shapes = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    results = []
    for shared in (0, prefix):
        model.zero_grad()
        with torch.set_grad_enabled(grad):
            out = forward_tokens(
                model, ids, mask, temperature=0.7, entropy=True, shared_prefix=shared
            )
        scored = loss.bool()
        if grad:
            (out.logprobs[scored].sum() + out.entropy[scored].sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()] if grad else []
        results.append((out.logprobs[scored], out.entropy[scored], grads))
    # The plain forward, then the 2 distinct prefixes once and every row's remaining columns.
    assert shapes == [tuple(ids.shape), (2, prefix), (6, ids.shape[1] - prefix)]
    (plain_lp, plain_ent, plain_grads), (lp, ent, grads) = results
    torch.testing.assert_close(lp, plain_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, plain_ent, atol=1e-5, rtol=0)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prefix_falls_back_when_nothing_repeats(tiny_agent):
    ids, mask, loss = batch(tiny_agent)
    ids, mask, loss = ids[[0, 3]], mask[[0, 3]], loss[[0, 3]]  # one row per prompt
    prefix = unscored_prefix(loss)
    with torch.no_grad():
        plain = forward_tokens(tiny_agent.model, ids, mask)
        shared = forward_tokens(tiny_agent.model, ids, mask, shared_prefix=prefix)
    torch.testing.assert_close(shared.logprobs, plain.logprobs)  # the same plain forward
