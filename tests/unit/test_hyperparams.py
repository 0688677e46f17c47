"""Hyperparameters: "auto" resolved from the data as OpenAI documents, given values kept, both views in step."""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest

from tunewright.modeling.hyperparams import (
    DEFAULT_BASE_LEARNING_RATE,
    auto_batch_size,
    auto_learning_rate_multiplier,
    auto_n_epochs,
    base_learning_rate_for,
    group_size,
    resolve_hyperparameters,
    total_steps,
    with_resolved,
)

AUTO_CORE = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}


def make_method(method_type: str = "supervised", **given: Any) -> dict[str, Any]:
    hyper = {**AUTO_CORE, **given}
    if method_type == "dpo":
        hyper = {"beta": "auto", **hyper}
    return {"type": method_type, method_type: {"hyperparameters": hyper}}


@pytest.mark.parametrize(
    ("examples", "n_epochs"),
    [(1, 25), (4, 25), (5, 20), (10, 10), (33, 3), (34, 3), (8333, 3), (8334, 2), (12_501, 1), (100_000, 1)],
)
def test_auto_n_epochs_follows_the_cookbook_rule_at_its_boundaries(examples: int, n_epochs: int) -> None:
    assert auto_n_epochs(examples) == n_epochs


@pytest.mark.parametrize(
    ("examples", "batch_size"),
    [(10, 1), (33, 1), (749, 1), (750, 2), (8333, 17), (8334, 17), (100_000, 200), (128_249, 256), (10**7, 256)],
)
def test_auto_batch_size_is_about_two_per_mille_within_1_and_256(examples: int, batch_size: int) -> None:
    assert auto_batch_size(examples) == batch_size


@pytest.mark.parametrize(("batch_size", "multiplier"), [(1, 0.05), (4, 0.05), (5, 0.1), (32, 0.1), (33, 0.2)])
def test_auto_multiplier_grows_with_the_batch_size(batch_size: int, multiplier: float) -> None:
    assert auto_learning_rate_multiplier(batch_size) == multiplier


@pytest.mark.parametrize(
    ("examples", "expected"),
    [
        (10, (10, 1, 0.05)),
        (33, (3, 1, 0.05)),
        (34, (3, 1, 0.05)),
        (8333, (3, 17, 0.1)),
        (8334, (2, 17, 0.1)),
        (100_000, (1, 200, 0.2)),
    ],
)
def test_all_auto_resolves_from_the_example_count(examples: int, expected: tuple[int, int, float]) -> None:
    resolved = resolve_hyperparameters(make_method(), examples=examples, base_learning_rate=2e-4)
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == expected
    assert resolved.learning_rate == pytest.approx(2e-4 * expected[2])
    assert resolved.method_type == "supervised"
    assert resolved.beta is None


def test_given_values_are_kept_as_they_are() -> None:
    method = make_method(n_epochs=7, batch_size=3, learning_rate_multiplier=1.5)
    resolved = resolve_hyperparameters(method, examples=100_000, base_learning_rate=1e-4)
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate_multiplier) == (7, 3, 1.5)
    assert resolved.learning_rate == pytest.approx(1.5e-4)


def test_auto_multiplier_follows_a_given_batch_size() -> None:
    resolved = resolve_hyperparameters(make_method(batch_size=64), examples=10, base_learning_rate=2e-4)
    assert resolved.learning_rate_multiplier == 0.2
    assert resolved.n_epochs == 10


def test_dpo_beta_auto_is_one_tenth_and_a_given_beta_is_kept() -> None:
    auto = resolve_hyperparameters(make_method("dpo"), examples=50, base_learning_rate=2e-4)
    given = resolve_hyperparameters(make_method("dpo", beta=0.5), examples=50, base_learning_rate=2e-4)
    assert (auto.method_type, auto.beta, given.beta) == ("dpo", 0.1, 0.5)


