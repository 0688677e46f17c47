"""HTTP limits on a live `tunewright serve`, read from the raw socket: what granian sends matters here."""

from __future__ import annotations

import json
import socket

import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DECLARED_BYTES = 2_000_000_000  # over every route's limit


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
