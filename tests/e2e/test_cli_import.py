"""`tunewright import` between two live servers: one `tunewright serve` is the OpenAI-compatible source, another
the destination.

Neither trains (`TUNEWRIGHT_TRAINERS=0`): the source's jobs stay as created, and the import only reads them. Both
serve the tiny model as `tiny-llama` (the destination's estimates tokenize with it); the source's jobs use
SmolLM2, mapped to `tiny-llama` here. Each test works in projects of its own on both servers. The command runs
in-process (`main(argv)`), its `--json` output read back and everything it made checked through the SDK.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest
from fixtures.server import TINY, start_server, stop_server

from tunewright.clients.cli.main import main

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fixtures.server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SMOLLM2 = "smollm2-135m-instruct"
MAP = ("--model-map", f"{SMOLLM2}={TINY}")
PROJECTS = itertools.count(1)


def serve(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, name: str) -> Iterator[LiveServer]:
    server, process = start_server(tmp_path_factory.mktemp(name), {"TUNEWRIGHT_BASE_MODELS": f"{TINY}={tiny_dir}"})
    yield server
    stop_server(process)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    yield from serve(tmp_path_factory, tiny_dir, "source")


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    yield from serve(tmp_path_factory, tiny_dir, "here")


class Pair:
    """A fresh project at the source and one here, their SDK clients, and the command between them."""

    def __init__(self, source: LiveServer, here: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        number = next(PROJECTS)
        self.source_key = source.new_key("acme", f"moving-{number}")
        self.here_key = here.new_key("acme", f"arrived-{number}")
        self.source_url = source.base_url
        self.source = openai.OpenAI(base_url=source.base_url, api_key=self.source_key, max_retries=0)
        self.here = openai.OpenAI(base_url=here.base_url, api_key=self.here_key, max_retries=0)
        self.capsys = capsys
        for name in ("TUNEWRIGHT_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OPENAI_BASE_URL", here.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", self.here_key)

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = main(["import", "--from-base-url", self.source_url, "--from-api-key", self.source_key, *argv])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def plan(self, *argv: str) -> dict[str, Any]:
        code, out, err = self.run(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def upload(self, name: str, asset: str) -> Any:
        return self.source.files.create(file=(name, (ASSETS / asset).read_bytes()), purpose="fine-tune")

    def jobs_here(self) -> list[Any]:
        return list(self.here.fine_tuning.jobs.list(limit=100))

    def files_here(self) -> list[Any]:
        return list(self.here.files.list())


@pytest.fixture
def pair(source, here, monkeypatch, capsys) -> Pair:
    return Pair(source, here, monkeypatch, capsys)


def by_source(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["source_job"]: job for job in plan["jobs"]}


def test_import_recreates_jobs_copies_files_exactly_and_a_rerun_duplicates_nothing(pair, source):
    # A byte-order mark and CRLF line ends: the copy must keep the bytes exactly.
    crlf = b"\xef\xbb\xbf" + (ASSETS / "valid_chat.jsonl").read_bytes().replace(b"\n", b"\r\n")
    train = pair.source.files.create(file=("train.jsonl", crlf), purpose="fine-tune")
    valid = pair.upload("valid.jsonl", "valid_chat.jsonl")
    preferences = pair.upload("prefs.jsonl", "valid_dpo.jsonl")
    gone = pair.upload("gone.jsonl", "valid_chat.jsonl")
    full = {f"k{i}": f"v{i}" for i in range(16)}
    jobs = pair.source.fine_tuning.jobs
    supervised = jobs.create(
        model=SMOLLM2,
        training_file=train.id,
        validation_file=valid.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_rank": 8}}},
        suffix="support",
        seed=7,
        metadata={"team": "search"},
    )
    dpo = jobs.create(
        model=SMOLLM2,
        training_file=preferences.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    crowded = jobs.create(model=SMOLLM2, training_file=train.id, seed=11, metadata=full)  # the same file again
    unmapped = jobs.create(model=TINY, training_file=train.id)
    orphan = jobs.create(model=SMOLLM2, training_file=gone.id)
    jobs.cancel(orphan.id)
    pair.source.files.delete(gone.id)
    # Another project of the source: its key is not the one the import reads with.
    other = openai.OpenAI(base_url=source.base_url, api_key=source.new_key("globex", "elsewhere"), max_retries=0)
    theirs = other.files.create(file=("t.jsonl", (ASSETS / "valid_chat.jsonl").read_bytes()), purpose="fine-tune")
    their_job = other.fine_tuning.jobs.create(model=SMOLLM2, training_file=theirs.id)

    # A dry run plans and changes nothing here.
    planned = by_source(pair.plan(*MAP, "--dry-run"))
    assert list(planned) == [supervised.id, dpo.id, crowded.id, unmapped.id, orphan.id]  # oldest first
    assert their_job.id not in planned
    assert [planned[j.id]["action"] for j in (supervised, dpo, crowded)] == ["import"] * 3
    assert planned[supervised.id]["model"] == TINY
    assert planned[supervised.id]["files"] == [train.id, valid.id]
    assert planned[unmapped.id]["action"] == "skip"
    assert f"--model-map {TINY}=MODEL" in planned[unmapped.id]["reason"]
    assert planned[orphan.id]["action"] == "skip"
    assert planned[orphan.id]["reason"] == f"{gone.id} no longer exists at the source"
    assert all(job["estimate"] is None for job in planned.values())  # no file is here yet
    code, table, _ = pair.run(*MAP, "--dry-run")
    assert code == 0
    assert "will import" in table
    assert f"{SMOLLM2} -> {TINY}" in table
    assert f"train.jsonl ({train.bytes:,} bytes)" in table
    assert "3 to import, 0 already imported, 2 skipped; 3 without an estimate" in table
    # --estimate uploads the files for the estimates, then deletes them.
    estimated = by_source(pair.plan(*MAP, "--dry-run", "--estimate"))
    assert estimated[supervised.id]["estimate"]["trained_tokens"] > 0
    assert estimated[dpo.id]["estimate"]["method"]["type"] == "dpo"
    assert pair.jobs_here() == []
    assert pair.files_here() == []

    done = pair.plan(*MAP)
    results = by_source(done)
    assert [results[j.id]["action"] for j in (supervised, dpo, crowded)] == ["imported"] * 3
    assert [results[j.id]["action"] for j in (unmapped, orphan)] == ["skip"] * 2
    assert any("16 pairs already" in note for note in results[crowded.id]["notes"])

    arrived = {job.id: job for job in pair.jobs_here()}
    assert len(arrived) == 3
    copy = arrived[results[supervised.id]["job"]]
    assert (copy.model, copy.seed, copy.user_provided_suffix) == (TINY, 7, "support")
    assert copy.metadata == {"team": "search", "imported_from": supervised.id}
    assert copy.method.type == "supervised"
    hyper = copy.method.supervised.hyperparameters
    assert (hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (2, "auto", "auto")
    assert hyper.to_dict()["lora_rank"] == 8
    dpo_copy = arrived[results[dpo.id]["job"]]
    assert dpo_copy.method.type == "dpo"
    assert dpo_copy.method.dpo.hyperparameters.beta == pytest.approx(0.2)
    assert dpo_copy.metadata == {"imported_from": dpo.id}
    crowded_copy = arrived[results[crowded.id]["job"]]
    assert crowded_copy.metadata == full

    # Each file once (the shared one too), byte for byte, with its filename and purpose.
    files = {file.id: file for file in pair.files_here()}
    assert len(files) == 3
    assert crowded_copy.training_file == copy.training_file
    for original, copied in (
        (train, copy.training_file),
        (valid, copy.validation_file),
        (preferences, dpo_copy.training_file),
    ):
        assert (files[copied].filename, files[copied].purpose) == (original.filename, "fine-tune")
        assert pair.here.files.content(copied).read() == pair.source.files.content(original.id).read()

    # Again: nothing new, every job found as imported (the crowded one by its settings).
    again = by_source(pair.plan(*MAP))
    assert {again[j.id]["action"] for j in (supervised, dpo, crowded)} == {"exists"}
    assert again[crowded.id]["job"] == crowded_copy.id
    assert {job.id for job in pair.jobs_here()} == set(arrived)
    assert {file.id for file in pair.files_here()} == set(files)

    # A new job on a file copied already: the dry run estimates it, with no upload.
    later = jobs.create(model=SMOLLM2, training_file=train.id, seed=3)
    planned = by_source(pair.plan(*MAP, "--dry-run"))
    assert planned[later.id]["action"] == "import"
    assert planned[later.id]["estimate"]["training_file"] == copy.training_file
    assert {file.id for file in pair.files_here()} == set(files)
    code, out, err = pair.run(*MAP)
    assert code == 0, err
    assert f"imported {later.id} as ftjob-" in err
    assert "imported 1, already imported 3, skipped 2, failed 0" in out
    assert len(pair.jobs_here()) == 4


def test_import_pages_through_more_than_100_jobs(pair):
    training = pair.upload("train.jsonl", "valid_chat.jsonl")
    created = [pair.source.fine_tuning.jobs.create(model=SMOLLM2, training_file=training.id).id for _ in range(103)]
    results = pair.plan(*MAP)
    assert [job["source_job"] for job in results["jobs"]] == created
    assert {job["action"] for job in results["jobs"]} == {"imported"}
    arrived = pair.jobs_here()
    assert sorted(job.metadata["imported_from"] for job in arrived) == sorted(created)
    assert [job.metadata["imported_from"] for job in arrived] == created[::-1]  # the same order, newest first
    assert len(pair.files_here()) == 1

    assert {job["action"] for job in pair.plan(*MAP)["jobs"]} == {"exists"}
    assert len(pair.jobs_here()) == 103


def test_named_jobs_only_and_an_unknown_one_fails_the_command(pair):
    training = pair.upload("train.jsonl", "valid_chat.jsonl")
    first, second = (pair.source.fine_tuning.jobs.create(model=SMOLLM2, training_file=training.id) for _ in "ab")
    code, out, _ = pair.run(*MAP, "--jobs", second.id, "ftjob-nowhere", "--json")
    assert code == 1
    results = by_source(json.loads(out))
    assert list(results) == [second.id, "ftjob-nowhere"]
    assert (results["ftjob-nowhere"]["action"], results["ftjob-nowhere"]["reason"]) == (
        "failed",
        "the source has no such job",
    )
    assert [job.metadata["imported_from"] for job in pair.jobs_here()] == [second.id]
    assert first.id not in out


def test_refusals_and_a_model_unknown_here(pair):
    training = pair.upload("train.jsonl", "valid_chat.jsonl")
    job = pair.source.fine_tuning.jobs.create(model=SMOLLM2, training_file=training.id)
    plan = by_source(pair.plan("--model-map", f"{SMOLLM2}=gpt-9", "--dry-run"))
    assert plan[job.id]["action"] == "skip"
    assert plan[job.id]["reason"] == "this server has no model gpt-9"
    for argv in (("--model-map", "nothing"), ("--jobs", "all", job.id), ("--estimate",)):
        code, _, err = pair.run(*argv)
        assert code == 2
        assert re.match(r"tunewright: import: ", err)
    code, _, err = main_with_wrong_source_key(pair)
    assert code == 1
    assert err.startswith("tunewright: import: the source: HTTP 401: ")
    assert pair.jobs_here() == []


def main_with_wrong_source_key(pair: Pair) -> tuple[int, str, str]:
    code = main(["import", "--from-base-url", pair.source_url, "--from-api-key", "sk-proj-wrong", *MAP])
    captured = pair.capsys.readouterr()
    return code, captured.out, captured.err


def test_a_file_here_counts_as_the_copy_only_with_the_same_bytes(pair):
    """As after an import killed between copying a file and creating its job: the copy is found by content."""
    data = (ASSETS / "valid_chat.jsonl").read_bytes()
    decoy = data.replace(b"What is 0 plus 0?", b"What is 9 plus 0?")
    assert len(decoy) == len(data)
    training = pair.source.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = pair.source.fine_tuning.jobs.create(model=SMOLLM2, training_file=training.id)
    same_name_and_size = pair.here.files.create(file=("train.jsonl", decoy), purpose="fine-tune")
    other_purpose = pair.here.files.create(file=("train.jsonl", data), purpose="user_data")
    copied_before = pair.here.files.create(file=("train.jsonl", data), purpose="fine-tune")
    results = by_source(pair.plan(*MAP))
    assert results[job.id]["action"] == "imported"
    (arrived,) = pair.jobs_here()
    assert arrived.training_file == copied_before.id
    assert {file.id for file in pair.files_here()} == {same_name_and_size.id, other_purpose.id, copied_before.id}


EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
JUDGE = {
    "type": "score_model",
    "name": "judge",
    "model": SMOLLM2,
    "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}} against {{item.answer}}"}],
    "range": [0, 1],
}


AUTO_RFT = {
    "batch_size": "auto",
    "learning_rate_multiplier": "auto",
    "compute_multiplier": "auto",
    "eval_samples": "auto",
}


def test_reinforcement_jobs_keep_their_graders_with_a_model_graders_model_mapped(pair):
    training = pair.upload("rft.jsonl", "valid_rft.jsonl")
    jobs = pair.source.fine_tuning.jobs
    hyper = {"n_epochs": 1, "eval_interval": 2, "reasoning_effort": "low"}
    simple = jobs.create(
        model=SMOLLM2,
        training_file=training.id,
        method={"type": "reinforcement", "reinforcement": {"grader": EXACT, "hyperparameters": hyper}},
    )
    multi = {"type": "multi", "name": "both", "graders": {"judge": JUDGE, "exact": EXACT}}
    judged = jobs.create(
        model=SMOLLM2,
        training_file=training.id,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": {**multi, "calculate_output": "0.5 * judge + 0.5 * exact"}},
        },
    )
    results = by_source(pair.plan(*MAP))
    assert [results[job.id]["action"] for job in (simple, judged)] == ["imported"] * 2

    # The JSON as sent: the SDK's models read a multi grader as a string_check one.
    for source_job in (simple, judged):
        original = pair.source.get(f"/fine_tuning/jobs/{source_job.id}", cast_to=object)["method"]
        copy = pair.here.get(f"/fine_tuning/jobs/{results[source_job.id]['job']}", cast_to=object)["method"]
        assert copy["type"] == "reinforcement"
        assert copy["reinforcement"]["hyperparameters"] == original["reinforcement"]["hyperparameters"]
        expected = original["reinforcement"]["grader"]
        if expected["type"] == "multi":
            assert expected["graders"]["judge"]["model"] == SMOLLM2
            expected["graders"]["judge"]["model"] = TINY  # the model grader calls the model its job's maps to
        assert copy["reinforcement"]["grader"] == expected
    assert original["reinforcement"]["grader"]["calculate_output"] == "0.5 * judge + 0.5 * exact"
    simple_copy = pair.here.fine_tuning.jobs.retrieve(results[simple.id]["job"])
    assert simple_copy.method.reinforcement.hyperparameters.to_dict() == {**hyper, **AUTO_RFT}
    assert {job["action"] for job in pair.plan(*MAP)["jobs"]} == {"exists"}
    assert len(pair.jobs_here()) == 2
