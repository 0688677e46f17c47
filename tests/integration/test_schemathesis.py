"""schemathesis over the served /openapi.json, in-process: no server error, every error body in OpenAI's envelope."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from fixtures.app import Tenant, make_key
from hypothesis import HealthCheck, given, settings
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

if TYPE_CHECKING:
    from tunewright.storage.base import Stores

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENVELOPE_KEYS = {"message", "type", "param", "code"}
ADMIN_PREFIX = "/v1/organization/"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
BASE_MODEL = "smollm2-135m-instruct"
MAX_EXAMPLES = 25


@pytest.fixture
def backend() -> str:
    """Only the embedded backend: the run checks the API layer, which is the same over every store."""
    return "embedded"


@pytest.fixture
def admin_key(stores: Stores, tenants: dict[str, Tenant]) -> str:
    """An organization admin key of tenant `a`'s organization, so the admin routes are reached past their 403."""
    return make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin").secret_hash


@pytest.fixture
def seeded(app: Any, tenants: dict[str, Tenant], admin_key: str) -> dict[str, str]:
    """Real objects for the path parameters, so a second pass reaches the handlers behind the 404 of a random id.

    Tenant `a` owns the file, upload and job; the admin routes act on project `a2` (same organization), so deleting
    its key or archiving it never takes tenant `a`'s key away mid-run.
    """

    def call(method: str, path: str, key: str, **kwargs: Any) -> dict[str, Any]:
        # A client per call, closed before schemathesis starts its own lifespan of the app: a litestar TestClient
        # left open across it (the `http` fixture) leaks an anyio stream at teardown (ResourceWarning).
        with TestClient(app, base_url="http://testserver.local") as http:
            response = http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
            assert response.status_code == 200, response.text
            return response.json()

    a, a2 = tenants["a"], tenants["a2"]
    data = (ASSETS / "valid_chat.jsonl").read_bytes()
    file = call("POST", "/v1/files", a.key, files={"file": ("train.jsonl", data)}, data={"purpose": "fine-tune"})
    upload = call(
        "POST",
        "/v1/uploads",
        a.key,
        json={"bytes": len(data), "filename": "up.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"},
    )
    job = call("POST", "/v1/fine_tuning/jobs", a.key, json={"model": BASE_MODEL, "training_file": file["id"]})
    # `events?stream=true` of a job that never ends never closes: the seeded job is finished before fuzzing.
    call("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", a.key)
    account = call(
        "POST", f"/v1/organization/projects/{a2.project_id}/service_accounts", admin_key, json={"name": "fuzz"}
    )
    return {
        "file_id": file["id"],
        "upload_id": upload["id"],
        "fine_tuning_job_id": job["id"],
        "model": BASE_MODEL,
        "project_id": a2.project_id,
        "api_key_id": a2.key_id,
        "service_account_id": account["id"],
    }


def openai_error_envelope(ctx: Any, response: Any, case: Any) -> None:
    """Every non-2xx body is `{"error": {"message", "type", "param", "code"}}`, `code` a string or null (STYLE §4)."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} body has no `error` object: {body!r}"
    missing = ENVELOPE_KEYS - set(error)
    assert not missing, f"{response.status_code} error lacks {sorted(missing)}: {body!r}"
    assert isinstance(error["message"], str) and error["message"], f"`message` must be a non-empty string: {body!r}"
    assert isinstance(error["type"], str), f"`type` must be a string: {body!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"`param` must be a string or null: {body!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"`code` must be a string or null: {body!r}"


# Bounded and reproducible: the same examples on every run, no example database, no per-example deadline (the
# first call of a route warms caches; a loaded CI machine is slow). Negative generation filters a lot by design.
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# The multipart routes read their form by hand, so the served document has no `requestBody` for them; without one
# schemathesis only ever sends them an empty body. These are the forms the routes' descriptions name (OpenAI's
# spec); a body the served document does declare is used as it is.
MULTIPART_BODIES = {
    ("/v1/files", "post"): {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
        },
    },
    ("/v1/uploads/{upload_id}/parts", "post"): {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "format": "binary"}},
    },
}


def load_schema(app: Any) -> Any:
    """The served /openapi.json (through the ASGI app, no network), multipart bodies filled in, no security scheme."""
    served = schemathesis.openapi.from_asgi("/openapi.json", app)
    document = copy.deepcopy(served.raw_schema)
    for (path, method), form in MULTIPART_BODIES.items():
        operation = document["paths"][path][method]
        operation.setdefault("requestBody", {"required": True, "content": {"multipart/form-data": {"schema": form}}})
    # Every call sends a real key of the right kind (`fuzz`); left in, the document's Bearer scheme would have
    # schemathesis generate the Authorization header itself, and the run would probe only the 401.
    document.get("components", {}).pop("securitySchemes", None)
    for item in document["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app  # what `from_asgi` does: calls go to the ASGI app in-process
    return schema


def modes_for(operation: Any) -> tuple[GenerationMode, ...]:
    """Positive data always; negative data only where the operation has query parameters or a body to break.

    A path parameter is any string and an operation without parameters has nothing to break: asked for negative
    cases, hypothesis gives up with `Unsatisfiable` after ~460 filtered tries per operation.
    """
    if len(list(operation.query)) or len(list(operation.body)):
        return (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    return (GenerationMode.POSITIVE,)


# Not `schemathesis.pytest.from_fixture(...).parametrize()`: with pytest 9.2 its wrapper dies on
# `request.node._nodeid` (AttributeError; pytest renamed the attribute), so each operation is a hypothesis test
# built from `operation.as_strategy`, run as a pytest subtest.
def test_api_answers_without_server_errors_and_with_openai_error_bodies(
    app: Any, tenants: dict[str, Tenant], admin_key: str, seeded: dict[str, str], subtests: pytest.Subtests
) -> None:
    schema = load_schema(app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, [op.label for op in operations]

    statuses: dict[str, set[int]] = {}
    for operation in operations:
        key = admin_key if operation.path.startswith(ADMIN_PREFIX) else tenants["a"].key
        for mode in modes_for(operation):
            with subtests.test(operation=operation.label, mode=mode.value):
                fuzz(operation, mode, key, statuses.setdefault(operation.label, set()))
        names = {parameter.name for parameter in operation.path_parameters}
        if names and names <= set(seeded):
            with subtests.test(operation=operation.label, mode="seeded ids"):
                ids = {name: seeded[name] for name in names}
                fuzz(operation, GenerationMode.POSITIVE, key, statuses[operation.label], path_parameters=ids)

    # Every call carried a valid key of the right kind: a 401 or 403 would mean the run only probed the auth layer.
    # The one 403 by design: deleting a base model (the seeded `model`).
    refused = {label: seen & {401, 403} for label, seen in statuses.items() if seen & {401, 403}}
    assert refused in ({}, {"DELETE /v1/models/{model}": {403}}), refused


def fuzz(
    operation: Any, mode: GenerationMode, key: str, seen: set[int], path_parameters: dict[str, str] | None = None
) -> None:
    """Run MAX_EXAMPLES generated cases of one operation against the app; record the statuses in `seen`."""
    headers = {"Authorization": f"Bearer {key}"}

    @BOUNDED
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=[not_a_server_error, openai_error_envelope])
        seen.add(response.status_code)

    run()
