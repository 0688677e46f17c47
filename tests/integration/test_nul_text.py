"""NUL (U+0000) in any text a request carries: never a 5xx, the same answer on both backends.

PostgreSQL cannot hold such text. An id in the path that holds NUL is answered as any unknown id of that route;
a query parameter, a JSON field (at any depth, keys included) or a form field holding NUL is a 400 naming it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from fixtures.app import make_key
from fixtures.contract import validate_error

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fixtures.app import Tenant
    from litestar.testing import TestClient

    from tunewright.storage.base import Stores

pytestmark = pytest.mark.integration

NUL_ID = "x\x00y"

SPEND_LIMIT_BODY = {"threshold_amount": 100, "currency": "USD", "interval": "month"}
GRADER = {
    "type": "multi",
    "name": "m",
    "graders": {
        "eq": {"type": "string_check", "name": "n", "input": "i", "reference": "{{item.label}}", "operation": "eq"}
    },
    "calculate_output": "eq",
}
ALERT_BODY = {**SPEND_LIMIT_BODY, "notification_channel": {"type": "email", "recipients": ["ops@example.com"]}}

# Every route with an id in its path: (method, path, body for the route's kind of request, admin route).
PATH_ID_ROUTES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("GET", "/v1/files/{file_id:str}", {}, False),
    ("DELETE", "/v1/files/{file_id:str}", {}, False),
    ("GET", "/v1/files/{file_id:str}/content", {}, False),
    ("POST", "/v1/uploads/{upload_id:str}/parts", {"files": {"data": ("blob", b"{}\n")}}, False),
    ("POST", "/v1/uploads/{upload_id:str}/cancel", {}, False),
    ("POST", "/v1/uploads/{upload_id:str}/complete", {"json": {"part_ids": []}}, False),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}", {}, False),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/events", {}, False),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/checkpoints", {}, False),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/cancel", {}, False),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/pause", {}, False),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/resume", {}, False),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/exports", {"json": {"format": "adapter"}}, False),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/exports", {}, False),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/exports/{export_id:str}", {}, False),
    ("GET", "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:str}/permissions", {}, True),
    (
        "POST",
        "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:str}/permissions",
        {"json": {"project_ids": ["proj_x"]}},
        True,
    ),
    (
        "DELETE",
        "/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:str}/permissions/{permission_id:str}",
        {},
        True,
    ),
    ("GET", "/v1/models/{model:str}", {}, False),
    ("DELETE", "/v1/models/{model:str}", {}, False),
    ("GET", "/v1/organization/projects/{project_id:str}", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}", {"json": {"name": "n"}}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/archive", {}, True),
    ("GET", "/v1/organization/projects/{project_id:str}/api_keys", {}, True),
    ("GET", "/v1/organization/projects/{project_id:str}/api_keys/{api_key_id:str}", {}, True),
    ("DELETE", "/v1/organization/projects/{project_id:str}/api_keys/{api_key_id:str}", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/api_keys/{api_key_id:str}", {"json": {"scopes": []}}, True),
    ("GET", "/v1/organization/admin_api_keys/{key_id:str}", {}, True),
    ("DELETE", "/v1/organization/admin_api_keys/{key_id:str}", {}, True),
    ("GET", "/v1/organization/projects/{project_id:str}/service_accounts", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/service_accounts", {"json": {"name": "n"}}, True),
    (
        "GET",
        "/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}",
        {},
        True,
    ),
    (
        "DELETE",
        "/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}",
        {},
        True,
    ),
    (
        "POST",
        "/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}",
        {"json": {"name": "n"}},
        True,
    ),
    (
        "POST",
        "/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}/api_keys",
        {"json": {"name": "n"}},
        True,
    ),
    ("GET", "/v1/organization/projects/{project_id:str}/rate_limits", {}, True),
    (
        "POST",
        "/v1/organization/projects/{project_id:str}/rate_limits/{rate_limit_id:str}",
        {"json": {"max_requests_per_1_minute": 10}},
        True,
    ),
    ("GET", "/v1/organization/projects/{project_id:str}/spend_limit", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/spend_limit", {"json": SPEND_LIMIT_BODY}, True),
    ("DELETE", "/v1/organization/projects/{project_id:str}/spend_limit", {}, True),
    ("GET", "/v1/organization/projects/{project_id:str}/spend_alerts", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/spend_alerts", {"json": ALERT_BODY}, True),
    ("GET", "/v1/organization/projects/{project_id:str}/spend_alerts/{alert_id:str}", {}, True),
    ("POST", "/v1/organization/projects/{project_id:str}/spend_alerts/{alert_id:str}", {"json": ALERT_BODY}, True),
    ("DELETE", "/v1/organization/projects/{project_id:str}/spend_alerts/{alert_id:str}", {}, True),
    ("GET", "/v1/organization/spend_alerts/{alert_id:str}", {}, True),
    ("POST", "/v1/organization/spend_alerts/{alert_id:str}", {"json": ALERT_BODY}, True),
    ("DELETE", "/v1/organization/spend_alerts/{alert_id:str}", {}, True),
    ("GET", "/v1/webhook_endpoints/{webhook_endpoint_id:str}", {}, False),
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id:str}", {"json": {"name": "n"}}, False),
    ("DELETE", "/v1/webhook_endpoints/{webhook_endpoint_id:str}", {}, False),
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id:str}/rotate_secret", {"json": {}}, False),
    (
        "POST",
        "/v1/webhook_endpoints/{webhook_endpoint_id:str}/test",
        {"json": {"event_type": "fine_tuning.job.succeeded"}},
        False,
    ),
    ("GET", "/v1/webhook_endpoints/{webhook_endpoint_id:str}/deliveries", {}, False),
]

# Every route with a JSON body, with a body whose every string (and key) the sweep poisons in turn.
JSON_BODIES: list[tuple[str, dict[str, Any], bool]] = [
    (
        "/v1/fine_tuning/jobs",
        {
            "model": "tiny-llama",
            "training_file": "file-x",
            "validation_file": "file-y",
            "suffix": "s",
            "seed": 1,
            "metadata": {"team": "ml"},
            "integrations": [{"type": "wandb", "wandb": {"project": "p", "tags": ["t"]}}],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
        },
        False,
    ),
    ("/v1/uploads", {"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}, False),
    ("/v1/uploads/{upload_id:str}/complete", {"part_ids": ["part_x"], "md5": "0" * 32}, False),
    ("/v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:str}/permissions", {"project_ids": ["p"]}, True),
    ("/v1/organization/projects", {"name": "p"}, True),
    ("/v1/organization/admin_api_keys", {"name": "p"}, True),
    ("/v1/organization/projects/{project_id:str}", {"name": "p"}, True),
    ("/v1/organization/projects/{project_id:str}/service_accounts", {"name": "p"}, True),
    ("/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}", {"name": "p"}, True),
    (
        "/v1/organization/projects/{project_id:str}/service_accounts/{service_account_id:str}/api_keys",
        {"name": "p", "scopes": ["api.all.read"]},
        True,
    ),
    ("/v1/organization/projects/{project_id:str}/api_keys/{api_key_id:str}", {"scopes": ["api.all.read"]}, True),
    (
        "/v1/organization/projects/{project_id:str}/rate_limits/{rate_limit_id:str}",
        {"max_requests_per_1_minute": 10},
        True,
    ),
    ("/v1/organization/projects/{project_id:str}/spend_limit", SPEND_LIMIT_BODY, True),
    ("/v1/organization/projects/{project_id:str}/spend_alerts", ALERT_BODY, True),
    ("/v1/organization/projects/{project_id:str}/spend_alerts/{alert_id:str}", ALERT_BODY, True),
    ("/v1/organization/spend_alerts", ALERT_BODY, True),
    ("/v1/organization/spend_alerts/{alert_id:str}", ALERT_BODY, True),
    ("/v1/organization/spend_limit", SPEND_LIMIT_BODY, True),
    ("/v1/fine_tuning/jobs/estimate", {"model": "tiny-llama", "training_file": "file-x", "suffix": "s"}, False),
    ("/v1/fine_tuning/alpha/graders/validate", {"grader": GRADER}, False),
    ("/v1/fine_tuning/alpha/graders/run", {"grader": GRADER, "model_sample": "s", "item": {"label": "l"}}, False),
    (
        "/v1/fine_tuning/jobs/{fine_tuning_job_id:str}/exports",
        {"format": "gguf", "checkpoint": "ft:tiny-llama:acme::x", "quantization": "q8_0"},
        False,
    ),
    (
        "/v1/webhook_endpoints",
        {"name": "n", "url": "https://example.com/hook", "event_types": ["fine_tuning.job.succeeded"]},
        False,
    ),
    (
        "/v1/webhook_endpoints/{webhook_endpoint_id:str}",
        {"name": "n", "url": "https://example.com/hook", "event_types": ["fine_tuning.job.succeeded"]},
        False,
    ),
    (
        "/v1/webhook_endpoints/{webhook_endpoint_id:str}/rotate_secret",
        {"keep_old_secret_active_for_24_hours": True},
        False,
    ),
    ("/v1/webhook_endpoints/{webhook_endpoint_id:str}/test", {"event_type": "fine_tuning.job.succeeded"}, False),
]


@pytest.fixture
def keys(stores: Stores, tenants: dict[str, Tenant]) -> dict[bool, str]:
    """The key to use: False → tenant a's project key, True → an admin key of its organization."""
    admin = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin")
    return {False: tenants["a"].key, True: admin.secret_hash}


