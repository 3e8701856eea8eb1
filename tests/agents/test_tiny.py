import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from turnrl.agents import check_chat_template
from turnrl.agents.tiny import (
    CHAT_TEMPLATE,
    REASONING_CHAT_TEMPLATE,
    build_tiny_model,
    build_tiny_tokenizer,
    tiny_model_path,
)


def test_loads_with_from_pretrained(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_path, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 10_000_000
    assert tokenizer.chat_template
    assert tokenizer.decode(tokenizer("What is 3+4?").input_ids) == "What is 3+4?"


def test_deterministic_weights():
    a, b = build_tiny_model(seed=0), build_tiny_model(seed=0)
    c = build_tiny_model(seed=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_cache_reused_and_separate_roots(tmp_path):
    first = tiny_model_path(root=tmp_path)
    mtime = (first / "config.json").stat().st_mtime
    assert tiny_model_path(root=tmp_path) == first
    assert (first / "config.json").stat().st_mtime == mtime
    assert tiny_model_path("10m", root=tmp_path) != first


def test_chat_template_marks_assistant_tokens(tiny_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "42"}]
    out = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "42<|end|>"


def test_reasoning_template_drops_thinking_before_the_last_user_message():
    reasoning, default = build_tiny_tokenizer("reasoning"), build_tiny_tokenizer()
    conversation = [
        {"role": "user", "content": "What is 7+5?"},
        {"role": "assistant", "content": "<think>7+5=12</think> 12"},
        {"role": "user", "content": "Right. What is 1+2?"},
        {"role": "assistant", "content": "<think>1+2=3</think>3"},
    ]
    # The earlier reply loses its thinking and the space after it; the last keeps all.
    stripped = [conversation[0], {"role": "assistant", "content": "12"}, *conversation[2:]]
    assert reasoning.apply_chat_template(conversation, tokenize=False) == (
        default.apply_chat_template(stripped, tokenize=False)
    )
    # A reply after the last user message (the turn in progress) keeps its thinking.
    upto = conversation[:2]
    assert reasoning.apply_chat_template(upto, tokenize=False) == (
        default.apply_chat_template(upto, tokenize=False)
    )
    assert reasoning.get_vocab() == default.get_vocab()


def test_reasoning_template_is_reported_step_wise():
    assert check_chat_template(build_tiny_tokenizer()).mode == "prefix"
    report = check_chat_template(build_tiny_tokenizer("reasoning"))
    assert report.usable and report.mode == "step-wise"
    first = report.rewrites[0]
    assert (first.turn, first.role, first.seen_at) == (2, "assistant", 6)
    assert first.diff.startswith("removed '<think>")


def test_reasoning_model_path_has_its_own_directory(tmp_path):
    default = tiny_model_path(root=tmp_path)
    reasoning = tiny_model_path(root=tmp_path, template="reasoning")
    assert reasoning != default and reasoning.name.startswith("tiny-default-reasoning-s0-")
    assert tiny_model_path(root=tmp_path, template="default") == default
    tokenizer = AutoTokenizer.from_pretrained(reasoning)
    assert tokenizer.chat_template == REASONING_CHAT_TEMPLATE
    assert AutoTokenizer.from_pretrained(default).chat_template == CHAT_TEMPLATE
    same = AutoModelForCausalLM.from_pretrained(reasoning).state_dict()
    for name, weight in AutoModelForCausalLM.from_pretrained(default).state_dict().items():
        torch.testing.assert_close(same[name], weight, msg=name)


def test_unknown_template_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tiny chat template 'qwen3'.*reasoning"):
        tiny_model_path(root=tmp_path, template="qwen3")
    assert not list(tmp_path.iterdir())
