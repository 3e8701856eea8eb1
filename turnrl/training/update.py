"""The update: score a RolloutBatch, estimate advantages, take optimizer steps.

Three stages, each a function the Trainer calls in turn:

1. :func:`score_batch` (no gradients): the log-probs of the policy before the
   update (the behavior log-probs when the batch has them), the reference
   model's log-probs, and the critic's values (of every prefix, and of each
   truncated episode's next state, GAE's bootstrap), a micro-batch at a time.
2. :func:`estimate`: the KL penalty in the reward (``kl_penalty="reward"``),
   the estimator, advantage whitening, value targets.
3. :func:`policy_update`: ``num_iterations`` passes over the batch, each
   split into ``num_minibatches`` optimizer steps, each accumulated over
   micro-batches of ``optim.micro_batch_size`` sequences.

Per-token losses are divided by the normalizer of the whole optimizer step
(its token count, sequence count, or token budget; see
:mod:`turnrl.training.losses`), not of the micro-batch, so the update does not
depend on how the step is split. GVPO compares responses within a group, so
its micro-batches and mini-batches hold whole groups (a micro-batch may then
exceed ``micro_batch_size`` to fit one group); with
``gvpo_group_reduction="sum"`` its loss is summed over each micro-batch's groups
as in the authors' recipe, so that one's scale does follow the micro-batch size.

Mixed precision: ``bf16`` runs the forward passes under bf16 autocast (CPU or
CUDA); ``fp16`` also scales the loss with a GradScaler and is CUDA-only.
An optimizer step whose gradient norm is not finite is skipped: gradients are
dropped and parameters and optimizer state stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from turnrl.training.advantages import AdvantageEstimator, whiten
from turnrl.training.batch import RolloutBatch
from turnrl.training.config import TrainingConfig
from turnrl.training.distributed import DistributedContext, all_sum, maybe_no_sync
from turnrl.training.logprobs import forward_tokens, unscored_prefix
from turnrl.training.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    gvpo_loss,
    masked_mean,
    ppo_clip_loss,
    value_loss,
)
from turnrl.training.value import ValueModel, state_values


@dataclass
class Optimization:
    """The optimizer, its schedule and the loss scaler, made together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def make_optimization(
    model: torch.nn.Module, config: TrainingConfig, value_model: ValueModel | None = None
) -> Optimization:
    """AdamW over trainable parameters, linear warmup then cosine decay to ``min_lr_ratio``.

    The schedule counts optimizer steps: ``max_steps x num_iterations x
    num_minibatches`` in a run (warmup is counted in training steps and
    scaled the same way). The value model's parameters, if any, are a second
    parameter group with ``algorithm.value_lr``.
    """
    opt, algo = config.optim, config.algorithm
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": params}]
    if value_model is not None:
        own = [p for n, p in value_model.named_parameters() if p.requires_grad]
        groups.append({"params": own, "lr": algo.value_lr or opt.lr})
    optimizer = torch.optim.AdamW(
        groups,
        lr=opt.lr,
        weight_decay=opt.weight_decay,
        betas=opt.adam_betas,
        fused=_can_fuse([p for g in groups for p in g["params"]]),
    )
    per_step = algo.num_iterations * algo.num_minibatches
    schedule = warmup_cosine(
        opt.warmup_steps * per_step, config.run.max_steps * per_step, opt.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=opt.precision == "fp16")
    return Optimization(optimizer, scheduler, scaler)


def _can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW (one kernel for all parameters) takes ``params``.

    It does for floating-point tensors all on the CPU or all on one CUDA device
    type; it is several times faster than the per-tensor loop PyTorch picks by
    default on the CPU.
    """
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def constant_tokens(config: TrainingConfig) -> int:
    """The per-trajectory token budget of ``loss_aggregation="constant"``."""
    if config.algorithm.constant_tokens is not None:
        return config.algorithm.constant_tokens
    return config.generation.max_new_tokens * (config.rollout.max_turns or 1)


def micro_batches(batch: RolloutBatch, size: int, *, whole_groups: bool) -> list[torch.Tensor]:
    """Row indices of each micro-batch: ``size`` rows, or whole groups up to ``size`` rows.

    Rows (or groups) are taken in order of length, so each micro-batch holds
    sequences of similar length and little padding is computed (the losses
    are normalized per step, so the order does not change the update).
    """
    lengths = batch.attention_mask.sum(-1)  # (N,)
    if not whole_groups:
        return list(torch.argsort(lengths, stable=True).split(size))
    groups = sorted(_group_rows(batch), key=lambda rows: int(lengths[rows].max()))
    out, current = [], []
    for group in groups:
        if current and len(current) + len(group) > size:
            out.append(torch.tensor(current))
            current = []
        current.extend(group)
    if current:
        out.append(torch.tensor(current))
    return out


def minibatches(
    batch: RolloutBatch, count: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Row indices of ``count`` mini-batches, each made of whole groups (shuffled if a
    generator is given)."""
    groups = _group_rows(batch)
    if count > len(groups):
        raise ValueError(
            f"algorithm.num_minibatches={count} exceeds the {len(groups)} groups of the batch"
        )
    order = torch.randperm(len(groups), generator=generator) if generator is not None else None
    if order is not None:
        groups = [groups[i] for i in order.tolist()]
    share = [groups[i::count] for i in range(count)]
    return [torch.tensor(sorted(r for g in part for r in g)) for part in share]


