import json

import pytest

from turnrl.training.config import TrainingConfig


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_path():
    """The embedded tiny model, built once per test session."""
    from turnrl.agents.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture
def tiny_agent(tiny_path):
    """A fresh agent (its own model copy) over the tiny model."""
    import torch

    from turnrl.agents.engine import SamplingParams
    from turnrl.agents.transformers import TransformersAgent

    torch.manual_seed(0)
    return TransformersAgent.from_pretrained(tiny_path, sampling=SamplingParams(max_new_tokens=6))


@pytest.fixture
def scripted_engine():
    """``script(agent, replies)``: the agent's engine returns these texts, in order.

    Each reply is tokenized and closed with eos, so decoded text is known.
    """
    from turnrl.agents.engine import Completion

    def script(agent, replies):
        replies = iter(replies)
        eos = agent.eos_token_ids[0]

        async def generate(prompt_ids, params):
            ids = [*agent.tokenizer(next(replies), add_special_tokens=False).input_ids, eos]
            return Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop")

        agent.engine.generate = generate

    return script


@pytest.fixture
def sampled_logprobs():
    """``await sample(agent, episodes)``: (training, recorded) log-probs of sampled tokens.

    Plays ``episodes`` concurrent 3-turn conversations (every answer is "wrong"),
    then scores the batch with the training forward at the agent's temperature.
    Both returned tensors hold the sampled tokens only, in the same order.
    """
    import anyio
    import torch

    from turnrl.training.batch import build_batch
    from turnrl.training.logprobs import token_logprobs
    from turnrl.types import Scenario, Trajectory, TrajectoryGroup, user

    async def sample(agent, episodes):
        trajectories = []

        async def episode(i):
            conversation = [user(f"What is {i}+{i}?")]
            t = Trajectory(scenario=Scenario(id=str(i)), initial_messages=list(conversation))
            for _ in range(3):
                turn = await agent.respond(conversation)
                t.turns.append(turn)
                t.env_messages.append([user("Wrong. Try again.")])
                t.env_rewards.append(0.0)
                conversation += [turn.message, user("Wrong. Try again.")]
            trajectories.append(t)

        async with anyio.create_task_group() as tg:
            for i in range(episodes):
                tg.start_soon(episode, i)
        group = TrajectoryGroup(scenario=trajectories[0].scenario, trajectories=trajectories)
        batch = build_batch([group], pad_token_id=agent.tokenizer.pad_token_id)
        with torch.no_grad():
            train = token_logprobs(
                agent.model,
                batch.input_ids,
                batch.attention_mask,
                temperature=agent.sampling.temperature,
            )
        mask = batch.loss_mask.bool()
        return train[mask], batch.behavior_logprobs[mask]

    return sample


# A run directory as the trainer leaves it: tests of logging, plots and cli/report.


def _synthetic_records(steps=30, eval_every=10):
    """Step 0 holds only the eval before training, as the trainer writes it.

    Step s has rollout reward s/100, KL s/1000, policy loss -s/100, and takes
    2 s (odd s) or 4 s (even s). Evals at steps 0, 10, 20, 30: 0.1, 0.5, 0.7, 0.6.
    """
    evals = {0: 0.1, 10: 0.5, 20: 0.7, 30: 0.6}
    records = [{"step": 0, "eval/reward_mean": evals[0]}]
    for s in range(1, steps + 1):
        record = {
            "step": s,
            "rollout/reward_mean": s / 100,
            "train/kl": s / 1000,
            "loss/policy": -s / 100,
            "perf/step_s": 2.0 if s % 2 else 4.0,
        }
        if s % eval_every == 0:
            record["eval/reward_mean"] = evals[s]
        records.append(record)
    return records


def _write_metrics(run_dir, records, tail=""):
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    run_dir = _write_metrics(tmp_path / "run", _synthetic_records())
    # The real writer, so a change to TrainingConfig's layout breaks this test.
    config = TrainingConfig.from_profile(
        "balanced",
        algorithm={"estimator": "rloo"},
        optim={"lr": 3e-4},
        model={"path": "/models/x"},
        run={"seed": 7},
    )
    config.save(run_dir / "config.json")
    return run_dir


@pytest.fixture
def synthetic_records():
    """``synthetic_records(steps=30, eval_every=10)``: metrics records with hand-picked values."""
    return _synthetic_records


@pytest.fixture
def write_metrics():
    """``write_metrics(run_dir, records, tail="")``: write ``run_dir/metrics.jsonl``."""
    return _write_metrics


# The Qwen2/2.5 vocabulary with real chat templates (turnrl.testing.real_vocab).


@pytest.fixture(scope="session")
def real_vocab_file(tmp_path_factory):
    """The Qwen-vocabulary tokenizer backend, built once per session (a few seconds)."""
    from turnrl.testing.real_vocab import build_backend

    path = tmp_path_factory.mktemp("real-vocab") / "tokenizer.json"
    build_backend().save(str(path))
    return path


@pytest.fixture
def real_vocab(real_vocab_file):
    """``real_vocab(template, **kwargs)``: a Qwen-vocabulary tokenizer with that chat template."""
    from turnrl.testing.real_vocab import real_vocab_tokenizer

    return lambda template, **kwargs: real_vocab_tokenizer(template, real_vocab_file, **kwargs)
