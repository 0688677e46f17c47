"""Loading a base model and its tokenizer from a local directory, offline (torch is imported inside functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
"""End-of-turn tokens of the common chat templates: generation stops at them (inference and the RFT sampler)."""


def stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Ids that end a choice: the generation config's eos ids, the tokenizer's eos and the end-of-turn token."""
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN if token in vocab)
    return frozenset(ids)
