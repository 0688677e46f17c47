"""The PEFT backend: transformers + PEFT LoRA, on the CPU or any GPU, with no Unsloth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewright.modeling.loading import load_model, load_tokenizer

if TYPE_CHECKING:
    from pathlib import Path

    from tunewright.modeling.hyperparams import ResolvedHyperparameters


class PeftTrainingBackend:
    """Loads a model through ``modeling.load_model`` and wraps it with a fresh PEFT LoRA adapter."""

    name = "peft"

    def load(self, model_dir: Path, hyper: ResolvedHyperparameters, *, seed: int, device: str) -> tuple[Any, Any]:
        """Load the base model with a new LoRA adapter (see ``TrainingBackend.load``).

        The base weights are bf16 on a CUDA device that supports it, else fp32; PEFT keeps the adapter in fp32.
        """
        import torch
        from peft import LoraConfig, get_peft_model

        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir, dtype=training_dtype(device), device=device)
        torch.manual_seed(seed)
        model = get_peft_model(model, lora_config(hyper, LoraConfig))
        model.train()
        return model, tokenizer

    def save_adapter(self, model: Any, directory: Path) -> None:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)


def lora_config(hyper: ResolvedHyperparameters, config_class: Any) -> Any:
    """Build a PEFT ``LoraConfig`` (passed in, so this module imports no peft at load) from hyperparameters.

    ``"all-linear"`` is PEFT's own spelling: every linear layer but the output head.
    """
    targets = hyper.lora_target_modules
    return config_class(
        r=hyper.lora_rank,
        lora_alpha=hyper.lora_alpha,
        lora_dropout=hyper.lora_dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def training_dtype(device: str) -> str:
    """Return the base weights' dtype name for ``device``: bf16 on a CUDA device that has it, else fp32."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"