def _group_rows(batch: RolloutBatch) -> list[list[int]]:
    rows: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(batch.group_ids.tolist()):
        rows[g].append(i)
    return list(rows.values())


@torch.no_grad()
def score_batch(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    value_model: ValueModel | None,
    batch: RolloutBatch,
    config: TrainingConfig,
) -> RolloutBatch:
    """The batch with ``old_logprobs``, ``ref_logprobs``, ``values`` and ``next_values``.

    ``old_logprobs`` are the behavior log-probs when every turn has them.
    Groups without them (replayed or demonstration data) are scored under the
    current policy for GVPO; the PPO ratio of the other estimators needs the
    log-probs the tokens were actually sampled with, so they refuse.

    Raises:
        ValueError: The batch has no behavior log-probs and the estimator
            uses a PPO ratio.
    """
    algo, opt = config.algorithm, config.optim
    need_old = not batch.has_behavior_logprobs
    if need_old and algo.estimator != "gvpo":
        raise ValueError(
            f"estimator {algo.estimator!r} uses a PPO ratio against the log-probs the tokens "
            "were sampled with, and these groups have none (replayed or demonstration data?). "
            "Give every Turn its logprobs, or use estimator='gvpo', which accepts off-policy "
            "groups."
        )
    device = batch.input_ids.device
    old = batch.behavior_logprobs.clone() if not need_old else torch.zeros_like(batch.loss_mask)
    ref = torch.zeros_like(batch.loss_mask) if ref_model is not None else None
    values = torch.zeros_like(batch.loss_mask) if value_model is not None else None
    if need_old or ref is not None or values is not None:
        policy.eval()
        shared_values = values is not None and value_model.shared
        out = None
        for rows in micro_batches(batch, opt.micro_batch_size, whole_groups=False):
            micro = batch.select(rows)
            w = micro.input_ids.shape[1]
            ids, att = micro.input_ids, micro.attention_mask
            with autocast(device, opt.precision):
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
                    if need_old:
                        old[rows, :w] = out.logprobs
                if ref is not None:
                    with record_function("turnrl/ref_forward"):
                        ref[rows, :w] = forward_tokens(
                            ref_model,
                            ids,
                            att,
                            temperature=config.generation.temperature,
                            shared_prefix=prefix,
                        ).logprobs
                if values is not None:
                    hidden = out.hidden if out is not None and shared_values else None
                    values[rows, :w] = value_model(ids, att, hidden).float()
    next_values = None
    if value_model is not None and batch.next_input_ids is not None:
        next_values = next_state_values(policy, value_model, batch, config)
    mask = batch.loss_mask
    return dataclasses.replace(
        batch,
        old_logprobs=old * mask,
        ref_logprobs=None if ref is None else ref * mask,
        values=values,
        next_values=next_values,
    )


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


