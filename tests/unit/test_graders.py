"""The grading core (graders/): decoding, checks, templates, each grader and metric on known values."""

from __future__ import annotations

from typing import Any

import pytest

from tunewright.graders import (
    GraderError,
    ModelGraderError,
    ModelReply,
    Runtime,
    Sample,
    SamplingParams,
    SandboxLimits,
    encode_grader,
    grade,
    model_graders,
    parse_grader,
)
from tunewright.graders import metrics as metrics_module
from tunewright.graders.grading import parse_label, parse_score
from tunewright.graders.metrics import similarity
from tunewright.graders.templates import TemplateError, render

EQ = {
    "type": "string_check",
    "name": "eq",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
PLAIN = Runtime()


def run(grader: dict[str, Any], text: str, item: Any = None, runtime: Runtime = PLAIN, **sample: Any) -> Any:
    parsed = parse_grader(grader)
    runtime.check(parsed)
    return grade(parsed, Sample.from_text(text, **sample), item or {}, runtime)


def refused(grader: Any, runtime: Runtime = PLAIN, **check: Any) -> GraderError:
    with pytest.raises(GraderError) as caught:
        runtime.check(parse_grader(grader), **check)
    return caught.value


# --------------------------------------------------------------------------------------- decoding


def test_a_grader_is_echoed_as_sent():
    body = {
        "type": "score_model",
        "name": "s",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{item.q}}"}], "type": "message"}],
        "model": "m",
        "sampling_params": {"temperature": 1, "seed": 42, "reasoning_effort": "medium"},
        "range": [0, 10],
    }
    assert encode_grader(parse_grader(body)) == {
        **body,
        "sampling_params": {"temperature": 1.0, "seed": 42, "reasoning_effort": "medium"},
        "range": [0.0, 10.0],
    }


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**EQ, "extra": 1}, "grader.extra", "unknown_parameter"),
        ({k: v for k, v in EQ.items() if k != "reference"}, "grader.reference", "missing_required_parameter"),
        ({**EQ, "operation": "contains"}, "grader.operation", "invalid_value"),
        ({**EQ, "name": 3}, "grader.name", "invalid_type"),
        ({**EQ, "type": "regex"}, "grader.type", "invalid_value"),
        ({k: v for k, v in EQ.items() if k != "type"}, "grader.type", "missing_required_parameter"),
        (
            {"type": "label_model", "name": "l", "model": "m", "input": [], "labels": ["a"], "passing_labels": ["a"]},
            "grader.type",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {**EQ, "operation": "x"}}},
            "grader.graders.a.operation",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {**EQ, "extra": True}}},
            "grader.graders.a.extra",
            "unknown_parameter",
        ),
        (
            {"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {"type": "multi"}}},
            "grader.graders.a.type",
            "invalid_value",
        ),
        (
            {"type": "multi", "name": "m", "calculate_output": "a", "graders": [EQ, {**EQ, "name": 1}]},
            "grader.graders[1].name",
            "invalid_type",
        ),
        ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {}}, "grader.graders", "invalid_value"),
        (
            {"type": "score_model", "name": "s", "model": "m", "input": [{"role": "robot", "content": "x"}]},
            "grader.input[0].role",
            "invalid_value",
        ),
        (
            {
                "type": "score_model",
                "name": "s",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "sampling_params": {"temperature": 3},
            },
            "grader.sampling_params.temperature",
            "invalid_value",
        ),
        (
            {
                "type": "score_model",
                "name": "s",
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "y": 1}]}],
            },
            "grader.input[0].content[0].y",
            "unknown_parameter",
        ),
        ("string_check", "grader", "invalid_type"),
    ],
)
def test_bad_graders_name_the_path(body, param, code):
    with pytest.raises(GraderError) as caught:
        parse_grader(body)
    assert (caught.value.param, caught.value.code) == (param, code)
    assert param in caught.value.message


def test_multi_graders_take_a_map_a_single_grader_or_a_list():
    as_map = parse_grader({"type": "multi", "name": "m", "graders": {"x": EQ}, "calculate_output": "x"})
    single = parse_grader({"type": "multi", "name": "m", "graders": EQ, "calculate_output": "eq"})
    as_list = parse_grader({"type": "multi", "name": "m", "graders": [EQ], "calculate_output": "eq"})
    for grader in (as_map, single, as_list):
        PLAIN.check(grader)
        assert grade(grader, Sample.from_text("yes"), {"label": "yes"}, PLAIN).reward == 1.0
    assert encode_grader(as_map)["graders"] == {"x": EQ}
    assert encode_grader(single)["graders"] == EQ


