"""Data parallelism over torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N script.py`` (and ``--nnodes`` / ``--rdzv-endpoint``
across hosts) starts N copies of an unchanged training script. Each copy finds
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment; the Trainer
reads them through :func:`context_from_env`, joins the process group (nccl on
CUDA, gloo on CPU) and then:

- plays its own share of every step's scenarios, whole groups per rank, so
  group statistics (GRPO, RLOO, GVPO) never need another rank;
- updates through ``DistributedDataParallel`` (generation uses the unwrapped
  module), with ``no_sync`` on all but the last micro-batch of an optimizer
  step;
- divides its losses by normalizers summed over all ranks (token and
  sequence counts, GVPO's group count), and multiplies them by the world size,
  because DDP averages gradients: the update is the one a single process would
  make on all ranks' groups;
- takes batch-level statistics (``scale_rewards="batch"``, advantage
  whitening) over all ranks, and averages logged metrics over ranks;
- leaves writing (logs, ``metrics.jsonl``, wandb, the saved model) to rank 0.

A rank that raises stops the job: torchrun's agent terminates the other ranks
when one exits with an error and prints the failing rank's traceback
(:func:`torch.distributed.elastic.multiprocessing.errors.record` on the
script's ``main`` makes it a full one).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Attributes:
        rank: Global rank, 0..world_size-1.
        world_size: Number of processes.
        local_rank: Rank on this host (which GPU to use).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0


def context_from_env(environ: dict[str, str] | None = None) -> DistributedContext:
    """The context torchrun describes in ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``.

    Without those variables (a plain ``python script.py``) it is a single process.

    Raises:
        ValueError: A variable is not an integer or the ranks are out of range.
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({e})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun variables: WORLD_SIZE={world}, RANK={rank}")
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def init_process_group(ctx: DistributedContext, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group (once) and return this rank's device.

    nccl and ``cuda:LOCAL_RANK`` when CUDA is available, gloo and the CPU
    otherwise. A no-op returning the default device for a single process.
    """
    if torch.cuda.is_available():
        index = ctx.local_rank if ctx.enabled else torch.cuda.current_device()
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return device


def shutdown(*, wait_for_others: bool = True) -> None:
    """Leave the process group, if this process joined one.

    Args:
        wait_for_others: First wait at a barrier for every rank to get here,
            then give gloo's worker threads a moment with the GIL released.
            Those threads free each finished collective's work object, which
            may need the GIL to release its tensors; a process group torn down
            (its threads joined, with the GIL held) while one of them waits for
            the GIL deadlocks the process at exit, which was seen on CPU in
            about one run in seven. Pass False after an error, when the other
            ranks may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
            time.sleep(0.2)
        dist.destroy_process_group()


def shard(items: Sequence[T], ctx: DistributedContext) -> list[T]:
    """This rank's share: items ``rank, rank + world_size, ...``.

    Raises:
        ValueError: The items do not divide evenly (ranks would do unequal work
            and disagree on the number of optimizer steps).
    """
    if len(items) % ctx.world_size:
        raise ValueError(
            f"{len(items)} items do not split evenly over {ctx.world_size} ranks; make "
            "rollout.scenarios_per_step a multiple of the number of processes"
        )
    return list(items[ctx.rank :: ctx.world_size])


def all_sum(values: Sequence[float], ctx: DistributedContext) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather(item: T, ctx: DistributedContext) -> list[T]:
    """Every rank's ``item``, in rank order (``[item]`` for a single process)."""
    if not ctx.enabled:
        return [item]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, item)
    return gathered


def all_agree(flag: bool, ctx: DistributedContext) -> bool:
    """Whether ``flag`` is true on every rank."""
    if not ctx.enabled:
        return flag
    return all_sum([float(bool(flag))], ctx)[0] == ctx.world_size


def mean_metrics(
    metrics: dict[str, float], ctx: DistributedContext, weight: float = 1.0
) -> dict[str, float]:
    """Average each metric over the ranks that report it, weighted by ``weight``.

    Ranks may report different keys (a reward component seen on one rank only);
    each key is averaged over the ranks that have it.
    """
    if not ctx.enabled:
        return dict(metrics)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, (metrics, weight))
    out: dict[str, float] = {}
    keys = sorted({k for m, _ in gathered for k in m})
    for key in keys:
        pairs = [(m[key], w) for m, w in gathered if key in m and m[key] is not None]
        total = sum(w for _, w in pairs)
        if pairs and total > 0:
            out[key] = sum(float(v) * w for v, w in pairs) / total
        elif pairs:
            out[key] = sum(float(v) for v, _ in pairs) / len(pairs)
    return out


@contextlib.contextmanager
def maybe_no_sync(modules: Sequence[torch.nn.Module], sync: bool) -> Iterator[None]:
    """``no_sync()`` on every DDP-wrapped module unless ``sync`` (plain modules: nothing)."""
    with contextlib.ExitStack() as stack:
        if not sync:
            for module in modules:
                if isinstance(module, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(module.no_sync())
        yield


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
