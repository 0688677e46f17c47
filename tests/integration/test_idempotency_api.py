"""`Idempotency-Key` on the create routes, in-process, through the real openai SDK, on both backends.

What a retry with the same key gets (the first answer, marked replayed), what another request with it gets (409),
what is kept (2xx and 4xx) and what is not (5xx, answers given before the body arrived), and that keys belong to
projects. The live-server tests (tests/e2e/test_idempotency_e2e.py) retry through dropped connections, race
requests and share one database between API processes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from fixtures.app import BASE_URL
from fixtures.contract import validate_error
from litestar.testing import TestClient

from tunewright.api.app import create_app
from tunewright.api.idempotency import REPLAYED_HEADER
from tunewright.storage.sweeps import sweep_idempotency_keys

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE = "smollm2-135m-instruct"
TRAIN = (ASSETS / "valid_chat.jsonl").read_bytes()


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def training_file(client_a):
    return client_a.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")


def test_a_retried_job_create_answers_the_first_job_and_creates_no_other(client_a, training_file):
    key = new_key()
    first = client_a.fine_tuning.jobs.with_raw_response.create(
        model=BASE, training_file=training_file.id, extra_headers=key_header(key)
    )
    again = client_a.fine_tuning.jobs.with_raw_response.create(
        model=BASE, training_file=training_file.id, extra_headers=key_header(key)
    )
    assert REPLAYED_HEADER not in first.headers
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.parse().id == first.parse().id
    assert json.loads(again.content) == json.loads(first.content)
    assert [job.id for job in client_a.fine_tuning.jobs.list()] == [first.parse().id]
    other = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)  # no key: a new job
    assert other.id != first.parse().id


def test_a_retried_file_upload_answers_the_first_file(client_a):
    key = new_key()
    # The SDK builds each multipart body with a new random boundary; the retry still matches.
    first = client_a.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=key_header(key))
    again = client_a.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=key_header(key))
    assert again.id == first.id
    assert [f.id for f in client_a.files.list()] == [first.id]


def test_upload_create_parts_and_complete_each_answer_their_first_answer(client_a):
    def create(key):
        return client_a.uploads.create(
            bytes=len(TRAIN), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune", extra_headers=key
        )

    keys = key_header(new_key())
    upload = create(keys)
    assert create(keys).id == upload.id
    part_keys = key_header(new_key())
    part = client_a.uploads.parts.create(upload.id, data=TRAIN, extra_headers=part_keys)
    # A retried part is not stored twice: the upload's bytes would exceed the declared size (413) if it were.
    assert client_a.uploads.parts.create(upload.id, data=TRAIN, extra_headers=part_keys).id == part.id
    done_keys = key_header(new_key())
    done = client_a.uploads.complete(upload.id, part_ids=[part.id], extra_headers=done_keys)
    again = client_a.uploads.complete(upload.id, part_ids=[part.id], extra_headers=done_keys)
    assert done.status == again.status == "completed"
    assert again.file.id == done.file.id
    with pytest.raises(openai.BadRequestError) as err:  # without the key, completing twice is refused
        client_a.uploads.complete(upload.id, part_ids=[part.id])
    assert err.value.code == "invalid_upload_state"


def test_the_same_key_with_another_body_is_409_and_not_retried(client_a, http, tenants, training_file):
    key = new_key()
    client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    with pytest.raises(openai.ConflictError) as err:
        client_a.fine_tuning.jobs.create(
            model=BASE, training_file=training_file.id, suffix="other", extra_headers=key_header(key)
        )
    assert err.value.code == "idempotency_key_reused"
    assert err.value.param == "Idempotency-Key"
    assert err.value.response.headers["x-should-retry"] == "false"
    validate_error(err.value.response.json())
    # Another route is another request too.
    response = http.post(
        "/v1/uploads",
        json={"bytes": 10, "filename": "a.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"},
        headers={"Authorization": f"Bearer {tenants['a'].key}", **key_header(key)},
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client_a.fine_tuning.jobs.list().data) == 1


def test_another_projects_same_key_is_independent(client_a, client_b, training_file):
    key = new_key()
    job_a = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    file_b = client_b.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job_b = client_b.fine_tuning.jobs.create(model=BASE, training_file=file_b.id, extra_headers=key_header(key))
    assert job_b.id != job_a.id
    assert [job.id for job in client_b.fine_tuning.jobs.list()] == [job_b.id]


def test_a_4xx_is_kept_and_answered_again(client_a, training_file):
    headers = key_header(new_key())
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as err:
            client_a.fine_tuning.jobs.create(model="nope", training_file=training_file.id, extra_headers=headers)
    assert err.value.response.headers[REPLAYED_HEADER] == "true"
    assert client_a.fine_tuning.jobs.list().data == []


def test_a_5xx_is_not_kept_and_the_retry_does_the_work(client_a, stores, training_file, monkeypatch):
    key = new_key()
    insert_job = stores.metadata.insert_job

    def failing(*args, **kwargs):
        raise RuntimeError("the database fell over")

    monkeypatch.setattr(stores.metadata, "insert_job", failing)
    with pytest.raises(openai.InternalServerError):
        client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    monkeypatch.setattr(stores.metadata, "insert_job", insert_job)
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    assert [j.id for j in client_a.fine_tuning.jobs.list()] == [job.id]


@pytest.mark.parametrize(("key", "reason"), [("k" * 256, "256 bytes"), ("", "0 bytes"), ("caf\u00e9", "5 bytes")])
def test_a_bad_key_is_400_naming_the_header(http, tenants, key, reason):
    response = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": BASE, "training_file": "file-x"},
        headers={"Authorization": f"Bearer {tenants['a'].key}", "Idempotency-Key": key.encode()},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "Idempotency-Key"
    assert reason in error["message"]
    validate_error(response.json())


def test_a_key_of_255_characters_is_accepted(client_a, training_file):
    key = "k" * 255
    first = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    again = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    assert again.id == first.id


def test_a_bad_api_key_is_401_before_the_idempotency_key_is_looked_at(http):
    response = http.post(
        "/v1/fine_tuning/jobs",
        json={"model": BASE, "training_file": "file-x"},
        headers={"Authorization": "Bearer sk-proj-wrong", "Idempotency-Key": "k" * 300},
    )
    assert response.status_code == 401


def test_routes_that_did_not_opt_in_ignore_the_header(client_a, training_file):
    job = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id)
    key = key_header(new_key())
    assert client_a.fine_tuning.jobs.cancel(job.id, extra_headers=key).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as err:  # not a replay: the cancel ran again
        client_a.fine_tuning.jobs.cancel(job.id, extra_headers=key)
    assert err.value.code == "invalid_job_state"


def test_an_expired_answer_is_swept_and_the_key_can_be_used_again(client_a, stores, tenants, training_file):
    key = new_key()
    first = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    project = tenants["a"].project_id
    assert stores.metadata.get_idempotency_key(project_id=project, key=key) is not None
    assert sweep_idempotency_keys(stores) == 0  # not expired yet
    assert sweep_idempotency_keys(stores, now=time.time() + 24 * 3600 + 1) == 1
    assert stores.metadata.get_idempotency_key(project_id=project, key=key) is None
    again = client_a.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=key_header(key))
    assert again.id != first.id


@contextlib.contextmanager
def client_of_app_with(settings, stores, tenant, **overrides):
    """An SDK client of tenant `tenant` on an app built with settings changed by `overrides`."""
    changed = type(settings)(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, **overrides})
    with TestClient(create_app(changed, stores, sweep=False), base_url="http://testserver.local") as http:
        yield openai.OpenAI(base_url=BASE_URL, api_key=tenant.key, http_client=http, max_retries=0)


@pytest.fixture
def held_insert(stores, monkeypatch):
    """`insert_job` held until `release` is set (the first request's work, in progress); `entered` once it runs."""
    entered, release = threading.Event(), threading.Event()
    insert_job = stores.metadata.insert_job

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return insert_job(*args, **kwargs)

    monkeypatch.setattr(stores.metadata, "insert_job", held)
    return entered, release


def test_a_retry_waits_for_the_first_request_past_its_lease_renewed_meanwhile(
    settings, stores, tenants, training_file, held_insert
):
    entered, release = held_insert
    with (
        client_of_app_with(settings, stores, tenants["a"], idempotency_lease_s=1.0) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        headers = key_header(new_key())

        def create():
            return client.fine_tuning.jobs.with_raw_response.create(
                model=BASE, training_file=training_file.id, extra_headers=headers
            )

        first = pool.submit(create)
        assert entered.wait(30)
        retry = pool.submit(create)
        time.sleep(3.5)  # the first outlives its 1 s lease three times over: only its renewals keep the claim
        assert not retry.done()  # the retry is still waiting for the first
        release.set()
        assert retry.result().parse().id == first.result().parse().id
        assert retry.result().headers[REPLAYED_HEADER] == "true"
        assert len(client.fine_tuning.jobs.list().data) == 1


def test_a_retry_that_waited_its_limit_is_409_in_use_which_the_sdk_retries(
    settings, stores, tenants, training_file, held_insert
):
    entered, release = held_insert
    with (
        client_of_app_with(settings, stores, tenants["a"], idempotency_wait_s=0.0) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        headers = key_header(new_key())
        first = pool.submit(
            client.fine_tuning.jobs.create, model=BASE, training_file=training_file.id, extra_headers=headers
        )
        assert entered.wait(30)
        with pytest.raises(openai.ConflictError) as err:
            client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=headers)
        release.set()
        assert first.result().status == "validating_files"
    assert err.value.code == "idempotency_key_in_use"
    assert err.value.param == "Idempotency-Key"
    assert err.value.response.headers["x-should-retry"] == "true"
    validate_error(err.value.response.json())


# --- a request that died between committing its object and keeping its answer (the answer never left)

LAPSE_S = 0.5


class Answers:
    """Whether keeping an answer fails, as when the process dies right after its commit (the claim then lapses
    unanswered)."""

    def __init__(self, stores, monkeypatch):
        self.stores, self.monkeypatch = stores, monkeypatch
        self.complete = stores.metadata.complete_idempotency_key

    def lost(self):
        def lost(**_kwargs):
            raise RuntimeError("the process died before its answer was kept")

        self.monkeypatch.setattr(self.stores.metadata, "complete_idempotency_key", lost)

    def kept(self):
        self.monkeypatch.setattr(self.stores.metadata, "complete_idempotency_key", self.complete)


@pytest.fixture
def answers(stores, monkeypatch):
    return Answers(stores, monkeypatch)


def test_a_retry_after_the_first_died_past_its_commit_answers_with_the_job_it_committed(
    settings, stores, tenants, training_file, answers
):
    with client_of_app_with(settings, stores, tenants["a"], idempotency_lease_s=LAPSE_S) as client:
        headers = key_header(new_key())
        answers.lost()
        first = client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=headers)
        answers.kept()  # the restarted process keeps its answers
        time.sleep(LAPSE_S + 0.3)  # the dead request's claim lapses
        again = client.fine_tuning.jobs.with_raw_response.create(
            model=BASE, training_file=training_file.id, extra_headers=headers
        )
        assert again.headers[REPLAYED_HEADER] == "true"
        assert again.parse().id == first.id
        assert again.parse().status == "validating_files"
        assert [job.id for job in client.fine_tuning.jobs.list()] == [first.id]
        # The answer is kept now: a later retry gets it without looking the job up, another body is refused.
        assert client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=headers).id == (
            first.id
        )
        with pytest.raises(openai.ConflictError) as err:
            client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, seed=3, extra_headers=headers)
        assert err.value.code == "idempotency_key_reused"
        assert [job.id for job in client.fine_tuning.jobs.list()] == [first.id]