# ------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({**EQ, "input": "{{ output_text }}"}, "grader.input", "namespace must be `item` or `sample`"),
        ({**EQ, "input": "{{ item.a b }}"}, "grader.input", "expected {{ item.<field> }}"),
        ({**EQ, "input": "{{ model.output }}"}, "grader.input", "namespace must be `item` or `sample`"),
        ({**EQ, "input": "{{ sample.output }}"}, "grader.input", "output_text, output_json, output_tools"),
        ({**EQ, "input": "{{ sample.output_text.x }}"}, "grader.input", "is a string"),
        ({**EQ, "input": "{{ item }}"}, "grader.input", "name a variable"),
        (
            {"type": "multi", "name": "m", "graders": {"a": EQ}, "calculate_output": "a + b"},
            "grader.calculate_output",
            "'b' at position 5 names no grader",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": EQ}, "calculate_output": "a +"},
            "grader.calculate_output",
            "position 4",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": EQ}, "calculate_output": "__import__('os')"},
            "grader.calculate_output",
            "Unexpected character",
        ),
        (
            {"type": "multi", "name": "m", "graders": [EQ, EQ], "calculate_output": "eq"},
            "grader.graders[1].name",
            "two graders",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": {**EQ, "reference": "{{x.y}}"}}, "calculate_output": "a"},
            "grader.graders.a.reference",
            "namespace",
        ),
        (
            {"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
            "grader.evaluation_metric",
            "no embedding model",
        ),
        (
            {"type": "python", "name": "p", "source": "def grade(s, i): return 1"},
            "grader.type",
            "TUNEWRIGHT_PYTHON_GRADERS=true",
        ),
    ],
)
def test_graders_this_server_cannot_run_are_refused(body, param, words):
    error = refused(body)
    assert error.param == param
    assert words in error.message


