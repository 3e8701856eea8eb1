"""TransformersAgent: any local Hugging Face causal LM and its chat template.

The agent renders a conversation with the tokenizer's chat template, samples
through a shared :class:`~turnrl.agents.engine.GenerationEngine` (so concurrent
episodes are batched), and returns a :class:`~turnrl.types.Turn` holding the
exact tokens and the policy version they were sampled under. It satisfies
:class:`~turnrl.agents.base.TrainableAgent`.

Token in, token out. When the conversation contains assistant messages that
this agent sampled (they carry ``token_ids``), those ids are re-used as they
are; only the text between them (user and tool messages, role markers) is
tokenized, as the difference between two renderings of the chat template.
A training sequence built from the turns therefore holds exactly the tokens
the policy was conditioned on and sampled, which a decode/re-encode round
trip does not guarantee. Where the template rewrites earlier turns (some drop
past reasoning), the prompt is the template's own text from the first
rewritten turn on, which is what the model sees; see
:mod:`turnrl.agents.templates` and :func:`~turnrl.agents.template_check.check_chat_template`.
Template arguments (``enable_thinking``) are given as ``chat_template_kwargs``.

Tools. ``respond(conversation, tools=[schema, ...])`` renders the tools' JSON
schemas into the prompt through the template (``apply_chat_template(...,
tools=...)``), as transformers does; the rollout passes them when the
environment offers tools (``env.tools``). The same tools must be passed on
every turn of an episode, or the rendering of earlier turns changes. A
template that ignores ``tools`` (the embedded tiny model's) renders nothing:
check :attr:`TransformersAgent.renders_tools` and describe the tools in a
system message instead (``ToolEnvironment(..., describe_tools=True)``).
Tool calls stay text inside the assistant message's content, so their tokens
are kept and trained like any other sampled tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from turnrl.agents.engine import GenerationEngine
from turnrl.agents.inference import SamplingParams, WeightsMode
from turnrl.agents.template_check import TemplateReport, check_chat_template
from turnrl.agents.templates import (
    ChatTemplateError,
    Tools,
    control_token_ids,
    decode_completion,
    encode_chat,
    no_template_message,
    render_chat,
)
from turnrl.types import Message, Turn

__all__ = ["ChatTemplateError", "ModelLoadError", "TransformersAgent", "pin_adapter_base"]


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded: no weights, or unreadable files."""


