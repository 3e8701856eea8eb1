"""Every example, run as a user runs it: ``python examples/NAME.py --steps 1 ...``.

The list is the examples folder itself, so a new example is run without a new
test. Each runs one short step in a fresh process; what an example prints or
writes is checked in its own test file here.
"""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def short_arguments(script: Path, output: Path) -> list[str]:
    """The example's own options, at their smallest."""
    text = script.read_text()
    args = ["--steps", "1", "--output", str(output)]
    if '"--warmstart-steps"' in text:
        args += ["--warmstart-steps", "1"]
    return args


def test_every_example_is_listed():
    assert {s.stem for s in SCRIPTS} >= {"custom_environment", "train_arithmetic", "tool_calling"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_runs_as_a_script(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(script), *short_arguments(script, tmp_path / "run")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example prints what it did"
