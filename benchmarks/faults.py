"""The fault catalogue: bad inputs and faults a hostile user tries, and what turnrl does.

Every case runs in a fresh process, in its own directory, with a time limit,
and ends in one of:

- ``clear``: refused, or survived, with an error that names the problem (the
  CLI: exit 2, or 130/143 for a signal, and one line without a traceback; the
  library: a named exception, or the episode failed, counted, with its reason);
- ``silent``: accepted without a word;
- ``unclear``: failed with a traceback or a message that does not name it;
- ``hang``: still running at the time limit (killed);
- ``lost``: files saved before the case ran were changed or removed.

Cases that need a finished run get a fresh copy of one (``run/``: 2 steps,
a checkpoint per step, eval scenarios) and, unless the case is meant to change
it, every file in it must come out byte for byte as it went in.

    python benchmarks/faults.py            # all cases, 2 at a time
    python benchmarks/faults.py -k resume  # the cases whose name contains "resume"

The last line is ``faults: N tried, C clear, S silent, U unclear, H hang, L lost``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OUTCOMES = ("clear", "silent", "unclear", "hang", "lost")

# Imported by every case (written next to it as faultkit.py).
KIT = r'''
import asyncio, os, re, subprocess, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
inf, nan = float("inf"), float("nan")  # as repr() writes them


def outcome(kind, message=""):
    print(f"OUTCOME {kind} {' '.join(str(message).split())[:300]}", flush=True)
    sys.exit(0)


def named(message, pattern):
    return "clear" if re.search(pattern, message, re.S) else "unclear"


def expect_raises(fn, pattern):
    """The call must raise an error whose text matches ``pattern``."""
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except SystemExit:
        raise
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        outcome(named(message, pattern), message)
    outcome("silent", "accepted")


def cli(*args, timeout=300, signal_after=None, signum=None):
    """Run ``turnrl ARGS``; optionally send ``signum`` once a step has been logged."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "turnrl.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    if signum is not None:
        deadline = time.monotonic() + timeout
        while not Path(signal_after).exists() or not Path(signal_after).read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def expect_cli_error(args, pattern, code=2):
    """``turnrl ARGS`` must exit with ``code`` and one line matching ``pattern``."""
    rc, out, err = cli(*args)
    lines = [l for l in err.splitlines() if l.strip() and "warn" not in l.lower()]
    if rc == 0:
        outcome("silent", "exit 0")
    if rc != code or "Traceback" in err:
        outcome("unclear", f"exit {rc}: {lines[-1] if lines else ''}")
    outcome(named(lines[-1] if lines else "", pattern), f"exit {rc}: {lines[-1] if lines else ''}")


def agent():
    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.tiny import tiny_model_path
    from turnrl.agents.transformers import TransformersAgent

    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_model_path(), sampling=SamplingParams(3))


