"""Callbacks: the hooks and their order, stopping, early stopping, the best model, failures."""

import json
from types import SimpleNamespace

import pytest

from turnrl.environments.tasks import ArithmeticEnvironment, make_scenarios
from turnrl.training.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    KeepBest,
    TrainerControl,
)
from turnrl.training.config import TrainingConfig
from turnrl.training.trainer import Trainer


def config(tmp_path, name="run", **sections):
    base = {
        "generation": {"max_new_tokens": 3},
        "rollout": {"scenarios_per_step": 2, "num_generations": 2},
        "eval": {"every": 1, "num_generations": 1},
        "run": {"max_steps": 2, "output_dir": str(tmp_path / name), "plot": False},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return TrainingConfig.from_profile("balanced", **base)


def trainer(agent, cfg, callbacks=(), eval_scenarios=True, **kwargs):
    scenarios = make_scenarios(n=6)
    return Trainer(
        agent,
        ArithmeticEnvironment(scenarios[2:]),
        None,
        cfg,
        eval_scenarios=scenarios[:2] if eval_scenarios else None,
        callbacks=callbacks,
        **kwargs,
    )


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.step_count))

    def on_evaluate(self, trainer, metrics):
        self.events.append(("evaluate", trainer.step_count))
        assert "eval/reward_mean" in metrics and "eval/reward_mean_stderr" in metrics

    def on_step_end(self, trainer, metrics):
        self.events.append(("step_end", trainer.step_count))
        assert "rollout/reward_mean" in metrics and "eval/reward_mean" in metrics

    def on_save(self, trainer, path):
        self.events.append(("save", path.name))

    def on_train_end(self, trainer, summary):
        self.events.append(("end", summary["steps"]))


@pytest.mark.anyio
async def test_hooks_run_in_order_with_their_arguments(tiny_agent, tmp_path):
    recorder = Recorder()
    cfg = config(tmp_path, run={"checkpoint_every": 1})
    await trainer(tiny_agent, cfg, [recorder]).train()
    assert recorder.events == [
        ("begin", 0),
        ("evaluate", 0),  # the evaluation before training
        ("evaluate", 1),
        ("step_end", 1),
        ("save", "step-000001"),
        ("evaluate", 2),
        ("step_end", 2),
        ("save", "step-000002"),
        ("end", 2),
    ]


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step_count == self.step:
            trainer.control.stop(f"enough at {self.step}")


@pytest.mark.anyio
async def test_a_callback_stops_the_run_which_then_ends_normally(tiny_agent, tmp_path):
    cfg = config(tmp_path, eval={"every": 0}, run={"max_steps": 5, "checkpoint_every": 10})
    summary = await trainer(tiny_agent, cfg, [StopAt(1)]).train()
    assert summary["steps"] == 1 and summary["stopped_by"] == "enough at 1"
    run = tmp_path / "run"
    assert (run / "final").is_dir()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]  # the end's
    # eval.every 0 evaluates before and after: "after" is the step the run stopped at.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/reward_mean" in r] == [0, 1]
    assert summary["eval_after"] is not None


def fake_trainer(step=0, metric="reward_mean", mode="max"):
    return SimpleNamespace(
        step_count=step,
        control=TrainerControl(),
        eval_scenarios=["held out"],
        config=TrainingConfig.from_profile("balanced", eval={"metric": metric, "mode": mode}),
    )


def run_evals(callback, values, **kwargs):
    """Feed ``values`` as successive evaluations; the step at which a stop was asked."""
    fake = fake_trainer(**kwargs)
    callback.check(fake)
    for step, value in enumerate(values):
        fake.step_count = step
        callback.on_evaluate(fake, {callback.metric: value})
        if fake.control.should_stop:
            return step, fake.control.reason
    return None, None


def test_early_stopping_counts_evaluations_without_improvement_beyond_min_delta():
    # best 0.5; 1.0 gains 0.5 > 0.25: best 1.0, count 0; 1.0: count 1; 1.25 gains
    # exactly 0.25, not more: count 2 = patience -> stop at the 4th evaluation (step 3).
    step, reason = run_evals(EarlyStopping(2, min_delta=0.25), [0.5, 1.0, 1.0, 1.25, 2.0])
    assert step == 3
    assert "eval/reward_mean did not improve by more than 0.25 in 2" in reason
    assert "best 1.0 at step 1" in reason
    # mode min (from eval.mode): lower is better; None (all episodes failed) is no improvement.
    stopper = EarlyStopping(2)
    assert run_evals(stopper, [3.0, 2.0, None, 2.5], metric="turns_mean", mode="min")[0] == 3
    assert stopper.metric == "eval/turns_mean" and stopper.best == 2.0
    assert run_evals(EarlyStopping(1, metric="eval/x", mode="max"), [1.0, 2.0, 3.0])[0] is None


def test_early_stopping_state_round_trips():
    stopper = EarlyStopping(3)
    run_evals(stopper, [0.5, 0.4])
    again = EarlyStopping(3)
    again.load_state_dict(json.loads(json.dumps(stopper.state_dict())))
    assert (again.best, again.best_step, again.bad_evals) == (0.5, 0, 1)


