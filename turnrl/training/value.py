"""The value function for GAE: a linear head on a transformer's last hidden state.

``shared`` (the default) puts the head on the policy's own last hidden state,
so the policy's forward pass also gives the values and the value loss trains
the shared trunk a little (weighted by ``algorithm.value_coef``), as in the
original PPO for language models (Ziegler et al. 2019, arXiv 1909.08593).
``separate`` gives the critic its own copy of the policy's trunk, as verl and
TRL's PPOTrainer do: twice the memory, no interference with the policy.

``values[i, t]`` is the value of sequence ``i``'s prefix up to and including
token ``t`` (the state in which token ``t + 1`` is chosen). The head starts at
zero, so every value starts at 0 and early advantages are the plain
discounted rewards. A truncated episode's bootstrap is the same head's value
of its next state, the conversation including the environment's last answer
(:func:`turnrl.training.update.next_state_values`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class ValueModel(nn.Module):
    """A scalar head, on the policy's hidden states or on its own trunk.

    Args:
        policy: The policy (a Hugging Face causal LM).
        separate: Give the critic its own copy of the policy's trunk.
    """

    def __init__(self, policy: nn.Module, *, separate: bool = False) -> None:
        super().__init__()
        config = policy.config.get_text_config()
        self.trunk = copy.deepcopy(policy.base_model) if separate else None
        self.head = nn.Linear(config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        device = next(policy.parameters()).device
        self.to(device)

    @property
    def shared(self) -> bool:
        """Whether the head reads the policy's hidden states."""
        return self.trunk is None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values of every prefix. Shape (N, T).

        Args:
            input_ids: Shape (N, T).
            attention_mask: Shape (N, T).
            policy_hidden: The policy's last hidden state (N, T, H); required
                when the trunk is shared.
        """
        if self.trunk is None:
            if policy_hidden is None:
                raise ValueError("a shared value head needs the policy's hidden states")
            hidden = policy_hidden
        else:
            hidden = self.trunk(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)  # (N, T)

    def save(self, directory: str | Path) -> Path:
        """Write the weights to ``directory/value_model.safetensors``."""
        path = Path(directory) / "value_model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path))
        return path

    def load(self, path: str | Path) -> None:
        """Load weights written by :meth:`save` (safetensors: no code is unpickled)."""
        self.load_state_dict(load_file(str(path)))


def state_values(values: torch.Tensor) -> torch.Tensor:
    """The value of the state in which each token was chosen: ``values`` shifted right.

    (N, T) -> (N, T); column 0 is 0.
    """
    return torch.nn.functional.pad(values[:, :-1], (1, 0))


def critic_stats(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """How well the critic's values predict their targets, over the masked tokens.

    ``explained_variance = 1 - Var[returns - values] / Var[returns]``: 1 for a
    perfect critic, 0 for one no better than the mean return, negative for a
    worse one (nan when the returns do not vary). ``value_mean`` and
    ``return_mean`` show whether the critic's level follows the rewards.

    Args:
        values: Shape (N, T), the values the advantages were estimated with.
        returns: Shape (N, T), the value targets.
        mask: Shape (N, T), 1 on the tokens that count.

    Returns:
        ``explained_variance``, ``value_mean`` and ``return_mean``.
    """
    m = mask.bool()
    v, r = values[m].double(), returns[m].double()  # (K,)
    var_r = r.var(unbiased=False)
    explained = 1 - (r - v).var(unbiased=False) / var_r if var_r > 0 else torch.tensor(float("nan"))
    return {
        "explained_variance": explained.item(),
        "value_mean": v.mean().item(),
        "return_mean": r.mean().item(),
    }
