"""Reinforcement training files: chat prompts, refused final assistant turns, and lines checked against the grader."""

from __future__ import annotations

import json

import pytest

from tunewright.graders import GraderError
from tunewright.storage.settings import Settings
from tunewright.training_files.reinforcement import ItemCheck, check_job_grader
from tunewright.training_files.validate import validate_dataset

GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def line(content: str = "What is 1 + 1?", **extra: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra}).encode()


def report(lines: list[bytes], grader: dict | None = None):
    check = ItemCheck(check_job_grader(grader or GRADER, Settings(), base_model="tiny"))
    return validate_dataset(lines, method="reinforcement", line_check=check, min_examples=1)


def test_prompts_with_the_graders_fields_pass() -> None:
    assert report([line(answer="2"), line("Hi", answer="x", tags=["a"])]).ok


def test_a_line_missing_a_field_the_grader_reads_is_named_by_line() -> None:
    problems = [str(p) for p in report([line(answer="2"), line(solution="2"), line(answer="3")]).problems]
    assert len(problems) == 1
    assert problems[0].startswith("line 2: cannot be graded: ")
    assert "item.answer" in problems[0]


def test_a_final_assistant_turn_is_refused_and_earlier_ones_are_context() -> None:
    ends = json.dumps(
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "a"}
    ).encode()
    middle = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "again"},
            ],
            "answer": "a",
        }
    ).encode()
    problems = [str(p) for p in report([ends, middle]).problems]
    assert problems == [
        "line 1: messages[1] must not be an assistant message: in reinforcement fine-tuning the model writes the reply"
    ]


def test_prompt_completion_lines_are_not_reinforcement_prompts() -> None:
    problems = [str(p) for p in report([json.dumps({"prompt": "a", "completion": "b"}).encode()]).problems]
    assert "reinforcement jobs need chat examples" in problems[0]


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        (
            {"type": "score_model", "name": "j", "model": "other", "input": [{"role": "user", "content": "x"}]},
            "method.reinforcement.grader.model",
        ),
        (
            {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1\n"},
            "method.reinforcement.grader.type",
        ),
        ({**GRADER, "type": "text_similarity", "evaluation_metric": "cosine", "operation": None}, None),
    ],
)
def test_graders_the_trainer_cannot_run_are_refused(grader: dict, param: str | None) -> None:
    grader = {key: value for key, value in grader.items() if value is not None}
    with pytest.raises(GraderError) as caught:
        check_job_grader(grader, Settings(), base_model="tiny")
    assert caught.value.param.startswith("method.reinforcement.grader")
    if param is not None:
        assert caught.value.param == param


def test_python_graders_pass_when_the_operator_enables_them() -> None:
    settings = Settings(python_graders=True)
    source = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    assert check_job_grader(source, settings, base_model="tiny").name == "p"
    judge = {"type": "score_model", "name": "j", "model": "tiny", "input": [{"role": "user", "content": "{{item.a}}"}]}
    assert check_job_grader(judge, settings, base_model="tiny").name == "j"