def test_lora_defaults_and_given_lora_values() -> None:
    default = resolve_hyperparameters(make_method(), examples=50, base_learning_rate=2e-4)
    assert (default.lora_rank, default.lora_alpha, default.lora_dropout) == (16, 32.0, 0.05)
    assert default.lora_target_modules == "all-linear"
    given = resolve_hyperparameters(
        make_method(lora_rank=8, lora_alpha=16, lora_target_modules=["q_proj", "v_proj"]),
        examples=50,
        base_learning_rate=2e-4,
    )
    assert (given.lora_rank, given.lora_alpha, given.lora_dropout) == (8, 16, 0.05)
    assert given.lora_target_modules == ["q_proj", "v_proj"]


def test_with_resolved_puts_numbers_in_both_views_in_step() -> None:
    method = make_method()
    before = copy.deepcopy(method)
    resolved = resolve_hyperparameters(method, examples=8334, base_learning_rate=2e-4)
    new_method, top = with_resolved(method, resolved)
    assert method == before
    expected = {"batch_size": 17, "learning_rate_multiplier": 0.1, "n_epochs": 2}
    assert top == expected
    assert new_method == {"type": "supervised", "supervised": {"hyperparameters": expected}}


def test_with_resolved_dpo_carries_beta_in_the_method_only() -> None:
    method = make_method("dpo", n_epochs=2)
    new_method, top = with_resolved(method, resolve_hyperparameters(method, examples=10, base_learning_rate=2e-4))
    hyper = new_method["dpo"]["hyperparameters"]
    assert hyper == {"beta": 0.1, **top}
    assert top == {"batch_size": 1, "learning_rate_multiplier": 0.05, "n_epochs": 2}
    assert "auto" not in hyper.values()


def test_with_resolved_echoes_given_lora_keys_in_both_views() -> None:
    method = make_method(lora_rank=32, lora_dropout=0.0, lora_target_modules=["q_proj"])
    resolved = resolve_hyperparameters(method, examples=100, base_learning_rate=2e-4)
    new_method, top = with_resolved(method, resolved)
    lora = {"lora_rank": 32, "lora_dropout": 0.0, "lora_target_modules": ["q_proj"]}
    assert {k: v for k, v in top.items() if k.startswith("lora_")} == lora
    assert new_method["supervised"]["hyperparameters"] == top
    assert new_method["supervised"]["hyperparameters"]["lora_target_modules"] is not top["lora_target_modules"]


def test_the_quality_extensions_default_to_a_forgetting_check_and_no_early_stopping() -> None:
    default = resolve_hyperparameters(make_method(), examples=50, base_learning_rate=2e-4)
    assert (default.forgetting_check, default.early_stopping_patience, default.early_stopping_min_delta) == (
        True,
        None,
        0.0,
    )
    method = make_method("dpo", forgetting_check=False, early_stopping_patience=3, early_stopping_min_delta=0.01)
    given = resolve_hyperparameters(method, examples=50, base_learning_rate=2e-4)
    assert (given.forgetting_check, given.early_stopping_patience, given.early_stopping_min_delta) == (False, 3, 0.01)
    new_method, top = with_resolved(method, given)
    quality = {"forgetting_check": False, "early_stopping_patience": 3, "early_stopping_min_delta": 0.01}
    assert {key: top[key] for key in quality} == quality
    assert new_method["dpo"]["hyperparameters"] == {"beta": 0.1, **top}


def test_quality_extensions_not_given_are_not_echoed() -> None:
    method = make_method()
    new_method, top = with_resolved(method, resolve_hyperparameters(method, examples=50, base_learning_rate=2e-4))
    assert not {"forgetting_check", "early_stopping_patience", "early_stopping_min_delta"} & set(top)
    assert new_method["supervised"]["hyperparameters"] == top


