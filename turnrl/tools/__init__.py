"""Tools an agent can call: their definitions, and the formats their calls are written in.

- :mod:`turnrl.tools.definition`: :class:`Tool` and :func:`tool` (a typed,
  documented function with a derived JSON schema) and :func:`execute`, which
  runs one call and turns every fault into an error text for the agent;
- :mod:`turnrl.tools.calls`: :class:`ToolCall` and the parsers that read calls
  out of an assistant message and write them (Hermes, JSON, compact).

The environment that runs tools during an episode is
:class:`turnrl.environments.tool_env.ToolEnvironment`.
"""

from turnrl.tools.calls import (
    CompactParser,
    HermesParser,
    JsonParser,
    ToolCall,
    ToolCallParser,
    parser_for_template,
)
from turnrl.tools.definition import (
    Tool,
    ToolArgumentError,
    ToolOutcome,
    ToolSchemaError,
    execute,
    format_result,
    tool,
    tool_schemas,
    validate_arguments,
)

__all__ = [
    "CompactParser",
    "HermesParser",
    "JsonParser",
    "Tool",
    "ToolArgumentError",
    "ToolCall",
    "ToolCallParser",
    "ToolOutcome",
    "ToolSchemaError",
    "execute",
    "format_result",
    "parser_for_template",
    "tool",
    "tool_schemas",
    "validate_arguments",
]
