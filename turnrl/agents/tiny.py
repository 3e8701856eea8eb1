"""The embedded default model: a small Llama built offline, deterministically.

turnrl's tests, demo and benchmarks need a real Hugging Face causal LM without
touching a hub. This module builds one from nothing:

- a character-level tokenizer (printable ASCII, newline, and a few special
  tokens for chat roles) made with the ``tokenizers`` library and wrapped as a
  ``PreTrainedTokenizerFast``, with a Jinja chat template that marks assistant
  content with ``{% generation %}`` so ``return_assistant_tokens_mask`` works;
- a ``LlamaForCausalLM`` of a few million parameters, initialized from a fixed
  seed.

Both are saved with ``save_pretrained`` into a cache directory
(``$TURNRL_CACHE`` or ``~/.cache/turnrl``) and load back with
``from_pretrained`` like any model. The directory name carries a hash of the
configuration, so a changed configuration never reuses stale files.
Writing goes to a temporary directory that is renamed into place, so parallel
processes (tests, torchrun ranks) never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, UNK, EOS = "<|pad|>", "<|unk|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
SPECIAL_TOKENS = (PAD, UNK, EOS, *ROLE_TOKENS)
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))

# Compact on purpose: no newlines between turns, one token per role marker.
# The generation markers let transformers return the assistant-token mask,
# which the tests use to check turnrl's own loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

# Qwen3's rule for reasoning: an assistant message before the last user message
# loses its thinking span (everything up to ``</think>`` and the whitespace after
# it); the later ones (the turn in progress, its tool calls) keep theirs. An
# episode's later prompts then stop extending the earlier ones: step-wise mode.
REASONING_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if loop.index0 < ns.last_user and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip() -%}"
    "{%- endif -%}"
    "{% generation %}{{ content + '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

CHAT_TEMPLATES: dict[str, str] = {"default": CHAT_TEMPLATE, "reasoning": REASONING_CHAT_TEMPLATE}
"""The chat templates of the embedded tokenizer, by name: ``default`` keeps every
turn as it was (prefix mode), ``reasoning`` drops earlier thinking (step-wise)."""

SIZES: dict[str, dict[str, int]] = {
    # ~3.4M parameters: learns the arithmetic demo in minutes on two CPU cores.
    "default": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    # ~10M parameters: the size the throughput benchmarks use.
    "10m": {
        "hidden_size": 384,
        "intermediate_size": 1152,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
    },
}


def build_tiny_tokenizer(template: str = "default") -> PreTrainedTokenizerFast:
    """The character-level tokenizer with a chat template of :data:`CHAT_TEMPLATES`.

    The vocabulary is the same for every template: ``<think>`` and ``</think>``
    are plain characters to it.

    Raises:
        ValueError: ``template`` is not one of :data:`CHAT_TEMPLATES`.
    """
    chat_template = _chat_template(template)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    # BPE with no merges and no pre-tokenizer maps every character to its id.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _chat_template(name: str) -> str:
    if name not in CHAT_TEMPLATES:
        raise ValueError(
            f"unknown tiny chat template {name!r}; choose one of {sorted(CHAT_TEMPLATES)}"
        )
    return CHAT_TEMPLATES[name]


def tiny_config(size: str = "default", **overrides: Any) -> LlamaConfig:
    """The model configuration of a named size, with optional overrides.

    Raises:
        ValueError: ``size`` is not one of :data:`SIZES`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    tokenizer = build_tiny_tokenizer()
    kwargs: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "rms_norm_eps": 1e-5,
        **SIZES[size],
    }
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tiny_model(size: str = "default", *, seed: int = 0, **overrides: Any) -> LlamaForCausalLM:
    """A freshly initialized tiny Llama; the same seed gives the same weights."""
    config = tiny_config(size, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def cache_dir() -> Path:
    """Where built models are kept: ``$TURNRL_CACHE`` or ``~/.cache/turnrl``."""
    return Path(os.environ.get("TURNRL_CACHE", Path.home() / ".cache" / "turnrl"))


def tiny_model_path(
    size: str = "default",
    *,
    seed: int = 0,
    root: str | Path | None = None,
    template: str = "default",
) -> Path:
    """Build (once) and save the tiny model and tokenizer; return their directory.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``. ``template="reasoning"`` gives the same
    weights with the chat template that drops earlier thinking
    (:data:`REASONING_CHAT_TEMPLATE`), in a directory of its own.

    Raises:
        ValueError: Unknown ``size`` or ``template``.
    """
    chat_template = _chat_template(template)
    config = tiny_config(size)
    key = json.dumps(
        {"config": config.to_dict(), "seed": seed, "template": chat_template},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = Path(root) if root is not None else cache_dir()
    name = size if template == "default" else f"{size}-{template}"
    path = target / f"tiny-{name}-s{seed}-{digest}"
    if (path / "config.json").exists():
        return path
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target))
    try:
        build_tiny_model(size, seed=seed).save_pretrained(tmp)
        build_tiny_tokenizer(template).save_pretrained(tmp)
        try:
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():  # lost a race to a broken writer
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
