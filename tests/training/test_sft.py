"""Supervised warm-start: learns, masks earlier turns when asked, splits steps exactly."""

import random

import pytest
import torch

from turnrl.agents.tiny import REASONING_CHAT_TEMPLATE
from turnrl.agents.transformers import TransformersAgent
from turnrl.environments.tasks import demonstration, make_scenarios
from turnrl.training.batch import build_batch
from turnrl.training.logprobs import token_logprobs
from turnrl.training.offline import trajectory_from_messages
from turnrl.training.sft import last_turn_rows, supervised_warmstart
from turnrl.types import TrajectoryGroup, assistant, user


def demos():
    scenarios = make_scenarios(n=8, seed=3)
    return [demonstration(s) for s in scenarios[:4]] + [
        demonstration(s, wrong=[s.data["answer"] + 1]) for s in scenarios[4:]
    ]


def test_loss_falls_and_micro_batches_do_not_change_the_steps(tiny_path):
    runs = []
    for micro in (16, 3):
        torch.manual_seed(0)
        agent = TransformersAgent.from_pretrained(tiny_path)
        losses = supervised_warmstart(
            agent, demos(), steps=8, lr=3e-3, batch_size=16, micro_batch_size=micro, log_every=100
        )
        runs.append(losses)
    assert runs[0][-1] < runs[0][0] - 0.5
    assert runs[0] == pytest.approx(runs[1], rel=1e-4)


def test_train_on_last_ignores_earlier_turns(tiny_path):
    """With a retry demonstration, 'last' trains the final answer only: its first steps'
    losses differ from 'all', which also trains the wrong attempt."""
    losses = {}
    for mode in ("all", "last"):
        torch.manual_seed(0)
        agent = TransformersAgent.from_pretrained(tiny_path)
        losses[mode] = supervised_warmstart(
            agent, demos()[4:], steps=1, batch_size=4, train_on=mode, log_every=100
        )
    assert losses["all"][0] != pytest.approx(losses["last"][0], rel=1e-3)


def test_bad_arguments(tiny_agent):
    with pytest.raises(ValueError, match="no demonstrations"):
        supervised_warmstart(tiny_agent, [], steps=1)
    with pytest.raises(ValueError, match="train_on must be"):
        supervised_warmstart(tiny_agent, demos(), steps=1, train_on="first")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_grad_norm must be > 0 or None"):
            supervised_warmstart(tiny_agent, demos(), steps=1, max_grad_norm=bad)


def test_the_gradient_is_clipped_to_max_grad_norm(tiny_path, monkeypatch):
    """Each step's gradient is clipped (norm 1 by default; None: not at all), and AdamW's
    betas are (0.9, 0.95) unless given."""
    clipped, betas = [], []
    clip = torch.nn.utils.clip_grad_norm_
    step = torch.optim.AdamW.step

    def recording_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        norm = clip(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        clipped.append((max_norm, float(norm), float(after)))
        return norm

    def recording_step(self, *args, **kwargs):
        betas.append(self.param_groups[0]["betas"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for max_grad_norm, steps in ((1.0, 2), (None, 1)):
        agent = TransformersAgent.from_pretrained(tiny_path)
        kwargs = {} if max_grad_norm == 1.0 else {"max_grad_norm": None, "betas": (0.9, 0.999)}
        supervised_warmstart(agent, demos(), steps=steps, lr=3e-3, batch_size=8, **kwargs)
    assert [c[0] for c in clipped] == [1.0, 1.0]  # the default run's two steps, then none
    assert all(norm > 1.0 and after == pytest.approx(1.0, rel=1e-3) for _, norm, after in clipped)
    assert betas == [(0.9, 0.95), (0.9, 0.95), (0.9, 0.999)]


def test_stop_when_ends_the_warm_start_at_a_check(tiny_path):
    """``stop_when`` is asked every ``check_every`` steps; True ends the warm-start there."""
    agent = TransformersAgent.from_pretrained(tiny_path)
    asked = []

    def stop_when(step):
        asked.append(step)
        return step >= 4

    losses = supervised_warmstart(
        agent, demos(), steps=10, batch_size=4, stop_when=stop_when, check_every=2, log_every=100
    )
    assert asked == [2, 4] and len(losses) == 4


def test_train_on_last_finds_the_last_turn_in_step_wise_rows(tiny_path):
    """With a template that drops earlier thinking, each turn is a row of its own: 'last'
    keeps one row per demonstration, the loss on its last reply only."""
    agent = TransformersAgent.from_pretrained(tiny_path)
    agent.tokenizer.chat_template = REASONING_CHAT_TEMPLATE
    opening = [user("What is 1+2?"), assistant("<think>1+2=3</think>3"), user("And 2+2?")]
    conversations = [[*opening, assistant(f"<think>2+2={n}</think>{n}")] for n in (4, 5, 14)]
    trajectories = [trajectory_from_messages(agent, c) for c in conversations]
    groups = [TrajectoryGroup(scenario=t.scenario, trajectories=[t]) for t in trajectories]
    data = build_batch(groups, pad_token_id=agent.tokenizer.pad_token_id)
    assert len(data) == 6  # two rows per demonstration
    kept = last_turn_rows(data, [1, 1, 1])
    assert len(kept) == 3 and kept.trajectory_ids.tolist() == [0, 1, 2]
    for row, trajectory in enumerate(trajectories):
        last = trajectory.turns[-1]
        start = len(last.prompt_ids)
        ids = kept.input_ids[row, : start + len(last.completion_ids)].tolist()
        assert ids == last.prompt_ids + last.completion_ids
        assert kept.loss_mask[row].nonzero().squeeze(-1).tolist() == list(
            range(start, start + len(last.completion_ids))
        )
    # supervised_warmstart trains on exactly those tokens: its first loss, at the
    # initial weights, is their mean negative log-likelihood over the sampled rows.
    rng = random.Random(0)  # the rows supervised_warmstart samples
    rows = torch.tensor([rng.randrange(3) for _ in range(8)])
    picked = kept.select(rows)
    with torch.no_grad():
        logprobs = token_logprobs(agent.model, picked.input_ids, picked.attention_mask)  # (8, T)
    expected = -(logprobs * picked.loss_mask).sum() / picked.loss_mask.sum()
    (loss,) = supervised_warmstart(
        agent, conversations, steps=1, batch_size=8, train_on="last", max_grad_norm=None
    )
    assert loss == pytest.approx(float(expected), rel=1e-5)