def test_another_request_with_the_key_of_one_that_died_past_its_commit_is_409(
    settings, stores, tenants, training_file, answers
):
    with client_of_app_with(settings, stores, tenants["a"], idempotency_lease_s=LAPSE_S) as client:
        headers = key_header(new_key())
        answers.lost()
        first = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=headers)
        answers.kept()
        time.sleep(LAPSE_S + 0.3)
        again = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune", extra_headers=headers)
        assert again.id == first.id
        with pytest.raises(openai.ConflictError) as err:
            client.files.create(file=("other.jsonl", TRAIN), purpose="fine-tune", extra_headers=headers)
        assert err.value.code == "idempotency_key_reused"
        assert [f.id for f in client.files.list()] == [first.id, training_file.id]


def test_upload_parts_and_completion_of_a_request_that_died_past_its_commit_are_not_repeated(
    settings, stores, tenants, answers
):
    with client_of_app_with(settings, stores, tenants["a"], idempotency_lease_s=LAPSE_S) as client:
        upload = client.uploads.create(
            bytes=len(TRAIN), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
        )
        part_keys, done_keys = key_header(new_key()), key_header(new_key())
        answers.lost()
        part = client.uploads.parts.create(upload.id, data=TRAIN, extra_headers=part_keys)
        time.sleep(LAPSE_S + 0.3)
        # Stored twice, the part would take the upload past its declared bytes (413). Keeping the answer found
        # fails again here: the retry is answered all the same.
        assert client.uploads.parts.create(upload.id, data=TRAIN, extra_headers=part_keys).id == part.id
        done = client.uploads.complete(upload.id, part_ids=[part.id], extra_headers=done_keys)
        answers.kept()
        time.sleep(LAPSE_S + 0.3)
        again = client.uploads.complete(upload.id, part_ids=[part.id], extra_headers=done_keys)
        assert (again.status, again.file.id) == ("completed", done.file.id)