def estimate(
    batch: RolloutBatch,
    estimator: AdvantageEstimator,
    config: TrainingConfig,
    ctx: DistributedContext | None = None,
) -> tuple[RolloutBatch, dict[str, float]]:
    """Apply the KL reward penalty, run the estimator, whiten, set value targets.

    With several processes (``ctx``), the batch std of the rewards and the
    whitening moments are those of all ranks' batches together.

    Returns:
        The batch with ``advantages`` (and ``returns`` when it has values),
        and metrics (``train/kl_penalty`` when the KL is in the reward).
    """
    algo = config.algorithm
    metrics: dict[str, float] = {}
    if algo.kl_penalty == "reward" and algo.beta > 0 and batch.ref_logprobs is not None:
        kl = KL_ESTIMATORS[algo.kl_estimator](batch.old_logprobs, batch.ref_logprobs)
        kl = kl * batch.loss_mask  # (N, T)
        penalty = algo.beta * kl
        batch = dataclasses.replace(
            batch,
            token_rewards=batch.token_rewards - penalty,
            rewards=batch.rewards - penalty.sum(-1),
        )
        metrics["train/kl_penalty"] = penalty.sum(-1).mean().item()
    ctx = ctx or DistributedContext()
    if ctx.enabled and config.algorithm.scale_rewards == "batch":
        n, total, squares = all_sum(
            [len(batch), batch.rewards.sum().item(), (batch.rewards**2).sum().item()], ctx
        )
        variance = max(squares - total**2 / n, 0.0) / max(n - 1, 1)  # Bessel, like Tensor.std
        batch = dataclasses.replace(batch, reward_std=variance**0.5)
    advantages = estimator(batch, batch.values)  # (N, T)
    if advantages.shape != batch.loss_mask.shape:
        raise ValueError(
            f"the estimator returned shape {tuple(advantages.shape)}, expected "
            f"{tuple(batch.loss_mask.shape)} (one advantage per token)"
        )
    advantages = advantages * batch.loss_mask
    returns = None
    if batch.values is not None:
        returns = (advantages + state_values(batch.values)) * batch.loss_mask
    whitening = algo.whiten_advantages
    if whitening is None:
        whitening = algo.estimator == "gae"
    if whitening:
        moments = None
        if ctx.enabled:
            count, total, squares = all_sum(
                [
                    batch.loss_mask.sum().item(),
                    (advantages * batch.loss_mask).sum().item(),
                    (advantages**2 * batch.loss_mask).sum().item(),
                ],
                ctx,
            )
            mean = total / max(count, 1.0)
            moments = (mean, max(squares / max(count, 1.0) - mean**2, 0.0))
        advantages = whiten(advantages, batch.loss_mask, moments=moments)
    return dataclasses.replace(batch, advantages=advantages, returns=returns), metrics


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
        over ranks is the loss of the whole step.
    """
    algo, opt = config.algorithm, config.optim
    if batch.advantages is None or batch.old_logprobs is None:
        raise ValueError("policy_update needs a batch from score_batch and estimate")
    ctx = ctx or DistributedContext()
    forward_policy, forward_value = wrapped or (policy, value_model)
    gvpo = algo.estimator == "gvpo"
    generator = torch.Generator().manual_seed(seed) if algo.num_minibatches > 1 else None
    totals: dict[str, float] = defaultdict(float)
    norms, skipped, steps = [], 0, 0
    passes_per_step = algo.num_iterations * algo.num_minibatches
    done = 0
    policy.train()
    for _ in range(algo.num_iterations):
        for rows in minibatches(batch, algo.num_minibatches, generator):
            mini = batch.select(rows)
            chunks = micro_batches(mini, opt.micro_batch_size, whole_groups=gvpo)
            tokens, sequences, groups, micros = all_sum(
                [mini.num_tokens, len(mini), len(_group_rows(mini)), len(chunks)], ctx
            )
            normalizer = _normalizer(tokens, sequences, config)
            # GVPO's sum over groups: divided by the step's groups (their mean), or by its
            # micro-batches on all ranks (the recipe's sum per micro-batch, averaged).
            gvpo_normalizer = micros if algo.gvpo_group_reduction == "sum" else groups
            for k, micro_rows in enumerate(chunks):
                micro = mini.select(micro_rows)
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                with maybe_no_sync([forward_policy, forward_value], sync=k == len(chunks) - 1):
                    loss, parts = _micro_loss(
                        forward_policy,
                        value_model,
                        forward_value,
                        micro,
                        config,
                        normalizer,
                        gvpo_normalizer,
                        mini.num_tokens,
                        len(mini),
                    )
                    with record_function("turnrl/backward"):
                        optim.scaler.scale(loss * ctx.world_size).backward()
                for key, value in parts.items():
                    totals[key] += value * (ctx.world_size if key.startswith("loss/") else 1)
                done += 1
                if on_micro_batch is not None:
                    on_micro_batch(done, max(done, passes_per_step * len(chunks)))
            with record_function("turnrl/optimizer_step"):
                norm, was_skipped = _optimizer_step(optim, opt.max_grad_norm)
            norms.append(norm)
            skipped += was_skipped
            steps += 1
    metrics = {key: value / steps for key, value in totals.items()}
    finite = [n for n in norms if math.isfinite(n)]
    return metrics | {
        "train/grad_norm": sum(finite) / len(finite) if finite else float("nan"),
        "train/lr": optim.scheduler.get_last_lr()[0],
        "train/num_tokens": float(batch.num_tokens),
        "train/num_sequences": float(len(batch)),
        "train/optimizer_steps": float(steps),
        "train/skipped_nonfinite": float(skipped),
        "train/advantage_abs_mean": masked_mean(batch.advantages.abs(), batch.loss_mask).item(),
    }


def _normalizer(tokens: float, sequences: float, config: TrainingConfig) -> float:
    """What the step's aggregated losses are divided by."""
    how = config.algorithm.loss_aggregation
    if how == "token_mean":
        return float(tokens)
    if how == "constant":
        return float(sequences * constant_tokens(config))
    return float(sequences)


