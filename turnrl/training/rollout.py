"""Collect TrajectoryGroups: B scenarios x G episodes, all concurrent.

Each episode runs on its own environment, made by ``env.clone()`` from the
template the user passed, and talks to the shared agent, whose engine merges
the concurrent ``respond`` calls into batched generation. A capacity limiter
bounds how many episodes run at once.

An episode whose environment (or agent) raises, or whose environment breaks
the contract (a ``reset``/``step`` result of the wrong shape, a reward that is
not a finite number within ``|r| <= 1e6``, a non-bool ``terminated``; see
:func:`~turnrl.environments.base.checked_step`), is kept as a failed
trajectory (``error`` set, naming the environment and the value, logged once
with its scenario id), counted in ``rollout/failed`` and dropped later; it
never takes the step down with it. A :class:`~turnrl.agents.templates.ChatTemplateError`
is the exception: a chat template that cannot render the conversation is a
configuration error that would fail every such episode, so :func:`collect`
stops and raises it, with the scenario id, instead of training on the rest.
:func:`collect` runs under an event-loop watchdog (:mod:`turnrl.watchdog`) that
names a coroutine blocking the loop, which no timeout can interrupt. Metrics are
aggregated in float64 and never raise (:mod:`turnrl.scores`). An episode whose
conversation outgrows the model's context ends there, truncated (GAE bootstraps), and is
counted in ``rollout/context_overflow``.

What the agent sees. Before every turn the agent is prompted with
``env.agent_view(conversation)`` (the whole conversation unless the
environment or a context policy says otherwise; checked by
:func:`~turnrl.environments.base.checked_agent_view`). The trajectory keeps the
whole conversation, and a turn prompted with something else keeps its view in
``Turn.view`` (``rollout/view_frac``: the share of such turns, when there are any).

Tools. After ``reset``, the tools the episode's environment offers
(``env.tools``: :class:`~turnrl.tools.Tool` objects or JSON schemas, which
wrappers forward) are passed to every ``agent.respond(..., tools=...)`` of
the episode, if the agent's ``respond`` takes a ``tools`` keyword. The counts
``tool_calls`` and ``tool_errors`` of the step infos are summed over the
episode and kept on ``trajectory.info`` under the same names (replacing the
last step's own counts), which :func:`rollout_metrics` reports as
``rollout/tool_calls``, ``rollout/tool_errors`` (means per episode) and
``rollout/tool_use_frac`` (episodes with at least one call), for environments
that report them.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from turnrl.agents.base import Agent
from turnrl.agents.inference import ContextOverflowError, InferenceEngine, SamplingParams
from turnrl.agents.templates import ChatTemplateError
from turnrl.environments.base import (
    Environment,
    checked_agent_view,
    checked_reset,
    checked_step,
)
from turnrl.environments.wrappers import Timeout, TurnLimit
from turnrl.tools import tool_schemas
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup
from turnrl.watchdog import watch_event_loop

if TYPE_CHECKING:
    from turnrl.training.config import GenerationSettings, RolloutConfig

log = structlog.get_logger(__name__)

# Per-step info counts summed over an episode (see the module docstring).
EPISODE_COUNTS = ("tool_calls", "tool_errors")


async def run_episode(
    agent: Agent,
    env: Environment,
    scenario: Scenario,
    *,
    seed: int | None = None,
    sampling: SamplingParams | None = None,
) -> Trajectory:
    """Play one episode of ``scenario`` on a clone of ``env``.

    Returns:
        The trajectory; on an exception its ``error`` is set and it holds the
        turns played so far.
    """
    trajectory = Trajectory(scenario=scenario)
    episode_env: Environment | None = None
    counts: dict[str, float] = {}
    try:
        episode_env = env.clone()
        observation, info = await checked_reset(
            episode_env, seed=seed, options={"scenario": scenario}
        )
        trajectory.initial_messages = list(observation)
        conversation: list[Message] = list(observation)
        kwargs: dict[str, Any] = {} if sampling is None else {"sampling": sampling}
        tools = offered_tools(episode_env)
        if tools and _takes_keyword(agent.respond, "tools"):
            kwargs["tools"] = tools
        while True:
            view = await checked_agent_view(episode_env, conversation)
            try:
                turn = await agent.respond(view, **kwargs)
            except ContextOverflowError:
                if not trajectory.turns:
                    raise  # not even the opening fits: nothing to learn from
                # The conversation outgrew the model: end it here, cut by a limit.
                trajectory.truncated = True
                trajectory.info = {"truncated_by": "context_length"}
                break
            if view != conversation:  # the trajectory keeps what this turn was prompted with
                turn.view = view
            observation, reward, terminated, truncated, info = await checked_step(
                episode_env, turn.message
            )
            trajectory.turns.append(turn)
            trajectory.env_messages.append(observation)
            trajectory.env_rewards.append(reward)
            conversation += [turn.message, *observation]
            for key in EPISODE_COUNTS:
                if isinstance(info.get(key), int | float):
                    counts[key] = counts.get(key, 0) + info[key]
            if terminated or truncated:
                trajectory.terminated, trajectory.truncated = terminated, truncated
                trajectory.info = _jsonable(info)
                break
        trajectory.info |= counts
    except ChatTemplateError:
        raise  # the configuration, not this episode: collect stops the run
    except Exception as e:  # user code: any failure drops this episode only
        trajectory.error = f"{type(e).__name__}: {e}"
        log.warning("episode_failed", scenario_id=scenario.id, error=trajectory.error)
    finally:
        if episode_env is not None:
            try:
                await episode_env.close()
            except Exception as e:
                log.warning("env_close_failed", scenario_id=scenario.id, error=repr(e))
    return trajectory


async def collect(
    agent: Agent,
    env: Environment,
    scenarios: Sequence[Scenario],
    num_generations: int,
    *,
    max_concurrency: int = 256,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    on_episode: Callable[[int, int], None] | None = None,
) -> list[TrajectoryGroup]:
    """Run ``num_generations`` episodes of every scenario concurrently.

    Args:
        agent: The policy.
        env: The template environment (cloned per episode).
        scenarios: The B scenarios of this step.
        num_generations: G, episodes per scenario.
        max_concurrency: Most episodes running at once.
        seed: Base seed; episode ``(i, j)`` resets with ``seed + i * G + j``.
        sampling: Sampling settings (default: the agent's own).
        on_episode: Called with ``(episodes done, episodes in all)`` as each
            episode ends (a progress display).

    Returns:
        One group per scenario, in order, each with G trajectories in order.

    Raises:
        ChatTemplateError: The chat template failed in an episode (the other
            episodes are cancelled).
    """
    limiter = anyio.CapacityLimiter(max_concurrency)
    slots: list[list[Trajectory | None]] = [[None] * num_generations for _ in scenarios]
    total, done = len(scenarios) * num_generations, 0
    template_error: ChatTemplateError | None = None

    async def play(i: int, j: int) -> None:
        nonlocal done, template_error
        try:
            async with limiter:
                slots[i][j] = await run_episode(
                    agent, env, scenarios[i], seed=seed + i * num_generations + j, sampling=sampling
                )
        except ChatTemplateError as e:
            if template_error is None:
                template_error = ChatTemplateError(f"scenario {scenarios[i].id!r}: {e}")
                template_error.__cause__ = e
            tg.cancel_scope.cancel()
            return
        done += 1
        if on_episode is not None:
            on_episode(done, total)

    with watch_event_loop(label="rollout"):
        async with anyio.create_task_group() as tg:
            for i in range(len(scenarios)):
                for j in range(num_generations):
                    tg.start_soon(play, i, j)
    if template_error is not None:
        raise template_error
    return [
        TrajectoryGroup(scenario=s, trajectories=[t for t in row if t is not None])
        for s, row in zip(scenarios, slots, strict=True)
    ]


def check_environment(env: Any) -> Environment:
    """``env`` if it is a turnrl Environment, else a ``TypeError`` saying how to make one.

    Raises:
        TypeError: ``env`` is None or not an :class:`~turnrl.environments.Environment`.
    """
    if isinstance(env, Environment):
        return env
    raise TypeError(
        f"env must be a turnrl Environment, got {type(env).__name__}: subclass "
        "turnrl.environments.Environment and write `async def reset(self, *, seed=None, "
        "options=None)` returning (list[Message], dict) and `async def step(self, message)` "
        "returning StepResult(observation, reward, terminated, truncated, info); for a "
        "Gymnasium env use turnrl.environments.from_gym.GymEnvironment"
    )


def check_scenarios(
    scenarios: Any, name: str = "scenarios", *, required: bool = False
) -> list[Scenario]:
    """``scenarios`` as a list of Scenario, or a ``TypeError`` saying how to build them.

    Args:
        scenarios: What the user passed (any iterable).
        name: The argument's name, for the message.
        required: Refuse an empty list (training scenarios).

    Raises:
        TypeError: ``scenarios`` is a string or not iterable, or holds
            something other than :class:`~turnrl.types.Scenario` objects.
        ValueError: ``required`` and there are none.
    """
    how = (
        "build them as Scenario(id='q1', prompt=[user('What is 2+2?')], data={'answer': '4'}) "
        "(from turnrl.types import Scenario, user), or load a file with "
        "turnrl.scenarios.load_scenarios"
    )
    if isinstance(scenarios, str | bytes | Scenario) or not hasattr(scenarios, "__iter__"):
        raise TypeError(f"{name} must be a list of Scenario, got {type(scenarios).__name__}; {how}")
    items = list(scenarios)
    for i, item in enumerate(items):
        if not isinstance(item, Scenario):
            shown = repr(item) if len(repr(item)) <= 40 else repr(item)[:37] + "..."
            raise TypeError(
                f"{name}[{i}] is a {type(item).__name__} ({shown}), not a Scenario; {how}"
            )
    if required and not items:
        raise ValueError(
            "no training scenarios: pass scenarios=[...] to Trainer or give the environment "
            "a non-empty `scenarios` list"
        )
    return items


def offered_tools(env: Environment) -> list[dict[str, Any]] | None:
    """JSON schemas of the tools ``env`` offers (``env.tools``; wrappers forward it).

    Returns:
        The schemas, or ``None`` when the environment offers no tools.
    """
    return tool_schemas(getattr(env, "tools", None))


def _takes_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _jsonable(info: Any) -> dict[str, Any]:
    if not isinstance(info, dict):
        return {}
    return {k: v for k, v in info.items() if isinstance(v, str | int | float | bool | type(None))}


class ScenarioOrder:
    """Training scenarios B at a time, walking through shuffled epochs of the set.

    Its state (the rest of the epoch and the shuffling generator) is part of a
    checkpoint, so a resumed run draws the scenarios the uninterrupted one would.
    """

    def __init__(self, scenarios: Sequence[Scenario], seed: int) -> None:
        self.scenarios = list(scenarios)
        self._order: list[int] = []
        self._rng = random.Random(seed)

    def take(self, count: int) -> list[Scenario]:
        """The next ``count`` scenarios (a new shuffled epoch starts when one runs out)."""
        picked = []
        for _ in range(count):
            if not self._order:
                self._order = list(range(len(self.scenarios)))
                self._rng.shuffle(self._order)
            picked.append(self.scenarios[self._order.pop()])
        return picked

    def state_dict(self) -> dict[str, Any]:
        """``order`` (the rest of the epoch) and ``order_rng`` (a ``random.Random`` state)."""
        return {"order": list(self._order), "order_rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._order = list(state["order"])
        self._rng.setstate(state["order_rng"])


def configure_engine(engine: InferenceEngine, generation: GenerationSettings) -> SamplingParams:
    """Apply a run's ``generation`` settings to ``engine``; the rollouts' sampling settings.

    Raises:
        ValueError: ``max_new_tokens`` leaves no room for a prompt in the model's context.
    """
    context, new = engine.max_context, generation.max_new_tokens
    if context is not None and new >= context:
        raise ValueError(
            f"generation.max_new_tokens={new} does not fit the model's context of "
            f"{context} tokens, which also holds the prompt; set it well below {context}"
        )
    engine.configure(
        max_batch_size=generation.max_batch_size,
        reuse_kv_cache=generation.reuse_kv_cache,
        weights=generation.weights,
    )
    return SamplingParams(new, generation.temperature, generation.top_p)


def with_limits(env: Environment, rollout: RolloutConfig) -> Environment:
    """``env`` under the run's ``rollout.env_timeout_s`` and ``rollout.max_turns`` wrappers."""
    if rollout.env_timeout_s is not None:
        env = Timeout(env, rollout.env_timeout_s)
    return TurnLimit(env, rollout.max_turns) if rollout.max_turns is not None else env
