"""Smoke run of examples/frozen_lake.py (a short version of what users run)."""

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "frozen_lake.py"


def load():
    spec = importlib.util.spec_from_file_location("frozen_lake", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_and_random_walks_are_valid_moves():
    module = load()
    assert module.render(0) == "row 0 col 0" and module.render(14) == "row 3 col 2"
    walks = asyncio.run(module.random_walks(module.make_env(), 8, seed=1))
    moves = [m.content for walk in walks for m in walk if m.role == "assistant"]
    assert moves and set(moves) <= set(module.ACTIONS)
    # Each walk opens with the map and the start cell, and every move is answered.
    assert all(walk[0].role == "system" and walk[1].content == "row 0 col 0" for walk in walks)
    assert all(walk[-1].role == "user" for walk in walks)


@pytest.mark.anyio
async def test_frozen_lake_example_trains(tmp_path, capsys):
    summary = await load().main(2, 2, str(tmp_path / "run"))
    assert summary["steps"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollout/episodes"] == 16 and r["rollout/failed"] == 0 for r in records)
    out = capsys.readouterr().out.splitlines()  # log lines, then the table
    header = next(
        i for i, line in enumerate(out) if line.split() == ["step", "reward", "best", "turns"]
    )
    assert [row.split()[0] for row in out[header + 1 :]] == ["1", "2"]
