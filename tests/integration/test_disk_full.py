"""A full disk: new data is refused with 507 `insufficient_storage`, and deletes and bookkeeping keep working.

The data dir (or the blob store alone) lives on a small tmpfs that the tests fill through the API.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fixtures.app import make_settings
from fixtures.contract import validate_error
from fixtures.disk import MiB, free_bytes

pytestmark = pytest.mark.integration

WATERMARK = 3 * MiB
CHAT_LINES = b"".join(
    b'{"messages": [{"role": "user", "content": "Q%d"}, {"role": "assistant", "content": "A%d"}]}\n' % (i, i)
    for i in range(12)
)


@pytest.fixture
def settings(request: pytest.FixtureRequest, small_tmpfs: Any, tmp_path: Any) -> Any:
    """Settings with the whole data dir on a 12 MiB tmpfs (`data`), or only the blob store (`blobs`)."""
    layout, min_free_bytes = request.param
    disk = small_tmpfs(12)
    if layout == "data":
        return make_settings(tmp_path, data_dir=str(disk / "data"), min_free_bytes=min_free_bytes)
    return make_settings(tmp_path, blob_url=f"file://{disk / 'blobs'}", min_free_bytes=min_free_bytes)


def expect_507(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        call()
    response = err.value.response
    assert response.status_code == 507, response.text
    validate_error(response.json())
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert response.json()["error"]["type"] == "server_error"
    assert response.headers["x-should-retry"] == "false"
    return err.value


def upload(client: openai.OpenAI, size: int) -> Any:
    return client.files.create(file=("blob.bin", io.BytesIO(b"x" * size)), purpose="user_data")


@pytest.mark.parametrize("settings", [("data", WATERMARK)], indirect=True)
def test_under_the_watermark_new_data_is_507_while_deletes_and_bookkeeping_work(client_a, settings):
    disk = settings.data_path
    training = client_a.files.create(file=("t.jsonl", CHAT_LINES), purpose="fine-tune")
    pending = client_a.uploads.create(bytes=MiB, filename="p.bin", mime_type="text/plain", purpose="user_data")
    part = client_a.uploads.parts.create(pending.id, data=b"p" * MiB)
    stored = []
    for _ in range(12):  # 12 MiB cannot hold 12 more MiB: the watermark stops the loop
        try:
            stored.append(upload(client_a, MiB))
        except openai.APIStatusError:
            break
    assert 2 <= len(stored) < 12
    expect_507(lambda: upload(client_a, MiB))
    assert free_bytes(disk) >= WATERMARK - MiB  # what was kept for the rest (at most a chunk past the mark)

    expect_507(lambda: client_a.uploads.complete(pending.id, part_ids=[part.id]))  # a second copy of 1 MiB
    # Metadata writes go on (and deletes, below)…
    other = client_a.uploads.create(bytes=MiB, filename="o.bin", mime_type="text/plain", purpose="user_data")
    expect_507(lambda: client_a.uploads.parts.create(other.id, data=b"q" * MiB))
    assert client_a.uploads.cancel(other.id).status == "cancelled"
    job = client_a.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id)
    assert client_a.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # …and so does job bookkeeping
    before = free_bytes(disk)
    for file in stored:  # at least 2 MiB: room for the 1 MiB file and the 1 MiB completion below
        assert client_a.files.delete(file.id).deleted
    assert free_bytes(disk) > before + MiB  # 2 MiB or more, less what the database wrote meanwhile
    # …and with the space back, new data is taken again.
    assert upload(client_a, MiB).bytes == MiB
    done = client_a.uploads.complete(pending.id, part_ids=[part.id])
    assert done.status == "completed"
    assert client_a.files.content(done.file.id).read() == b"p" * MiB


@pytest.mark.parametrize("settings", [("blobs", 0)], indirect=True)
def test_a_disk_that_fills_during_a_write_is_507_and_keeps_no_partial_blob(client_a, settings, stores):
    root = Path(settings.blob_url.removeprefix("file://"))
    empty = free_bytes(root)
    expect_507(lambda: upload(client_a, 16 * MiB))  # no watermark: the write itself runs out of room
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert leftovers == []
    assert free_bytes(root) == empty
    assert stores.metadata.stale_blobs(created_before=int(time.time()) + 10, limit=10) == []
    assert client_a.files.list().data == []
    assert upload(client_a, MiB).bytes == MiB
