"""One loaded base model: tokenizer, weights, the adapters loaded on them, its stop tokens and its context length.

Adapters are served by per-row gathered LoRA (``inference.lora_gather``), not by PEFT: each adapter's files are
read once into the stacked matrices of the base's target linear layers, and every forward names one adapter per
row (``"__base__"`` for the base model). A decode step whose rows use different adapters then costs one gather
and two batched matmuls per layer, where PEFT's mixed batch runs one sub-batch per distinct adapter.
``lock`` serializes forwards and adapter loads/deletes: both touch the same stacks. Reading an adapter's files
happens outside it, so a cold load does not hold up the running batch.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import torch

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""The adapter name of rows that use the base model alone."""


class BaseModel:
    """A base model ready to serve: tokenizer, weights with their adapters' LoRA stacks, stop ids, context length."""

    def __init__(self, model_id: str, directory: Path, *, device: str, tokenizer: Any = None) -> None:
        """Load the tokenizer and the weights (eval mode), ready for adapters.

        Args:
            model_id: The configured base model id.
            directory: Its local directory (``resolve_model_dir``).
            device: Where the weights go.
            tokenizer: The base model's tokenizer if already loaded.
        """
        import torch

        from tunewright.inference.lora_gather import LoRAStacks
        from tunewright.modeling.loading import load_model, load_tokenizer, stop_token_ids

        self.model_id = model_id
        self.device = device
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(directory)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = load_model(directory, dtype=dtype, device=device).eval()
        self.config = self.model.config
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.context_length = context_length_of(self.config, self.tokenizer)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.pad_id = pad_token_id(self.tokenizer, self.stop_ids)
        self.stacks = LoRAStacks(self.model)
        self.lock = threading.RLock()

    def load_adapter(self, path: Path, name: str) -> None:
        """Load a PEFT LoRA adapter directory under ``name``; a failed load leaves no trace of it.

        Raises:
            UnsupportedAdapterError: It is not plain LoRA on this base's linear layers.
        """
        from tunewright.inference.lora_gather import read_adapter

        weights = read_adapter(path)
        with self.lock:
            self.stacks.add(name, weights)

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter's weights (no-op if it is not there)."""
        with self.lock:
            self.stacks.remove(name)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
        adapter_names: list[str],
    ) -> torch.Tensor:
        """Run one forward over a batch; return each row's logits at its last position, as float32."""
        import torch

        with self.lock, torch.inference_mode():
            self.stacks.use(adapter_names, decode=input_ids.shape[1] == 1, base=BASE_ADAPTER)
            try:
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            finally:
                self.stacks.plan = None
        return out.logits[:, -1, :].float()


def context_length_of(config: Any, tokenizer: Any) -> int:
    """Return the most positions the model takes: its config's ``max_position_embeddings`` or the tokenizer's."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**8:
        return value
    return 2048


def pad_token_id(tokenizer: Any, stop_ids: frozenset[int]) -> int:
    """Return an id to left-pad prompts with (masked out, so any valid id works)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return min(stop_ids) if stop_ids else 0
