"""What a job publishes: model names, the checkpoints kept, the results CSV."""

from __future__ import annotations

import csv
import io

from tunewright.storage.records import JobRecord
from tunewright.trainer.publish import checkpoint_name, checkpoints_to_drop, model_name, results_csv
from tunewright.trainer.resume import StepRecord


def job(suffix: str | None) -> JobRecord:
    return JobRecord(
        id="ftjob-1",
        project_id="proj_1",
        organization_id="org-1",
        created_at=0,
        model="smollm2-135m-instruct",
        base_model="smollm2-135m-instruct",
        status="running",
        training_file="file-1",
        validation_file=None,
        hyperparameters={},
        method={"type": "supervised"},
        seed=1,
        model_slot="AbC12345",
        suffix=suffix,
    )


def test_model_names_follow_openai_with_and_without_a_suffix() -> None:
    assert model_name(job("support"), "acme") == "ft:smollm2-135m-instruct:acme:support:AbC12345"
    assert model_name(job(None), "acme") == "ft:smollm2-135m-instruct:acme::AbC12345"
    assert checkpoint_name(job(None), "acme", 30) == "ft:smollm2-135m-instruct:acme::AbC12345:ckpt-step-30"


def test_the_last_three_checkpoints_and_the_best_validation_loss_are_kept() -> None:
    kept = [(10, 0.9), (20, 0.5), (30, 0.7), (40, 0.8), (50, 0.6)]
    assert checkpoints_to_drop(kept) == {10}  # 20 is the best, 30-50 the last three
    assert checkpoints_to_drop([(10, None), (20, None), (30, None), (40, None)]) == {10}
    assert checkpoints_to_drop([(10, None), (20, None)]) == set()
    assert checkpoints_to_drop([(10, 0.1), (20, 0.5), (30, 0.7), (40, 0.8), (50, 0.6)]) == {20}


def test_results_csv_has_openai_columns_then_ours_and_empty_cells_where_nothing_was_measured() -> None:
    data = results_csv(
        [
            StepRecord(step=1, train_loss=2.5, train_accuracy=0.25),
            StepRecord(step=2, train_loss=2.0, train_accuracy=0.5, valid_loss=2.25, valid_mean_token_accuracy=0.4),
        ]
    )
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows == [
        [
            "step",
            "train_loss",
            "train_accuracy",
            "valid_loss",
            "valid_mean_token_accuracy",
            "probe_loss",
            "probe_loss_base",
            "best_checkpoint",
        ],
        ["1", "2.5", "0.25", "", "", "", "", ""],
        ["2", "2", "0.5", "2.25", "0.4", "", "", ""],
    ]


def test_results_csv_puts_the_base_probe_loss_beside_each_probe_loss_and_marks_the_best_row() -> None:
    steps = [
        StepRecord(step=1, train_loss=2.5, train_accuracy=0.25),
        StepRecord(step=2, train_loss=2.0, train_accuracy=0.5, valid_loss=2.25, probe_loss=3.5),
        StepRecord(step=3, train_loss=1.5, train_accuracy=0.5),
        StepRecord(step=4, train_loss=1.0, train_accuracy=0.75, valid_loss=2.5, probe_loss=3.75),
    ]
    rows = list(csv.reader(io.StringIO(results_csv(steps, probe_loss_base=3.25, best_step=2).decode())))
    assert [row[5:] for row in rows[1:]] == [["", "", ""], ["3.5", "3.25", "1"], ["", "", ""], ["3.75", "3.25", ""]]
