"""The optimizer's schedule, its step that skips non-finite gradients, and autocast."""

import contextlib
import math

import torch

from turnrl.training.optim import (
    Optimization,
    _can_fuse,
    autocast,
    optimizer_step,
    warmup_cosine,
)


def test_warmup_cosine_hand_worked():
    schedule = warmup_cosine(warmup_steps=2, total_steps=6, min_ratio=0.1)
    # warmup: (step + 1) / 2; then 0.1 + 0.9 * 0.5 * (1 + cos(pi * (step - 2) / 4))
    assert [schedule(0), schedule(1), schedule(2)] == [0.5, 1.0, 1.0]
    assert math.isclose(schedule(4), 0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # 0.55
    assert math.isclose(schedule(6), 0.1) and math.isclose(schedule(60), 0.1)


def _optim(param):
    optimizer = torch.optim.SGD([param], lr=1.0)
    return Optimization(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1)),
        torch.amp.GradScaler("cuda", enabled=False),
    )


def test_optimizer_step_clips_and_steps():
    param = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    optim = _optim(param)
    param.grad = torch.tensor([3.0, 4.0])  # norm 5, clipped to 1: (0.6, 0.8)
    norm, skipped = optimizer_step(optim, max_grad_norm=1.0)
    assert norm == 5.0 and not skipped
    torch.testing.assert_close(param.detach(), torch.tensor([0.4, 0.2]))
    assert param.grad is None and optim.scheduler.get_last_lr() == [0.5]


def test_optimizer_step_skips_a_nonfinite_gradient():
    param = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    optim = _optim(param)
    param.grad = torch.tensor([float("nan"), 1.0])
    norm, skipped = optimizer_step(optim, max_grad_norm=None)
    assert skipped and math.isnan(norm)
    assert param.detach().tolist() == [1.0, 1.0]  # untouched
    assert param.grad is None and optim.scheduler.get_last_lr() == [1.0]  # not advanced


def test_fused_adamw_only_for_floating_point_on_one_device_type():
    assert _can_fuse([torch.zeros(2), torch.zeros(3)])
    assert not _can_fuse([torch.zeros(2), torch.zeros(2, dtype=torch.long)])


def test_autocast_is_a_no_op_in_fp32():
    assert isinstance(autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with autocast(torch.device("cpu"), "bf16"):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.bfloat16
