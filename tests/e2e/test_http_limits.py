"""HTTP limits on a live `tunewright serve`, read from the raw socket: what granian sends matters here."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DECLARED_BYTES = 2_000_000_000  # over every route's limit
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def raw_exchange(url: str, request: bytes, timeout_s: float = 10) -> tuple[bytes, bool]:
    """Send `request` on a fresh connection; return what came back and whether the server closed the socket."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        return received, True


def exchange_while_sending(url: str, request: bytes, timeout_s: float = 20) -> tuple[bytes, bool]:
    """Send `request` from a thread while reading: the answer the server gave part way through the body, and
    whether it then closed the socket. The sender stops when the answer has come or the server stops reading."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        answered = threading.Event()

        def send() -> None:
            view = memoryview(request)
            with contextlib.suppress(OSError):  # the server closed the socket on the rest of the body
                for start in range(0, len(view), 65536):
                    if answered.is_set():
                        return
                    sock.sendall(view[start : start + 65536])

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                answered.set()
            return received, True
        except TimeoutError:
            return received, False
        finally:
            answered.set()
            sender.join()


def parse_response(raw: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Status, headers (lower-cased names, every value) and body of one HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split()[1]), headers, body


def test_an_early_413_says_connection_close_and_the_server_closes_the_socket(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.key, max_retries=0)
    upload = client.uploads.create(bytes=10, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    for path, content_type in (
        ("/v1/fine_tuning/jobs", "application/json"),
        ("/v1/files", "multipart/form-data; boundary=B"),
        (f"/v1/uploads/{upload.id}/parts", "multipart/form-data; boundary=B"),
    ):
        request = (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {live_server.key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {DECLARED_BYTES}\r\n\r\n"
        ).encode() + b"x" * 4096  # a little of the body, the rest never sent
        raw, closed = raw_exchange(live_server.url, request)
        status, headers, body = parse_response(raw)
        assert status == 413, (path, raw[:300])
        assert headers.get("connection") == ["close"], (path, headers)
        assert json.loads(body)["error"]["code"] == "payload_too_large"
        assert closed, path


def test_a_refusal_before_the_body_was_read_says_connection_close_and_the_server_closes_the_socket(live_server):
    head = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n"
    )
    # Refused at line 14 while the rest streams in (the check runs a few MB behind the socket); 100 MB declared.
    body = head + (ASSETS / "bad_json_line14.jsonl").read_bytes() + b"\n" * 30_000_000
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {live_server.key}\r\n"
        f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {100_000_000}\r\n\r\n"
    ).encode() + body
    raw, closed = exchange_while_sending(live_server.url, request)
    status, headers, answer = parse_response(raw)
    assert status == 400, raw[:300]
    assert "line 14" in json.loads(answer)["error"]["message"]
    assert headers.get("connection") == ["close"], headers
    assert closed


def test_an_answer_to_a_request_whose_body_was_read_keeps_the_connection(live_server):
    body = b'{"model": "gpt-4o-mini", "training_file": "file-nope"}'
    request = (
        f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {live_server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    raw, closed = raw_exchange(live_server.url, request, timeout_s=1)
    status, headers, _ = parse_response(raw)
    assert status in (400, 404), raw[:300]
    assert "connection" not in headers, headers
    assert not closed
