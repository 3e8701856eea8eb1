"""The reward contract: a function scores a whole group, one result per trajectory.

A reward function receives a ``TrajectoryGroup`` (the G rollouts of one
scenario) rather than one trajectory, so that group-relative judges (rank the
answers, compare against the group's best) fit the same interface as a
per-trajectory check. Most rewards are per-trajectory, though, so two
decorators lift plain functions into the group form:

- :func:`reward_function` lifts ``(trajectory) -> float``, sync or async;
  async ones score the trajectories of a group concurrently.
- :func:`group_reward_function` lifts ``(group) -> Sequence[float]``.

A reward function never kills a training step: a lifted function that raises,
or returns something that is not a finite number, yields a ``RewardResult``
with ``error`` set for the trajectory concerned (or for every trajectory of
the group, when a group-level function fails as a whole). The trainer drops
errored trajectories. Only cancellation propagates.

Accepted scores are real numbers (``int``, ``float``, ``bool`` as 0/1, numpy
scalars) with ``|score| <= 1e6`` (:data:`turnrl.scores.MAX_ABS_REWARD`);
``None``, strings, NaN, infinities and absurd magnitudes are errors. Tensors
are not accepted: call ``.item()`` / ``.tolist()`` first.

Sync functions run in a worker thread, never on the event loop: a slow or
blocking one (a sandboxed code run, a sync HTTP client, ``time.sleep``) then
cannot freeze the rollout, and the scoring timeout (``rollout.reward_timeout_s``)
still fires. A lifted sync function scores the trajectories of a group one
after the other in one thread; at most ``REWARD_THREADS`` (8) such threads run
at once (:mod:`turnrl.rewards.threads`), so a sync reward that shares state
with other reward functions must be thread-safe. A thread cannot be killed:
after a timeout the call is abandoned and its thread (a daemon, so it never
delays the process exit) finishes on its own. Async functions run on the
event loop and are cancelled at the timeout.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload, runtime_checkable

import anyio

from turnrl.rewards.threads import run_in_thread
from turnrl.scores import check_reward
from turnrl.types import Trajectory, TrajectoryGroup

TrajectoryScore = Callable[[Trajectory], float | Awaitable[float]]
"""A plain per-trajectory reward: ``(trajectory) -> float``, sync or async."""

GroupScore = Callable[[TrajectoryGroup], Sequence[float] | Awaitable[Sequence[float]]]
"""A plain group-level reward: ``(group) -> Sequence[float]``, sync or async."""


@dataclass(frozen=True)
class RewardResult:
    """The score of one trajectory.

    Attributes:
        score: The reward. ``0.0`` when ``error`` is set (and then meaningless).
        components: Named sub-scores for logging. ``combine`` puts each
            component's raw (unweighted) score here, by component name.
        error: Why scoring this trajectory failed, naming the reward function;
            ``None`` on success.
    """

    score: float
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@runtime_checkable
class RewardFunction(Protocol):
    """Scores every trajectory of a group.

    Attributes:
        name: Names the function in metrics (``reward/<name>_mean``), in
            ``Trajectory.reward_components`` and in error messages.
    """

    name: str

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """One ``RewardResult`` per trajectory of ``group``, in the same order."""
        ...


def check_score(value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` saying what is wrong with it.

    The check of :func:`turnrl.scores.check_reward`: a real number, finite,
    with ``|value| <= 1e6``.

    Examples:
        >>> check_score(1), check_score(True), check_score(0.5)
        (1.0, 1.0, 0.5)
        >>> check_score(float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: returned nan, expected a finite number
    """
    return check_reward(value)


def _describe(name: str, error: BaseException) -> str:
    if isinstance(error, ValueError) and str(error).startswith("returned "):
        return f"{name}: {error}"
    return f"{name}: raised {type(error).__name__}: {error}"


async def _maybe_await(value: Any) -> Any:
    # Calling first and awaiting if needed (rather than inspecting the function)
    # also handles partials and objects with an async __call__.
    return await value if inspect.isawaitable(value) else value


