"""Resolve a job's "auto" hyperparameters from its data, and write the numbers back in both views.

Pure Python (no torch), so the worker can resolve and record hyperparameters before it loads a model, and tests
run without a GPU stack. The rules follow what OpenAI has published (docs/architecture.md "Training"):

- ``n_epochs``: 3; but ``min(25, 100 // examples)`` when ``examples * 3 < 100`` and ``max(1, 25_000 // examples)``
  when ``examples * 3 > 25_000`` (the cookbook's estimate of the hosted default).
- ``batch_size``: about 0.2 % of the training examples, rounded to nearest, clamped to ``[1, 256]`` (legacy API).
- ``learning_rate_multiplier``: 0.05, 0.1 or 0.2, larger for larger batches (legacy API). The thresholds are ours:
  ``batch_size <= 4`` → 0.05 (up to ~2,250 examples), ``<= 32`` → 0.1 (up to ~16,250), else 0.2 — a larger
  batch averages out more gradient noise, so it takes a larger step.
- DPO ``beta``: 0.1 (the value OpenAI's examples show).
- Reinforcement (ours; OpenAI publishes none): ``compute_multiplier`` 1.0, which samples ``RFT_BASE_GROUP`` (4)
  completions per prompt (``group_size``: ``max(2, round(4 * compute_multiplier))``); ``eval_interval`` the steps
  of one epoch, at most 10; ``eval_samples`` 32 validation prompts (fewer when the file has fewer);
  ``reasoning_effort`` ``default`` (echoed; it changes nothing on the non-reasoning models trained here).

The learning rate is ``base_learning_rate_for(family) * multiplier``. LoRA defaults (rank 16, alpha 32, dropout
0.05, every linear layer) are the common PEFT/Unsloth starting point.

Tunewright's extension keys (``EXTENSION_KEYS``: the LoRA settings, ``forgetting_check`` and early stopping) are
kept as given and echoed only when given; their defaults live on ``ResolvedHyperparameters``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

CORE_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")
QUALITY_KEYS = ("forgetting_check", "early_stopping_patience", "early_stopping_min_delta")
EXTENSION_KEYS = (*LORA_KEYS, *QUALITY_KEYS)
AUTO = "auto"
DEFAULT_BETA = 0.1
RFT_KEYS = ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort")
RFT_BASE_GROUP = 4
DEFAULT_COMPUTE_MULTIPLIER = 1.0
DEFAULT_EVAL_SAMPLES = 32
MAX_AUTO_EVAL_INTERVAL = 10
MAX_BATCH_SIZE = 256

# Base LoRA learning rate per model family: the learning rate at `learning_rate_multiplier` 1.0. OpenAI's
# multiplier scales a base rate and its auto values are 0.05-0.2, so a base of 2e-3 puts "auto" at 1e-4 to 4e-4,
# the usual range for LoRA on Llama-style models. Keys match the start of a transformers `config.model_type`
# ("qwen2" and "qwen3" are both "qwen"). Gemma and Phi are commonly tuned at half the rate.
BASE_LEARNING_RATES: dict[str, float] = {
    "llama": 2e-3,
    "mistral": 2e-3,
    "qwen": 2e-3,
    "smollm": 2e-3,
    "gemma": 1e-3,
    "phi": 1e-3,
}
DEFAULT_BASE_LEARNING_RATE = 2e-3

# (largest batch size, multiplier) in increasing order; batches above the last bound get the top multiplier.
_MULTIPLIER_STEPS: tuple[tuple[int, float], ...] = ((4, 0.05), (32, 0.1))
_TOP_MULTIPLIER = 0.2


class ResolvedHyperparameters(msgspec.Struct, kw_only=True, frozen=True):
    """Concrete hyperparameters for one training run: no "auto" left."""

    method_type: str
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    beta: float | None = None  # DPO only
    compute_multiplier: float | None = None  # reinforcement only, as the next three
    eval_interval: int | None = None
    eval_samples: int | None = None
    reasoning_effort: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    forgetting_check: bool = True  # the loss on the general probe set, before training and at each checkpoint
    early_stopping_patience: int | None = None  # validation evaluations without improvement before stopping
    early_stopping_min_delta: float = 0.0  # the least decrease of the validation loss that counts as one


def group_size(compute_multiplier: float) -> int:
    """Completions sampled per prompt in reinforcement fine-tuning: ``RFT_BASE_GROUP`` scaled, at least 2."""
    return max(2, round(RFT_BASE_GROUP * compute_multiplier))


def base_learning_rate_for(model_family: str) -> float:
    """Return the base learning rate of a model family (a `config.model_type`), or the default when unknown."""
    family = model_family.strip().lower()
    for prefix, rate in BASE_LEARNING_RATES.items():
        if family.startswith(prefix):
            return rate
    return DEFAULT_BASE_LEARNING_RATE


def auto_n_epochs(examples: int) -> int:
    """Return the "auto" epoch count for a training set of `examples` examples."""
    _check_positive("examples", examples)
    if examples * 3 < 100:
        return min(25, 100 // examples)
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


def auto_batch_size(examples: int) -> int:
    """Return the "auto" batch size: about 0.2 % of `examples`, rounded to nearest, within [1, 256]."""
    _check_positive("examples", examples)
    return max(1, min(MAX_BATCH_SIZE, (examples + 250) // 500))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """Return the "auto" learning-rate multiplier for a (resolved) batch size."""
    _check_positive("batch_size", batch_size)
    for bound, multiplier in _MULTIPLIER_STEPS:
        if batch_size <= bound:
            return multiplier
    return _TOP_MULTIPLIER


def resolve_hyperparameters(
    method: dict[str, Any], *, examples: int, base_learning_rate: float
) -> ResolvedHyperparameters:
    """Resolve a stored job `method` into concrete hyperparameters; given values are kept as they are.

    Args:
        method: The job's stored method, `{"type": t, t: {"hyperparameters": {...}}}`, "auto" where not given.
        examples: The number of training examples (after validation).
        base_learning_rate: The model family's base rate (`base_learning_rate_for`).

    Returns:
        The resolved hyperparameters.

    Raises:
        ValueError: `examples` or `base_learning_rate` is not positive, or the method has no type.
    """
    _check_positive("examples", examples)
    if not base_learning_rate > 0:
        raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate!r}")
    method_type, given = _method_hyperparameters(method)
    n_epochs = _given(given, "n_epochs")
    batch_size = _given(given, "batch_size")
    batch_size = auto_batch_size(examples) if batch_size is None else batch_size
    multiplier = _given(given, "learning_rate_multiplier")
    multiplier = auto_learning_rate_multiplier(batch_size) if multiplier is None else multiplier
    beta = None
    if method_type == "dpo":
        given_beta = _given(given, "beta")
        beta = DEFAULT_BETA if given_beta is None else given_beta
    extensions = {key: _copy(given[key]) for key in EXTENSION_KEYS if _given(given, key) is not None}
    if method_type == "reinforcement":
        per_epoch = math.ceil(examples / batch_size)
        extensions.update(_reinforcement(given, per_epoch))
    return ResolvedHyperparameters(
        method_type=method_type,
        n_epochs=auto_n_epochs(examples) if n_epochs is None else n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=multiplier,
        learning_rate=base_learning_rate * multiplier,
        beta=beta,
        **extensions,
    )


def _reinforcement(given: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """The reinforcement keys, "auto" resolved (see the module docstring)."""
    compute = _given(given, "compute_multiplier")
    interval = _given(given, "eval_interval")
    samples = _given(given, "eval_samples")
    effort = given.get("reasoning_effort")
    return {
        "compute_multiplier": DEFAULT_COMPUTE_MULTIPLIER if compute is None else float(compute),
        "eval_interval": min(MAX_AUTO_EVAL_INTERVAL, steps_per_epoch) if interval is None else interval,
        "eval_samples": DEFAULT_EVAL_SAMPLES if samples is None else samples,
        "reasoning_effort": effort if isinstance(effort, str) else "default",
    }


def with_resolved(method: dict[str, Any], resolved: ResolvedHyperparameters) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the job's `(method, hyperparameters)` with numbers in place of "auto", both views in step.

    The shape is the one `build_method` stores: the method's hyperparameters hold the core keys (and `beta` for
    DPO, the `RFT_KEYS` for reinforcement); the top-level view holds the core keys; both echo the extension keys
    the user gave, and only those.

    Args:
        method: The job's stored method (not modified).
        resolved: What `resolve_hyperparameters` returned for it.

    Returns:
        New `method` and top-level `hyperparameters` dicts for the job record.
    """
    method_type, given = _method_hyperparameters(method)
    core = {key: getattr(resolved, key) for key in CORE_KEYS}
    extensions = {key: _copy(getattr(resolved, key)) for key in EXTENSION_KEYS if key in given}
    hyper = {"beta": resolved.beta, **core} if method_type == "dpo" else dict(core)
    if method_type == "reinforcement":
        hyper.update({key: getattr(resolved, key) for key in RFT_KEYS})
    hyper.update(extensions)
    new_method = dict(method)
    new_method[method_type] = {**(method.get(method_type) or {}), "hyperparameters": hyper}
    top = {**core, **{key: _copy(value) for key, value in extensions.items()}}
    return new_method, top


def total_steps(examples: int, batch_size: int, n_epochs: int, grad_accum: int = 1) -> int:
    """Return the number of optimizer steps a run takes.

    `batch_size` examples go through each forward pass; `grad_accum` passes make one optimizer step; an epoch's
    last, partial batch and last, partial accumulation group still count as one each.

    Raises:
        ValueError: An argument is not positive.
    """
    for name, value in (("examples", examples), ("batch_size", batch_size), ("n_epochs", n_epochs)):
        _check_positive(name, value)
    _check_positive("grad_accum", grad_accum)
    return math.ceil(math.ceil(examples / batch_size) / grad_accum) * n_epochs


def _method_hyperparameters(method: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    method_type = method.get("type")
    if not isinstance(method_type, str):
        raise ValueError(f"method has no type: {method!r}")
    section = method.get(method_type) or {}
    return method_type, dict(section.get("hyperparameters") or {})


def _given(hyper: dict[str, Any], key: str) -> Any:
    """Return the value the user gave for `key`, or None when it is absent, null or "auto"."""
    value = hyper.get(key)
    return None if value is None or value == AUTO else value


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
