"""Which sampling settings a run uses: ``config.generation`` or the agent's own.

An agent may carry its own :class:`~turnrl.agents.inference.SamplingParams`
(``TransformersAgent(..., sampling=...)``) and a run has ``config.generation``.
The rule, field by field for ``max_new_tokens``, ``temperature`` and ``top_p``:

1. A field set explicitly in ``config.generation`` (as an argument, a profile
   override, in an experiment file, with ``--set`` or by assignment) governs.
   When the agent was built with explicit sampling settings that hold another
   value, a warning names both values and says the config's wins.
2. A field ``config.generation`` leaves at its default takes the agent's value
   when the agent's settings are explicit.
3. Otherwise both defaults agree (64 new tokens, temperature 1, top-p 1).

The :class:`~turnrl.training.trainer.Trainer` applies the rule once, when it is
built, and keeps the outcome in ``trainer.config.generation``: rollouts and
evaluations sample with it and the run directory's ``config.json`` records it.
The agent's own ``sampling`` is left as it is (``agent.respond`` outside
training still uses it).
"""

from __future__ import annotations

import warnings
from typing import Any

from turnrl.agents.inference import SamplingParams
from turnrl.training.config import TrainingConfig

SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p")
"""The fields that ``SamplingParams`` and ``config.generation`` both hold."""


def explicit_sampling(agent: Any) -> SamplingParams | None:
    """The sampling settings ``agent`` was given explicitly, or None.

    A ``TransformersAgent`` says whether its ``sampling`` was passed or assigned
    (``sampling_is_explicit``). For another agent with a ``sampling`` attribute,
    settings that differ from ``SamplingParams()`` count as explicit.
    """
    own = getattr(agent, "sampling", None)
    if not isinstance(own, SamplingParams):
        return None
    explicit = getattr(agent, "sampling_is_explicit", None)
    if explicit is None:
        explicit = own != SamplingParams()
    return own if explicit else None


def resolve_generation(config: TrainingConfig, agent: Any) -> TrainingConfig:
    """``config`` with the sampling settings the run uses (the rule in the module docstring).

    Returns ``config`` itself when nothing changes, else a copy whose
    ``generation`` takes the agent's values for the fields the config left unset;
    ``config`` is not modified.

    Raises:
        ValueError: The outcome is greedy decoding (an agent built with
            ``temperature=0`` and no ``config.generation.temperature``): RL
            needs sampled turns.
    """
    own = explicit_sampling(agent)
    if own is None:
        return config
    generation, chosen, overridden = config.generation, {}, []
    for name in SAMPLING_FIELDS:
        theirs, mine = getattr(own, name), getattr(generation, name)
        if name not in generation.model_fields_set:
            if theirs != mine:
                chosen[name] = theirs
        elif theirs != mine:
            overridden.append(f"config.generation.{name}={mine} (the agent's is {theirs})")
    if overridden:
        warnings.warn(
            f"the agent was built with sampling settings that config.generation overrides: "
            f"{'; '.join(overridden)}. config.generation wins for every field it sets; "
            "leave a field unset there to use the agent's value",
            UserWarning,
            stacklevel=3,  # the caller of Trainer(...)
        )
    if chosen.get("temperature") == 0:
        raise ValueError(
            "the agent's sampling settings are greedy (temperature=0), which would be the "
            "run's since config.generation.temperature is not set; RL learns from sampled "
            "turns: set config.generation.temperature (> 0) or build the agent with "
            "SamplingParams(temperature > 0)"
        )
    if not chosen:
        return config
    return config.model_copy(update={"generation": generation.model_copy(update=chosen)})
