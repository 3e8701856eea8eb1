import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from turnrl.agents.tiny import build_tiny_model, tiny_model_path


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
