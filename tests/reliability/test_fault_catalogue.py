"""benchmarks/faults.py runs its cases in fresh processes and counts the outcomes."""

import subprocess
import sys
from pathlib import Path

FAULTS = Path(__file__).parents[2] / "benchmarks" / "faults.py"


def test_the_catalogue_runs_a_case_and_counts_it(tmp_path):
    done = subprocess.run(
        [sys.executable, str(FAULTS), "-k", "config: optim.lr=inf", "--json", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == (
        "faults: 1 tried, 1 clear, 0 silent, 0 unclear, 0 hang, 0 lost"
    ), done.stdout
    assert "optim.lr" in (tmp_path / "r").read_text()
