"""Chat templates: rendering a conversation, its exact prompt tokens, and sampled text.

:func:`render_chat` renders messages with a tokenizer's chat template (and the
template's arguments, such as ``enable_thinking``), turning a template that
raises into a :class:`ChatTemplateError` that names the conversation's roles.

:func:`encode_chat` gives the token ids of the prompt the model sees for a
conversation, token in, token out: the sampled token ids of earlier assistant
turns are re-used as they are for the longest prefix that the template keeps
verbatim (the prompt of that turn followed by its content), and only the text
between them is tokenized. Where the template rewrites a turn (drops earlier
reasoning, inserts an empty thinking block, trims content), the rest of the
prompt is the template's own text, tokenized: the prompt is then what the model
really sees, and the episode's later turns no longer extend the earlier ones
(the step-wise mode of :mod:`turnrl.agents.template_check`).

:func:`decode_completion` turns sampled ids into the message text the
environment reads. It keeps tags a tokenizer may mark special but that belong
to the reply (``<tool_call>``, ``<think>``) and drops only the tokens that
end or pad a turn and the ``<|...|>`` control tokens of chat templates.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from turnrl.types import Message

Tools = Sequence[dict[str, Any]] | None


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used: missing, raising, or losing content."""


def render_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    tools: Tools = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The chat template's text for ``messages``.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        messages: The conversation.
        add_generation_prompt: Append the text that opens an assistant turn.
        tools: JSON schemas of the tools on offer, rendered by the template.
        template_kwargs: Extra template variables (``{"enable_thinking": False}``).

    Raises:
        ChatTemplateError: The tokenizer has no chat template, or rendering raised.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(no_template_message(tokenizer))
    extra = dict(template_kwargs or {})
    if tools is not None:
        extra["tools"] = list(tools)
    try:
        return tokenizer.apply_chat_template(
            [m.to_chat() for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except Exception as e:  # jinja2 errors, raise_exception(...) in the template, KeyError
        roles = ", ".join(m.role for m in messages) or "no messages"
        raise ChatTemplateError(
            f"the chat template raised {type(e).__name__}: {' '.join(str(e).split())} "
            f"while rendering a conversation of {len(messages)} messages ({roles}). "
            "Fix the template (tokenizer.chat_template) or send messages it accepts; "
            "turnrl.agents.check_chat_template(tokenizer) shows which turn fails"
        ) from e


def no_template_message(tokenizer: Any) -> str:
    """What to do when ``tokenizer`` has no chat template."""
    return (
        f"tokenizer {type(tokenizer).__name__} has no chat template; set "
        "`tokenizer.chat_template` to a Jinja template (see the transformers "
        "chat templating docs) before building a TransformersAgent"
    )


def encode_chat(
    messages: Sequence[Message],
    *,
    render: Callable[[Sequence[Message], bool], str],
    tokenize: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    eos_token_ids: Container[int],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of ``messages`` as the model sees them, re-using sampled tokens.

    Args:
        messages: The conversation; assistant messages with ``token_ids`` were sampled.
        render: ``render(messages, add_generation_prompt) -> text`` (the chat template).
        tokenize: Text -> token ids, without special tokens added.
        decode: Token ids -> text (used on a sampled end-of-turn token).
        eos_token_ids: The ids that end a turn.
        add_generation_prompt: Whether the prompt opens an assistant turn.

    Returns:
        The sampled ids of each assistant turn whose prompt and content the
        template renders verbatim (in order, up to the first it rewrites),
        with the template's text around them tokenized, then the template's
        text for the rest of the conversation tokenized.
    """
    messages = list(messages)
    final = render(messages, add_generation_prompt)
    ids: list[int] = []
    done = ""  # the prefix of `final` that `ids` covers
    for i, message in enumerate(messages):
        if message.role != "assistant" or message.token_ids is None:
            continue
        before = render(messages[:i], True)  # the prompt this turn was sampled from
        kept = before + message.content
        if not (before.startswith(done) and final.startswith(kept)):
            break  # rewritten from here on: the template's own text is what the model sees
        ids += tokenize(before[len(done) :])
        ids += message.token_ids
        done = kept
        if message.token_ids and message.token_ids[-1] in eos_token_ids:
            # The sampled eos already closes the turn; skip the template's copy of it.
            eos_text = decode(message.token_ids[-1:])
            if final[len(done) :].startswith(eos_text):
                done += eos_text
    return ids + tokenize(final[len(done) :])


def control_token_ids(tokenizer: Any, eos_token_ids: Sequence[int]) -> frozenset[int]:
    """The ids :func:`decode_completion` drops: eos, pad, bos and ``<|...|>`` specials.

    Special tokens spelled otherwise (``<tool_call>``, ``<think>``) are part of
    what the model says and are kept, even when the tokenizer marks them special.
    """
    ids = set(eos_token_ids)
    for name in ("pad_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    for token, token_id in zip(
        tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=False
    ):
        if token.startswith("<|") and token.endswith("|>"):
            ids.add(token_id)
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        text = str(added)
        if getattr(added, "special", False) and text.startswith("<|") and text.endswith("|>"):
            ids.add(token_id)
    return frozenset(ids)


def decode_completion(tokenizer: Any, token_ids: Sequence[int], control: Container[int]) -> str:
    """The text of sampled ``token_ids`` without the ``control`` ids (:func:`control_token_ids`)."""
    kept = [t for t in token_ids if t not in control]
    return tokenizer.decode(kept, skip_special_tokens=False)
