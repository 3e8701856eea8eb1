"""The update: score a RolloutBatch, estimate advantages, take optimizer steps.

Three stages, each a function the Trainer calls in turn:

1. :func:`logprobs_and_values` (no gradients): the log-probs of the policy before the
   update (the behavior log-probs when the batch has them; the policy's own too when
   the rollout/trainer mismatch is corrected), the reference
   model's log-probs, and the critic's values (of every prefix, and of each
   truncated episode's next state, GAE's bootstrap), a micro-batch at a time.
2. :func:`~turnrl.training.estimate.estimate`: the KL penalty in the reward
   (``kl_penalty="reward"``), the estimator, advantage whitening, value targets.
3. :func:`policy_update`: ``num_iterations`` passes over the batch, each
   split into ``num_minibatches`` optimizer steps, each accumulated over
   micro-batches of ``optim.micro_batch_size`` rows (whole trajectories: the
   rows of a trajectory trained as step-wise samples stay together).

What the algorithm needs (behavior log-probs, whole groups per micro-batch,
whitening by default, its policy loss) comes from its entry in
:data:`~turnrl.training.algorithms.ALGORITHMS`. A loss that compares responses
within a group gets micro-batches and mini-batches of whole groups (a
micro-batch may then exceed ``micro_batch_size`` to fit one group). The
micro-batch loss is :func:`~turnrl.training.objective.micro_batch_loss`; the
optimizer, schedule and mixed precision are in :mod:`turnrl.training.optim`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import record_function

from turnrl.training.algorithms import ALGORITHMS, StepSizes, algorithm_for
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import DistributedContext, all_sum, maybe_no_sync
from turnrl.training.logprobs import forward_tokens, unscored_prefix
from turnrl.training.losses import masked_mean
from turnrl.training.mismatch import MismatchProbe, importance_weights, mismatch_metrics
from turnrl.training.objective import Critic, micro_batch_loss, step_normalizer
from turnrl.training.optim import (
    Optimization,
    autocast,
    optimizer_step,
)
from turnrl.training.value import ValueModel


def micro_batches(batch: RolloutBatch, size: int, *, whole_groups: bool) -> list[torch.Tensor]:
    """Row indices of each micro-batch: whole trajectories (or whole groups) up to ``size`` rows.

    A trajectory trained as several rows stays in one micro-batch, so its
    per-trajectory loss terms see all its tokens (one may exceed ``size`` to
    fit); a loss that compares a group's responses gets whole groups.
    Trajectories (or groups) are taken in order of length, so each
    micro-batch holds sequences of similar length and little padding is
    computed (the losses are normalized per step, so the order does not
    change the update).
    """
    lengths = batch.attention_mask.sum(-1)  # (N,)
    trajectories = batch.trajectories()
    if not whole_groups and trajectories.is_identity:
        return list(torch.argsort(lengths, stable=True).split(size))
    units = _rows_by(batch.group_ids if whole_groups else trajectories.of_row)
    units = sorted(units, key=lambda rows: int(lengths[rows].max()))
    out, current = [], []
    for unit in units:
        if current and len(current) + len(unit) > size:
            out.append(torch.tensor(current))
            current = []
        current.extend(unit)
    if current:
        out.append(torch.tensor(current))
    return out


def minibatches(
    batch: RolloutBatch, count: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Row indices of ``count`` mini-batches, each made of whole groups (shuffled if a
    generator is given)."""
    groups = _rows_by(batch.group_ids)
    if count > len(groups):
        raise ValueError(
            f"algorithm.num_minibatches={count} exceeds the {len(groups)} groups of the batch"
        )
    order = torch.randperm(len(groups), generator=generator) if generator is not None else None
    if order is not None:
        groups = [groups[i] for i in order.tolist()]
    share = [groups[i::count] for i in range(count)]
    return [torch.tensor(sorted(r for g in part for r in g)) for part in share]


def _rows_by(labels: torch.Tensor) -> list[list[int]]:
    """The row indices of each label (a group, a trajectory), in order of first row."""
    rows: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels.tolist()):
        rows[label].append(i)
    return list(rows.values())


