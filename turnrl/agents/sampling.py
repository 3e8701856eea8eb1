"""The sampling settings ``generate`` gets, and the log-probs the engine records.

:func:`sampling_config` builds a complete ``GenerationConfig`` so that nothing a
checkpoint's ``generation_config.json`` holds is applied behind the engine's
back; :class:`LogprobRecorder` gathers the log-prob of each sampled token under
the temperature-scaled distribution, one step's distribution at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor

from turnrl.agents.inference import SamplingParams


class _SealedGenerationConfig(GenerationConfig):
    """A GenerationConfig that ``generate`` cannot fill in from ``model.generation_config``.

    ``generate`` completes a passed config with ``update(defaults_only=True)``:
    every field left ``None`` is taken from the model's saved generation config
    (a ``repetition_penalty``, ``top_k``, ``min_p``, ``suppress_tokens``,
    ``num_beams``... shipped with the checkpoint), then from transformers' global
    defaults. Those calls are ignored here, so the config holds exactly the
    values it was built with (see :func:`sampling_config`). Explicit updates
    (``defaults_only=False``) still apply. This leans on how ``generate`` merges;
    ``tests/reliability/test_sampling_distribution.py`` fails if that changes.
    """

    def update(
        self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        if defaults_only:
            return kwargs
        return super().update(
            defaults_only=False, allow_custom_entries=allow_custom_entries, **kwargs
        )


def sampling_config(
    params: SamplingParams,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    return_dict_in_generate: bool = False,
) -> GenerationConfig:
    """The complete generation config for ``params``, whatever the model's own holds.

    Every field is set: transformers' global defaults (no penalty, no forced
    or suppressed token, one beam, one sequence), then ``params``. Sampling
    is then from ``softmax(logits / temperature)`` truncated by ``top_p`` only
    (argmax when ``temperature`` is 0), the distribution the engine records
    and training recomputes.

    Args:
        params: Temperature, top-p and length of the turn.
        eos_token_ids: Tokens that end a turn.
        pad_token_id: Token used for padding.
        return_dict_in_generate: Ask ``generate`` for its output object (and cache).
    """
    greedy = params.temperature == 0
    fields = GenerationConfig._get_default_generation_params()
    fields.update(
        max_new_tokens=params.max_new_tokens,
        do_sample=not greedy,
        eos_token_id=list(eos_token_ids),
        pad_token_id=pad_token_id,
        return_dict_in_generate=return_dict_in_generate,
    )
    if not greedy:
        # top_k=0: the global default is a top-k of 50. Greedy decoding builds no warpers;
        # leaving their defaults then avoids transformers' "flags not valid" warning.
        fields.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
    fields.pop("max_length")  # max_new_tokens sets it from the prompt length
    return _SealedGenerationConfig(**fields)


class LogprobRecorder(LogitsProcessor):
    """Records the log-prob of each sampled token, keeping one step's distribution.

    ``generate`` runs user processors before its temperature and top-p
    warpers, so ``scores`` here are the model's raw logits. At step ``t`` the
    token sampled at step ``t - 1`` is the last column of ``input_ids``; its
    log-prob is gathered from the stored distribution of step ``t - 1``, and
    step ``t``'s distribution replaces it. :meth:`finish` gathers the last
    step's token.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.picked: list[torch.Tensor] = []  # (B,) per finished step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.picked.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs of ``new_tokens`` (B, S), the tokens generated after the prompt."""
        if self.previous is not None and len(self.picked) < new_tokens.shape[1]:
            last = new_tokens[:, len(self.picked) : len(self.picked) + 1]
            self.picked.append(self.previous.gather(-1, last.to(self.previous.device)).squeeze(-1))
        if not self.picked:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.picked, dim=1)[:, : new_tokens.shape[1]]  # (B, S)