SAMPLING_FILE = "sampling.json"
"""Where :meth:`TransformersAgent.save_pretrained` keeps the agent's sampling settings."""

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""The weight files ``from_pretrained`` looks for, one of which a model directory needs."""


class TransformersAgent:
    """An agent backed by a Hugging Face causal LM.

    Args:
        model: The causal LM (the policy that training updates).
        tokenizer: Its tokenizer; it must have a chat template.
        sampling: Default sampling settings for :meth:`respond` (default:
            ``SamplingParams()``). In training, the fields that
            ``config.generation`` sets explicitly override these, and these
            override the fields it leaves at their defaults (see
            :mod:`turnrl.training.generation`).
        max_batch_size: Most concurrent requests merged into one ``generate``.
        reuse_kv_cache: Let the engine reuse the KV cache of earlier turns and
            prefill a prompt that several rows repeat once (see
            :mod:`turnrl.agents.prefix_cache`; on by default, turned off by the
            engine for models it does not support).
        weights: ``"shared"`` (the engine samples from ``model`` itself, the
            default) or ``"copy"`` (it holds a copy that the trainer syncs
            after each update; see :mod:`turnrl.agents.engine`).
        chat_template_kwargs: Extra variables for the chat template on every
            rendering (``{"enable_thinking": False}`` for Qwen3-style templates).

    Raises:
        ChatTemplateError: The tokenizer has no chat template.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        sampling: SamplingParams | None = None,
        max_batch_size: int = 256,
        reuse_kv_cache: bool = True,
        weights: WeightsMode = "shared",
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError(no_template_message(tokenizer))
        self._model = model
        self.chat_template_kwargs: dict[str, Any] = dict(chat_template_kwargs or {})
        self.tokenizer = tokenizer
        self._sampling = sampling
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.eos_token_ids: list[int] = list(eos) if isinstance(eos, list | tuple) else [eos]
        self._control_ids = control_token_ids(tokenizer, self.eos_token_ids)
        self.engine = GenerationEngine(
            model,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_ids=self.eos_token_ids,
            max_batch_size=max_batch_size,
            reuse_kv_cache=reuse_kv_cache,
            weights=weights,
        )

    @property
    def sampling(self) -> SamplingParams:
        """Default sampling settings of :meth:`respond`."""
        return self._sampling if self._sampling is not None else SamplingParams()

    @sampling.setter
    def sampling(self, sampling: SamplingParams | None) -> None:
        self._sampling = sampling

    @property
    def sampling_is_explicit(self) -> bool:
        """Whether :attr:`sampling` was passed or assigned, rather than the default."""
        return self._sampling is not None

    @property
    def model(self) -> PreTrainedModel:
        """The policy: the model training updates."""
        return self._model

    @model.setter
    def model(self, model: PreTrainedModel) -> None:
        # A replaced model object (wrapped with LoRA, loaded adapters) must reach the
        # engine too: its "copy" mode copies it again.
        self._model = model
        self.engine.set_model(model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str = "float32",
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> TransformersAgent:
        """Load a model and tokenizer from a local directory (never from a hub).

        Args:
            path: A directory written by ``save_pretrained``.
            dtype: Parameter dtype (``"float32"``, ``"bfloat16"``, ...).
            device: Where to put the model (default: CUDA if available, else CPU).
            **kwargs: Passed to the constructor (``sampling``, ``chat_template_kwargs``...).

        The agent's sampling settings are ``sampling`` if given, else those
        :meth:`save_pretrained` stored in the directory, else the defaults.

        Raises:
            FileNotFoundError: ``path`` is not a directory with a ``config.json``
                (a LoRA adapter alone is named as such).
            ModelLoadError: The directory has no weight file (see
                :data:`WEIGHT_FILES`), its tokenizer or weights cannot be read,
                or its ``sampling.json`` is not valid.
        """
        path = Path(path).expanduser()
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(path)!r} holds a LoRA adapter, not a whole model: load it with "
                "turnrl.training.export.load_policy (which loads its base model too), or "
                "save a merged model with agent.save_pretrained(path, merge=True)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no model at {str(path)!r}: expected a local directory containing config.json "
                "(turnrl loads models from local paths only; download or save one first)"
            )
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            held = sorted(p.name for p in path.iterdir())
            raise ModelLoadError(
                f"no weights in {str(path)!r}: it has config.json but none of "
                f"{', '.join(WEIGHT_FILES)} (it holds: {', '.join(held)}). Save the model there "
                "with save_pretrained, or point at the directory that has its weights (a run's "
                "final/ folder, or `turnrl export` of a checkpoint)"
            )
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if "sampling" not in kwargs and (path / SAMPLING_FILE).is_file():
            kwargs["sampling"] = _read_sampling(path / SAMPLING_FILE)
        # Absolute, so the model's name_or_path (which a run records and a LoRA
        # adapter names as its base) resolves from any working directory.
        path = path.resolve()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... here
            raise ModelLoadError(
                f"cannot load the tokenizer of {str(path)!r} ({_one_line(e)}); the directory "
                "needs the tokenizer files save_pretrained writes (tokenizer.json, "
                "tokenizer_config.json)"
            ) from e
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as e:  # a truncated or corrupt weight file, missing shards...
            raise ModelLoadError(
                f"cannot load the model in {str(path)!r} ({_one_line(e)}); check that its "
                "weight files are complete (save the model again if a copy was interrupted) "
                "and that this transformers version knows its architecture"
            ) from e
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, **kwargs)

    def save_pretrained(self, path: str | Path, *, merge: bool = False) -> Path:
        """Write the model, its tokenizer and the agent's sampling settings to ``path``.

        :meth:`from_pretrained` loads the directory back into an equal agent
        (the sampling settings from ``sampling.json``), and
        ``AutoModelForCausalLM.from_pretrained`` reads it as any model. A LoRA
        model stores its adapter, naming the base model by absolute path (load
        it with :func:`turnrl.training.export.load_policy`), or with
        ``merge=True`` a plain model with the adapters merged in.

        Returns:
            ``path``.
        """
        path = Path(path)
        model = self.model
        if merge and hasattr(model, "merge_and_unload"):  # a peft model
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        pin_adapter_base(path)
        sampling = json.dumps(dataclasses.asdict(self.sampling), indent=2)
        (path / SAMPLING_FILE).write_text(sampling, encoding="utf-8")
        return path

    async def respond(
        self,
        conversation: Sequence[Message],
        *,
        sampling: SamplingParams | None = None,
        tools: Tools = None,
    ) -> Turn:
        """Sample the next assistant turn (batched with concurrent callers).

        Args:
            conversation: The messages so far.
            sampling: Sampling settings (default: the agent's own).
            tools: JSON schemas of the tools on offer, rendered by the chat
                template (see the module docstring).
        """
        prompt_ids = self.encode(conversation, tools=tools)
        completion = await self.engine.generate(prompt_ids, sampling or self.sampling)
        text = decode_completion(self.tokenizer, completion.token_ids, self._control_ids)
        return Turn(
            message=Message(role="assistant", content=text, token_ids=completion.token_ids),
            prompt_ids=prompt_ids,
            completion_ids=completion.token_ids,
            logprobs=completion.logprobs,
            finish_reason=completion.finish_reason,
            policy_version=completion.policy_version,
        )

    def render(
        self, messages: Sequence[Message], *, add_generation_prompt: bool, tools: Tools = None
    ) -> str:
        """The chat template's text for ``messages`` (and ``tools``, if given).

        Raises:
            ChatTemplateError: The template raised (the message names the roles).
        """
        return render_chat(
            self.tokenizer,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            template_kwargs=self.chat_template_kwargs,
        )

    def check_template(self, *, tools: Tools = None) -> TemplateReport:
        """:func:`check_chat_template` of this agent's tokenizer and template arguments."""
        return check_chat_template(self.tokenizer, tools=tools, **self.chat_template_kwargs)

    @cached_property
    def renders_tools(self) -> bool:
        """Whether the chat template renders ``tools=`` into the prompt.

        Found by rendering a conversation with and without a probe tool. When
        False, tools must be described in a system message.
        """
        probe = {
            "type": "function",
            "function": {
                "name": "probe",
                "description": "Probe.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
        messages = [Message(role="user", content="hi")]
        plain = self.render(messages, add_generation_prompt=True)
        try:
            return self.render(messages, add_generation_prompt=True, tools=[probe]) != plain
        except Exception:  # a template that chokes on tools does not support them
            return False

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def encode(
        self,
        conversation: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Tools = None,
    ) -> list[int]:
        """Token ids of ``conversation`` as the model sees them, re-using sampled tokens.

        ``tools`` (JSON schemas) are passed to the chat template. Sampled ids
        are kept up to the first turn the template rewrites; from there on the
        ids are the template's text, tokenized (:func:`~turnrl.agents.templates.encode_chat`).

        Raises:
            ChatTemplateError: The template raised while rendering.
        """
        return encode_chat(
            conversation,
            render=lambda messages, gen: self.render(
                messages, add_generation_prompt=gen, tools=tools
            ),
            tokenize=self._tokenize,
            decode=self.tokenizer.decode,
            eos_token_ids=self.eos_token_ids,
            add_generation_prompt=add_generation_prompt,
        )


def pin_adapter_base(path: str | Path) -> None:
    """Make the LoRA adapter saved in ``path`` (if any) name its base model by absolute path.

    peft records the base model's ``name_or_path`` as it was given when the model
    was loaded, so a relative one only resolves from that working directory.
    """
    file = Path(path) / "adapter_config.json"
    if not file.is_file():
        return
    config = json.loads(file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base and not Path(base).is_absolute() and Path(base).expanduser().is_dir():
        config["base_model_name_or_path"] = str(Path(base).expanduser().resolve())
        file.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _read_sampling(file: Path) -> SamplingParams:
    try:
        return SamplingParams(**json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ModelLoadError(
            f"{file}: not the sampling settings save_pretrained writes ({_one_line(e)}); "
            "fix or delete the file, or pass sampling=SamplingParams(...)"
        ) from None


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line (transformers' messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