def test_model_grader_checks():
    sampler = Runtime(sample_model=lambda model, messages, params: "1")
    score = {"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "hi"}]}
    label = {
        "type": "label_model",
        "name": "l",
        "model": "m",
        "input": [{"role": "user", "content": "hi"}],
        "labels": ["a", "b"],
        "passing_labels": ["a"],
    }
    multi = {"type": "multi", "name": "m", "graders": {"s": score}, "calculate_output": "s"}
    assert refused(score).param == "grader.model"  # no sampler: model graders are unavailable
    assert refused(multi).param == "grader.graders.s.model"
    assert model_graders(parse_grader(multi)) == [("grader.graders.s.model", "m")]
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    assert (
        refused({**score, "input": [{"role": "user", "content": ["x", image]}]}, sampler).param
        == "grader.input[0].content[1]"
    )
    assert refused({**score, "input": []}, sampler).param == "grader.input"
    assert refused({**score, "range": [1, 0]}, sampler).param == "grader.range"
    assert refused({**score, "range": [0, 1, 2]}, sampler).param == "grader.range"
    label_multi = {
        "type": "multi",
        "name": "m",
        "graders": {"l": {**label, "passing_labels": ["c"]}},
        "calculate_output": "l",
    }
    assert refused(label_multi, sampler).param == "grader.graders.l.passing_labels[0]"


def test_python_source_is_checked_when_python_graders_are_enabled():
    enabled = Runtime(python=SandboxLimits())
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    enabled.check(parse_grader(grader))
    assert "line 2" in refused({**grader, "source": "x = 1\ndef grade(:\n  pass"}, enabled).message
    assert "define a function grade" in refused({**grader, "source": "def score(s, i): return 1"}, enabled).message
    assert "256 KiB" in refused({**grader, "source": "#" * (256 * 1024 + 1)}, enabled).message


def test_item_templates_are_checked_against_the_item():
    grader = parse_grader({**EQ, "reference": "{{ item.answer.value }}"})
    PLAIN.check(grader, item={"answer": {"value": 1}})
    with pytest.raises(GraderError) as caught:
        PLAIN.check(grader, item={"answer": {"other": 1}})
    assert caught.value.param == "grader.reference"
    assert "item.answer has no `value`" in caught.value.message
    with pytest.raises(GraderError, match=r"item\.answer is a number"):
        PLAIN.check(grader, item={"answer": 3})


# --------------------------------------------------------------------------------------- templates


def test_templates_fill_items_and_samples():
    sample = Sample.from_text('{"score": 0.5, "tags": ["a", "b"]}')
    item = {"q": {"text": "hello"}, "list": [10, 20], "n": 3, "flag": True, "obj": {"k": "v"}}
    text = (
        "{{item.q.text}} {{ item.list[1] }} {{item.list.0}} {{item.n}} {{item.flag}} {{item.obj}} "
        "{{sample.output_json.tags[0]}} {{sample.output_json.score}}"
    )
    assert render(text, sample=sample, item=item) == 'hello 20 10 3 true {"k": "v"} a 0.5'
    assert render("{{sample.output_text}}", sample=sample, item={}) == sample.output_text
    tools = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert render("{{sample.output_tools[0].function.name}}", sample=Sample.from_text("", tools=tools), item={}) == "f"
    assert render("no templates {{ here", sample=sample, item={}) == "no templates {{ here"


def test_a_sample_that_lacks_what_a_template_reads_is_flagged():
    plain = Sample.from_text("not json")
    with pytest.raises(TemplateError) as caught:
        render("{{sample.output_json.score}}", sample=plain, item={})
    assert caught.value.kind == "sample_parse"
    with pytest.raises(TemplateError) as caught:
        render("{{sample.output_json.missing}}", sample=Sample.from_text("{}"), item={})
    assert caught.value.kind == "invalid_variable"
    assert "`missing`" in caught.value.message
    result = run({**EQ, "input": "{{sample.output_json.answer}}"}, "plain text", {"label": "x"})
    assert (result.reward, result.errors.sample_parse_error) == (0.0, True)
    result = run({**EQ, "input": "{{sample.output_json.answer}}"}, '{"other": 1}', {"label": "x"})
    assert (result.reward, result.errors.invalid_variable_error) == (0.0, True)
    result = run(EQ, "x", {})  # the item misses `label`: the API checks this first; grading flags it
    assert result.errors.invalid_variable_error


# ------------------------------------------------------------------------------------ string_check


@pytest.mark.parametrize(
    ("operation", "text", "reference", "reward"),
    [
        ("eq", "Paris", "Paris", 1),
        ("eq", "Paris", "paris", 0),
        ("ne", "Paris", "paris", 1),
        ("ne", "Paris", "Paris", 0),
        ("like", "The capital is Paris.", "Paris", 1),
        ("like", "The capital is paris.", "Paris", 0),
        ("ilike", "THE CAPITAL IS PARIS.", "Paris", 1),
        ("ilike", "Lyon", "Paris", 0),
    ],
)
def test_string_check(operation, text, reference, reward):
    result = run({**EQ, "operation": operation}, text, {"label": reference})
    assert result.reward == reward
    assert not result.errors.any()
    assert (result.name, result.type) == ("eq", "string_check")


# ---------------------------------------------------------------------------------- text_similarity


HYPOTHESIS, REFERENCE = "the cat sat on the mat", "the cat is on the mat"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        # 5/6 unigrams, 3/5 bigrams, 1/4 trigrams, 0/3 4-grams smoothed to 0.1/3: (5/6 * 3/5 * 1/4 * 1/30) ** (1/4)
        ("bleu", (5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25),
        ("gleu", 9 / 18),  # 9 of the 18 n-grams (1-4) match, both ways
        ("meteor", 5 / 6 * (1 - 0.5 * (2 / 5) ** 3)),  # F-mean 5/6, 2 chunks over 5 matches
        ("rouge_1", 5 / 6),
        ("rouge_2", 3 / 5),
        ("rouge_3", 1 / 4),
        ("rouge_4", 0.0),
        ("rouge_l", 5 / 6),  # LCS "the cat on the mat"
    ],
)
def test_ngram_metrics_match_their_published_definitions(metric, expected):
    assert similarity(metric, HYPOTHESIS, REFERENCE) == pytest.approx(expected)