def test_a_job_method_stored_by_the_api_resolves() -> None:
    import msgspec

    from tunewright.api.fine_tuning.schemas import CreateFineTuningJobRequest
    from tunewright.api.fine_tuning.service import build_method

    request = msgspec.convert(
        {
            "model": "m",
            "training_file": "file-x",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 4, "lora_rank": 8}}},
        },
        CreateFineTuningJobRequest,
    )
    method, top = build_method(request)
    resolved = resolve_hyperparameters(method, examples=40, base_learning_rate=2e-4)
    new_method, new_top = with_resolved(method, resolved)
    assert new_method["dpo"]["hyperparameters"] == {"beta": 0.1, **new_top}
    assert set(new_top) == set(top)
    assert new_top["n_epochs"] == 4
    assert new_top["lora_rank"] == 8


@pytest.mark.parametrize(
    ("family", "rate"),
    [("llama", 2e-3), ("LlamaForCausalLM", 2e-3), ("qwen2", 2e-3), ("gemma3", 1e-3), ("phi3", 1e-3)],
)
def test_base_learning_rate_by_family(family: str, rate: float) -> None:
    assert base_learning_rate_for(family) == rate


def test_unknown_family_gets_the_default_rate() -> None:
    assert base_learning_rate_for("some-new-arch") == DEFAULT_BASE_LEARNING_RATE


@pytest.mark.parametrize(
    ("args", "steps"),
    [((10, 1, 3, 1), 30), ((10, 4, 1, 1), 3), ((10, 4, 2, 2), 4), ((8, 4, 1, 2), 1), ((100_000, 200, 1, 1), 500)],
)
def test_total_steps_counts_partial_batches_and_groups(args: tuple[int, int, int, int], steps: int) -> None:
    assert total_steps(*args) == steps


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_counts_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="examples"):
        resolve_hyperparameters(make_method(), examples=bad, base_learning_rate=2e-4)
    with pytest.raises(ValueError, match="grad_accum"):
        total_steps(10, 2, 1, grad_accum=bad)


def test_module_does_not_import_torch() -> None:
    for name in ("modeling/hyperparams.py", "modeling/plan.py", "trainer/batching.py"):
        tree = ast.parse((Path(__file__).parents[2] / name).read_text())
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"torch", "transformers", "peft", "unsloth"}, name


@pytest.mark.parametrize("examples", [10, 500, 5_000, 50_000])
def test_auto_learning_rates_land_in_the_usual_lora_range(examples: int) -> None:
    base = base_learning_rate_for("llama")
    resolved = resolve_hyperparameters(make_method(), examples=examples, base_learning_rate=base)
    assert 1e-4 <= resolved.learning_rate <= 4e-4


def test_reinforcement_keys_resolve_and_are_echoed_in_the_method_only() -> None:
    method = {
        "type": "reinforcement",
        "reinforcement": {
            "grader": {"type": "string_check"},
            "hyperparameters": {
                **dict.fromkeys(("batch_size", "learning_rate_multiplier", "n_epochs"), "auto"),
                "compute_multiplier": "auto",
                "eval_interval": "auto",
                "eval_samples": 5,
                "reasoning_effort": "default",
            },
        },
    }
    resolved = resolve_hyperparameters(method, examples=40, base_learning_rate=2e-3)
    assert (resolved.compute_multiplier, resolved.eval_samples, resolved.reasoning_effort) == (1.0, 5, "default")
    assert resolved.eval_interval == min(10, 40 // resolved.batch_size)
    new_method, top = with_resolved(method, resolved)
    assert new_method["reinforcement"]["grader"] == {"type": "string_check"}
    hyper = new_method["reinforcement"]["hyperparameters"]
    assert hyper["compute_multiplier"] == 1.0 and hyper["eval_samples"] == 5 and hyper["n_epochs"] == resolved.n_epochs
    assert set(top) == {"batch_size", "learning_rate_multiplier", "n_epochs"}


@pytest.mark.parametrize(("multiplier", "size"), [(1.0, 4), (0.1, 2), (0.5, 2), (2.0, 8), (10.0, 40)])
def test_group_size_scales_the_base_group_with_at_least_two(multiplier: float, size: int) -> None:
    assert group_size(multiplier) == size
