"""Peak memory: full fine-tuning with a reference copy vs LoRA with the adapter-free reference.

Each setting runs in its own process (so ``ru_maxrss`` is that run's peak): the
~10M-parameter tiny model (``build_tiny_model("10m")``), arithmetic episodes,
B = 8 x G = 8, beta 0.04 (a reference model is needed), a few training steps.
``--hidden-size`` and ``--layers`` widen and deepen the same architecture, to
see where weights (and so LoRA's savings) dominate the peak.

    python benchmarks/lora_memory.py --steps 3 --repeats 3
    python benchmarks/lora_memory.py --steps 2 --repeats 1 --hidden-size 1024 --layers 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


def child(mode: str, steps: int, hidden_size: int | None, layers: int | None) -> None:
    import torch

    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.tiny import build_tiny_model, build_tiny_tokenizer
    from turnrl.agents.transformers import TransformersAgent
    from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
    from turnrl.training.config import TrainingConfig
    from turnrl.training.trainer import Trainer

    torch.manual_seed(0)
    overrides = {}
    if hidden_size:
        heads = hidden_size // 64
        overrides |= {
            "hidden_size": hidden_size,
            "intermediate_size": 3 * hidden_size,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
        }
    if layers:
        overrides["num_hidden_layers"] = layers
    agent = TransformersAgent(
        build_tiny_model("10m", **overrides),
        build_tiny_tokenizer(),
        sampling=SamplingParams(max_new_tokens=6),
    )
    model = {"lora": {"r": 16, "alpha": 32}} if mode == "lora" else {}
    config = TrainingConfig.from_profile(
        "balanced",
        model=model,
        optim={"lr": 1e-4, "micro_batch_size": 32},
        generation={"max_new_tokens": 6},
        rollout={"scenarios_per_step": 8, "num_generations": 8},
        run={"output_dir": tempfile.mkdtemp(), "max_steps": steps, "save_final": False},
    )
    trainer = Trainer(agent, ArithmeticEnvironment(make_scenarios(n=64)), None, config)
    asyncio.run(trainer.train())
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_rss_mb": peak, "trainable": trainable}))


def main(args: argparse.Namespace) -> None:
    peaks: dict[str, list[float]] = {"full": [], "lora": []}
    trainable = {}
    for _ in range(args.repeats):
        for mode in peaks:
            out = subprocess.run(
                [
                    sys.executable,
                    str(HERE),
                    "--child",
                    mode,
                    f"--steps={args.steps}",
                    f"--hidden-size={args.hidden_size or 0}",
                    f"--layers={args.layers or 0}",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
            peaks[mode].append(result["peak_rss_mb"])
            trainable[mode] = result["trainable"]
    print("| setting | trainable parameters | peak RSS MB (median) |")
    print("|---|---|---|")
    for mode, label in (
        ("full", "full fine-tuning + reference copy"),
        ("lora", "LoRA r=16, adapter-free reference"),
    ):
        print(f"| {label} | {trainable[mode]:,} | {statistics.median(peaks[mode]):.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=0, help="0: the 10m size's 384")
    parser.add_argument("--layers", type=int, default=0, help="0: the 10m size's 6")
    parser.add_argument("--child", choices=("full", "lora"))
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child, arguments.steps, arguments.hidden_size, arguments.layers)
    else:
        main(arguments)
