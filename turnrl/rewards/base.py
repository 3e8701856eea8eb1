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
scalars); ``None``, strings, NaN and infinities are errors. Tensors are not
accepted: call ``.item()`` / ``.tolist()`` first.

Sync functions run on the event loop, one after the other; a slow sync reward
(a sandboxed code run, an HTTP judge) should be written ``async`` or wrap its
work in ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload, runtime_checkable

import anyio

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
    """``value`` as a finite float, or a ``ValueError`` saying what is wrong with it.

    Examples:
        >>> check_score(1), check_score(True), check_score(0.5)
        (1.0, 1.0, 0.5)
        >>> check_score(float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: returned nan, expected a finite number
    """
    # bool is an int subclass, so it passes as 0/1 without a special case.
    if not isinstance(value, numbers.Real):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        if value is not None:
            shown = f"{type(value).__name__} {shown}"
        raise ValueError(f"returned {shown}, expected a finite number")
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned {score}, expected a finite number")
    return score


def _describe(name: str, error: BaseException) -> str:
    if isinstance(error, ValueError) and str(error).startswith("returned "):
        return f"{name}: {error}"
    return f"{name}: raised {type(error).__name__}: {error}"


async def _maybe_await(value: Any) -> Any:
    # Calling first and awaiting if needed (rather than inspecting the function)
    # also handles partials and objects with an async __call__.
    return await value if inspect.isawaitable(value) else value


@dataclass(frozen=True)
class TrajectoryReward:
    """A per-trajectory function lifted to a :class:`RewardFunction`.

    Build it with :func:`reward_function`. ``fn`` is the original function,
    still usable on one trajectory.
    """

    fn: TrajectoryScore
    name: str

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score every trajectory of ``group``; never raises."""
        trajectories = list(group)
        results: list[RewardResult] = [RewardResult(0.0)] * len(trajectories)

        async def score_one(k: int, trajectory: Trajectory) -> None:
            try:
                results[k] = RewardResult(check_score(await _maybe_await(self.fn(trajectory))))
            except Exception as e:  # a reward must not kill the step
                results[k] = RewardResult(0.0, error=_describe(self.name, e))

        async with anyio.create_task_group() as tg:
            for k, trajectory in enumerate(trajectories):
                tg.start_soon(score_one, k, trajectory)
        return results


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
            values = await _maybe_await(self.fn(group))
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
            try:
                check_score(result.score)
            except ValueError as e:
                result = RewardResult(0.0, error=f"{reward.name}: bad RewardResult.score ({e})")
        checked.append(result)
    return checked
