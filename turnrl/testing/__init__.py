"""Helpers for turnrl's tests and benchmarks (not part of the training API).

- :mod:`.real_vocab`: the Qwen2/2.5 BPE vocabulary built offline, with the
  public chat templates of :mod:`.chat_templates`, and small random models over it.
"""
