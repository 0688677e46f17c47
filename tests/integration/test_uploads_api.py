"""/v1/uploads through the real openai SDK, including `upload_file_chunked` unchanged."""

from __future__ import annotations

import hashlib

import openai
import pytest
from fixtures.contract import validate_error, validate_operation

pytestmark = pytest.mark.integration


def chat_lines(n: int) -> bytes:
    rows = [
        f'{{"messages": [{{"role": "user", "content": "Q{i}"}}, {{"role": "assistant", "content": "A{i}"}}]}}'
        for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


def test_upload_file_chunked_assembles_parts_in_order(client_a, tmp_path):
    data = chat_lines(300)
    path = tmp_path / "train.jsonl"
    path.write_bytes(data)
    upload = client_a.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=1000
    )
    assert upload.status == "completed"
    assert upload.file is not None
    assert upload.file.bytes == len(data)
    assert upload.file.filename == "train.jsonl"
    assert client_a.files.content(upload.file.id).read() == data


def test_parts_complete_with_explicit_order_and_md5(client_a, http, tenants):
    headers = {"Authorization": f"Bearer {tenants['a'].key}"}
    data = chat_lines(20)
    halves = [data[: len(data) // 2], data[len(data) // 2 :]]
    upload = client_a.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert upload.status == "pending"
    assert upload.expires_at == upload.created_at + 3600
    created_raw = http.get("/v1/files", headers=headers)  # nothing visible before completion
    assert created_raw.json()["data"] == []
    second = client_a.uploads.parts.create(upload.id, data=halves[1])
    first = client_a.uploads.parts.create(upload.id, data=halves[0])
    assert first.object == "upload.part"
    assert first.upload_id == upload.id
    raw = http.post(
        f"/v1/uploads/{upload.id}/complete",
        headers=headers,
        json={"part_ids": [first.id, second.id], "md5": hashlib.md5(data).hexdigest()},
    )
    assert raw.status_code == 200, raw.text
    validate_operation(raw.json(), "completeUpload")
    body = raw.json()
    assert body["status"] == "completed"
    assert client_a.files.content(body["file"]["id"]).read() == data


def test_wrong_md5_is_400_and_leaves_the_upload_pending(client_a):
    data = chat_lines(12)
    upload = client_a.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client_a.uploads.parts.create(upload.id, data=data)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.complete(upload.id, part_ids=[part.id], md5="0" * 32)
    assert err.value.param == "md5"
    assert client_a.files.list().data == []
    done = client_a.uploads.complete(upload.id, part_ids=[part.id])
    assert done.status == "completed"


def test_byte_count_mismatch_is_400(client_a):
    data = chat_lines(12)
    upload = client_a.uploads.create(
        bytes=len(data) + 10, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    part = client_a.uploads.parts.create(upload.id, data=data)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.complete(upload.id, part_ids=[part.id])
    assert err.value.param == "part_ids"


def test_a_part_beyond_the_declared_size_is_413_and_stores_nothing(client_a, stores, tenants):
    data = chat_lines(12)
    upload = client_a.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client_a.uploads.parts.create(upload.id, data=data[:-5])
    with pytest.raises(openai.APIStatusError) as err:
        client_a.uploads.parts.create(upload.id, data=data[-5:] + b"extra")
    assert err.value.status_code == 413
    assert len(stores.metadata.list_upload_parts(upload.id, project_id=tenants["a"].project_id)) == 1
    last = client_a.uploads.parts.create(upload.id, data=data[-5:])
    parts = stores.metadata.list_upload_parts(upload.id, project_id=tenants["a"].project_id)
    done = client_a.uploads.complete(upload.id, part_ids=[p.id for p in parts])
    assert last.id in [p.id for p in parts]
    assert client_a.files.content(done.file.id).read() == data


def test_parts_are_recorded_as_blob_intents_until_their_row_commits(client_a, stores, monkeypatch):
    import time

    recorded = []
    begin = stores.metadata.begin_blob
    monkeypatch.setattr(stores.metadata, "begin_blob", lambda key, *, now: (recorded.append(key), begin(key, now=now)))
    upload = client_a.uploads.create(bytes=5, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client_a.uploads.parts.create(upload.id, data=b"12345")
    assert [key.rsplit("/", 1)[-1] for key in recorded] == [part.id]
    assert stores.metadata.stale_blobs(created_before=int(time.time()) + 10, limit=10) == []


def test_bad_jsonl_is_refused_at_completion_naming_the_line(client_a):
    data = chat_lines(12) + b"{broken\n"
    upload = client_a.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    part = client_a.uploads.parts.create(upload.id, data=data)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.complete(upload.id, part_ids=[part.id])
    assert "line 13" in err.value.message
    validate_error(err.value.response.json())


def test_cancel_then_parts_and_complete_are_refused(client_a):
    upload = client_a.uploads.create(bytes=5, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    cancelled = client_a.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.parts.create(upload.id, data=b"12345")
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.complete(upload.id, part_ids=[])
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.cancel(upload.id)


def test_unknown_part_id_is_400_naming_its_index(client_a, client_b):
    data = chat_lines(12)
    upload = client_a.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    other = client_b.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    foreign = client_b.uploads.parts.create(other.id, data=data)
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.complete(upload.id, part_ids=[foreign.id])
    assert err.value.param == "part_ids[0]"


def test_another_tenants_upload_is_404(client_a, client_b):
    upload = client_a.uploads.create(bytes=5, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client_b.uploads.parts.create(upload.id, data=b"12345")
    with pytest.raises(openai.NotFoundError):
        client_b.uploads.cancel(upload.id)


def test_create_upload_rejects_unknown_fields_and_bad_purpose(client_a):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.create(bytes=5, filename="t", mime_type="x", purpose="fine-tune", extra_body={"colour": "red"})
    assert err.value.code == "unknown_parameter"
    assert err.value.param == "colour"
    with pytest.raises(openai.BadRequestError) as err:
        client_a.uploads.create(bytes=5, filename="t", mime_type="x", purpose="nonsense")
    assert err.value.param == "purpose"


def test_expired_uploads_are_swept_by_age(client_a, stores, tenants):
    from tunewright.storage.sweeps import sweep_expired_uploads

    upload = client_a.uploads.create(bytes=5, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client_a.uploads.parts.create(upload.id, data=b"12345")
    assert sweep_expired_uploads(stores, ttl_s=3600) == 0
    assert sweep_expired_uploads(stores, ttl_s=3600, now=upload.created_at + 3601) == 1
    record = stores.metadata.get_upload(upload.id, project_id=tenants["a"].project_id)
    assert record.status == "expired"
    assert stores.metadata.list_upload_parts(upload.id, project_id=tenants["a"].project_id) == []
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.parts.create(upload.id, data=b"12345")


def send_parts_at_once(client, stores, monkeypatch, upload_id, parts):
    """Send `parts` from one thread each, every part held before its first byte is stored until all arrive."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    arrived = threading.Barrier(len(parts))
    put = stores.blobs.put

    def slow_put(key, stream, **kwargs):
        arrived.wait(timeout=30)  # every part has passed the size check made when its request started
        return put(key, stream, **kwargs)

    monkeypatch.setattr(stores.blobs, "put", slow_put)

    def send(data):
        try:
            return client.uploads.parts.create(upload_id, data=data)
        except openai.APIStatusError as exc:
            return exc

    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(send, parts))
    monkeypatch.setattr(stores.blobs, "put", put)
    return results


def test_parts_sent_at_once_cannot_together_exceed_the_declared_bytes(client_a, stores, tenants, monkeypatch):
    upload = client_a.uploads.create(bytes=100, filename="t.bin", mime_type="text/plain", purpose="user_data")
    results = send_parts_at_once(client_a, stores, monkeypatch, upload.id, [bytes([65 + i]) * 40 for i in range(5)])
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert [r.status_code for r in refused] == [413] * 3
    assert {r.param for r in refused} == {"data"}
    parts = stores.metadata.list_upload_parts(upload.id, project_id=tenants["a"].project_id)
    assert sum(p.bytes for p in parts) == 80
    assert sorted(p.id for p in parts) == sorted(r.id for r in results if not isinstance(r, Exception))
    last = client_a.uploads.parts.create(upload.id, data=b"z" * 20)
    done = client_a.uploads.complete(upload.id, part_ids=[*(p.id for p in parts), last.id])
    assert done.file.bytes == 100


def test_parts_sent_at_once_that_fit_are_all_stored(client_a, stores, monkeypatch):
    data = [bytes([65 + i]) * 20 for i in range(5)]
    upload = client_a.uploads.create(bytes=100, filename="t.bin", mime_type="text/plain", purpose="user_data")
    parts = send_parts_at_once(client_a, stores, monkeypatch, upload.id, data)
    done = client_a.uploads.complete(upload.id, part_ids=[p.id for p in parts])
    assert client_a.files.content(done.file.id).read() == b"".join(data)
