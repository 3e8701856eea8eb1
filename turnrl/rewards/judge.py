"""End-of-conversation judges: a rubric scored by rules and by a frozen model.

A :class:`RubricJudge` scores a finished conversation against a rubric of
named items, each with a weight:

    score = sum_i w_i * s_i / sum_{i: w_i > 0} w_i

so with item scores in [0, 1] and non-negative weights the rubric score is the
weighted fraction of the rubric met, in [0, 1]; a negative weight is a
penalty. The sum is a :class:`~turnrl.rewards.combine.WeightedReward`, so the
rubric reports, and fails, the way ``combine`` does: each item's raw score is
a component (``reward/<rubric>/<item>_mean`` in the trainer's metrics when
the rubric is part of a ``combine``), a weight-0 item is a metric only, and an
item that fails on a trajectory fails that trajectory.

Items are reward functions. Rule items: :func:`mentions` (keywords, fixed or
per scenario), :func:`matches` (a regular expression) or any
``(trajectory) -> float``. The model item, :class:`ModelJudge`, asks a frozen
model a question about the transcript and reads a score from its answer:

* ``answer="yes_no"``: ``P(yes) / (P(yes) + P(no))``, where ``P(a)`` is the
  probability of the answer's tokens right after the judge prompt, computed
  with one teacher-forced forward pass (nothing is sampled, so the score has
  no sampling noise and always parses). With a multi-token answer, a longer
  word is penalized for its length; pick answers of one token each where the
  tokenizer allows it.
* ``answer="number"``: the judge generates an answer and the first number in
  it, in [0, ``max_score``], is divided by ``max_score``. An answer without
  one is an error for its trajectory (which the trainer drops, like any reward
  error), naming the judge and quoting the answer, unless ``fallback`` gives
  the score to use instead; the component ``parsed`` (1 or 0) then reports the
  parse rate.

Batching: the reward functions of all groups of a step run concurrently. The
``yes_no`` forward passes requested meanwhile are merged into one padded
forward in a worker thread (a :class:`~turnrl.rewards.batching.CallBatcher`);
``number`` answers go through ``agent.respond``, whose engine merges
concurrent requests into one ``generate``.

The judge's model must be frozen (see
:func:`~turnrl.environments.conversation.frozen_copy`): a judge that learns
along with the policy is a reward the policy can move.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import anyio
import torch

from turnrl.environments.conversation import is_frozen
from turnrl.rewards.base import RewardResult, TrajectoryReward, reward_function
from turnrl.rewards.batching import CallBatcher
from turnrl.rewards.builtin import parse_number
from turnrl.rewards.combine import RewardLike, WeightedReward
from turnrl.training.logprobs import token_logprobs
from turnrl.types import Message, Scenario, Trajectory, TrajectoryGroup, system, user

if TYPE_CHECKING:
    from turnrl.agents.transformers import TransformersAgent

Words = str | Sequence[str] | Callable[[Scenario], str | Sequence[str]]
DEFAULT_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
DEFAULT_INSTRUCTIONS = "You judge conversations. Read the conversation and answer the question."


def _episode(trajectory: Trajectory, role: str | None) -> list[str]:
    """Contents of the messages the episode added (not the scenario's opening), by role."""
    added = trajectory.conversation[len(trajectory.initial_messages) :]
    return [m.content for m in added if role is None or m.role == role]


def mentions(
    words: Words,
    *,
    name: str = "mentions",
    role: str | None = "assistant",
    mode: Literal["any", "all", "fraction"] = "any",
) -> TrajectoryReward:
    """Whether the episode's ``role`` messages mention ``words`` (case-insensitive).

    Only messages the episode added count (the assistant's turns and the
    environment's replies), not the scenario's opening messages. A word is
    mentioned when it occurs as a substring (``"thank"`` matches ``"Thanks"``).

    Args:
        words: A word, a list of words, or ``(scenario) -> words`` for words
            per scenario (e.g. ``lambda s: s.data["keywords"]``).
        name: The item's name.
        role: Whose messages to search; ``None``: every message.
        mode: ``any``: 1.0 if one word is mentioned; ``all``: 1.0 if all are;
            ``fraction``: the fraction of the words mentioned.

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant, user
        >>> t = Trajectory(scenario=Scenario(id="s", data={"kw": ["refund"]}),
        ...     initial_messages=[user("refund please")],
        ...     turns=[Turn(message=assistant("Thanks, done."), prompt_ids=[], completion_ids=[])])
        >>> mentions(["thank", "sorry"]).fn(t), mentions(["thank", "sorry"], mode="fraction").fn(t)
        (1.0, 0.5)
        >>> mentions(lambda s: s.data["kw"], role=None).fn(t)  # the opening line does not count
        0.0
    """
    if mode not in ("any", "all", "fraction"):
        raise ValueError(f"mode must be 'any', 'all' or 'fraction', got {mode!r}")

    def score(trajectory: Trajectory) -> float:
        wanted = words(trajectory.scenario) if callable(words) else words
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        if not wanted:
            raise ValueError(f"no words to look for in scenario {trajectory.scenario.id!r}")
        text = "\n".join(_episode(trajectory, role)).casefold()
        found = [w.casefold() in text for w in wanted]
        if mode == "any":
            return float(any(found))
        return float(all(found)) if mode == "all" else sum(found) / len(found)

    return reward_function(score, name=name)


def matches(
    pattern: str | re.Pattern[str],
    *,
    name: str = "matches",
    role: str | None = "assistant",
    flags: int = re.IGNORECASE,
) -> TrajectoryReward:
    """1.0 if ``pattern`` is found (``re.search``) in one of the episode's ``role`` messages.

    Args:
        pattern: A regular expression.
        name: The item's name.
        role: Whose messages to search; ``None``: every message.
        flags: ``re`` flags for a string pattern (default: ignore case).

    Examples:
        >>> from turnrl.types import Scenario, Trajectory, Turn, assistant
        >>> t = Trajectory(scenario=Scenario(id="s"), turns=[
        ...     Turn(message=assistant("Order #1234 ships."), prompt_ids=[], completion_ids=[])])
        >>> matches(r"#\\d{4}").fn(t), matches(r"refund").fn(t)
        (1.0, 0.0)
    """
    regex = re.compile(pattern, flags) if isinstance(pattern, str) else pattern

    def score(trajectory: Trajectory) -> float:
        return float(any(regex.search(text) for text in _episode(trajectory, role)))

    return reward_function(score, name=name)


def transcript(
    messages: Sequence[Message],
    *,
    labels: Mapping[str, str] | None = None,
    max_chars: int | None = None,
) -> str:
    """The conversation as plain text, one ``Label: content`` line per message.

    System messages are left out (they are the agent's instructions, not the
    conversation). With ``max_chars``, only the end is kept, after ``...``.

    Examples:
        >>> from turnrl.types import assistant, system, user
        >>> transcript([system("x"), user("Hi"), assistant("Hello!")], labels={"user": "Customer"})
        'Customer: Hi\\nAssistant: Hello!'
        >>> transcript([user("Hi"), assistant("Hello!")], max_chars=12)
        '...t: Hello!'
    """
    names = {**DEFAULT_LABELS, **(labels or {})}
    text = "\n".join(f"{names[m.role]}: {m.content}" for m in messages if m.role != "system")
    if max_chars is not None and len(text) > max_chars:
        text = "..." + text[len(text) - max_chars + 3 :]
    return text


class ModelJudge:
    """Asks a frozen model a rubric question about each conversation (see the module docstring).

    Args:
        agent: The judge, with a frozen model: a ``TransformersAgent`` for
            ``yes_no`` (it needs the model); any Agent for ``number``.
        question: The question, formatted with the scenario's data
            (``"Did the agent solve the {goal}?"``), or ``(trajectory) -> str``.
        name: The reward's name.
        answer: ``yes_no`` (answer probabilities) or ``number`` (a parsed,
            generated number).
        choices: The positive and the negative answer, for ``yes_no``.
        max_score: The top of the scale, for ``number``.
        fallback: The score of an answer with no number in range (``number``);
            ``None``: such an answer is an error for its trajectory.
        instructions: The judge's system prompt.
        labels: Role labels of the transcript (see :func:`transcript`).
        max_transcript_chars: Keep only the end of long transcripts.
        max_batch_size: Most sequences per forward pass (``yes_no``).

    Raises:
        ValueError: The agent's model is trainable, or a bad setting.
    """

    def __init__(
        self,
        agent: TransformersAgent,
        question: str | Callable[[Trajectory], str],
        *,
        name: str = "judge",
        answer: Literal["yes_no", "number"] = "yes_no",
        choices: tuple[str, str] = ("yes", "no"),
        max_score: float = 10.0,
        fallback: float | None = None,
        instructions: str = DEFAULT_INSTRUCTIONS,
        labels: Mapping[str, str] | None = None,
        max_transcript_chars: int | None = None,
        max_batch_size: int = 32,
    ) -> None:
        if not is_frozen(agent):
            raise ValueError(
                f"judge {name!r}: the judge's model has trainable parameters; a judge that "
                "trains with the policy is a reward the policy can move. Use "
                "frozen_copy(agent) (turnrl.environments.conversation)"
            )
        if answer not in ("yes_no", "number"):
            raise ValueError(f"answer must be 'yes_no' or 'number', got {answer!r}")
        if max_score <= 0:
            raise ValueError(f"max_score must be > 0, got {max_score}")
        self.agent, self.question, self.name, self.answer = agent, question, name, answer
        self.choices, self.max_score, self.fallback = choices, float(max_score), fallback
        self.instructions, self.labels = instructions, labels
        self.max_transcript_chars = max_transcript_chars
        self.max_batch_size = max_batch_size
        self._choice_ids: list[list[int]] = []
        if answer == "yes_no":
            tokenize = agent.tokenizer
            self._choice_ids = [tokenize(c, add_special_tokens=False).input_ids for c in choices]
            if len(choices) != 2 or not all(self._choice_ids):
                raise ValueError(f"choices must be two non-empty answers, got {choices!r}")
        self._forward = CallBatcher(self._answer_logprobs)

    def prompt(self, trajectory: Trajectory) -> list[Message]:
        """The judge's messages for ``trajectory``: instructions, transcript and question."""
        if callable(self.question):
            question = self.question(trajectory)
        else:
            try:
                question = self.question.format_map(trajectory.scenario.data)
            except KeyError as e:
                raise LookupError(
                    f"the question needs scenario.data[{e.args[0]!r}], which scenario "
                    f"{trajectory.scenario.id!r} lacks"
                ) from None
        if self.answer == "yes_no":
            hint = f"Answer {self.choices[0]} or {self.choices[1]}."
        else:
            hint = f"Answer with a number from 0 to {self.max_score:g}."
        text = transcript(
            trajectory.conversation, labels=self.labels, max_chars=self.max_transcript_chars
        )
        return [system(self.instructions), user(f"{text}\n\nQuestion: {question}\n{hint}")]

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """One result per trajectory of ``group``; failures are per-trajectory errors."""
        results: list[RewardResult] = [RewardResult(0.0)] * len(group)
        score_one = self._yes_no if self.answer == "yes_no" else self._number

        async def run(k: int, trajectory: Trajectory) -> None:
            try:
                results[k] = await score_one(trajectory)
            except Exception as e:  # a reward must not kill the step
                results[k] = RewardResult(0.0, error=f"{self.name}: {type(e).__name__}: {e}")

        async with anyio.create_task_group() as tg:
            for k, trajectory in enumerate(group):
                tg.start_soon(run, k, trajectory)
        return results

    async def _yes_no(self, trajectory: Trajectory) -> RewardResult:
        prompt_ids = self.agent.encode(self.prompt(trajectory))
        context = getattr(self.agent.model.config, "max_position_embeddings", None)
        longest = len(prompt_ids) + max(len(ids) for ids in self._choice_ids)
        if context is not None and longest > context:
            raise ValueError(
                f"the judge prompt ({longest} tokens with the answer) exceeds the judge "
                f"model's context of {context}; set max_transcript_chars"
            )
        logp_yes, logp_no = await self._forward([(prompt_ids, ids) for ids in self._choice_ids])
        # P(yes) / (P(yes) + P(no)) = sigmoid(log P(yes) - log P(no)); stable for tiny P.
        return RewardResult(torch.sigmoid(torch.tensor(logp_yes - logp_no)).item())

    async def _number(self, trajectory: Trajectory) -> RewardResult:
        turn = await self.agent.respond(self.prompt(trajectory))
        value = parse_number(turn.message.content)
        if value is not None and 0.0 <= value <= self.max_score:
            return RewardResult(value / self.max_score, components={"parsed": 1.0})
        if self.fallback is None:
            shown = turn.message.content[:60]
            raise ValueError(
                f"no score in [0, {self.max_score:g}] in the judge's answer {shown!r}; "
                "pass fallback= to score such answers instead"
            )
        return RewardResult(self.fallback, components={"parsed": 0.0})

    def _answer_logprobs(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """``log P(answer | prompt)`` of each ``(prompt_ids, answer_ids)`` row (worker thread)."""
        model = self.agent.model
        pad = self.agent.tokenizer.pad_token_id
        out: list[float] = []
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start : start + self.max_batch_size]
            width = max(len(p) + len(a) for p, a in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (n, T)
            attention_mask = torch.zeros(len(chunk), width, dtype=torch.long)  # (n, T)
            answer_mask = torch.zeros(len(chunk), width)  # (n, T): 1 on the answer's tokens
            for i, (prompt_ids, answer_ids) in enumerate(chunk):
                n_prompt, n = len(prompt_ids), len(prompt_ids) + len(answer_ids)
                input_ids[i, :n] = torch.tensor(prompt_ids + answer_ids)
                attention_mask[i, :n] = 1
                answer_mask[i, n_prompt:n] = 1.0
            device = next(model.parameters()).device
            with torch.inference_mode():
                logprobs = token_logprobs(model, input_ids.to(device), attention_mask.to(device))
            out += (logprobs.float().cpu() * answer_mask).sum(-1).tolist()  # (n,)
        return out


class RubricJudge:
    """An end-of-conversation rubric: weighted items, scored by rules or by a model.

    The score is the weighted sum of the items' scores divided by the sum of
    the positive weights (see the module docstring); each item's raw score is
    reported in ``RewardResult.components`` under its name.

    Args:
        items: ``{item: weight}`` or ``(item, weight)`` pairs. An item is a
            reward function (:func:`mentions`, :func:`matches`,
            :class:`ModelJudge`, ...) or a plain ``(trajectory) -> float``.
        name: The rubric's name.

    Raises:
        ValueError: No item has a positive weight, or ``combine``'s checks
            (duplicate names, non-finite weights) fail.

    Examples:
        >>> import anyio
        >>> from turnrl.types import Scenario, Trajectory, Turn, TrajectoryGroup, assistant
        >>> t = Trajectory(scenario=Scenario(id="s"), turns=[
        ...     Turn(message=assistant("Sorry! Refund sent."), prompt_ids=[], completion_ids=[])])
        >>> rubric = RubricJudge({mentions("refund", name="refund"): 3.0,
        ...                       mentions("please", name="polite"): 1.0})
        >>> anyio.run(rubric, TrajectoryGroup(scenario=t.scenario, trajectories=[t]))[0]
        RewardResult(score=0.75, components={'refund': 1.0, 'polite': 0.0}, error=None)
    """

    def __init__(
        self,
        items: Sequence[tuple[RewardLike, float]] | Mapping[RewardLike, float],
        *,
        name: str = "rubric",
    ) -> None:
        self._sum = WeightedReward(items, name=name)
        self.name = name
        self.total_weight = sum(w for w in self._sum.weights.values() if w > 0)
        if self.total_weight == 0:
            raise ValueError(f"rubric {name!r} needs at least one item with a positive weight")

    @property
    def weights(self) -> dict[str, float]:
        """Each item's weight, by name (before normalization)."""
        return self._sum.weights

    def __repr__(self) -> str:
        return f"RubricJudge(name={self.name!r}, weights={self.weights})"

    async def __call__(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score every trajectory of ``group`` against the rubric."""
        return [
            RewardResult(r.score / self.total_weight, r.components, r.error)
            for r in await self._sum(group)
        ]
