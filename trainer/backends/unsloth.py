"""The Unsloth backend: Unsloth's LoRA kernels on CUDA.

``unsloth`` is imported only here, inside functions, and only after ``select_backend`` has seen CUDA: importing
it patches transformers, TRL and PEFT for the whole process, so it must come before them in a trainer worker and
never run in the API process. Training still goes through our own loop; Unsloth only loads the model and adds
the adapter. Not exercised without a GPU (tests/gpu/).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tunewright.modeling.loading import load_tokenizer

if TYPE_CHECKING:
    from pathlib import Path

    from tunewright.modeling.hyperparams import ResolvedHyperparameters

# What PEFT's "all-linear" selects on Llama-style models, spelled out: Unsloth takes a list of module names.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_MAX_SEQ_LENGTH = 4096


def import_unsloth() -> Any:
    """Import ``unsloth`` with its network calls turned off, and return the module.

    Without ``UNSLOTH_DISABLE_STATISTICS`` every ``from_pretrained`` fetches a README from the Hub.
    """
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import unsloth

    return unsloth


def target_modules(targets: str | list[str]) -> str | list[str]:
    """Translate PEFT's ``"all-linear"`` into Unsloth's module list; anything else passes through."""
    if targets == "all-linear":
        return list(ALL_LINEAR)
    return targets if isinstance(targets, str) else list(targets)


class UnslothTrainingBackend:
    """Loads a model with ``FastLanguageModel.from_pretrained`` and adds a LoRA adapter with ``get_peft_model``."""

    name = "unsloth"

    def __init__(self, *, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, load_in_4bit: bool = False) -> None:
        """Configure the backend.

        Args:
            max_seq_length: The longest sequence Unsloth prepares its kernels for.
            load_in_4bit: QLoRA: 4-bit base weights (needs bitsandbytes).
        """
        self.max_seq_length = max_seq_length
        self.load_in_4bit = load_in_4bit

    def load(self, model_dir: Path, hyper: ResolvedHyperparameters, *, seed: int, device: str) -> tuple[Any, Any]:
        """Load the base model with a new LoRA adapter (see ``TrainingBackend.load``).

        The tokenizer is ours (``modeling.load_tokenizer``), not Unsloth's patched one, so training renders chats
        to the same tokens as inference does.
        """
        import_unsloth()
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            model_name=str(model_dir),
            max_seq_length=self.max_seq_length,
            dtype=None,
            load_in_4bit=self.load_in_4bit,
            device_map={"": device},
            local_files_only=True,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=hyper.lora_rank,
            target_modules=target_modules(hyper.lora_target_modules),
            lora_alpha=hyper.lora_alpha,
            lora_dropout=hyper.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth",
            random_state=seed,
        )
        FastLanguageModel.for_training(model)
        return model, load_tokenizer(model_dir)

    def save_adapter(self, model: Any, directory: Path) -> None:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
