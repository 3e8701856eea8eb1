"""The chat template a run trains with: its arguments, and the check before training.

``model.chat_template_kwargs`` (``{enable_thinking: false}``) gives the template
arguments of the run: when set, the trainer gives them to the agent (its
``chat_template_kwargs``), so rollouts, evaluations and the check below render
with them; when None, the agent's own are kept and recorded in the run's
``config.json``.

:func:`check_template` runs :func:`~turnrl.agents.template_check.check_chat_template`
on the agent's tokenizer (with the environment's tools) when the trainer is
built, before any model, file or episode: it logs the verdict and the mode
(one sequence per episode, or step-wise samples where the template rewrites
history) and raises :class:`~turnrl.agents.templates.ChatTemplateError` for a
template that cannot be used at all.
"""

from __future__ import annotations

from typing import Any

import structlog

from turnrl.agents.template_check import TemplateReport
from turnrl.environments.base import Environment
from turnrl.training.config import TrainingConfig
from turnrl.training.rollout import offered_tools

log = structlog.get_logger(__name__)


def resolve_template_kwargs(config: TrainingConfig, agent: Any) -> TrainingConfig:
    """Give ``config.model.chat_template_kwargs`` to ``agent``, or record the agent's own.

    Returns:
        ``config`` itself, or a copy naming the agent's template arguments.

    Raises:
        ValueError: The config sets template arguments for an agent that has none
            (no ``chat_template_kwargs`` attribute).
    """
    wanted = config.model.chat_template_kwargs
    if not hasattr(agent, "chat_template_kwargs"):
        if wanted:
            raise ValueError(
                f"model.chat_template_kwargs={wanted!r}, but the agent "
                f"({type(agent).__name__}) takes no chat template arguments; remove the "
                "setting or use a TransformersAgent"
            )
        return config
    if wanted is not None:
        agent.chat_template_kwargs = dict(wanted)
        return config
    if not agent.chat_template_kwargs:
        return config
    model = config.model.model_copy(update={"chat_template_kwargs": agent.chat_template_kwargs})
    return config.model_copy(update={"model": model})


def check_template(agent: Any, env: Environment) -> TemplateReport | None:
    """Check ``agent``'s chat template before training; log the verdict.

    Agents without ``check_template`` (not template-based) are not checked.

    Returns:
        The report, or None for an agent that has no chat template to check.

    Raises:
        ChatTemplateError: The template cannot be used (missing, raises on the
            probe conversation, or loses what the assistant said); the message
            names the turn and the fix.
    """
    check = getattr(agent, "check_template", None)
    if check is None:
        return None
    tools = offered_tools(env) if getattr(agent, "renders_tools", False) else None
    report: TemplateReport = check(tools=tools)
    report.raise_if_unusable()
    log.info(
        "chat_template",
        mode=report.mode,
        prefix_preserving=report.prefix_preserving,
        assistant_content=report.assistant_content,
        rewrites=[str(r) for r in report.rewrites],
        template_kwargs=report.template_kwargs,
    )
    return report
