"""check_chat_template: the verdict on the embedded, Qwen2.5, Qwen3-style and broken templates."""

import pytest

from turnrl import ChatTemplateError, check_chat_template
from turnrl.agents.tiny import build_tiny_tokenizer


def test_embedded_template_is_prefix_preserving():
    report = check_chat_template(build_tiny_tokenizer())
    assert (report.usable, report.mode, report.prefix_preserving) == (True, "prefix", True)
    assert report.assistant_content == "verbatim" and report.rewrites == ()
    assert "mode prefix" in str(report)


def test_qwen25_template_is_prefix_preserving(real_vocab):
    report = check_chat_template(real_vocab("qwen2.5"))
    assert (report.mode, report.assistant_content, report.rewrites) == ("prefix", "verbatim", ())


def test_qwen3_template_is_step_wise_and_names_the_rewritten_turns(real_vocab):
    report = check_chat_template(real_vocab("qwen3"))
    assert (report.usable, report.mode, report.prefix_preserving) == (True, "step-wise", False)
    assert report.assistant_content == "rewritten"
    # Probe turn 2 reasons and calls the tool; its reasoning survives the tool answer
    # (turn 4's prompt) and is dropped once a new user query follows (turn 6's prompt).
    first = report.rewrites[0]
    assert (first.turn, first.role, first.seen_at) == (2, "assistant", 6)
    assert "removed" in first.diff and "The calculator is exact." in first.diff
    assert "turn 2 (assistant)" in str(report) and "step-wise" in str(report)


def test_template_arguments_reach_the_template(real_vocab):
    report = check_chat_template(real_vocab("qwen3"), enable_thinking=False)
    assert report.mode == "step-wise" and report.template_kwargs == {"enable_thinking": False}
    # The empty block the generation prompt opens is gone from the next prompt.
    assert report.rewrites[0].turn == 2 and "</think>" in report.rewrites[0].diff
    assert "enable_thinking=False" in str(report)


def test_llama3_template_trims_whitespace_of_replies(real_vocab):
    report = check_chat_template(real_vocab("llama3"))
    assert report.mode == "step-wise"
    assert [(r.turn, r.diff) for r in report.rewrites] == [(4, "removed '\\n'")]


def test_no_chat_template_is_not_usable():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    report = check_chat_template(tokenizer)
    assert (report.usable, report.mode) == (False, None)
    assert "no chat template" in report.problem
    with pytest.raises(ChatTemplateError, match="no chat template"):
        report.raise_if_unusable()


def test_a_template_that_raises_names_the_turn():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' and loop.index0 > 3 %}"
        "{{ raise_exception('only one reply') }}{% endif %}{{ m.content }}{% endfor %}"
    )
    report = check_chat_template(tokenizer)
    assert not report.usable
    assert "turn 4 (assistant)" in report.problem and "only one reply" in report.problem


def test_a_template_that_loses_replies_is_not_usable():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.text }}\n{% endfor %}"
    report = check_chat_template(tokenizer)
    assert not report.usable and "turn 2 (assistant)" in report.problem
    assert "render each message's 'content'" in report.problem


def test_roles_the_template_rejects_are_left_out_of_the_probe():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|' + m.role + '|>' + m.content + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    report = check_chat_template(tokenizer)
    assert report.usable and report.mode == "prefix"
    assert "'system'" in report.notes[0]
