"""Loading a base model and its tokenizer from a local directory, offline (torch is imported inside functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer (with its chat template) from a model directory, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_model(path: Path, *, dtype: str | torch.dtype = "float32", device: str = "cpu") -> PreTrainedModel:
    """Load a causal language model from a model directory, offline, in eval mode.

    Args:
        path: A directory from ``resolve_model_dir``.
        dtype: A torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"auto"``).
        device: Where the weights go (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns:
        The model on ``device``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device).eval()