def test_states_are_keyed_by_class_name_so_adding_a_callback_keeps_them():
    first, second = EarlyStopping(3), EarlyStopping(5)
    run_evals(first, [0.5, 0.4])
    run_evals(second, [0.1, 0.2, 0.2])
    saved = CallbackList([first, Recorder(), second], on_error=lambda: None).state_dict()
    assert set(saved) == {"EarlyStopping", "EarlyStopping#2"}  # Recorder keeps no state
    restored = [EarlyStopping(3), EarlyStopping(5)]
    CallbackList([KeepBest(), *restored], on_error=lambda: None).load_state_dict(saved)
    assert [(c.best, c.bad_evals) for c in restored] == [(0.5, 1), (0.2, 1)]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: EarlyStopping(0), "patience must be an integer >= 1"),
        (lambda: EarlyStopping(True), "patience"),
        (lambda: EarlyStopping(2, min_delta=-1), "min_delta"),
        (lambda: KeepBest(mode="up"), "mode must be 'max' or 'min'"),
    ],
)
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_callbacks_that_need_held_out_scenarios_are_refused_before_the_run_dir_is_touched(
    tiny_agent, tmp_path
):
    with pytest.raises(ValueError, match=r"EarlyStopping needs held-out scenarios.*eval_scenarios"):
        trainer(tiny_agent, config(tmp_path, eval={"patience": 2}), eval_scenarios=False)
    with pytest.raises(ValueError, match="KeepBest needs held-out scenarios"):
        trainer(tiny_agent, config(tmp_path), [KeepBest()], eval_scenarios=False)
    with pytest.raises(TypeError, match=r"subclass turnrl\.Callback"):
        trainer(tiny_agent, config(tmp_path), [lambda trainer: None])
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
async def test_config_early_stopping_and_keep_best(tiny_agent, tmp_path):
    # eval/failed stays 0: never an improvement, so patience 2 stops at the 2nd eval after
    # the one before training, and best/ keeps the policy evaluated first (step 0).
    cfg = config(
        tmp_path,
        eval={"metric": "failed", "patience": 2, "keep_best": True},
        run={"max_steps": 6},
    )
    summary = await trainer(tiny_agent, cfg).train()
    assert summary["steps"] == 2
    assert summary["stopped_by"].startswith("early stopping: eval/failed")
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best == {"step": 0, "metric": "eval/failed", "value": 0.0, "stderr": None}
    assert (tmp_path / "run" / "best" / "config.json").is_file()  # a save_pretrained folder
    assert not (tmp_path / "run" / ".best.tmp").exists()


@pytest.mark.anyio
async def test_keep_best_replaces_best_when_the_metric_improves(tiny_agent, tmp_path):
    # eval/episodes is the same every time; mode max with min_delta 0 never improves, so
    # use a callback that feeds KeepBest a rising value instead.
    class Rising(KeepBest):
        def on_evaluate(self, trainer, metrics):
            super().on_evaluate(trainer, {**metrics, "eval/reward_mean": trainer.step_count})

    await trainer(tiny_agent, config(tmp_path), [Rising()]).train()
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["step"] == 2


@pytest.mark.anyio
async def test_resume_restores_early_stopping_state(tiny_agent, tmp_path):
    cfg = config(
        tmp_path,
        eval={"metric": "failed", "patience": 3},
        run={"max_steps": 2, "checkpoint_every": 1},
    )
    assert (await trainer(tiny_agent, cfg).train())["stopped_by"] is None  # 2 evals w/o gain
    longer = cfg.model_copy(update={"run": cfg.run.model_copy(update={"max_steps": 6})})
    summary = await trainer(tiny_agent, longer, resume=True).train()
    # The checkpoint's count (2) carries over: the 3rd evaluation without gain, step 3, stops.
    assert summary["steps"] == 3 and summary["stopped_by"].startswith("early stopping")


class Boom(Exception):
    pass


class FailAt(Callback):
    def __init__(self, hook, step):
        self.hook, self.step = hook, step

    def on_evaluate(self, trainer, metrics):
        if self.hook == "on_evaluate" and trainer.step_count == self.step:
            raise Boom("on_evaluate")

    def on_step_end(self, trainer, metrics):
        if self.hook == "on_step_end" and trainer.step_count == self.step:
            raise Boom("on_step_end")


@pytest.mark.anyio
async def test_a_failing_callback_propagates_after_a_checkpoint_of_its_step(tiny_agent, tmp_path):
    cfg = config(tmp_path, run={"max_steps": 3})  # checkpoint_every 0: none of its own
    with pytest.raises(Boom, match="on_step_end"):
        await trainer(tiny_agent, cfg, [FailAt("on_step_end", 1)]).train()
    run = tmp_path / "run"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    summary = await trainer(tiny_agent, cfg, resume=True).train()  # fixed: resume from there
    assert summary["steps"] == 3

    # Before any step there is nothing to checkpoint: the exception alone.
    cfg = config(tmp_path, name="early")
    with pytest.raises(Boom, match="on_evaluate"):
        await trainer(tiny_agent, cfg, [FailAt("on_evaluate", 0)]).train()
    assert not (tmp_path / "early" / "checkpoints").exists()
