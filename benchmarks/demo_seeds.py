"""The demo over seeds: held-out reward before and after RL, and wall time, per seed.

Runs ``turnrl demo --seed N`` as a user would, one process per seed, and prints
a Markdown table (seed, before, after, gain, wall time) and the smallest gain.

    python benchmarks/demo_seeds.py --seeds 0 1 2 3 4 --output runs/demo-seeds

Run it alone on the machine for the wall times: two demos at once share the
cores (``--jobs 2`` halves the total time and leaves the rewards as they are,
since each demo's threads and seeds are its own).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_FIELDS = {
    "before": r"held-out reward before RL\s*:\s*([-\d.]+)",
    "after": r"held-out reward after RL\s*:\s*([-\d.]+)",
    "gain": r"gain\s*:\s*([-+\d.]+)",
}


def run_seed(seed: int, output: Path, extra: list[str]) -> dict[str, float]:
    """One ``turnrl demo`` run: its printed rewards and its wall time."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "turnrl.cli", "demo", "--seed", str(seed)]
    done = subprocess.run(
        [*command, "--output", str(output / f"seed{seed}"), "--overwrite", *extra],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    (output / f"seed{seed}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: turnrl demo exited {done.returncode}; see its log")
    row = {name: float(re.search(p, done.stdout).group(1)) for name, p in _FIELDS.items()}
    return row | {"seed": seed, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", default="runs/demo-seeds", help="run directories and logs")
    parser.add_argument("--jobs", type=int, default=1, help="demos at once (default: 1)")
    parser.add_argument("--steps", type=int, help="RL steps (default: the demo's)")
    parser.add_argument(
        "--warmstart-steps", type=int, help="warm-start steps (default: the demo's)"
    )
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    extra = ["--steps", str(args.steps)] if args.steps else []
    if args.warmstart_steps:
        extra += ["--warmstart-steps", str(args.warmstart_steps)]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: run_seed(s, output, extra), args.seeds))
    print("| seed | before RL | after RL | gain | wall time |")
    print("|---|---|---|---|---|")
    for r in rows:
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        print(
            f"| {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {r['gain']:+.3f} "
            f"| {minutes} min {seconds} s |"
        )
    print(f"smallest gain {min(r['gain'] for r in rows):+.3f}")


if __name__ == "__main__":
    main()
