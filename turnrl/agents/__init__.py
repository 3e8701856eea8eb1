"""The policy side. Import the agents from their modules; the chat-template check is here too."""

from turnrl.agents.template_check import TemplateReport, TemplateRewrite, check_chat_template
from turnrl.agents.templates import ChatTemplateError

__all__ = ["ChatTemplateError", "TemplateReport", "TemplateRewrite", "check_chat_template"]
