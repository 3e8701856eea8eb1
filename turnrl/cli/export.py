"""``turnrl export``: write a trained policy as a plain Hugging Face model directory."""

from __future__ import annotations

import argparse

from transformers.utils import logging as hf_logging

from turnrl.training.export import export_policy


def command(args: argparse.Namespace) -> int:
    """``turnrl export TARGET OUT``: save the policy with ``save_pretrained``."""
    hf_logging.disable_progress_bar()
    out = export_policy(args.target, args.output, merge=not args.no_merge)
    print(f"exported to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0