def test_fuzzy_match_is_the_normalized_indel_similarity():
    assert similarity("fuzzy_match", "abcd", "abce") == pytest.approx(0.75)  # 2 edits over 8 characters
    assert similarity("fuzzy_match", "", "") == 1.0


@pytest.mark.parametrize("metric", [m for m in metrics_module.METRICS if m != "cosine"])
def test_identical_texts_score_one_and_disjoint_ones_zero(metric):
    assert similarity(metric, "Paris", "Paris") == 1.0
    assert similarity(metric, "one two three four five", "one two three four five") == pytest.approx(1.0)
    assert similarity(metric, "alpha beta", "gamma delta") == (
        0.0 if metric != "fuzzy_match" else pytest.approx(similarity(metric, "alpha beta", "gamma delta"))
    )


def test_rouge_reads_words_of_any_script():
    assert similarity("rouge_1", "北京 欢迎你", "北京 欢迎") == pytest.approx(0.5)
    assert similarity("rouge_1", "Größe", "größe") == 1.0


def test_meteor_without_wordnet_matches_stems(monkeypatch):
    monkeypatch.setattr(metrics_module, "_wordnet", lambda: metrics_module._NoSynonyms())
    # 3 matches ("cats" by its stem) in one chunk: F-mean 1, penalty 0.5 * (1/3) ** 3
    assert similarity("meteor", "the cats sat", "the cat sat") == pytest.approx(1 - 0.5 / 27)


