"""Estimators through the real update path, on a small random Llama and synthetic batches.

Covers GVPO's gradient identity and, for every estimator and aggregation, that
the parameter update does not depend on how a step is split into micro-batches.
"""

import dataclasses

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from turnrl.environments.base import Environment, StepResult
from turnrl.training.algorithms import ALGORITHMS
from turnrl.training.batch import RolloutBatch, build_batch
from turnrl.training.config import TrainingConfig
from turnrl.training.estimate import estimate
from turnrl.training.estimators import build_estimator
from turnrl.training.gvpo import gvpo_loss, gvpo_weights
from turnrl.training.logprobs import token_logprobs
from turnrl.training.optim import Optimization
from turnrl.training.rollout import run_episode
from turnrl.training.trainer import Trainer
from turnrl.training.update import logprobs_and_values, policy_update
from turnrl.training.value import ValueModel
from turnrl.types import Scenario, TrajectoryGroup, user

VOCAB = 24


def small_model(seed=0):
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def synthetic_batch(model, *, groups=2, size=4, width=10, seed=0):
    """``groups x size`` sequences of random tokens: a prompt, then 2-6 sampled tokens,
    a tool/user span and, in some rows, a second sampled span (multi-turn)."""
    gen = torch.Generator().manual_seed(seed)
    n = groups * size
    ids = torch.randint(1, VOCAB, (n, width), generator=gen)
    attention = torch.ones(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i in range(n):
        length = width - int(torch.randint(0, 3, (1,), generator=gen))
        attention[i, length:] = 0
        ids[i, length:] = 0
        mask[i, 2 : 2 + int(torch.randint(2, 5, (1,), generator=gen))] = 1
        if i % 2:
            mask[i, length - 2 : length] = 1
    rewards = torch.rand(n, generator=gen).round(decimals=1)
    token_rewards = torch.zeros(n, width)
    for i in range(n):
        last = int(mask[i].nonzero().max())
        token_rewards[i, last] = rewards[i]
    with torch.no_grad():
        behavior = token_logprobs(model, ids, attention) * mask
    truncated = torch.arange(n) % 3 == 0
    # A truncated row's next state: its sequence, then 3 tokens of a last observation.
    next_ids = torch.zeros(n, width + 3, dtype=torch.long)
    next_mask = torch.zeros(n, width + 3, dtype=torch.long)
    for i in truncated.nonzero().squeeze(-1).tolist():
        length = int(attention[i].sum())
        next_ids[i, : length + 3] = torch.cat([ids[i, :length], ids[i, :3]])
        next_mask[i, : length + 3] = 1
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attention,
        loss_mask=mask,
        behavior_logprobs=behavior,
        has_behavior_logprobs=True,
        token_rewards=token_rewards,
        rewards=rewards,
        group_ids=torch.arange(n) // size,
        terminated=~truncated,
        truncated=truncated,
        next_input_ids=next_ids,
        next_attention_mask=next_mask,
    )


def sgd(params):
    optimizer = torch.optim.SGD(params, lr=1.0)
    return Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )


def config(mismatch=None, **algorithm):
    return TrainingConfig.from_profile(
        "balanced",
        algorithm=algorithm,
        mismatch=mismatch or {},
        optim={"max_grad_norm": None, "micro_batch_size": 8},
        generation={"max_new_tokens": 6},
        rollout={"num_generations": 4},
    )


def one_update(cfg, micro_batch_size, batch):
    """Parameter (and value head) changes of one SGD step (lr 1) from the same start."""
    cfg = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"micro_batch_size": micro_batch_size})}
    )
    policy = small_model()
    ref = small_model().requires_grad_(False) if cfg.algorithm.uses_reference else None
    value = None
    if ALGORITHMS[cfg.algorithm.estimator].critic:
        value = ValueModel(policy, separate=cfg.algorithm.critic == "separate")
        torch.nn.init.normal_(
            value.head.weight, std=0.5, generator=torch.Generator().manual_seed(1)
        )
    params = list(policy.parameters()) + (list(value.parameters()) if value else [])
    before = [p.detach().clone() for p in params]
    scored = logprobs_and_values(policy, ref, value, batch, cfg)
    estimated, _ = estimate(scored, build_estimator(cfg.algorithm), cfg)
    metrics = policy_update(policy, estimated, sgd(params), cfg, value_model=value)
    return [p.detach() - b for p, b in zip(params, before, strict=True)], metrics