def _micro_loss(
    policy: torch.nn.Module,
    value_model: ValueModel | None,
    value_forward: torch.nn.Module | None,
    micro: RolloutBatch,
    config: TrainingConfig,
    normalizer: float,
    gvpo_normalizer: float,
    step_tokens: int,
    step_rows: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step loss, and its share of the metrics."""
    algo, opt = config.algorithm, config.optim
    aggregate = AGGREGATIONS[algo.loss_aggregation]
    mask = micro.loss_mask
    device = micro.input_ids.device
    shared_values = value_model is not None and value_model.shared
    with autocast(device, opt.precision), record_function("turnrl/policy_forward"):
        out = forward_tokens(
            policy,
            micro.input_ids,
            micro.attention_mask,
            temperature=config.generation.temperature,
            entropy=True,
            entropy_grad=algo.entropy_coef > 0,
            hidden=shared_values,
            shared_prefix=unscored_prefix(mask) if opt.share_prompt_forward else 0,
        )
    share = mask.sum().item() / max(step_tokens, 1)  # this micro-batch's share of the tokens
    parts: dict[str, float] = {}
    if algo.estimator == "gvpo":
        assert micro.old_logprobs is not None
        anchor = micro.ref_logprobs if algo.gvpo_reference == "reference" else micro.old_logprobs
        if anchor is None:
            raise ValueError("gvpo_reference='reference' needs the reference model's log-probs")
        policy_loss, stats = gvpo_loss(
            out.logprobs,
            anchor,
            mask,
            micro.rewards,
            micro.group_ids,
            algo.beta,
            normalizer=gvpo_normalizer,
        )
        parts |= {k: v.item() * len(micro) / step_rows for k, v in stats.items()}
        loss = policy_loss
    else:
        per_token, stats = ppo_clip_loss(
            out.logprobs,
            micro.old_logprobs,
            micro.advantages,
            mask,
            clip_eps_low=algo.clip_eps_low,
            clip_eps_high=algo.clip_eps_high,
        )
        policy_loss = aggregate(per_token, mask, normalizer)
        loss = policy_loss
        parts["train/clip_frac"] = stats["clip_frac"].item() * share
        parts["train/ratio_mean"] = stats["ratio_mean"].item() * share
    parts["loss/policy"] = policy_loss.item()

    if micro.ref_logprobs is not None:
        kl = KL_ESTIMATORS[algo.kl_estimator](out.logprobs, micro.ref_logprobs)  # (n, T)
        kl_loss = aggregate(kl, mask, normalizer)
        parts["loss/kl"] = kl_loss.item()
        parts["train/kl"] = masked_mean(kl.detach(), mask).item() * share
        if algo.estimator != "gvpo" and algo.kl_penalty == "loss" and algo.beta > 0:
            loss = loss + algo.beta * kl_loss

    entropy_loss = aggregate(out.entropy, mask, normalizer)
    parts["train/entropy"] = masked_mean(out.entropy.detach(), mask).item() * share
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * entropy_loss

    if value_model is not None:
        assert micro.values is not None and micro.returns is not None
        with autocast(device, opt.precision):
            values = value_forward(micro.input_ids, micro.attention_mask, out.hidden)
        per_token_v, vstats = value_loss(
            state_values(values.float()),
            state_values(micro.values),
            micro.returns,
            mask,
            clip=algo.value_clip,
        )
        v_loss = aggregate(per_token_v, mask, normalizer)
        loss = loss + algo.value_coef * v_loss
        parts["loss/value"] = v_loss.item()
        parts["train/value_clip_frac"] = vstats["value_clip_frac"].item() * share
    parts["loss/total"] = loss.item()
    return loss, parts


def _optimizer_step(optim: Optimization, max_grad_norm: float | None) -> tuple[float, bool]:
    """Unscale, clip, step (unless the norm is not finite), advance the schedule."""
    optim.scaler.unscale_(optim.optimizer)
    params = [p for g in optim.optimizer.param_groups for p in g["params"]]
    max_norm = max_grad_norm if max_grad_norm is not None else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    skipped = not math.isfinite(grad_norm)
    if skipped:
        optim.optimizer.zero_grad(set_to_none=True)
        optim.scaler.update()
    else:
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
        optim.scheduler.step()
    optim.optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped
