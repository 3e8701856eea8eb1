"""``turnrl chat``: a free chat, and one episode of an experiment's environment (--env)."""

import contextlib
import io
import os
import pty
import select
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from turnrl.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "turnrl" / "cli" / "demo.yaml")  # the arithmetic task, 1000 scenarios
SMALL = ["--set", "scenarios.train.args.n=12", "--set", "scenarios.eval_size=4"]


def chat(args, stdin, monkeypatch, capsys):
    """``turnrl chat ARGS`` with ``stdin`` typed: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_free_chat_answers_each_line(tiny_path, monkeypatch, capsys):
    args = [str(tiny_path), "--max-new-tokens", "3"]
    code, out, _ = chat(args, "hi\n/quit\nnever\n", monkeypatch, capsys)
    assert code == 0 and out.count("assistant> ") == 1


def test_the_policy_plays_one_episode_printed_turn_by_turn(tiny_path, monkeypatch, capsys):
    args = [str(tiny_path), "--env", DEMO, *SMALL, "--max-new-tokens", "4"]
    code, out, err = chat(args, "", monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("scenario ") and "(held-out 0 of 4), seed 0" in lines[0]
    assert "max_new_tokens 4, temperature 1" in lines[1]  # the file's temperature, our length
    assert lines[2].startswith("user> What is ")
    replies = [line for line in lines if line.startswith("assistant> ")]
    rewards = [line for line in lines if line.startswith("  reward ")]
    assert 1 <= len(replies) == len(rewards) <= 3  # the task allows 3 attempts
    assert "terminated True" in rewards[-1]
    turns = len(replies)
    assert lines[-1].startswith(f"episode terminated after {turns} turn")
    assert "return " in lines[-1] and "format " in lines[-1]
    assert chat(args, "", monkeypatch, capsys)[1] == out  # --seed 0 by default: the same episode


def test_a_person_plays_the_policy_side(monkeypatch, capsys):
    args = ["--env", DEMO, "--human", "--scenario", "add-12-5"]
    code, out, err = chat(args, "16\n17\n", monkeypatch, capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "scenario add-12-5 (training 90 of 900), seed 0"
    assert "assistant> 16\n  reward +0.000, terminated False, truncated False" in out
    assert "user> Wrong. Try again.\nassistant> 17\n  reward +0.500, terminated True" in out
    assert "info: correct=True, attempt=2, answer=17" in out
    # 0 + 0.5 from the environment; the format reward has weight 0 in demo.yaml.
    last = "episode terminated after 2 turns: return 0.500, reward 0.500 (env_return 0.500,"
    assert out.splitlines()[-1].startswith(last) and "format 1.000 x0" in out


def test_a_person_calls_the_tools_an_environment_offers(tmp_path, monkeypatch, capsys):
    experiment = tmp_path / "calculator.yaml"
    experiment.write_text(
        "environment: {target: 'turnrl.environments.tasks.calculator:calculator_env'}\n"
        "scenarios:\n"
        "  train: {target: 'turnrl.environments.tasks.calculator:make_scenarios', args: {n: 3}}\n"
    )
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "965*453"}}</tool_call>'
    code, out, err = chat(
        ["--env", str(experiment), "--human"], f"{call}\n437145\n", monkeypatch, capsys
    )
    assert code == 0, err
    assert out.splitlines()[:3] == [
        "scenario mul-965-453 (training 0 of 3), seed 0",
        "tools: calculator",
        "user> What is 965*453?",
    ]
    assert "tool_calls=1, tool_errors=0\ntool> 437145\nassistant> 437145" in out
    assert out.splitlines()[-1].startswith("episode terminated after 2 turns: return 1.000")


def test_the_runs_turn_limit_applies_as_in_training(monkeypatch, capsys):
    args = ["--env", DEMO, "--human", *SMALL, "--scenario", "1", "--set", "rollout.max_turns=1"]
    code, out, err = chat(args, "-5\n", monkeypatch, capsys)
    assert code == 0, err
    assert "held-out 1 of 4" in out
    assert "terminated False, truncated True; info: " in out and "turn_limit=True" in out
    assert "episode truncated after 1 turn: return 0.000" in out


@pytest.mark.parametrize("typed", ["", "/quit\n", "16\n"])
def test_leaving_at_the_prompt_ends_cleanly(typed, monkeypatch, capsys):
    code, out, err = chat(["--env", DEMO, "--human", *SMALL], typed, monkeypatch, capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[-1] == "left the episode before it ended"


def test_ctrl_c_at_the_prompt_ends_cleanly(monkeypatch, capsys):
    def interrupted(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupted)
    assert main(["chat", "--env", DEMO, "--human", *SMALL]) == 130
    assert capsys.readouterr().err == "turnrl chat: interrupted\n"


def _state(pid):
    """The process state letter from /proc (``S``: sleeping, ``R``: running)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_a_real_ctrl_c_at_a_terminal_prompt_stops_at_once(tmp_path):
    # asyncio would take the first SIGINT as a cancellation that input() never sees.
    pid, fd = pty.fork()
    if pid == 0:  # the child: turnrl chat on a terminal
        os.environ["PYTHONPATH"] = str(ROOT)
        args = ["chat", "--env", DEMO, "--human", *SMALL]
        os.execv(sys.executable, [sys.executable, "-m", "turnrl.cli", *args])
    out = b""
    deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
    while b"you> " not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            out += os.read(fd, 4096)
    assert b"you> " in out, out.decode(errors="replace")
    # A person presses Ctrl-C while input() waits; a signal that lands between the
    # prompt's write and readline's select() is only seen at the next key (a CPython
    # race no person can hit), so wait until the child sleeps, as it does in select().
    while _state(pid) != "S" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(pid, signal.SIGINT)  # once
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if select.select([fd], [], [], 1.0)[0]:
            with contextlib.suppress(OSError):  # the terminal closed with the child
                out += os.read(fd, 4096)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"turnrl chat went on after Ctrl-C:\n{out.decode(errors='replace')}")
    assert os.waitstatus_to_exitcode(status) == 130
    assert b"Traceback" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", DEMO, "--human", "--scenario", "add-999-9"], "no scenario has this id"),
        (["--env", DEMO, "--human", "--scenario", "100"], "has 100 held-out scenarios, so give"),
        (["--env", "no/such/experiment.yaml", "--human"], "no/such/experiment.yaml"),
        (["/no/such/run", "--env", DEMO], "/no/such/run"),
        (["some/run", "--env", DEMO, "--human"], "drop some/run"),
        (["--env", DEMO], "or --human to type its replies"),
        (["--env", DEMO, "--human", "--temperature", "0"], "sampling: not --human"),
        (["some/run", "--scenario", "0"], "--scenario go with --env"),
        (["some/run", "--env", DEMO, "--system", "be brief"], "--system is for a free chat"),
        (["--env", DEMO, "--human", "--set", "optim.lrr=1"], "optim.lrr"),
        ([], "give the policy to chat with"),
    ],
)
def test_bad_input_is_one_clear_error(args, message, monkeypatch, capsys):
    code, _, err = chat(args, "", monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_an_environment_that_breaks_the_contract_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_env.py").write_text(
        textwrap.dedent(
            """
            from turnrl.environments import Environment
            from turnrl.types import user

            class BrokenEnv(Environment):
                scenarios = ()

                def __init__(self, scenarios=()):
                    self.scenarios = scenarios

                async def reset(self, *, seed=None, options=None):
                    return [user("say something")], {}

                async def step(self, message):
                    return [], "high", True, False, {}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--env", DEMO, "--human", *SMALL, "--set", "environment.target=broken_env:BrokenEnv"]
    args += ["--set", "environment.args=null"]
    code, out, err = chat(args, "hello\n", monkeypatch, capsys)
    assert code == 2
    assert "the episode failed" in err and "BrokenEnv.step() returned reward" in err
    assert "reward +" not in out  # the broken result was never printed as a reward
