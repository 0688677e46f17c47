"""The fingerprint of an idempotent request: streamed, chunking-blind, and blind to a multipart boundary only."""

from __future__ import annotations

import hashlib
import random

import pytest

from tunewright.api.errors import InvalidRequestError
from tunewright.api.idempotency import RequestDigest, check_key


def scope(content_type: str = "application/json", path: str = "/v1/files", query: bytes = b"") -> dict:
    return {
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"content-type", content_type.encode())],
    }


def digest(body: bytes, chunks: list[int] | None = None, **request: str) -> str:
    taken = RequestDigest(scope(**request))
    at = 0
    for size in chunks or [len(body)]:
        taken.update(body[at : at + size])
        at += size
    taken.update(body[at:])
    return taken.hexdigest()


def form(boundary: str, content: bytes) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


def random_chunks(rng: random.Random, size: int) -> list[int]:
    sizes = []
    while sum(sizes) < size:
        sizes.append(rng.choice([0, 1, 2, 3, 5, 8, 31, 33, 64, 1000, 70000]))
    return sizes


def test_a_multipart_body_digests_alike_under_any_boundary_and_any_chunking():
    rng = random.Random(0)
    content = bytes(rng.randrange(256) for _ in range(200_000))
    expected = digest(form("a" * 32, content), content_type="multipart/form-data; boundary=" + "a" * 32)
    for trial in range(30):
        boundary = "".join(rng.choice("0123456789abcdef") for _ in range(rng.choice([1, 2, 16, 32, 70])))
        body = form(boundary, content)
        chunks = random_chunks(rng, len(body)) if trial else [1] * len(body)
        assert digest(body, chunks, content_type=f"multipart/form-data; boundary={boundary}") == expected


def test_only_whole_delimiters_are_left_out():
    boundary = "B"
    kind = "multipart/form-data; boundary=B"
    # The boundary's text inside the content, even after `--`, is content: only CRLF--B delimits.
    bodies = [form(boundary, b"xBy"), form(boundary, b"xy"), form(boundary, b"x--By"), form(boundary, b"x\r\ny")]
    digests = {digest(body, [3] * (len(body) // 3), content_type=kind) for body in bodies}
    assert len(digests) == len(bodies)


def test_a_plain_body_is_hashed_as_it_is_with_the_request_line():
    body = b'{"model": "m", "training_file": "file-1"}'
    request_line = b"POST /v1/fine_tuning/jobs?\n"
    assert digest(body, [1, 5, 7], path="/v1/fine_tuning/jobs") == hashlib.sha256(request_line + body).hexdigest()
    assert digest(body, path="/v1/fine_tuning/jobs") != digest(body, path="/v1/uploads")
    assert digest(body, path="/v1/uploads", query=b"x=1") != digest(body, path="/v1/uploads")
    assert digest(body) != digest(body + b" ")


@pytest.mark.parametrize("raw", [b"", b"k" * 256, b"caf\xc3\xa9", b"a\tb", b"a\x7fb"])
def test_a_key_is_1_to_255_printable_ascii_characters(raw):
    with pytest.raises(InvalidRequestError) as err:
        check_key(raw)
    assert err.value.param == "Idempotency-Key"


def test_a_key_of_255_printable_characters_is_kept_as_it_is():
    raw = bytes(range(0x20, 0x7F)) * 2 + b"x" * 65
    assert len(raw) == 255
    assert check_key(raw) == raw.decode()
