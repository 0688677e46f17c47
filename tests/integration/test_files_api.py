"""/v1/files through the real openai SDK, every body checked against OpenAI's schemas."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import openai
import pytest
from fixtures.contract import DEVIATION_NULL_EDGE_IDS, validate_error, validate_operation

from tunewright.storage.errors import NotFound

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def chat_lines(n: int = 12) -> bytes:
    rows = [
        f'{{"messages": [{{"role": "user", "content": "Q{i}"}}, {{"role": "assistant", "content": "A{i}"}}]}}'
        for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


def test_upload_retrieve_list_download_delete_round_trip(client_a, http, tenants):
    data = chat_lines()
    created = client_a.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(data)
    assert created.filename == "train.jsonl"
    assert created.purpose == "fine-tune"
    assert created.status == "processed"
    raw = http.get(f"/v1/files/{created.id}", headers={"Authorization": f"Bearer {tenants['a'].key}"})
    validate_operation(raw.json(), "retrieveFile")
    assert "expires_at" not in raw.json()

    assert client_a.files.retrieve(created.id).bytes == len(data)
    assert client_a.files.content(created.id).read() == data

    listed = http.get("/v1/files", headers={"Authorization": f"Bearer {tenants['a'].key}"}).json()
    validate_operation(listed, "listFiles")
    assert [f["id"] for f in listed["data"]] == [created.id]
    assert listed["first_id"] == listed["last_id"] == created.id

    deleted = client_a.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as err:
        client_a.files.retrieve(created.id)
    assert err.value.code == "file_not_found"


def test_bare_bytes_upload_is_named_upload_and_accepted(client_a):
    created = client_a.files.create(file=chat_lines(), purpose="fine-tune")
    assert created.filename == "upload"


def test_bom_and_crlf_are_tolerated(client_a):
    data = (ASSETS / "bom_crlf.jsonl").read_bytes()
    created = client_a.files.create(file=("bom.jsonl", data), purpose="fine-tune")
    assert client_a.files.content(created.id).read() == data


@pytest.mark.parametrize(
    ("asset", "needle"),
    [
        ("bad_json_line14.jsonl", "line 14: not valid JSON"),
        ("not_an_object.jsonl", "line 5: expected a JSON object"),
        ("non_utf8.jsonl", "not valid UTF-8"),
        ("empty.jsonl", "no JSON lines"),
    ],
)
def test_bad_fine_tune_file_is_refused_naming_the_line(client_a, http, tenants, asset, needle):
    data = (ASSETS / asset).read_bytes()
    with pytest.raises(openai.BadRequestError) as err:
        client_a.files.create(file=(asset, data), purpose="fine-tune")
    assert needle in err.value.message
    assert err.value.param == "file"
    assert err.value.code == "invalid_training_file"
    validate_error(err.value.response.json())
    assert client_a.files.list().data == []


def test_bad_json_is_accepted_for_a_purpose_without_line_rules(client_a):
    created = client_a.files.create(file=("notes.txt", b"not json at all"), purpose="user_data")
    assert created.purpose == "user_data"


def test_expires_after_sets_expires_at(client_a):
    created = client_a.files.create(
        file=("t.jsonl", chat_lines()),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600


def test_batch_files_expire_after_30_days_by_default(client_a):
    created = client_a.files.create(file=("b.jsonl", b'{"custom_id": "1"}\n'), purpose="batch")
    assert created.expires_at == created.created_at + 30 * 24 * 3600


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"purpose": "nonsense"}, "purpose"),
        ({"purpose": "fine-tune", "expires_after": {"anchor": "created_at", "seconds": 10}}, "expires_after.seconds"),
    ],
)
def test_bad_form_fields_are_400_naming_the_field(client_a, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.files.create(file=("t.jsonl", chat_lines()), **kwargs)
    assert err.value.param == param


def test_missing_file_part_is_400(http, tenants):
    response = http.post(
        "/v1/files",
        headers={"Authorization": f"Bearer {tenants['a'].key}"},
        files={"purpose": (None, "fine-tune")},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    validate_error(response.json())


def test_unknown_form_field_is_400(http, tenants):
    response = http.post(
        "/v1/files",
        headers={"Authorization": f"Bearer {tenants['a'].key}"},
        files={"purpose": (None, "fine-tune"), "colour": (None, "red"), "file": ("t.jsonl", chat_lines())},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_parameter"
    assert response.json()["error"]["param"] == "colour"


def test_wrong_content_type_is_415(http, tenants):
    response = http.post(
        "/v1/files", headers={"Authorization": f"Bearer {tenants['a'].key}"}, json={"purpose": "fine-tune"}
    )
    assert response.status_code == 415
    validate_error(response.json())
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_body_over_the_limit_is_413_and_stores_nothing(tmp_path, stores, sdk, tenants):
    from fixtures.app import make_settings
    from litestar.testing import TestClient

    from tunewright.api.app import create_app

    small = make_settings(tmp_path, max_file_bytes=1000)
    with TestClient(create_app(small, stores, sweep=False), base_url="http://testserver.local") as http:
        client = openai.OpenAI(
            base_url="http://testserver.local/v1", api_key=tenants["a"].key, http_client=http, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as err:
            client.files.create(file=("big.jsonl", chat_lines(200)), purpose="fine-tune")
        assert err.value.status_code == 413
        validate_error(err.value.response.json())
        assert client.files.list().data == []
    assert stores.blobs.delete_prefix(f"{tenants['a'].project_id}/files/") == 0  # nothing was stored


def test_another_tenants_file_is_404_and_never_listed(client_a, client_b):
    created = client_a.files.create(file=("t.jsonl", chat_lines()), purpose="fine-tune")
    for call in (client_b.files.retrieve, client_b.files.delete, client_b.files.content):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert client_b.files.list().data == []


def test_list_pages_with_after_limit_and_order(client_a, http, tenants):
    ids = [client_a.files.create(file=(f"{i}.jsonl", chat_lines()), purpose="fine-tune").id for i in range(5)]
    newest_first = [f.id for f in client_a.files.list(limit=2)]  # auto-paging over every page
    assert newest_first == ids[::-1]
    page = client_a.files.list(limit=2, order="asc")
    assert [f.id for f in page.data] == ids[:2]
    assert page.has_more is True
    last = http.get(
        "/v1/files", params={"after": ids[0], "order": "desc"}, headers={"Authorization": f"Bearer {tenants['a'].key}"}
    ).json()
    validate_operation(last, "listFiles", allow=(DEVIATION_NULL_EDGE_IDS,))
    assert last["data"] == []
    assert last["has_more"] is False
    assert client_a.files.list(purpose="batch").data == []


@pytest.mark.parametrize("limit", [0, 100000])
def test_out_of_range_limit_is_400(client_a, limit):
    with pytest.raises(openai.BadRequestError) as err:
        client_a.files.list(limit=limit)
    assert err.value.param == "limit"


def test_unknown_after_cursor_is_400(client_a, client_b):
    foreign = client_b.files.create(file=("t.jsonl", chat_lines()), purpose="fine-tune")
    for after in ("file-doesnotexist", foreign.id):
        with pytest.raises(openai.BadRequestError) as err:
            client_a.files.list(after=after)
        assert err.value.param == "after"


@pytest.mark.parametrize("file_id", ["..", "../../etc/passwd", "file-x%2F..%2F..", "a/b"])
def test_path_traversal_in_ids_finds_nothing(http, tenants, file_id):
    response = http.get(f"/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {tenants['a'].key}"})
    assert response.status_code == 404
    validate_error(response.json())


def test_download_header_survives_odd_filenames(client_a, http, tenants):
    created = client_a.files.create(file=('we"ird ü.jsonl', chat_lines()), purpose="fine-tune")
    response = http.get(f"/v1/files/{created.id}/content", headers={"Authorization": f"Bearer {tenants['a'].key}"})
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="we_ird _.jsonl"')
    assert "filename*=UTF-8''we%22ird%20%C3%BC.jsonl" in disposition
    assert response.headers["content-length"] == str(created.bytes)


def test_a_crash_between_blob_and_row_leaves_an_orphan_the_sweeper_removes(stores, tenants):
    from tunewright.api.files.service import guarded_put
    from tunewright.storage.sweeps import sweep_orphan_blobs

    key = f"{tenants['a'].project_id}/files/file-crashed"
    guarded_put(stores, key, iter([b"half of a file"]))  # the writer "dies" before committing its row
    assert sweep_orphan_blobs(stores, older_than_s=3600) == 0  # young: may be another replica's write
    assert sweep_orphan_blobs(stores, older_than_s=0, now=int(time.time()) + 1) == 1
    with pytest.raises(NotFound):
        stores.blobs.size(key)
    assert stores.metadata.stale_blobs(created_before=int(time.time()) + 10, limit=10) == []


@pytest.mark.parametrize("backend", [pytest.param("production", marks=[pytest.mark.postgres, pytest.mark.s3])])
def test_the_sweeper_aborts_multipart_uploads_left_open_by_a_crash(stores, settings, s3_admin):
    from tunewright.storage.sweeps import sweep_once, sweep_stale_multipart

    bucket, _, prefix = settings.blob_url.removeprefix("s3://").partition("/")
    s3_admin.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/proj/files/file-crashed")
    # Ages are measured from the server's `Initiated` (moto's is a fixed date in the past).
    started = s3_admin.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"].timestamp()
    assert sweep_stale_multipart(stores, older_than_s=3600, now=started + 60) == 0  # may be a write in flight
    assert sweep_stale_multipart(stores, older_than_s=3600, now=started + 7200) == 1
    key = f"{prefix}/proj/files/file-crashed-too"
    s3_admin.create_multipart_upload(Bucket=bucket, Key=key)
    started = s3_admin.list_multipart_uploads(Bucket=bucket)["Uploads"][0]["Initiated"].timestamp()
    sweep_once(stores, msgspec.structs.replace(settings, orphan_blob_age_s=3600))  # the periodic pass
    left = [u["Key"] for u in s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ([] if time.time() - started > 3600 else [key])


def test_a_published_file_is_never_swept(client_a, stores):
    from tunewright.storage.sweeps import sweep_orphan_blobs

    created = client_a.files.create(file=("t.jsonl", chat_lines()), purpose="fine-tune")
    assert sweep_orphan_blobs(stores, older_than_s=0, now=int(time.time()) + 1) == 0
    assert client_a.files.content(created.id).read() == chat_lines()


def test_a_form_that_fails_after_its_file_part_leaves_nothing(http, tenants, stores):
    response = http.post(
        "/v1/files",
        headers={"Authorization": f"Bearer {tenants['a'].key}"},
        files={"file": ("t.jsonl", chat_lines()), "colour": (None, "red")},
    )
    assert response.status_code == 400
    assert stores.blobs.delete_prefix(f"{tenants['a'].project_id}/files/") == 0
    assert stores.metadata.stale_blobs(created_before=int(time.time()) + 10, limit=10) == []