def call(
    http: TestClient[Any], key: str, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    response = http.request(method, path, headers={"Authorization": f"Bearer {key}", **(headers or {})}, **kwargs)
    assert response.status_code < 500, (method, path, response.text)
    return response.status_code, response.json()


def fill(template: str, value: str) -> str:
    return re.sub(r"\{[a-z_]+:str\}", value.replace("\x00", "%00"), template)


def test_every_route_with_a_path_id_is_swept(app: Any) -> None:
    routed = {
        (method, route.path)
        for route in app.routes
        for handler in route.route_handlers
        for method in handler.http_methods
        if "{" in route.path and route.path.startswith("/v1/") and method != "OPTIONS"
    }
    assert routed == {(method, path) for method, path, _, _ in PATH_ID_ROUTES}


def test_an_id_holding_nul_in_the_path_is_answered_as_an_unknown_id(http, keys):
    for method, template, body, admin in PATH_ID_ROUTES:
        unknown = call(http, keys[admin], method, fill(template, "x-unknown"), **body)
        status, error = call(http, keys[admin], method, fill(template, NUL_ID), **body)
        validate_error(error)
        assert status == unknown[0] == 404, (method, template)
        assert (error["error"]["code"], error["error"]["param"]) == (
            unknown[1]["error"]["code"],
            unknown[1]["error"]["param"],
        ), (method, template)


def get_routes(app: Any) -> list[str]:
    return sorted(
        {
            fill(route.path, "x-unknown")
            for route in app.routes
            for handler in route.route_handlers
            if "GET" in handler.http_methods and route.path.startswith("/v1/")
        }
    )


def test_a_query_parameter_holding_nul_is_400_naming_it_on_every_route(app, http, keys) -> None:
    for path in get_routes(app):
        admin = path.startswith(("/v1/organization", "/v1/fine_tuning/checkpoints"))
        status, error = call(http, keys[admin], "GET", path, params={"after": f"{path}\x00"})
        assert (status, error["error"]["param"], error["error"]["code"]) == (400, "after", "invalid_value"), path
        validate_error(error)
        assert "NUL" in error["error"]["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"metadata[team]": "m\x00l"}, "metadata[team]"),
        ({"metadata[te\x00am]": "ml"}, "metadata"),
        ({"limit": "1\x00"}, "limit"),
    ],
)
def test_list_filters_holding_nul_are_400(http, keys, params, param) -> None:
    status, error = call(http, keys[False], "GET", "/v1/fine_tuning/jobs", params=params)
    assert (status, error["error"]["param"]) == (400, param)


