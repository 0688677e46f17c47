"""The ``TrainingBackend`` protocol and the choice of backend for this machine (docs/architecture.md "Training").

A backend loads models and saves adapters, nothing else: the training loop is shared. Unsloth is chosen only when
CUDA is present and ``unsloth`` imports; it is imported lazily, inside ``trainer/backends/unsloth.py``, because it
patches transformers, TRL and PEFT for the whole process.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from tunewright.modeling.hyperparams import ResolvedHyperparameters

logger = logging.getLogger(__name__)


class TrainingBackend(Protocol):
    """Loads a base model wrapped with a fresh LoRA adapter, and saves the trained adapter."""

    name: str

    def load(self, model_dir: Path, hyper: ResolvedHyperparameters, *, seed: int, device: str) -> tuple[Any, Any]:
        """Load the base model from ``model_dir`` with a new LoRA adapter, ready to train.

        Args:
            model_dir: A local model directory (``modeling.resolve_model_dir``).
            hyper: Supplies the LoRA rank, alpha, dropout and target modules.
            seed: Seeds torch before the adapter is initialized, so a seed gives the same initial weights.
            device: Where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

        Returns:
            ``(model, tokenizer)``: a PEFT-wrapped model whose only trainable parameters are the adapter's, in
            train mode, and the model's tokenizer.
        """
        ...

    def save_adapter(self, model: Any, directory: Path) -> None:
        """Write the adapter in the standard PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

        Args:
            model: A model returned by ``load`` (trained or not).
            directory: Created if missing; existing adapter files are overwritten.
        """
        ...


def select_backend() -> TrainingBackend:
    """Return the Unsloth backend when CUDA is present and ``unsloth`` imports, else the PEFT backend.

    ``unsloth`` is not imported at all on a machine without CUDA.
    """
    from tunewright.trainer.backends.peft import PeftTrainingBackend

    if _cuda_available() and importlib.util.find_spec("unsloth") is not None:
        from tunewright.trainer.backends.unsloth import UnslothTrainingBackend, import_unsloth

        try:
            import_unsloth()
        except Exception:  # an Unsloth that fails to import must not stop training: PEFT does the same job
            logger.warning("unsloth is installed but does not import; training with PEFT", exc_info=True)
        else:
            return UnslothTrainingBackend()
    return PeftTrainingBackend()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
