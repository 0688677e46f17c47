"""`tunewright import`'s plan of one source job, from the job's JSON as OpenAI's service answers it.

The cases a Tunewright source cannot produce (unknown methods, graders calling OpenAI's models, jobs from before
`method`, dated model snapshots, W&B integrations) are here; tests/e2e/test_cli_import.py runs the command between
two servers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tunewright.clients.cli.importer import job_ids, mapped_model, model_map, plan_job
from tunewright.clients.cli.remote import UsageError

MAP = {"gpt-4o-mini": "smollm2-135m-instruct"}


def openai_job(**fields: Any) -> dict[str, Any]:
    """A succeeded job as OpenAI lists it (resolved hyperparameters, seed, fine-tuned model)."""
    job = {
        "id": "ftjob-abc123",
        "object": "fine_tuning.job",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "succeeded",
        "training_file": "file-train",
        "validation_file": None,
        "seed": 42,
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123",
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8},
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 1.8}},
        },
        "metadata": None,
    }
    job.update(fields)
    return job


def test_a_supervised_job_keeps_the_hyperparameters_it_set_its_suffix_seed_and_metadata():
    plan = plan_job(openai_job(metadata={"team": "search"}, validation_file="file-valid"), MAP)
    assert plan.action == "import"
    assert plan.model == "smollm2-135m-instruct"  # the mapping of gpt-4o-mini covers its dated snapshot
    assert plan.method == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 1.8}},
    }
    assert (plan.suffix, plan.seed) == ("support", 42)
    assert plan.files == ["file-train", "file-valid"]
    assert plan.metadata == {"team": "search", "imported_from": "ftjob-abc123"}
    assert plan.notes == []


def test_every_hyperparameter_auto_sends_the_method_alone():
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": None}
    plan = plan_job(openai_job(method={"type": "dpo", "dpo": {"hyperparameters": auto}}, fine_tuned_model=None), MAP)
    assert plan.method == {"type": "dpo"}
    assert plan.suffix is None


def test_a_job_from_before_method_is_supervised_with_its_top_level_hyperparameters():
    plan = plan_job(openai_job(method=None, user_provided_suffix="legacy"), MAP)
    expected = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}
    assert plan.method == {"type": "supervised", "supervised": {"hyperparameters": expected}}
    assert plan.suffix == "legacy"  # the field wins over the name


def test_an_unknown_method_is_skipped():
    plan = plan_job(openai_job(method={"type": "distillation"}), MAP)
    assert plan.action == "skip"
    assert plan.reason == "its method 'distillation' is not supported here (only supervised, dpo, reinforcement)"


JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": "o3-mini-2025-01-31",
    "input": [{"role": "user", "content": "Score {{sample.output_text}} against {{item.answer}}"}],
    "range": [0, 1],
}
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


def rft_job(grader: dict[str, Any], **hyperparameters: Any) -> dict[str, Any]:
    """A reinforcement job as OpenAI lists it: its grader and every hyperparameter, `auto` or resolved."""
    hyper = {"n_epochs": "auto", "batch_size": "auto", "reasoning_effort": "medium", "eval_interval": "auto"}
    section = {"grader": grader, "hyperparameters": {**hyper, **hyperparameters}}
    return openai_job(model="o4-mini-2025-04-16", method={"type": "reinforcement", "reinforcement": section})


def test_a_reinforcement_job_keeps_its_grader_and_the_hyperparameters_it_set():
    plan = plan_job(rft_job(EXACT, n_epochs=2), {"o4-mini": "smollm2-135m-instruct"})
    assert plan.action == "import"
    assert plan.model == "smollm2-135m-instruct"
    assert plan.method == {
        "type": "reinforcement",
        "reinforcement": {"grader": EXACT, "hyperparameters": {"n_epochs": 2, "reasoning_effort": "medium"}},
    }


def test_a_model_graders_model_is_mapped_as_the_jobs_is_in_a_multi_grader_too():
    multi = {"type": "multi", "name": "both", "graders": {"judge": JUDGE, "exact": EXACT}, "calculate_output": "judge"}
    mapping = {"o4-mini": "smollm2-135m-instruct", "o3-mini": "smollm2-135m-instruct"}
    plan = plan_job(rft_job(multi), mapping)
    assert plan.action == "import"
    grader = plan.method["reinforcement"]["grader"]
    assert grader["graders"]["judge"] == {**JUDGE, "model": "smollm2-135m-instruct"}
    assert grader["graders"]["exact"] == EXACT
    assert multi["graders"]["judge"]["model"] == "o3-mini-2025-01-31"  # the source job's JSON is left as it was
    plan = plan_job(rft_job(JUDGE), {"o4-mini": "smollm2-135m-instruct"})
    assert (plan.action, plan.reason) == (
        "skip",
        "no mapping for its grader's model o3-mini-2025-01-31 (--model-map o3-mini-2025-01-31=MODEL)",
    )


def test_a_reinforcement_job_without_a_grader_is_skipped():
    job = openai_job(method={"type": "reinforcement", "reinforcement": {"hyperparameters": {}}})
    plan = plan_job(job, MAP)
    assert (plan.action, plan.reason) == ("skip", "its reinforcement method names no grader")


def test_unmapped_and_fine_tuned_source_models_are_skipped_unless_mapped():
    plan = plan_job(openai_job(model="gpt-4.1-2025-04-14"), MAP)
    assert (plan.action, plan.reason) == (
        "skip",
        "no mapping for its model gpt-4.1-2025-04-14 (--model-map gpt-4.1-2025-04-14=MODEL)",
    )
    tuned = "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123"
    plan = plan_job(openai_job(model=tuned), MAP)
    assert plan.action == "skip"
    assert plan.reason.startswith(f"its model {tuned} is a fine-tuned model with no mapping")
    plan = plan_job(openai_job(model=tuned), {**MAP, tuned: "ft:smollm2-135m-instruct:acme:support:xyz"})
    assert plan.model == "ft:smollm2-135m-instruct:acme:support:xyz"


def test_mapping_prefers_the_exact_name_and_never_strips_other_tails():
    mapping = {"gpt-4o-mini": "a", "gpt-4o-mini-2024-07-18": "b"}
    assert mapped_model("gpt-4o-mini-2024-07-18", mapping) == "b"
    assert mapped_model("gpt-4o-mini-2024-07-18", {"gpt-4o-mini": "a"}) == "a"
    assert mapped_model("gpt-4o-mini-latest", {"gpt-4o-mini": "a"}) is None
    assert mapped_model("ft:gpt-4o-mini:acme::x-2024-07-18", {"ft:gpt-4o-mini:acme::x": "a"}) is None


def test_full_metadata_is_kept_without_the_marker_and_said_so():
    full = {f"k{i}": "v" for i in range(16)}
    plan = plan_job(openai_job(metadata=full), MAP)
    assert plan.metadata == full
    assert not plan.marked
    assert "16 pairs already, so imported_from is not added" in plan.notes[0]
    plan = plan_job(openai_job(metadata={**dict(list(full.items())[:15]), "imported_from": "ftjob-elsewhere"}), MAP)
    assert plan.metadata["imported_from"] == "ftjob-abc123"
    assert len(plan.metadata) == 16
    assert plan.notes == ["its metadata imported_from=ftjob-elsewhere is replaced by ftjob-abc123"]


def test_integrations_are_reported_as_not_copied():
    plan = plan_job(openai_job(integrations=[{"type": "wandb", "wandb": {"project": "p"}}]), MAP)
    assert plan.action == "import"
    assert plan.notes == ["its integrations (Weights & Biases) are not copied"]


def test_flags():
    assert model_map(["a=b", "c=ft:x:y", "a=b"]) == {"a": "b", "c": "ft:x:y"}
    for bad in (["a"], ["=b"], ["a="], ["a=b", "a=c"]):
        with pytest.raises(UsageError):
            model_map(bad)
    assert job_ids(["all"]) is None
    assert job_ids(["ftjob-1", "ftjob-2", "ftjob-1"]) == ["ftjob-1", "ftjob-2"]
    with pytest.raises(UsageError):
        job_ids(["all", "ftjob-1"])
