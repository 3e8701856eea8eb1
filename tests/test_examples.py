"""Smoke runs of the examples and the CLI (short versions of what users run)."""

import importlib.util
import json
from pathlib import Path

import pytest

from turnrl.cli import build_parser, main

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_custom_environment_example_trains(tmp_path):
    summary = await load("custom_environment").main(2, str(tmp_path / "run"))
    assert summary["steps"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


@pytest.mark.anyio
async def test_train_arithmetic_example_runs(tmp_path):
    result = await load("train_arithmetic").main(2, 5, str(tmp_path / "run"))
    assert result["steps"] == 2 and result["eval_before"] is not None
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_cli_demo_short_run(tmp_path, capsys):
    code = main(["demo", "--steps", "1", "--warmstart-steps", "2", "--output", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out reward before RL" in out and "gain" in out
    assert (tmp_path / "d" / "metrics.jsonl").exists()


def test_cli_help_and_bad_arguments(capsys):
    assert "demo" in build_parser().format_help()
    assert main(["demo", "--steps", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["nonsense"])
