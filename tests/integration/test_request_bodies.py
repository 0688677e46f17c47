"""Request bodies every JSON route shares: how they are decoded and which are refused before any rule runs."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.app import OPERATOR_KEY
from fixtures.contract import validate_error

pytestmark = pytest.mark.integration

ADMIN_PREFIX = "/v1/organization/"


def json_routes(app: Any) -> list[str]:
    """Every route whose handler takes a JSON `data` body (multipart routes read the stream and take none)."""
    paths = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if "data" in handler.parsed_fn_signature.parameters and "POST" in handler.http_methods:
                paths.append(route.path_format.replace("{", "").replace("}", ""))
    return sorted(set(paths))


def route_headers(path: str, tenants: dict[str, Any]) -> dict[str, str]:
    """A key the route takes: the operator's on the admin routes, project `a`'s elsewhere."""
    key = OPERATOR_KEY if path.startswith(ADMIN_PREFIX) else tenants["a"].key
    return {"Authorization": f"Bearer {key}"}


def test_the_json_routes_are_the_ones_expected(app):
    assert len(json_routes(app)) >= 9  # uploads, jobs, permissions, chat, completions, admin projects


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'[{"a": ' * 50_000, b'{"a": ' * 100_000, b'{"model": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"],
    ids=["open-arrays", "open-mixed", "open-members", "closed-arrays"],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_deeply_nested_json_is_400_invalid_json_on_every_json_route(app, http, tenants, body):
    for path in json_routes(app):
        headers = {**route_headers(path, tenants), "content-type": "application/json"}
        response = http.post(path, headers=headers, content=body)
        assert response.status_code == 400, (path, response.text)
        validate_error(response.json())
        error = response.json()["error"]
        assert error["code"] == "invalid_json", path
        assert error["type"] == "invalid_request_error"
        assert error["param"] is None
        assert "body is nested too deeply" in error["message"]


def test_json_nested_just_within_the_decoder_is_never_a_server_error(app, http, tenants):
    for path in json_routes(app):
        headers = {**route_headers(path, tenants), "content-type": "application/json"}
        for depth in range(940, 1000, 3):  # around the interpreter's recursion limit, where decoding stops
            body = b'{"metadata": ' + b"[" * depth + b"]" * depth + b"}"
            response = http.post(path, headers=headers, content=body)
            assert response.status_code < 500, (path, depth, response.text)
            validate_error(response.json())


def test_deeply_nested_json_is_400_on_an_inference_node(settings, stores):
    from litestar.testing import TestClient

    from tunewright.api.node.routes import create_node

    with TestClient(create_node(settings, stores.blobs)) as node:
        for path in ("/v1/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = node.post(path, headers={"content-type": "application/json"}, content=b"[" * 100_000)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonl"],
)
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_a_json_route_refuses_other_content_types_with_415(app, http, tenants, content_type):
    for path in json_routes(app):
        headers = route_headers(path, tenants)
        if content_type is not None:
            headers["content-type"] = content_type
        response = http.post(path, headers=headers, content=b"{}")
        assert response.status_code == 415, (path, response.text)
        validate_error(response.json())
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "unsupported_media_type",
            None,
        )
        assert f"'{content_type.split(';')[0] if content_type else 'none'}'" in error["message"]
        assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
@pytest.mark.parametrize("backend", ["embedded"])  # refused before anything is stored: PostgreSQL + S3 add nothing
def test_a_json_route_reads_application_json_with_or_without_a_charset(app, http, tenants, content_type):
    for path in json_routes(app):
        headers = {**route_headers(path, tenants), "content-type": content_type}
        response = http.post(path, headers=headers, content=b"{}")
        assert response.status_code not in (415, 500), (path, response.text)
        validate_error(response.json())  # `{}` misses required fields, or names an unknown object


def test_multipart_routes_still_take_only_multipart(http, tenants, client_a):
    upload = client_a.uploads.create(bytes=3, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    headers = {"Authorization": f"Bearer {tenants['a'].key}", "content-type": "application/json"}
    for path in ("/v1/files", f"/v1/uploads/{upload.id}/parts"):
        response = http.post(path, headers=headers, content=b"{}")
        assert response.status_code == 415, (path, response.text)
        assert response.json()["error"]["code"] == "unsupported_media_type"


def multipart(*parts: tuple[list[bytes], bytes]) -> bytes:
    """A multipart/form-data body (boundary `B`) of parts given as (header lines, content)."""
    body = b"".join(
        b"--B\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + data + b"\r\n" for lines, data in parts
    )
    return body + b"--B--\r\n"


def file_part(field: str, filename: bytes, extra: tuple[bytes, ...] = ()) -> tuple[list[bytes], bytes]:
    """A file part of `field` named `filename`, after the `extra` header lines."""
    disposition = b'Content-Disposition: form-data; name="%s"; filename="%s"' % (field.encode(), filename)
    return [*extra, disposition], b'{"a": 1}\n'


HEADER_ABUSE = {
    "100 KB filename": lambda field: multipart(file_part(field, b"f" * 100_000)),
    "500 part headers": lambda field: multipart(
        file_part(field, b"a.jsonl", tuple(b"X-H%d: v" % i for i in range(500)))
    ),
    "100 KB header of a text part": lambda field: multipart(
        ([b'Content-Disposition: form-data; name="purpose"', b"X-Long: " + b"v" * 100_000], b"fine-tune"),
        file_part(field, b"a.jsonl"),
    ),
}


@pytest.mark.parametrize("shape", list(HEADER_ABUSE))
def test_multipart_part_headers_over_the_limits_are_400_naming_the_file_field(http, tenants, client_a, shape):
    upload = client_a.uploads.create(bytes=9, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    headers = {"Authorization": f"Bearer {tenants['a'].key}", "content-type": "multipart/form-data; boundary=B"}
    for path, field in (("/v1/files", "file"), (f"/v1/uploads/{upload.id}/parts", "data")):
        response = http.post(path, headers=headers, content=HEADER_ABUSE[shape](field))
        assert response.status_code == 400, (path, response.text)
        validate_error(response.json())
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_value", field)
        assert f"'{field}'" in error["message"]
        assert "over the limits" in error["message"]
    assert client_a.files.list().data == []  # nothing was stored