def test_cosine_needs_an_embedder():
    embed = Runtime(embed=lambda texts: [[1.0, 0.0], [1.0, 1.0]])
    grader = {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"}
    assert run(grader, "a", runtime=embed).reward == pytest.approx(2**-0.5)


def test_text_similarity_grader_renders_then_scores():
    grader = {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": "rouge_1",
    }
    result = run(grader, HYPOTHESIS, {"ref": REFERENCE})
    assert result.reward == pytest.approx(5 / 6)
    assert result.execution_time >= 0


# ------------------------------------------------------------------------------------ model graders


class FakeModel:
    """A model sampler that answers from a list and records what it was asked."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict[str, Any]], SamplingParams]] = []

    def __call__(self, model: str, messages: list[dict[str, Any]], params: SamplingParams) -> Any:
        self.calls.append((model, messages, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


SCORE = {
    "type": "score_model",
    "name": "judge",
    "model": "tiny",
    "input": [
        {"role": "system", "content": "Score 0 to 10."},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "Reference: {{item.ref}}"}, "Answer: {{sample.output_text}}"],
        },
    ],
    "range": [0, 10],
    "sampling_params": {"temperature": 0.5, "seed": 7, "max_completions_tokens": 20, "reasoning_effort": "high"},
}


def test_score_model_asks_with_templated_messages_and_parses_the_score():
    model = FakeModel(ModelReply(text='{"steps": [], "result": 7.5}', prompt_tokens=30, completion_tokens=5))
    result = run(SCORE, "Paris", {"ref": "Paris, France"}, Runtime(sample_model=model))
    assert result.reward == 7.5
    assert result.sampled_model_name == "tiny"
    assert result.token_usage["tiny"].prompt_tokens == 30
    assert result.total_tokens == 35
    (name, messages, params) = model.calls[0]
    assert name == "tiny"
    assert messages == [
        {"role": "system", "content": "Score 0 to 10."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Reference: Paris, France"},
                {"type": "text", "text": "Answer: Paris"},
            ],
        },
    ]
    assert (params.temperature, params.seed, params.max_completions_tokens) == (0.5, 7, 20)


@pytest.mark.parametrize(
    ("answer", "reward"),
    [
        ("0.25", 0.25),
        ("12", 10.0),
        ("-3", 0.0),
        ("Score: 4", 4.0),
        ('```json\n{"result": 6}\n```', 6.0),
        ('I think {"result": "2.5"} fits', 2.5),
    ],
)
def test_score_model_answers_are_read_and_clamped_to_the_range(answer, reward):
    assert run(SCORE, "x", {"ref": "y"}, Runtime(sample_model=FakeModel(answer))).reward == reward


def test_score_model_failures_are_flagged():
    unparsable = run(SCORE, "x", {"ref": "y"}, Runtime(sample_model=FakeModel("between 3 and 4")))
    assert (unparsable.reward, unparsable.errors.model_grader_parse_error) == (0.0, True)
    failed = run(SCORE, "x", {"ref": "y"}, Runtime(sample_model=FakeModel(ModelGraderError("engine down"))))
    assert failed.errors.model_grader_server_error
    assert failed.errors.model_grader_server_error_details == "engine down"
    with pytest.raises(RuntimeError):  # anything else is the caller's to answer
        run(SCORE, "x", {"ref": "y"}, Runtime(sample_model=FakeModel(RuntimeError("bug"))))


def test_parse_score_and_parse_label():
    assert parse_score("nan") is None
    assert parse_score("true") is None
    assert parse_score("1e400") is None
    assert parse_label('{"result": "positive"}', ["positive", "negative"]) == "positive"
    assert parse_label("Negative.", ["positive", "negative"]) == "negative"
    assert parse_label("The sentiment is positive overall", ["positive", "negative"]) == "positive"
    assert parse_label("positive or negative", ["positive", "negative"]) is None


def test_label_model_passes_on_passing_labels():
    label = {
        "type": "label_model",
        "name": "l",
        "model": "tiny",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive"],
    }
    multi = {"type": "multi", "name": "m", "graders": {"l": label}, "calculate_output": "l"}
    assert run(multi, "great", runtime=Runtime(sample_model=FakeModel("positive"))).reward == 1.0
    assert run(multi, "meh", runtime=Runtime(sample_model=FakeModel("neutral"))).reward == 0.0
    odd = run(multi, "?", runtime=Runtime(sample_model=FakeModel("purple")))
    assert (odd.reward, odd.errors.model_grader_parse_error) == (0.0, True)


# -------------------------------------------------------------------------------------------- multi


def test_multi_grader_combines_sub_rewards_by_its_formula():
    similar = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "evaluation_metric": "fuzzy_match",
    }
    grader = {
        "type": "multi",
        "name": "combined",
        "graders": {"exact": EQ, "close": similar},
        "calculate_output": "0.5 * exact + 0.5 * close ^ 2",
    }
    result = run(grader, "abcd", {"label": "abce"})
    assert result.sub_rewards == {"exact": 0.0, "close": pytest.approx(0.75)}
    assert result.reward == pytest.approx(0.5 * 0.75**2)
    assert (result.name, result.type) == ("combined", "multi")
    assert not result.errors.any()


def test_multi_grader_reports_its_sub_graders_errors_and_formula_errors():
    json_check = {**EQ, "input": "{{sample.output_json.a}}"}
    grader = {"type": "multi", "name": "m", "graders": {"j": json_check, "e": EQ}, "calculate_output": "j + e"}
    result = run(grader, "x", {"label": "x"})
    assert result.sub_rewards == {"j": 0.0, "e": 1.0}
    assert result.reward == 1.0
    assert result.errors.sample_parse_error
    divide = run({**grader, "calculate_output": "e / j"}, '{"a": "y"}', {"label": '{"a": "y"}'})
    assert (divide.reward, divide.errors.formula_parse_error) == (0.0, True)
    assert "Division by zero" in divide.message


def test_multi_grader_sums_token_usage_per_model():
    score = {"type": "score_model", "name": "s", "model": "tiny", "input": [{"role": "user", "content": "x"}]}
    grader = {
        "type": "multi",
        "name": "m",
        "graders": {"a": score, "b": {**score, "model": "other"}, "c": score},
        "calculate_output": "a + b + c",
    }
    model = FakeModel(
        ModelReply(text="1", prompt_tokens=3, completion_tokens=1),
        ModelReply(text="0", prompt_tokens=5, completion_tokens=2),
        ModelReply(text="0.5", prompt_tokens=3, completion_tokens=1),
    )
    result = run(grader, "x", runtime=Runtime(sample_model=model))
    assert result.reward == 1.5
    assert {name: usage.total_tokens for name, usage in result.token_usage.items()} == {"tiny": 8, "other": 7}
    assert result.sampled_model_name is None  # two models answered


def test_a_truncated_sample_is_graded_and_flagged():
    result = run(EQ, "yes", {"label": "yes"}, truncated=True)
    assert (result.reward, result.errors.truncated_observation_error) == (1.0, True)