def config(out="out", **sections):
    from turnrl.training.config import TrainingConfig

    base = {
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "generation": {"max_new_tokens": 3},
        "rollout": {"scenarios_per_step": 2, "num_generations": 2, "env_timeout_s": 5,
                    "reward_timeout_s": 5},
        "run": {"output_dir": out, "max_steps": 1, "progress": False, "plot": False},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainingConfig.from_profile("balanced", **base)


def one_env_step(env, rewards=None, **sections):
    """Train one step and evaluate on ``env``; the bad episodes must fail with a reason."""
    from turnrl.environments.tasks import make_scenarios
    from turnrl.training.trainer import Trainer

    scenarios = make_scenarios(n=4)
    BAD_IDS.update({scenarios[0].id, scenarios[2].id})  # half of training, half of eval
    trainer = Trainer(agent(), env, rewards, config(**sections), scenarios=scenarios[:2],
                      eval_scenarios=scenarios[2:])
    try:
        groups = asyncio.run(trainer.collect_groups())
        asyncio.run(trainer.step(groups))
        asyncio.run(trainer.evaluate(save_samples=False))
    except BaseException as e:
        outcome("unclear", f"the run died: {type(e).__name__}: {e}")
    failed = [t for g in groups for t in g.trajectories if t.failed]
    return failed


def expect_episode_failure(env, pattern, rewards=None, **sections):
    failed = one_env_step(env, rewards, **sections)
    if not failed:
        outcome("silent", "no episode failed")
    outcome(named(failed[0].error, pattern), failed[0].error)
'''

# Environments used by the cases (appended to the kit).
ENVS = r'''
from turnrl.environments.base import Environment, StepResult, scenario_from_options


class SANE:  # a class survives the deepcopy that clones the env for each episode
    pass
BAD_IDS = set()  # the scenarios that get the bad results: one of each pair


class Bad(Environment):
    """One turn. ``step_result``/``reset_result`` replace what a sane env returns."""

    def __init__(self, step_result=SANE, reset_result=SANE, sleep=None, block=None):
        self.step_result, self.reset_result = step_result, reset_result
        self.sleep, self.block = sleep, block

    async def reset(self, *, seed=None, options=None):
        self.scenario = scenario_from_options(options)
        if self.reset_result is not SANE and self.scenario.id in BAD_IDS:
            return self.reset_result
        return list(self.scenario.prompt), {}

    async def step(self, message):
        if self.scenario.id in BAD_IDS:
            if self.sleep:
                await asyncio.sleep(self.sleep)
            if self.block:
                time.sleep(self.block)  # blocks the event loop
            if self.step_result is not SANE:
                return self.step_result
        return StepResult([], 1.0, True, False, {})
'''

EXPERIMENT = """\
model: {path: null}
environment: {target: turnrl.environments.tasks:ArithmeticEnvironment}
scenarios:
  train: {target: turnrl.environments.tasks:make_scenarios, args: {n: 12}}
  eval_size: 4
generation: {max_new_tokens: 3}
rollout: {scenarios_per_step: 2, num_generations: 2}
optim: {lr: 1.0e-3, warmup_steps: 0}
eval: {every: 0, num_generations: 2}
run: {max_steps: 2, output_dir: run, checkpoint_every: 1, progress: false}
"""


def with_sections(text: str) -> str:
    """EXPERIMENT with the top-level sections ``text`` writes replaced by ``text``.

    A ``text`` that is not a mapping of sections (a YAML list, a syntax error)
    becomes the whole file.
    """
    keys = {line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()}
    if not keys:
        return text
    kept, skipping = [], False
    for line in EXPERIMENT.splitlines(keepends=True):
        if line[:1].isalpha():
            skipping = line.split(":")[0] in keys
        if not skipping:
            kept.append(line)
    return "".join(kept) + text


@dataclass
class Case:
    """One fault: ``code`` runs in a fresh process; ``run`` gives it a copy of a finished run."""

    name: str
    code: str
    run: bool = False
    mutates: bool = False  # the case may change run/ (it checks what must survive itself)
    timeout: float = 180


def cases() -> list[Case]:
    """The catalogue."""
    out: list[Case] = []

    def py(name: str, code: str, **kw: object) -> None:
        out.append(Case(name, textwrap.dedent(code), **kw))

    def cli_error(name: str, args: list[str], pattern: str, **kw: object) -> None:
        py(name, f"expect_cli_error({args!r}, {pattern!r})", **kw)

    # --- configuration values (item 13) -------------------------------------------------
    bad_values = [
        ("optim.lr=inf", {"optim": {"lr": float("inf")}}, r"optim\.lr"),
        ("optim.lr=nan", {"optim": {"lr": float("nan")}}, r"optim\.lr"),
        ("optim.lr=-1", {"optim": {"lr": -1}}, r"optim\.lr"),
        ("optim.lr=text", {"optim": {"lr": "fast"}}, r"optim\.lr"),
        ("temperature=inf", {"generation": {"temperature": float("inf")}}, r"temperature"),
        ("eval.temperature=nan", {"eval": {"temperature": float("nan")}}, r"temperature"),
        ("max_steps=true", {"run": {"max_steps": True}}, r"max_steps"),
        ("num_generations=1", {"rollout": {"num_generations": 1}}, r"num_generations"),
        ("num_generations=true", {"rollout": {"num_generations": True}}, r"num_generations"),
        ("beta=-inf", {"algorithm": {"beta": float("-inf")}}, r"beta"),
        ("clip_eps_low=-0.1", {"algorithm": {"clip_eps_low": -0.1}}, r"clip_eps_low"),
        ("max_failed_frac=2", {"rollout": {"max_failed_frac": 2}}, r"max_failed_frac"),
        ("checkpoint_every=-1", {"run": {"checkpoint_every": -1}}, r"checkpoint_every"),
        ("unknown field", {"optim": {"learning_rate": 1e-3}}, r"learning_rate"),
        ("estimator=ppo9", {"algorithm": {"estimator": "ppo9"}}, r"ppo9"),
        ("max_grad_norm=inf", {"optim": {"max_grad_norm": float("inf")}}, r"max_grad_norm"),
        ("env_timeout_s=nan", {"rollout": {"env_timeout_s": float("nan")}}, r"env_timeout_s"),
    ]
    for name, sections, pattern in bad_values:
        py(
            f"config: {name}",
            f"""
            from turnrl.training.config import TrainingConfig
            expect_raises(lambda: TrainingConfig.from_profile("balanced", **{sections!r}),
                          {pattern!r})
            """,
        )
    yaml_cases = [
        ("yaml: duplicate key", "optim: {lr: 1.0e-3}\noptim: {lr: 2.0e-3}\n", r"duplicate.*optim"),
        ("yaml: nested duplicate", "optim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", r"duplicate.*lr"),
        ("yaml: estimator builtins:print", "algorithm: {estimator: 'builtins:print'}\n", "print"),
        ("yaml: estimator no module", "algorithm: {estimator: 'nowhere:f'}\n", "nowhere"),
        ("yaml: max_steps true", "run: {max_steps: true}\n", r"max_steps"),
        ("yaml: lr .inf", "optim: {lr: .inf}\n", r"optim\.lr"),
        ("yaml: not a mapping", "- 1\n- 2\n", r"mapping|object|dict|section"),
        ("yaml: syntax error", "optim: {lr: 1\n", r"yaml|YAML|parse|line"),
        ("yaml: unknown section", "optimizer: {lr: 1.0e-3}\n", r"optimizer"),
        ("yaml: environment missing", "environment: {target: 'nowhere.mod:Env'}\n", "nowhere"),
    ]
    for name, text, pattern in yaml_cases:
        py(
            name,
            f"""
            from pathlib import Path
            Path("exp.yaml").write_text({with_sections(text)!r})
            expect_cli_error(["train", "exp.yaml", "--dry-run"], {pattern!r})
            """,
        )
    cli_error(
        "cli: --set twice",
        ["train", "exp.yaml", "--set", "optim.lr=1", "--set", "optim.lr=2", "--dry-run"],
        r"optim\.lr",
    )
    cli_error("cli: --set bad syntax", ["train", "exp.yaml", "--set", "optim.lr"], r"KEY=VALUE|=")
    cli_error("cli: --set inf", ["train", "exp.yaml", "--set", "optim.lr=inf"], r"optim\.lr")
    cli_error("cli: missing experiment file", ["train", "nowhere.yaml"], r"nowhere\.yaml")
    cli_error(
        "cli: max_new_tokens beyond context (dry run)",
        ["train", "exp.yaml", "--set", "generation.max_new_tokens=100000", "--dry-run"],
        r"max_new_tokens|context",
    )
    cli_error(
        "cli: model folder without weights",
        ["train", "exp.yaml", "--set", "model.path=empty_model", "--dry-run"],
        r"no weights|weights",
    )

    # --- environments and rewards (items 5, 10, 11) -------------------------------------
    bad_steps = [
        ("reward nan", "StepResult([], float('nan'), True, False, {})", r"Bad\.step.*nan"),
        ("reward inf", "StepResult([], float('inf'), True, False, {})", r"Bad\.step.*inf"),
        ("reward -1e308", "StepResult([], -1e308, True, False, {})", r"Bad\.step.*1e\+308"),
        ("reward '0.5'", "StepResult([], '0.5', True, False, {})", r"Bad\.step.*'0\.5'"),
        ("reward None", "StepResult([], None, True, False, {})", r"Bad\.step.*None"),
        ("terminated 'no'", "StepResult([], 1.0, 'no', False, {})", r"terminated"),
        ("truncated 1", "StepResult([], 1.0, True, 1, {})", r"truncated"),
        ("observation str", "StepResult('hi', 1.0, True, False, {})", r"observation"),
        ("observation dicts", "StepResult([{'role': 'user'}], 1.0, True, False, {})", "observ"),
        ("info None", "StepResult([], 1.0, True, False, None)", r"info"),
        ("step 4-tuple", "([], 1.0, True, {})", r"StepResult"),
        ("step None", "None", r"StepResult"),
        ("step str", "'done'", r"StepResult"),
        ("step dict", "{'reward': 1.0}", r"StepResult"),
    ]
    for name, result, pattern in bad_steps:
        py(f"env: {name}", f"expect_episode_failure(Bad(step_result={result}), {pattern!r})")
    for name, result in [
        ("str", "'hello'"),
        ("None", "None"),
        ("4-tuple", "([], {}, 1, 2)"),
        ("dict", "{'messages': []}"),
        ("messages only", "[]"),
    ]:
        py(
            f"env: reset returns {name}",
            f"expect_episode_failure(Bad(reset_result={result}), r'reset.*list\\[Message\\]')",
        )
    py("env: hangs (await)", "expect_episode_failure(Bad(sleep=3600), r'did not finish within')")
    py(
        "env: blocks the event loop",
        "expect_episode_failure(Bad(block=8), r'timed out|timeout|block', "
        "rollout={'env_timeout_s': 2})",
        timeout=240,
    )
    py(
        "env: raises",
        """
        class Raises(Bad):
            async def step(self, message):
                if self.scenario.id in BAD_IDS:
                    raise RuntimeError('the sandbox is gone')
                return StepResult([], 1.0, True, False, {})
        expect_episode_failure(Raises(), 'sandbox is gone')
        """,
    )
    reward_cases = [
        ("returns nan", "return [float('nan')] * len(group)", r"nan"),
        ("returns '1'", "return ['1'] * len(group)", r"str|'1'"),
        ("wrong length", "return [1.0]", r"length|returned 1|expected"),
        ("raises", "raise ValueError('judge down')", r"judge down"),
        ("hangs", "await asyncio.sleep(3600)", r"timed out|timeout"),
    ]
    for name, body, pattern in reward_cases:
        py(
            f"reward: {name}",
            f"""
            from turnrl.rewards import group_reward_function
            @group_reward_function
            async def bad(group):
                if group.scenario.id not in BAD_IDS:
                    return [1.0] * len(group)
                {body}
            expect_episode_failure(Bad(), {pattern!r}, rewards=[bad])
            """,
        )
    py(
        "reward: sync and blocking",
        """
        from turnrl.rewards import group_reward_function
        @group_reward_function
        def slow(group):
            if group.scenario.id in BAD_IDS:
                time.sleep(3600)
            return [1.0] * len(group)
        expect_episode_failure(Bad(), r'timed out|timeout', rewards=[slow],
                               rollout={'reward_timeout_s': 2})
        """,
    )
    for name, call, pattern in [
        ("scenarios of text", "Trainer(agent(), Bad(), None, config(), scenarios=['x'])", "Scen"),
        ("env=None", "Trainer(agent(), None, None, config(), scenarios=sc)", r"env"),
        ("no scenarios", "Trainer(agent(), Bad(), None, config(), scenarios=[])", r"scenario"),
        (
            "output_dir is a file",
            "Trainer(agent(), Bad(), None, config('afile'), scenarios=sc)",
            r"afile",
        ),
        (  # /proc is not writable even by root, whom a chmod does not stop
            "output_dir not writable",
            "Trainer(agent(), Bad(), None, config('/proc/turnrl-run'), scenarios=sc)",
            r"/proc/turnrl-run",
        ),
    ]:
        py(
            f"trainer: {name}",
            f"""
            from pathlib import Path
            from turnrl.environments.tasks import make_scenarios
            from turnrl.training.trainer import Trainer
            Path('afile').write_text('x')
            sc = make_scenarios(n=2)
            expect_raises(lambda: {call}, {pattern!r})
            """,
        )

    # --- run directories, resume, checkpoints (items 6, 7, 8, 11, 12) --------------------
    cli_error("run: train into a finished run", ["train", "exp.yaml"], r"run|--resume", run=True)
    cli_error(
        "run: resume with another lr",
        ["train", "exp.yaml", "--resume", "--set", "run.max_steps=3", "--set", "optim.lr=0.5"],
        r"optim\.lr",
        run=True,
    )
    cli_error(
        "run: resume with another group size",
        ["train", "exp.yaml", "--resume", "--set", "rollout.num_generations=3"],
        r"num_generations",
        run=True,
    )
    py(
        "run: stray step-best folder, then resume",
        """
        import shutil
        shutil.copytree('run/checkpoints/step-000001', 'run/checkpoints/step-best')
        rc, out, err = cli('train', 'exp.yaml', '--resume', '--set', 'run.max_steps=3')
        outcome('clear' if rc == 0 else 'unclear', f'exit {rc}: {err.strip()[-200:]}')
        """,
        run=True,
        mutates=True,
    )
    py(
        "run: corrupt trainer.json, then resume",
        """
        from turnrl.training.checkpoint import latest_checkpoint
        (latest_checkpoint('run') / 'trainer.json').write_text('{"step": "two"')
        expect_cli_error(['train', 'exp.yaml', '--resume', '--set', 'run.max_steps=3'],
                         r'trainer\\.json|checkpoint')
        """,
        run=True,
        mutates=True,
    )
    py(
        "run: stale temporary checkpoint folder is removed",
        """
        Path('run/checkpoints/.step-000009.k2j4x8').mkdir()
        (Path('run/checkpoints/.step-000009.k2j4x8') / 'model.safetensors').write_bytes(b'x' * 100)
        rc, out, err = cli('train', 'exp.yaml', '--resume', '--set', 'run.max_steps=3')
        left = [p.name for p in Path('run/checkpoints').iterdir() if p.name.startswith('.')]
        if rc != 0:
            outcome('unclear', err.strip()[-200:])
        outcome('silent' if left else 'clear', f'left: {left}')
        """,
        run=True,
        mutates=True,
    )
    py(
        "run: two trainers on one directory",
        """
        import signal, subprocess
        Path('exp2.yaml').write_text(Path('exp.yaml').read_text().replace('max_steps: 2',
                                     'max_steps: 400'))
        first = subprocess.Popen([sys.executable, '-m', 'turnrl.cli', 'train', 'exp2.yaml',
                                  '--set', 'run.output_dir=fresh'], stderr=subprocess.PIPE)
        metrics = Path('fresh/metrics.jsonl')
        while not metrics.exists() or not metrics.read_text():
            assert first.poll() is None
            time.sleep(0.2)
        rc, out, err = cli('train', 'exp2.yaml', '--set', 'run.output_dir=fresh', '--resume')
        first.kill()
        line = err.strip().splitlines()[-1] if err.strip() else ''
        if rc == 0: outcome('silent', 'both ran')
        outcome('clear' if rc == 2 and str(first.pid) in line else 'unclear', line)
        """,
    )
    signals = [("SIGINT", "signal.SIGINT", 130), ("SIGTERM", "signal.SIGTERM", 143)]
    for name, signum, code in signals:
        py(
            f"run: {name} during training",
            f"""
            import signal
            Path('exp2.yaml').write_text(Path('exp.yaml').read_text().replace('max_steps: 2',
                                         'max_steps: 400').replace('checkpoint_every: 1',
                                         'checkpoint_every: 0'))
            rc, out, err = cli('train', 'exp2.yaml', signal_after='run/metrics.jsonl',
                               signum={signum})
            from turnrl.training.checkpoint import latest_checkpoint
            last = err.strip().splitlines()[-1] if err.strip() else ''
            if latest_checkpoint('run') is None:
                outcome('lost', f'exit {{rc}}, no checkpoint: {{last}}')
            ok = rc == {code} and '--resume' in last and 'Traceback' not in err
            outcome('clear' if ok else 'unclear', f'exit {{rc}}: {{last}}')
            """,
        )
    cli_error(
        "eval: --num-generations 0",
        ["eval", "run", "--num-generations", "0"],
        r"num-generations|num_generations",
        run=True,
    )
    cli_error(
        "eval: --max-scenarios -1",
        ["eval", "run", "--max-scenarios", "-1"],
        r"max-scenarios|max_scenarios",
        run=True,
    )
    cli_error("eval: missing run", ["eval", "nowhere"], r"nowhere")
    py(
        "eval: corrupt checkpoint weights",
        """
        from turnrl.training.checkpoint import latest_checkpoint
        for f in latest_checkpoint('run').rglob('*.safetensors'):
            f.write_bytes(b'garbage')
        expect_cli_error(['eval', str(latest_checkpoint('run'))], r'weights|checkpoint|load')
        """,
        run=True,
        mutates=True,
    )
    cli_error(
        "export: onto an existing file", ["export", "run", "exp.yaml"], r"exp\.yaml|exist", run=True
    )
    cli_error("export: missing run", ["export", "nowhere", "out"], r"nowhere")
    cli_error("report: missing run", ["report", "nowhere"], r"nowhere")
    cli_error("chat: missing run", ["chat", "nowhere"], r"nowhere")
    return out


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".turnrl.lock"
    }


def make_base_run(root: Path) -> Path:
    """A finished 2-step run with a checkpoint per step, made once."""
    base = root / "base"
    base.mkdir()
    (base / "exp.yaml").write_text(EXPERIMENT)
    subprocess.run(
        [sys.executable, "-m", "turnrl.cli", "train", "exp.yaml"],
        cwd=base,
        check=True,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    return base


def run_case(case: Case, root: Path, base: Path) -> tuple[str, str, float]:
    """``(outcome, message, seconds)`` of one case."""
    work = Path(tempfile.mkdtemp(dir=root))
    (work / "faultkit.py").write_text(KIT + ENVS)
    (work / "exp.yaml").write_text(EXPERIMENT)
    (work / "empty_model").mkdir()
    (work / "empty_model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    before: dict[str, str] = {}
    if case.run:
        shutil.copytree(base / "run", work / "run")
        before = _digest(work / "run")
    code = "from faultkit import *\n" + case.code
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(work), OMP_NUM_THREADS="1")
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=case.timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return "hang", f"killed after {case.timeout:.0f} s", time.perf_counter() - started
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    if lines:
        kind, _, message = lines[-1].removeprefix("OUTCOME ").partition(" ")
    else:
        tail = [line for line in done.stderr.splitlines() if line.strip()]
        kind, message = "unclear", f"case crashed: {tail[-1] if tail else done.returncode}"
    if case.run and not case.mutates:
        after = _digest(work / "run")
        changed = sorted(k for k in before if after.get(k) != before[k])
        if changed:
            kind, message = "lost", f"changed or removed: {changed[:3]}"
    shutil.rmtree(work, ignore_errors=True)
    return kind, message, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    selected = [c for c in cases() if args.k in c.name]
    root = Path(tempfile.mkdtemp(prefix="turnrl-faults-"))
    os.environ.setdefault("TURNRL_CACHE", str(Path.home() / ".cache" / "turnrl"))
    try:
        base = make_base_run(root) if any(c.run for c in selected) else root
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, root, base), selected))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    counts = dict.fromkeys(OUTCOMES, 0)
    for case, (kind, message, seconds) in zip(selected, results, strict=True):
        counts[kind] += 1
        print(f"{kind:8} {seconds:5.1f}s  {case.name:45}  {message[:150]}", flush=True)
    if args.json:
        rows = [
            {"case": c.name, "outcome": k, "message": m, "seconds": round(s, 1)}
            for c, (k, m, s) in zip(selected, results, strict=True)
        ]
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(
        f"faults: {len(selected)} tried, {counts['clear']} clear, {counts['silent']} silent, "
        f"{counts['unclear']} unclear, {counts['hang']} hang, {counts['lost']} lost"
    )


if __name__ == "__main__":
    main()