def poisoned(value: Any, path: str = "") -> Iterator[tuple[Any, str]]:
    """Copies of `value` with NUL in one string or key each, and the param that names it."""
    if isinstance(value, str):
        yield value[:1] + "\x00" + value[1:], path
    elif isinstance(value, dict):
        for key, item in value.items():
            others = {k: v for k, v in value.items() if k != key}
            yield {**others, key + "\x00": item}, path or key + "\\u0000"
            for changed, where in poisoned(item, f"{path}.{key}" if path else key):
                yield {**others, key: changed}, where
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for changed, where in poisoned(item, f"{path}[{index}]"):
                yield [*value[:index], changed, *value[index + 1 :]], where


@pytest.mark.parametrize(("template", "body", "admin"), JSON_BODIES)
def test_a_json_string_or_key_holding_nul_is_400_naming_it(http, keys, template, body, admin) -> None:
    cases = list(poisoned(body))
    assert len(cases) >= len(body)
    for changed, param in cases:
        status, error = call(http, keys[admin], "POST", fill(template, "x-unknown"), json=changed)
        assert (status, error["error"]["param"], error["error"]["code"]) == (400, param, "invalid_value"), changed
        validate_error(error)


def test_every_route_with_a_json_body_is_swept(app) -> None:
    json_routes = {
        route.path
        for route in app.routes
        for handler in route.route_handlers
        if "POST" in handler.http_methods
        and "data" in handler.parsed_fn_signature.parameters
        and not handler.opt.get("allow_nul_in_body")
    }
    assert json_routes == {template for template, _, _ in JSON_BODIES}


def multipart(fields: dict[str, bytes], filename: bytes) -> bytes:
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields.items()
    ]
    parts.append(
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n\r\n'
    )
    return b"".join(parts) + b"--b--\r\n"


@pytest.mark.parametrize(
    ("fields", "filename", "param"),
    [
        ({"purpose": b"fine-tune"}, b"t\x00.jsonl", "file"),
        ({"purpose": b"fine-\x00tune"}, b"t.jsonl", "purpose"),
        ({"purpose": b"fine-tune", "expires_after[anchor]": b"created_at\x00"}, b"t.jsonl", "expires_after[anchor]"),
    ],
)
def test_a_form_field_or_filename_holding_nul_is_400_and_stores_nothing(http, keys, fields, filename, param):
    status, error = call(
        http,
        keys[False],
        "POST",
        "/v1/files",
        content=multipart(fields, filename),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert (status, error["error"]["param"]) == (400, param)
    assert call(http, keys[False], "GET", "/v1/files")[1]["data"] == []


def test_generation_text_may_hold_nul_and_a_model_name_holding_nul_is_unknown(http, keys) -> None:
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\x00b"}]}),
        ("/v1/completions", {"prompt": "a\x00b"}),
    ):
        status, error = call(http, keys[False], "POST", path, json={**body, "model": "tiny-\x00llama"})
        assert (status, error["error"]["code"]) == (404, "model_not_found")
