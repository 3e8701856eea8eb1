"""Kept for the import path README.md documents; the module is :mod:`turnrl.tools.calls`."""

from turnrl.tools.calls import (  # noqa: F401
    CompactParser,
    HermesParser,
    JsonParser,
    ToolCall,
    ToolCallParser,
    parser_for_template,
)