@torch.no_grad()
def logprobs_and_values(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    value_model: ValueModel | None,
    batch: RolloutBatch,
    config: TrainingConfig,
) -> RolloutBatch:
    """The batch with ``old_logprobs``, ``ref_logprobs``, ``values`` and ``next_values``.

    ``old_logprobs`` are the behavior log-probs when every turn has them.
    Groups without them (replayed or demonstration data) are scored under the
    current policy when the algorithm's loss allows it (GVPO's); a PPO ratio
    needs the log-probs the tokens were actually sampled with, so it refuses.
    Under a mismatch correction the policy's own log-probs are ``trainer_logprobs``
    and ``old_logprobs``, and ``is_weights`` is set (:mod:`turnrl.training.mismatch`);
    without one, :func:`policy_update` measures the mismatch from its own forwards.

    Raises:
        ValueError: The batch has no behavior log-probs and the loss needs them.
    """
    algo, opt, fix = config.algorithm, config.optim, config.mismatch
    need_old = not batch.has_behavior_logprobs
    measured = fix.correction != "none" and not need_old
    loss = algorithm_for(algo).loss
    if need_old and loss.needs_behavior_logprobs:
        takers = [k for k, a in ALGORITHMS.items() if not a.loss.needs_behavior_logprobs]
        raise ValueError(
            f"estimator {algo.estimator!r} trains the {loss.name} loss, which uses a PPO ratio "
            "against the log-probs the tokens were sampled with, and these groups have none "
            "(replayed or demonstration data?). Give every Turn its logprobs, or use "
            f"{' or '.join(f'estimator={k!r}' for k in takers)}, which accepts off-policy groups."
        )
    own = need_old or measured
    old = batch.behavior_logprobs.clone() if not own else torch.zeros_like(batch.loss_mask)
    ref = torch.zeros_like(batch.loss_mask) if ref_model is not None else None
    values = torch.zeros_like(batch.loss_mask) if value_model is not None else None
    if own or ref is not None or values is not None:
        policy.eval()
        for rows in micro_batches(batch, opt.micro_batch_size, whole_groups=False):
            micro = batch.select(rows)
            w = micro.input_ids.shape[1]
            scores = _score_micro_batch(policy, ref_model, value_model, micro, config, own)
            for into, part in zip((old, ref, values), scores, strict=True):
                if part is not None:
                    into[rows, :w] = part
    next_values = None
    if value_model is not None and batch.next_input_ids is not None:
        next_values = next_state_values(policy, value_model, batch, config)
    mask = batch.loss_mask
    trainer = old * mask if measured else None
    weights = None
    if measured:
        weights, _ = importance_weights(
            old, batch.behavior_logprobs, mask, fix, batch.trajectory_ids
        )
    return dataclasses.replace(
        batch,
        old_logprobs=old * mask,
        trainer_logprobs=trainer,
        is_weights=weights,
        ref_logprobs=None if ref is None else ref * mask,
        values=values,
        next_values=next_values,
    )