def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` starts a coroutine (functions, partials, async ``__call__``)."""
    # fn was checked callable when lifted, so its type has a __call__.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass(frozen=True)
class TrajectoryReward:
    """A per-trajectory function lifted to a :class:`RewardFunction`.

    Build it with :func:`reward_function`. ``fn`` is the original function,
    still usable on one trajectory.
    """

    fn: TrajectoryScore
    name: str

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score every trajectory of ``group``; never raises (except cancellation)."""
        trajectories = list(group)
        if not trajectories:
            return []
        values: list[Any] = [_NOT_CALLED] * len(trajectories)
        if not _is_async(self.fn):  # one thread for the group: calls one after the other
            values = await run_in_thread(_call_each, self.fn, trajectories, name=self.name)
        results: list[RewardResult] = [RewardResult(0.0)] * len(trajectories)

        async def score_one(k: int, value: Any) -> None:
            try:
                if value is _NOT_CALLED:
                    value = self.fn(trajectories[k])
                elif isinstance(value, _Raised):
                    raise value.error
                results[k] = RewardResult(check_score(await _maybe_await(value)))
            except Exception as e:  # a reward must not kill the step
                results[k] = RewardResult(0.0, error=_describe(self.name, e))

        async with anyio.create_task_group() as tg:
            for k, value in enumerate(values):
                tg.start_soon(score_one, k, value)
        return results


_NOT_CALLED = object()


@dataclass(frozen=True)
class _Raised:
    error: Exception


def _call_each(fn: TrajectoryScore, trajectories: list[Trajectory]) -> list[Any]:
    """``fn`` on each trajectory; an exception is kept in place of that one's value."""
    values: list[Any] = []
    for trajectory in trajectories:
        try:
            values.append(fn(trajectory))
        except Exception as e:  # reported per trajectory by the caller
            values.append(_Raised(e))
    return values


@dataclass(frozen=True)
class GroupReward:
    """A group-level function lifted to a :class:`RewardFunction`.

    Build it with :func:`group_reward_function`. ``fn`` is the original function.
    """

    fn: GroupScore
    name: str

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score ``group`` with one call to ``fn``; never raises."""
        n = len(group)
        if n == 0:
            return []  # don't make user code handle an empty group
        try:
            if _is_async(self.fn):
                values = await self.fn(group)
            else:
                values = await _maybe_await(await run_in_thread(self.fn, group, name=self.name))
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise ValueError(
                    f"returned {type(values).__name__}, expected a sequence of {n} numbers"
                )
            values = list(values)
            if len(values) != n:
                raise ValueError(f"returned {len(values)} scores for a group of {n}")
        except Exception as e:  # a reward must not kill the step
            return [RewardResult(0.0, error=_describe(self.name, e))] * n
        results = []
        for value in values:
            try:
                results.append(RewardResult(check_score(value)))
            except ValueError as e:
                results.append(RewardResult(0.0, error=_describe(self.name, e)))
        return results


def _name_of(fn: Callable[..., Any], name: str | None) -> str:
    if not callable(fn):
        raise TypeError(f"expected a callable, got {type(fn).__name__}")
    name = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward function needs a non-empty name, got {name!r}")
    return name


@overload
def reward_function(fn: TrajectoryScore, /, *, name: str | None = None) -> TrajectoryReward: ...
@overload
def reward_function(
    *, name: str | None = None
) -> Callable[[TrajectoryScore], TrajectoryReward]: ...
def reward_function(
    fn: TrajectoryScore | None = None, /, *, name: str | None = None
) -> TrajectoryReward | Callable[[TrajectoryScore], TrajectoryReward]:
    """Lift ``(trajectory) -> float`` (sync or async) into a :class:`RewardFunction`.

    Usable bare (``@reward_function``), with a name
    (``@reward_function(name="x")``) or as a call (``reward_function(fn)``).
    The name defaults to the function's ``__name__``. A trajectory whose call
    raises or returns a non-finite / non-number value gets
    ``RewardResult(0.0, error="<name>: ...")``; the others are unaffected.

    Args:
        fn: The per-trajectory function.
        name: The reward's name (default: ``fn.__name__``).

    Returns:
        A :class:`TrajectoryReward`, or a decorator making one.

    Examples:
        >>> import anyio
        >>> from turnrl.types import Scenario, Trajectory, TrajectoryGroup
        >>> @reward_function(name="short")
        ... def short_answer(trajectory):
        ...     return len(trajectory.final_response) <= 3
        >>> group = TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[
        ...     Trajectory(scenario=Scenario(id="s"))])
        >>> anyio.run(short_answer, group)
        [RewardResult(score=1.0, components={}, error=None)]
        >>> @reward_function
        ... def broken(trajectory):
        ...     return None
        >>> anyio.run(broken, group)[0].error
        'broken: returned None, expected a finite number'
    """

    def lift(f: TrajectoryScore) -> TrajectoryReward:
        return TrajectoryReward(fn=f, name=_name_of(f, name))

    return lift if fn is None else lift(fn)


@overload
def group_reward_function(fn: GroupScore, /, *, name: str | None = None) -> GroupReward: ...
@overload
def group_reward_function(*, name: str | None = None) -> Callable[[GroupScore], GroupReward]: ...
def group_reward_function(
    fn: GroupScore | None = None, /, *, name: str | None = None
) -> GroupReward | Callable[[GroupScore], GroupReward]:
    """Lift ``(group) -> Sequence[float]`` (sync or async) into a :class:`RewardFunction`.

    Usable like :func:`reward_function`. If the call raises or returns the
    wrong number of scores, every trajectory of the group gets an error naming
    the function and the problem; a single bad value (NaN, ``None``) errors
    only its own trajectory.

    Args:
        fn: The group-level function; returns one score per trajectory, in order.
        name: The reward's name (default: ``fn.__name__``).

    Returns:
        A :class:`GroupReward`, or a decorator making one.

    Examples:
        >>> import anyio
        >>> from turnrl.types import Scenario, Trajectory, TrajectoryGroup
        >>> @group_reward_function
        ... def rank(group):  # 1.0 for the shortest answer, 0.0 for the others
        ...     lengths = [len(t.final_response) for t in group]
        ...     return [float(n == min(lengths)) for n in lengths]
        >>> group = TrajectoryGroup(scenario=Scenario(id="s"), trajectories=[
        ...     Trajectory(scenario=Scenario(id="s")), Trajectory(scenario=Scenario(id="s"))])
        >>> [r.score for r in anyio.run(rank, group)]
        [1.0, 1.0]
    """

    def lift(f: GroupScore) -> GroupReward:
        return GroupReward(fn=f, name=_name_of(f, name))

    return lift if fn is None else lift(fn)


def as_reward_function(obj: RewardFunction | TrajectoryScore) -> RewardFunction:
    """``obj`` itself if it is a :class:`RewardFunction`, else lifted per trajectory.

    A plain callable is taken to be ``(trajectory) -> float``; wrap group-level
    functions with :func:`group_reward_function` explicitly.
    """
    if isinstance(obj, RewardFunction):
        return obj
    return reward_function(obj)


async def score_group(reward: RewardFunction, group: TrajectoryGroup) -> list[RewardResult]:
    """Call ``reward`` on ``group``, turning any failure into per-trajectory errors.

    This is the guard around user-written :class:`RewardFunction`\\ s (lifted
    ones already never raise): a raise, a wrong number of results, a result
    that is not a ``RewardResult`` or a non-finite score becomes an error
    naming ``reward.name``. Cancellation still propagates.

    Returns:
        One result per trajectory of ``group``, in order.
    """
    n = len(group)
    try:
        results = list(await reward(group))
        if len(results) != n:
            raise ValueError(f"returned {len(results)} results for a group of {n}")
        bad = next((r for r in results if not isinstance(r, RewardResult)), None)
        if bad is not None:
            raise ValueError(f"returned {type(bad).__name__}, expected RewardResult")
    except Exception as e:  # a reward must not kill the step
        return [RewardResult(0.0, error=_describe(reward.name, e))] * n
    checked = []
    for result in results:
        if result.error is None:
            # Components feed the metrics: held to the same rule as the score.
            fields = [("score", result.score)]
            fields += [(f"components[{key!r}]", value) for key, value in result.components.items()]
            for where, value in fields:
                try:
                    check_score(value)
                except ValueError as e:
                    error = f"{reward.name}: bad RewardResult.{where} ({e})"
                    result = RewardResult(0.0, error=error)
                    break
        checked.append(result)
    return checked