CASES = [
    {"estimator": "grpo", "loss_aggregation": "token_mean"},
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_mean", "kl_estimator": "k1"},
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_sum", "kl_estimator": "k2"},
    {"estimator": "grpo", "loss_aggregation": "constant", "scale_rewards": "none"},
    {"estimator": "grpo", "kl_penalty": "reward", "kl_estimator": "k1", "entropy_coef": 0.01},
    {"estimator": "rloo", "loss_aggregation": "token_mean"},
    {"estimator": "gae", "gamma": 0.9, "gae_lambda": 0.8},
    {"estimator": "gae", "critic": "separate", "kl_penalty": "reward"},
    {"estimator": "gvpo", "beta": 0.5},
    {"estimator": "gvpo", "beta": 0.5, "gvpo_reference": "reference"},
    {"estimator": "turn_grpo", "turn_gamma": 0.9, "loss_aggregation": "seq_mean_token_mean"},
    {"estimator": "turn_gae", "turn_gamma": 0.9, "gae_lambda": 0.8},
    {"estimator": "turn_gae", "critic": "separate", "kl_penalty": "reward"},
]


@pytest.mark.parametrize("algorithm", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_micro_batch_1x8_equals_8x1(algorithm):
    """Batch 8 in one micro-batch and batch 1 accumulated 8 times give the same update."""
    cfg = config(**algorithm)
    batch = synthetic_batch(small_model())
    whole, metrics = one_update(cfg, 8, batch)
    split, _ = one_update(cfg, 1, batch)
    assert max(d.abs().max().item() for d in whole) > 1e-5  # the update is not empty
    for a, b in zip(whole, split, strict=True):
        assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert metrics["train/optimizer_steps"] == 1.0


def stepwise(batch):
    """``batch`` as trajectories of two rows each (rows 2m and 2m + 1), with the rewards,
    flags and next state of a trajectory on its rows (the next state on its last row)."""
    pairs = torch.arange(len(batch)) // 2
    first = pairs * 2
    cut = batch.truncated[first]
    last = torch.arange(len(batch)) % 2 == 1
    next_ids, next_mask = batch.next_input_ids[first], batch.next_attention_mask[first]
    next_mask = next_mask * (last & cut)[:, None]  # the trajectory's next state, on its last row
    return dataclasses.replace(
        batch,
        rewards=batch.rewards[first],
        truncated=cut,
        terminated=~cut,
        trajectory_ids=pairs,
        next_input_ids=next_ids,
        next_attention_mask=next_mask,
    )


STEPWISE_CASES = [
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_mean", "kl_estimator": "k1"},
    {"estimator": "grpo", "loss_aggregation": "seq_mean_token_sum", "kl_penalty": "reward"},
    {"estimator": "rloo", "loss_aggregation": "constant"},
    {
        "estimator": "gae",
        "gamma": 0.9,
        "gae_lambda": 0.8,
        "loss_aggregation": "seq_mean_token_mean",
    },
    {"estimator": "gvpo", "beta": 0.5},
]


@pytest.mark.parametrize("algorithm", STEPWISE_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_stepwise_micro_batches_keep_a_trajectory_together(algorithm):
    """Rows of one trajectory are never split: 1 x 8 equals 8 x 1 with two-row trajectories."""
    cfg = config(**algorithm)
    batch = stepwise(synthetic_batch(small_model()))
    whole, metrics = one_update(cfg, 8, batch)
    split, _ = one_update(cfg, 1, batch)
    assert max(d.abs().max().item() for d in whole) > 1e-5
    for a, b in zip(whole, split, strict=True):
        assert_close(a, b, atol=2e-6, rtol=1e-4)
    assert metrics["train/num_trajectories"] == 4.0 and metrics["train/num_sequences"] == 8.0


def mismatched(batch, seed=1):
    """``batch`` as an engine would record it whose log-probs differ from the trainer's by
    up to +-0.8 per sampled token."""
    noise = torch.rand(batch.loss_mask.shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return dataclasses.replace(
        batch, behavior_logprobs=batch.behavior_logprobs + 1.6 * noise * batch.loss_mask
    )


MISMATCH_CASES = [
    ({"estimator": "grpo"}, {"correction": "tis"}, False),
    ({"estimator": "grpo"}, {"correction": "mis", "cap": 1.5}, False),
    (
        {"estimator": "grpo", "loss_aggregation": "seq_mean_token_mean"},
        {"correction": "tis", "level": "sequence", "cap": 1.5},
        False,
    ),
    ({"estimator": "gae"}, {"correction": "mis", "level": "sequence", "cap": 1.5}, False),
    ({"estimator": "turn_grpo"}, {"correction": "tis", "cap": 1.2}, False),
    ({"estimator": "rloo"}, {"correction": "mis", "level": "sequence", "cap": 1.5}, True),
]


@pytest.mark.parametrize(
    ("algorithm", "mismatch", "two_rows"), MISMATCH_CASES, ids=lambda c: str(c)
)
def test_micro_batch_1x8_equals_8x1_with_a_mismatch_correction(algorithm, mismatch, two_rows):
    """The importance weights are the step's, so splitting it still does not change the update."""
    cfg = config(mismatch, **algorithm)
    batch = mismatched(synthetic_batch(small_model()))
    if two_rows:
        batch = stepwise(batch)
    whole, metrics = one_update(cfg, 8, batch)
    split, _ = one_update(cfg, 1, batch)
    assert max(d.abs().max().item() for d in whole) > 1e-5
    for a, b in zip(whole, split, strict=True):
        assert_close(a, b, atol=2e-6, rtol=1e-4)
    changed = metrics.get("train/is_truncated_frac", metrics.get("train/is_masked_frac"))
    assert 0 < changed < 1  # the correction did something, and not everything
    assert metrics["train/mismatch_kl"] > 1e-3


@pytest.mark.parametrize("algorithm", CASES[:8], ids=lambda c: "-".join(map(str, c.values())))
def test_correction_none_is_bit_identical_to_the_uncorrected_update(algorithm):
    """Measuring the mismatch (an extra forward) leaves the update bit for bit as it was."""
    batch = mismatched(synthetic_batch(small_model()))
    plain, metrics = one_update(config({"measure": False}, **algorithm), 4, batch)
    measured, with_metrics = one_update(config({"measure": True}, **algorithm), 4, batch)
    for a, b in zip(plain, measured, strict=True):
        assert torch.equal(a, b)
    assert "train/mismatch_kl" not in metrics and with_metrics["train/mismatch_kl"] > 1e-3
    assert {k: v for k, v in with_metrics.items() if k in metrics} == metrics


@pytest.mark.parametrize("minibatches", [1, 2])
def test_the_update_measures_the_mismatch_it_would_correct(minibatches):
    """Without a correction the first optimizer step's forwards measure what a correction's
    own forward pass scores (on that step's rows: all of them, or its mini-batch's)."""
    batch = mismatched(synthetic_batch(small_model()))
    algo = {"num_minibatches": minibatches}
    _, free = one_update(config(**algo), 4, batch)
    _, scored = one_update(config({"correction": "tis", "cap": 10.0}, **algo), 4, batch)
    assert free["train/mismatch_kl"] > 1e-2
    if minibatches == 1:
        for key in ("train/mismatch_kl", "train/is_ratio_mean", "train/is_ratio_max"):
            assert free[key] == pytest.approx(scored[key], rel=1e-5)
    else:  # half the groups: the same kind of number, not the same one
        assert free["train/mismatch_kl"] != pytest.approx(scored["train/mismatch_kl"], rel=1e-5)


def test_a_correction_changes_the_update_of_a_mismatched_batch():
    """With the engine's log-probs off, tis trains against the trainer's own: another update."""
    batch = mismatched(synthetic_batch(small_model()))
    plain, _ = one_update(config(), 8, batch)
    corrected, _ = one_update(config({"correction": "tis"}), 8, batch)
    assert max((a - b).abs().max().item() for a, b in zip(plain, corrected, strict=True)) > 1e-4


def test_gvpo_gradient_is_weighted_policy_gradient():
    """grad gvpo_loss = -beta/(k-1) * sum_i w_i grad log pi(y_i), one group of k = 4."""
    model = small_model()
    batch = synthetic_batch(model, groups=1, size=4)
    anchor = (token_logprobs(small_model(seed=3), batch.input_ids, batch.attention_mask)).detach()
    beta, k = 0.3, 4

    logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)
    loss, _ = gvpo_loss(logprobs, anchor, batch.loss_mask, batch.rewards, batch.group_ids, beta)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    logprobs = token_logprobs(model, batch.input_ids, batch.attention_mask)
    w = gvpo_weights(
        logprobs, anchor, batch.loss_mask, batch.rewards, batch.group_ids, beta
    ).detach()
    sequence_logp = (logprobs * batch.loss_mask).sum(-1)  # log pi(y_i)
    expected = torch.autograd.grad(
        -beta / (k - 1) * (w * sequence_logp).sum(), list(model.parameters())
    )
    assert max(g.abs().max().item() for g in grads) > 1e-6
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e, atol=1e-6, rtol=1e-4)


def recipe_gvpo_update(batch, beta, micro_groups):
    """One SGD step (lr 1) of the authors' verl recipe (recipe/gvpo: compute_policy_loss_gvpo
    and the actor's update_policy), written out: per micro-batch,

        rtheta_i    = beta * (sum_t log pi(y_i) - sum_t log pi_old(y_i))
        r_minus_avg = R_i - mean of R over i's group      (GRPO without the std)
        pg_loss     = sum_i 0.5 * ((rtheta_i - mean of rtheta over i's group) - r_minus_avg_i)^2
                      / (n - 1)
        (pg_loss / gradient_accumulation).backward()

    with gradient_accumulation = the number of micro-batches, then one optimizer step."""
    policy = small_model()
    before = [p.detach().clone() for p in policy.parameters()]
    n = int((batch.group_ids == 0).sum())
    groups = batch.group_ids.unique().tolist()
    micros = [groups[i : i + micro_groups] for i in range(0, len(groups), micro_groups)]
    for micro in micros:
        rows = torch.isin(batch.group_ids, torch.tensor(micro)).nonzero().squeeze(-1)
        mask = batch.loss_mask[rows]
        log_prob = token_logprobs(policy, batch.input_ids[rows], batch.attention_mask[rows])
        old_log_prob = log_prob.detach()  # on-policy, as the recipe does
        rtheta = ((log_prob * mask).sum(-1) - (old_log_prob * mask).sum(-1)) * beta
        uid, rewards = batch.group_ids[rows], batch.rewards[rows]
        pg_loss = 0
        for i in range(len(rows)):
            same = uid == uid[i]
            r_minus_avg = rewards[i] - rewards[same].mean()
            pg_loss += 0.5 * ((rtheta[i] - rtheta[same].detach().mean()) - r_minus_avg) ** 2
        pg_loss = pg_loss / (n - 1)
        (pg_loss / len(micros)).backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= p.grad
    return [p.detach() - b for p, b in zip(policy.parameters(), before, strict=True)]


def test_gvpo_sum_reduction_reproduces_the_recipe():
    """gvpo_group_reduction='sum' is the recipe's update; 'mean' is it divided by the groups
    of a micro-batch (here 8 rows / 4 per group = 2)."""
    batch = synthetic_batch(small_model(), groups=4, size=4)
    recipe = recipe_gvpo_update(batch, beta=0.5, micro_groups=2)
    summed, _ = one_update(config(estimator="gvpo", beta=0.5, gvpo_group_reduction="sum"), 8, batch)
    mean, _ = one_update(config(estimator="gvpo", beta=0.5), 8, batch)
    assert max(d.abs().max().item() for d in recipe) > 1e-5
    for ours, theirs, averaged in zip(summed, recipe, mean, strict=True):
        assert_close(ours, theirs, atol=2e-6, rtol=1e-4)
        assert_close(averaged * 2, theirs, atol=2e-6, rtol=1e-4)


def test_gvpo_with_reference_is_nontrivial_on_the_first_update():
    """With pi_theta' = the reference, the first update moves the policy (rewards differ),
    and after it the implicit rewards are no longer zero."""
    cfg = config(estimator="gvpo", beta=0.5, gvpo_reference="reference")
    batch = synthetic_batch(small_model())
    deltas, metrics = one_update(cfg, 8, batch)
    assert max(d.abs().max().item() for d in deltas) > 1e-4
    assert metrics["loss/policy"] > 0
    # A second update from the moved policy: Delta_i = log pi - log ref != 0.
    policy, ref = small_model(), small_model().requires_grad_(False)
    params = list(policy.parameters())
    for p, d in zip(params, deltas, strict=True):
        p.data += d
    scored = logprobs_and_values(policy, ref, None, batch, cfg)
    estimated, _ = estimate(scored, ALGORITHMS["gvpo"].estimator(cfg.algorithm), cfg)
    second = policy_update(policy, estimated, sgd(params), cfg)
    assert abs(second["gvpo/implicit_reward_mean"]) > 1e-4


def test_num_iterations_and_minibatches_take_several_steps_with_clipping():
    cfg = config(
        estimator="grpo", num_iterations=3, num_minibatches=2, clip_eps_low=0.01, clip_eps_high=0.01
    )
    batch = synthetic_batch(small_model())
    policy = small_model()
    scored = logprobs_and_values(policy, None, None, batch, cfg)
    estimated, _ = estimate(scored, ALGORITHMS["grpo"].estimator(cfg.algorithm), cfg)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    optim = Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    metrics = policy_update(policy, estimated, optim, cfg, seed=0)
    assert metrics["train/optimizer_steps"] == 6.0
    # Later passes see the policy moved away from the behavior log-probs: ratios clip.
    assert metrics["train/clip_frac"] > 0
    with pytest.raises(ValueError, match="num_minibatches=3 exceeds the 2 groups"):
        policy_update(policy, estimated, optim, config(num_minibatches=3))


def test_ppo_estimators_refuse_groups_without_behavior_logprobs():
    model = small_model()
    batch = dataclasses.replace(synthetic_batch(model), has_behavior_logprobs=False)
    with pytest.raises(ValueError, match=r"uses a PPO ratio.*estimator=.gvpo."):
        logprobs_and_values(model, None, None, batch, config(estimator="grpo"))
    # GVPO scores them under the current policy instead.
    scored = logprobs_and_values(model, None, None, batch, config(estimator="gvpo", beta=0.5))
    with torch.no_grad():
        expected = token_logprobs(model, batch.input_ids, batch.attention_mask) * batch.loss_mask
    assert_close(scored.old_logprobs, expected)


class TwoTurnEnv(Environment):
    """Answers every turn with the same message. Scenario 'finish' ends at turn 2 with
    reward 1 (terminated); scenario 'cut' is cut by a limit after turn 1 (truncated)."""

    async def reset(self, *, seed=None, options=None):
        self.scenario, self.turns = options["scenario"], 0
        return [user("start")], {}

    async def step(self, message):
        self.turns += 1
        finish = self.scenario.id == "finish"
        done = finish and self.turns == 2
        return StepResult([user("again")], float(done), done, not finish, {})


@pytest.mark.anyio
async def test_gae_bootstraps_a_truncated_episode_from_its_real_next_state(
    tiny_agent, scripted_engine
):
    """The truncated episode 'cut' ends where 'finish' starts its second turn: its next
    state is exactly that prompt, its bootstrap that state's value, which the value loss
    trains (on 'finish') - unlike values[last], where no token is ever chosen."""
    scripted_engine(tiny_agent, ["ok"] * 3)
    env = TwoTurnEnv()
    finish = await run_episode(tiny_agent, env, Scenario(id="finish"))
    cut = await run_episode(tiny_agent, env, Scenario(id="cut"))
    assert finish.terminated and len(finish.turns) == 2
    assert cut.truncated and len(cut.turns) == 1
    group = TrajectoryGroup(scenario=finish.scenario, trajectories=[finish, cut])
    pad = tiny_agent.tokenizer.pad_token_id
    batch = build_batch([group], pad_token_id=pad, encode=tiny_agent.encode)
    state = finish.turns[1].prompt_ids  # [start, ok, again] + the generation prompt
    assert batch.next_attention_mask[0].sum() == 0  # terminated: no next state
    assert batch.next_input_ids[1, : len(state)].tolist() == state
    assert batch.next_attention_mask[1].sum() == len(state)

    cfg = config(estimator="gae", gamma=1.0, gae_lambda=1.0, value_coef=1.0, value_clip=None)
    policy = tiny_agent.model
    value = ValueModel(policy)
    torch.nn.init.normal_(value.head.weight, std=0.05, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(value.head.parameters(), lr=3e-3)  # train the critic only
    optim = Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cuda", enabled=False),
    )
    estimator = ALGORITHMS["gae"].estimator(cfg.algorithm)

    def bootstrap_and_state_value():
        scored = logprobs_and_values(policy, None, value, batch, cfg)
        last = len(cut.turns[0].prompt_ids) + len(cut.turns[0].completion_ids) - 1
        assert scored.next_values[0] == 0
        # 'cut' bootstraps from the value of finish's turn-2 state, not its own values[last].
        assert_close(scored.next_values[1], scored.values[0, len(state) - 1], atol=1e-5, rtol=1e-5)
        assert abs(scored.next_values[1] - scored.values[1, last]) > 1e-4
        return scored, scored.next_values[1].item()

    scored, before = bootstrap_and_state_value()
    for _ in range(5):
        estimated, _ = estimate(scored, estimator, cfg)
        policy_update(policy, estimated, optim, cfg, value_model=value)
        scored, after = bootstrap_and_state_value()
    # The state's value target on 'finish' is its return, 1: the bootstrap moved to near it
    # (-0.10 -> 1.09 here; the states of turn 1, shared by both episodes, pull it a little).
    assert abs(after - 1.0) < 0.3 < abs(before - 1.0), (before, after)


@pytest.mark.anyio
async def test_trainer_gives_gae_the_next_states_of_truncated_episodes(tiny_agent, tmp_path):
    cfg = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "gae"},
        generation={"max_new_tokens": 3},
        rollout={"scenarios_per_step": 2, "num_generations": 2},
        eval={"every": 0},
        run={"max_steps": 1, "output_dir": str(tmp_path / "run")},
    )
    scenarios = [Scenario(id="cut"), Scenario(id="finish")]
    trainer = Trainer(tiny_agent, TwoTurnEnv(), None, cfg, scenarios=scenarios)
    seen = []
    original = trainer.estimator

    def spy(batch, values=None):
        seen.append(batch)
        return original(batch, values)

    trainer.estimator = spy
    head = trainer.value_model.head.weight
    torch.nn.init.normal_(head, std=0.05, generator=torch.Generator().manual_seed(1))
    metrics = await trainer.step()
    assert metrics["train/optimizer_steps"] == 1.0
    (batch,) = seen
    cut = batch.truncated & ~batch.terminated
    assert bool(cut.any()) and bool(batch.next_attention_mask[cut].any(-1).all())
    assert bool((batch.next_values[~cut] == 0).all()) and bool((batch.next_values[cut] != 0).all())
    trainer.close()