def _score_micro_batch(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    value_model: ValueModel | None,
    micro: RolloutBatch,
    config: TrainingConfig,
    need_old: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``micro``'s policy log-probs (if ``need_old``), reference log-probs and values (n, T)."""
    ids, att, opt = micro.input_ids, micro.attention_mask, config.optim
    shared_values = value_model is not None and value_model.shared
    old = ref = values = out = None
    with autocast(ids.device, opt.precision):
        prefix = unscored_prefix(micro.loss_mask) if opt.share_prompt_forward else 0
        if need_old or shared_values:
            out = forward_tokens(
                policy,
                ids,
                att,
                temperature=config.generation.temperature,
                hidden=shared_values,
                shared_prefix=prefix,
            )
            old = out.logprobs if need_old else None
        if ref_model is not None:
            with record_function("turnrl/ref_forward"):
                ref = forward_tokens(
                    ref_model,
                    ids,
                    att,
                    temperature=config.generation.temperature,
                    shared_prefix=prefix,
                ).logprobs
        if value_model is not None:
            hidden = out.hidden if out is not None and shared_values else None
            values = value_model(ids, att, hidden).float()
    return old, ref, values


@torch.no_grad()
def next_state_values(
    policy: torch.nn.Module, value_model: ValueModel, batch: RolloutBatch, config: TrainingConfig
) -> torch.Tensor:
    """The critic's value of each row's next state (``batch.next_input_ids``), 0 without one.

    A next state longer than the model's context (an episode cut for outgrowing
    it) is valued on its first ``max_position_embeddings`` tokens.

    Returns:
        Shape (N,), fp32.
    """
    assert batch.next_input_ids is not None and batch.next_attention_mask is not None
    out = torch.zeros(len(batch), device=batch.input_ids.device)
    rows = batch.next_attention_mask.any(-1).nonzero().squeeze(-1)  # (M,)
    limit = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    device, opt = batch.input_ids.device, config.optim
    policy.eval()
    for chunk in rows.split(opt.micro_batch_size):
        att = batch.next_attention_mask[chunk]
        width = min(int(att.sum(-1).max()), limit or att.shape[1])
        ids, att = batch.next_input_ids[chunk, :width], att[:, :width]  # (m, S)
        with autocast(device, opt.precision):
            hidden = None
            if value_model.shared:
                hidden = policy(
                    input_ids=ids, attention_mask=att, use_cache=False, output_hidden_states=True
                ).hidden_states[-1]  # (m, S, H)
            values = value_model(ids, att, hidden).float()  # (m, S)
        last = att.sum(-1) - 1  # (m,) the state's last token: its value is V(state)
        out[chunk] = values[torch.arange(len(chunk), device=device), last]
    return out


def policy_update(
    policy: torch.nn.Module,
    batch: RolloutBatch,
    optim: Optimization,
    config: TrainingConfig,
    *,
    value_model: ValueModel | None = None,
    seed: int = 0,
    ctx: DistributedContext | None = None,
    wrapped: tuple[torch.nn.Module, torch.nn.Module | None] | None = None,
    on_micro_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Optimizer steps on a scored, estimated batch.

    Args:
        policy: The model being trained.
        batch: From :func:`estimate` (``advantages`` and ``old_logprobs`` set;
            ``ref_logprobs`` when a KL term or GVPO's reference needs them).
        optim: Optimizer, schedule and scaler.
        config: The training configuration.
        value_model: The critic (gae).
        seed: Seeds the shuffling of mini-batches.
        ctx: The distributed context (default: a single process). Normalizers
            are summed over ranks and losses scaled by the world size, so the
            DDP-averaged gradient is that of the loss over all ranks' groups.
        wrapped: The DDP-wrapped ``(policy, value_model)`` to run forward
            passes through (default: the plain modules).
        on_micro_batch: Called with ``(micro-batches done, expected in all)``
            after each backward pass (a progress display).

    Returns:
        Metrics averaged over the optimizer steps (``loss/*``, ``train/*``);
        ``loss/*`` are this rank's share times the world size, so their mean
        over ranks is the loss of the whole step. The mismatch metrics
        (:func:`~turnrl.training.mismatch.mismatch_metrics`) too: of the
        trainer's log-probs scored before the update under a correction, or
        else (``mismatch.measure``) of those the first optimizer step's
        forward passes computed before it moved the policy.
    """
    algo, opt = config.algorithm, config.optim
    if batch.advantages is None or batch.old_logprobs is None:
        raise ValueError("policy_update needs a batch from logprobs_and_values and estimate")
    ctx = ctx or DistributedContext()
    forward_policy, forward_value = wrapped or (policy, value_model)
    critic = Critic(value_model, forward_value) if value_model is not None else None
    whole_groups = algorithm_for(algo).loss.whole_groups
    generator = torch.Generator().manual_seed(seed) if algo.num_minibatches > 1 else None
    totals: dict[str, float] = defaultdict(float)
    norms, skipped, done = [], 0, 0
    passes_per_step = algo.num_iterations * algo.num_minibatches
    probe = MismatchProbe.of(batch, config.mismatch)
    policy.train()
    for _ in range(algo.num_iterations):
        for rows in minibatches(batch, algo.num_minibatches, generator):
            mini = batch.select(rows)
            chunks = micro_batches(mini, opt.micro_batch_size, whole_groups=whole_groups)
            step = step_sizes(mini, len(chunks), config, ctx)
            for k, micro_rows in enumerate(chunks):
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                with maybe_no_sync([forward_policy, forward_value], sync=k == len(chunks) - 1):
                    loss, parts = micro_batch_loss(
                        forward_policy,
                        critic,
                        mini.select(micro_rows),
                        step,
                        config,
                        probe.recorder(rows[micro_rows]) if probe is not None else None,
                    )
                    with record_function("turnrl/backward"):
                        optim.scaler.scale(loss * ctx.world_size).backward()
                for key, value in parts.items():
                    totals[key] += value * (ctx.world_size if key.startswith("loss/") else 1)
                done += 1
                if on_micro_batch is not None:
                    on_micro_batch(done, max(done, passes_per_step * len(chunks)))
            if probe is not None and probe.rows is None:
                probe.rows = rows  # the policy moves now: later forwards measure nothing
            with record_function("turnrl/optimizer_step"):
                norm, was_skipped = optimizer_step(optim, opt.max_grad_norm)
            norms.append(norm)
            skipped += was_skipped
    measured = probe.batch() if probe is not None else batch
    return _update_metrics(totals, norms, skipped, batch, optim) | mismatch_metrics(
        measured, config.mismatch
    )


def step_sizes(
    mini: RolloutBatch, num_micro_batches: int, config: TrainingConfig, ctx: DistributedContext
) -> StepSizes:
    """The sizes of the optimizer step on ``mini`` (this rank's share), summed over ranks."""
    trajectories = mini.trajectories().count  # a trajectory of several rows counts once
    tokens, sequences, groups, micros = all_sum(
        [mini.num_tokens, trajectories, len(_rows_by(mini.group_ids)), num_micro_batches], ctx
    )
    return StepSizes(
        normalizer=step_normalizer(tokens, sequences, config),
        groups=groups,
        micro_batches=micros,
        rank_tokens=mini.num_tokens,
        rank_sequences=trajectories,
    )


def _update_metrics(
    totals: dict[str, float],
    norms: list[float],
    skipped: int,
    batch: RolloutBatch,
    optim: Optimization,
) -> dict[str, float]:
    """The summed micro-batch metrics averaged over the optimizer steps, and the update's own."""
    steps = len(norms)
    metrics = {key: value / steps for key, value in totals.items()}
    finite = [n for n in norms if math.isfinite(n)]
    assert batch.advantages is not None
    return metrics | {
        "train/grad_norm": sum(finite) / len(finite) if finite else float("nan"),
        "train/lr": optim.scheduler.get_last_lr()[0],
        "train/num_tokens": float(batch.num_tokens),
        "train/num_sequences": float(len(batch)),
        "train/num_trajectories": float(batch.trajectories().count),
        "train/optimizer_steps": float(steps),
        "train/skipped_nonfinite": float(skipped),
        "train/advantage_abs_mean": masked_mean(batch.advantages.abs(), batch.loss_mask).item(),
    }
