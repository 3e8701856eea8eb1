"""Supervised warm-start: teach a format from demonstrations before RL.

A randomly initialized (or weak) model rarely produces a reward, so RL has
nothing to compare. A few steps of next-token cross-entropy on demonstration
conversations, on the assistant tokens only, give it a starting point. The
demonstrations go through the same tokenization and loss mask as rollouts
(:func:`~turnrl.training.offline.trajectory_from_messages`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog
import torch

from turnrl.agents.transformers import TransformersAgent
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.logprobs import token_logprobs
from turnrl.training.offline import trajectory_from_messages
from turnrl.training.optim import warmup_cosine
from turnrl.types import Message, TrajectoryGroup

log = structlog.get_logger(__name__)


def last_turn_rows(data: RolloutBatch, last_turns: Sequence[int]) -> RolloutBatch:
    """The rows of ``data`` holding each trajectory's last turn, with the loss on that turn only.

    A trajectory may span several rows (a chat template that drops earlier
    thinking makes each turn a row of its own): the turn is found by
    ``turn_ids``, not by position, and rows left without loss are dropped.

    Args:
        data: A batch from :func:`build_batch`, with ``turn_ids``.
        last_turns: The index of each trajectory's last turn, in trajectory order.
    """
    last = torch.tensor(last_turns, device=data.loss_mask.device)  # (M,)
    on_last = data.turn_ids == data.trajectories().rows(last)[:, None]  # (N, T)
    data.loss_mask = data.loss_mask * on_last
    return data.select(on_last.any(-1))


def supervised_warmstart(
    agent: TransformersAgent,
    conversations: Sequence[Sequence[Message]],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    log_every: int = 50,
    train_on: Literal["all", "last"] = "all",
    micro_batch_size: int = 16,
    tools: Sequence[Any] | None = None,
    stop_when: Callable[[int], bool] | None = None,
    check_every: int = 20,
    max_grad_norm: float | None = 1.0,
    betas: tuple[float, float] = (0.9, 0.95),
) -> list[float]:
    """Fine-tune ``agent.model`` on the assistant turns of ``conversations``.

    Args:
        agent: The agent whose model is trained in place.
        conversations: Demonstrations, each a list of messages.
        steps: Optimizer steps.
        lr: Peak AdamW learning rate (warmup over the first 10% of steps, then
            cosine to 10%).
        batch_size: Conversations per step, sampled with replacement.
        seed: Sampling seed.
        log_every: Log the loss every N steps.
        train_on: ``all`` assistant turns, or only the ``last`` one of each
            conversation (earlier turns are context, e.g. wrong attempts).
        micro_batch_size: Conversations per forward/backward (gradients
            accumulate over a step's micro-batches).
        tools: The tools rollouts will offer (``env.tools``), so that the
            demonstrations' prompts render them as the rollouts' will. Only
            matters for chat templates that render tools
            (``agent.renders_tools``).
        stop_when: Called with the step number every ``check_every`` steps;
            returning True ends the warm-start there (``steps`` is then the
            most it may take, and the learning-rate schedule spans it).
        check_every: Steps between calls of ``stop_when``.
        max_grad_norm: Clip each step's gradient to this norm (None: no clipping).
        betas: AdamW's betas. With ``max_grad_norm``'s default this is the recipe
            of transformer pretraining (GPT-3, Llama): with torch's default beta2
            0.999 and no clipping, the embedded model learning arithmetic from
            scratch sat on a loss plateau whose end moved by hundreds of steps
            with float rounding (benchmarks/RESULTS.md, "Demo over seeds").

    Returns:
        The loss of every step taken.
    """
    if not conversations:
        raise ValueError("no demonstrations to warm-start on")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    trajectories = [trajectory_from_messages(agent, c, tools=tools) for c in conversations]
    groups = [TrajectoryGroup(scenario=t.scenario, trajectories=[t]) for t in trajectories]
    model = agent.model
    device = next(model.parameters()).device
    data = build_batch(groups, pad_token_id=agent.tokenizer.pad_token_id, device=device)
    if train_on == "last":
        data = last_turn_rows(data, [len(t.turns) - 1 for t in trajectories])
    elif train_on != "all":
        raise ValueError(f"train_on must be 'all' or 'last', got {train_on!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas)
    # Warmup over 10% of the steps, then cosine to 10%: stable from random init,
    # and the last steps settle instead of bouncing.
    schedule = warmup_cosine(max(1, steps // 10), steps, min_ratio=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(seed)
    losses = []
    model.train()
    lengths = data.attention_mask.sum(-1)  # (N,)
    for step in range(1, steps + 1):
        rows = torch.tensor([rng.randrange(len(data)) for _ in range(batch_size)])
        # Micro-batches of similar lengths compute less padding; the loss is the
        # mean over the whole step's tokens, so the split does not change it.
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        num_tokens = data.loss_mask[rows].sum().clamp(min=1)
        loss = torch.zeros(())
        for chunk in rows.split(micro_batch_size):
            batch = data.select(chunk)
            logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)  # (n, T)
            part = -(logprobs * batch.loss_mask).sum() / num_tokens
            part.backward()
            loss += part.detach()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            log.info("warmstart", step=step, loss=round(losses[-1], 4))
        if stop_when is not None and step % check_every == 0 and stop_when(step):
            log.info("warmstart_stopped", step=step, loss=round(losses[-1], 4))
            break
    model.eval()
    return losses
