"""Does a refactor change what training computes? Run fixed-seed jobs on two commits, compare.

Each case is a fixed-seed run through the command line (the interface both
commits share): the demo, and short experiments with the GAE critic, GVPO,
RLOO and LoRA. The script checks out ``--base`` into a temporary git worktree,
runs every case under the base code and under the working tree (one process
each, ``PYTHONPATH`` pointing at the tree), then compares, record by record:

- ``metrics.jsonl``: every metric the base run logged, bit for bit (``perf/*``
  timings and memory aside); metrics the new code adds are listed, not compared;
- ``eval_samples.jsonl``: the evaluation episodes, exactly (fields the new code
  adds to a record, such as a turn's ``policy_version``, are listed, not compared);
- ``final/``: every tensor of the saved model (and value head), bit for bit.

    python benchmarks/same_behaviour.py --base HEAD~3             # quick cases
    python benchmarks/same_behaviour.py --base HEAD~3 --full-demo # + the whole demo

Exits 1 and names the first differing values when a case differs. Both sides
run on this machine one after the other, so float arithmetic is the same. A case
that differs is run once more under the base: if the base does not reproduce
itself, the case is reported as not reproducible instead (a comparison says
nothing there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "examples/configs/arithmetic.yaml"
SHORT = [
    "warmstart.steps=40",
    "run.max_steps=6",
    "eval.every=3",
    "eval.max_scenarios=24",
    "run.checkpoint_every=0",
    "run.plot=false",
    "run.progress=false",
]


def _train(*overrides: str) -> list[str]:
    sets = [arg for o in [*SHORT, *overrides] for arg in ("--set", o)]
    return ["train", EXPERIMENT, *sets]


CASES: dict[str, list[str]] = {
    "demo-short": ["demo", "--seed", "0", "--warmstart-steps", "60", "--steps", "8"],
    "grpo": _train(),
    "gae": _train("algorithm.estimator=gae"),
    "gae-separate": _train("algorithm.estimator=gae", "algorithm.critic=separate"),
    "gvpo": _train("algorithm.estimator=gvpo"),
    "rloo": _train("algorithm.estimator=rloo"),
    "lora": _train("model.lora={r: 8, alpha: 16}", "optim.lr=2e-3"),
}
# Explicit lengths: the defaults may move between the two commits.
FULL_DEMO = ["demo", "--seed", "0", "--warmstart-steps", "480", "--steps", "90"]


def run_case(tree: Path, args: list[str], out: Path) -> float:
    """Run ``python -m turnrl.cli ARGS`` with ``tree``'s code, in ``tree``; return seconds."""
    if args[0] == "demo":
        command = [*args, "--output", str(out), "--overwrite"]
    else:
        command = [*args, "--set", f"run.output_dir={out}", "--overwrite"]
    env = os.environ | {"PYTHONPATH": str(tree), "TURNRL_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "turnrl.cli", *command],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed in {tree} (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return time.perf_counter() - started


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_metrics(base: Path, new: Path) -> tuple[list[str], set[str]]:
    """Differences between two metrics.jsonl files, and the keys only the new one has."""
    old_rows, new_rows = _records(base), _records(new)
    problems, added = [], set()
    if len(old_rows) != len(new_rows):
        problems.append(f"metrics.jsonl: {len(old_rows)} records before, {len(new_rows)} after")
    for a, b in zip(old_rows, new_rows, strict=False):
        added |= set(b) - set(a)
        for key, value in a.items():
            if key.startswith("perf/"):
                continue
            if key not in b:
                problems.append(f"step {a.get('step')}: {key} no longer logged")
            elif b[key] != value and not (value != value and b[key] != b[key]):  # NaN == NaN
                problems.append(f"step {a.get('step')}: {key} {value!r} -> {b[key]!r}")
    return problems, added


def compare_tensors(base: Path, new: Path) -> list[str]:
    """Tensors of every ``*.safetensors`` under ``base`` that differ in ``new``."""
    from safetensors.torch import load_file

    problems = []
    for path in sorted(base.rglob("*.safetensors")):
        other = new / path.relative_to(base)
        if not other.is_file():
            problems.append(f"{other} missing")
            continue
        a, b = load_file(path), load_file(other)
        if set(a) != set(b):
            problems.append(f"{path.name}: tensor names differ")
        for name in sorted(set(a) & set(b)):
            if a[name].dtype != b[name].dtype or not a[name].equal(b[name]):
                problems.append(f"{path.relative_to(base)}:{name} differs")
    return problems


def compare_run(base: Path, new: Path) -> tuple[list[str], set[str]]:
    """Everything that differs between two run directories."""
    problems, added = compare_metrics(base / "metrics.jsonl", new / "metrics.jsonl")
    samples = "eval_samples.jsonl"
    if (base / samples).is_file():
        old_rows, new_rows = _records(base / samples), _records(new / samples)
        stripped = [_like(b, a, added) for a, b in zip(old_rows, new_rows, strict=False)]
        if len(old_rows) != len(new_rows) or old_rows != stripped:
            problems.append(f"{samples} differs")
    problems += compare_tensors(base / "final", new / "final")
    return problems, added


def _like(new: object, old: object, added: set[str], path: str = "sample") -> object:
    """``new`` without the dict keys ``old`` lacks (recorded in ``added``), recursively."""
    if isinstance(new, dict) and isinstance(old, dict):
        added |= {f"{path}.{k}" for k in set(new) - set(old)}
        return {k: _like(v, old[k], added, f"{path}.{k}") for k, v in new.items() if k in old}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_like(b, a, added, f"{path}[]") for a, b in zip(old, new, strict=True)]
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--full-demo", action="store_true", help="also the whole default demo")
    parser.add_argument("--keep", help="keep the run directories here")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in args.cases}
    if args.full_demo:
        cases["demo-full"] = FULL_DEMO
    work = Path(args.keep or tempfile.mkdtemp(prefix="same-behaviour-"))
    work.mkdir(parents=True, exist_ok=True)
    base_tree = work / "base-tree"
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True
    )
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(base_tree), args.base],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    failed = False
    try:
        for name, case in cases.items():
            s_old = run_case(base_tree, case, work / "base" / name)
            s_new = run_case(ROOT, case, work / "new" / name)
            problems, added = compare_run(work / "base" / name, work / "new" / name)
            verdict = "identical" if not problems else f"DIFFERS ({len(problems)})"
            if problems:  # a control: does the base reproduce itself?
                run_case(base_tree, case, work / "base-again" / name)
                if compare_run(work / "base" / name, work / "base-again" / name)[0]:
                    verdict = "NOT REPRODUCIBLE (the base differs from itself)"
            print(f"{name:14s} {verdict:16s} base {s_old:6.1f} s  new {s_new:6.1f} s", flush=True)
            for line in problems[:10]:
                print(f"    {line}")
            if added:
                print(f"    new metrics (not compared): {', '.join(sorted(added))}")
            failed |= bool(problems)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
