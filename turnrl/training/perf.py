"""A step's ``perf/*`` metrics: where its time went, how much it generated, peak memory."""

from __future__ import annotations

import resource
import time

import torch

from turnrl.agents.inference import InferenceEngine


class StepClock:
    """Times a step's rollout and update and counts the engine's work in between.

    ``StepClock(engine)`` at the start of a step, :meth:`rollout_done` after the
    rollout, :meth:`metrics` at the end.
    """

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        stats = engine.stats
        self.start = time.perf_counter()
        self.rollout_end = self.start
        self.calls, self.tokens, self.generate_s = (
            stats.generate_calls,
            stats.generated_tokens,
            stats.generate_s,
        )

    def rollout_done(self) -> None:
        """Mark the end of the rollout."""
        self.rollout_end = time.perf_counter()

    def metrics(self, device: torch.device) -> dict[str, float]:
        """``perf/*`` of the step so far."""
        end, stats = time.perf_counter(), self.engine.stats
        rollout_s = self.rollout_end - self.start
        generated = stats.generated_tokens - self.tokens
        return {
            "perf/rollout_s": rollout_s,
            "perf/update_s": end - self.rollout_end,
            "perf/step_s": end - self.start,
            "perf/generated_tokens": float(generated),
            "perf/gen_tokens_per_s": generated / max(rollout_s, 1e-9),
            "perf/generate_calls": float(stats.generate_calls - self.calls),
            "perf/generate_s": stats.generate_s - self.generate_s,
        } | peak_memory(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """``perf/peak_rss_mb`` of this process so far and, on CUDA, ``perf/max_allocated_mb``."""
    out = {"perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["perf/max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