def test_a_retry_after_the_first_died_before_its_commit_does_the_work(
    settings, stores, tenants, training_file, monkeypatch
):
    def died(*_args, **_kwargs):
        raise RuntimeError("killed before the commit")

    insert_job, release = stores.metadata.insert_job, stores.metadata.release_idempotency_key
    monkeypatch.setattr(stores.metadata, "insert_job", died)
    monkeypatch.setattr(stores.metadata, "release_idempotency_key", died)  # the claim stays, as a dead one's does
    with client_of_app_with(settings, stores, tenants["a"], idempotency_lease_s=LAPSE_S) as client:
        headers = key_header(new_key())
        with pytest.raises(openai.InternalServerError):
            client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id, extra_headers=headers)
        record = stores.metadata.get_idempotency_key(project_id=tenants["a"].project_id, key=headers["Idempotency-Key"])
        assert record is not None and record.resource is not None and not record.answered
        monkeypatch.setattr(stores.metadata, "insert_job", insert_job)
        monkeypatch.setattr(stores.metadata, "release_idempotency_key", release)
        time.sleep(LAPSE_S + 0.3)
        job = client.fine_tuning.jobs.with_raw_response.create(
            model=BASE, training_file=training_file.id, extra_headers=headers
        )
        assert REPLAYED_HEADER not in job.headers
        assert job.parse().id != record.resource
        assert [j.id for j in client.fine_tuning.jobs.list()] == [job.parse().id]
