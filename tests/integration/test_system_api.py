"""Cross-cutting behaviour: auth, error envelopes, request ids, health, metrics, OpenAPI, sweeping."""

from __future__ import annotations

import time

import openai
import pytest
from fixtures.app import OPERATOR_KEY, make_key
from fixtures.contract import validate_error

pytestmark = pytest.mark.integration


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def test_missing_and_wrong_keys_are_401_in_openais_envelope(http, sdk):
    for headers in ({}, auth("sk-proj-wrong"), {"Authorization": "Basic abc"}):
        response = http.get("/v1/files", headers=headers)
        assert response.status_code == 401
        validate_error(response.json())
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as err:
        sdk("sk-proj-wrong").models.list()
    assert err.value.code == "invalid_api_key"
    assert "sk-proj-wrong" not in err.value.message


def test_auth_is_checked_before_the_body(http):
    response = http.post("/v1/fine_tuning/jobs", headers=auth("sk-proj-wrong"), content=b"{not json")
    assert response.status_code == 401


def test_a_revoked_key_stops_working_at_once(client_a, stores, tenants):
    assert client_a.models.list().data
    stores.metadata.revoke_api_key(
        tenants["a"].key_id, organization_id=tenants["a"].organization_id, project_id=tenants["a"].project_id
    )
    with pytest.raises(openai.AuthenticationError):
        client_a.models.list()


def test_admin_keys_on_project_routes_are_403(http, stores, tenants):
    admin = make_key(stores, organization_id=tenants["a"].organization_id, project_id=None, kind="admin")
    for key in (admin.secret_hash, OPERATOR_KEY):
        response = http.get("/v1/files", headers=auth(key))
        assert response.status_code == 403
        validate_error(response.json())
        assert response.json()["error"]["type"] == "permission_error"
        assert response.json()["error"]["code"] == "insufficient_permissions"


def test_mismatched_organization_header_is_401(http, tenants):
    response = http.get("/v1/files", headers={**auth(tenants["a"].key), "OpenAI-Organization": "org-other"})
    assert response.status_code == 401
    validate_error(response.json())


def test_unknown_route_and_wrong_method_use_the_envelope(http, tenants):
    missing = http.get("/v1/nothing-here", headers=auth(tenants["a"].key))
    assert missing.status_code == 404
    validate_error(missing.json())
    assert missing.json()["error"]["code"] == "unknown_url"
    wrong = http.put("/v1/files", headers=auth(tenants["a"].key))
    assert wrong.status_code == 405
    validate_error(wrong.json())
    assert wrong.json()["error"]["code"] == "method_not_allowed"


UNKNOWN_PATHS = (
    "/nope",
    "/nope.json",
    "/openapi.yaml",
    "/v2/files",
    "/v1",
    "/v1/nope",
    "/v1/files/file-x/nope/deeper",
    "/v1/fine_tuning/jobs/ftjob-x/nope",
)


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD"])
def test_unknown_paths_in_and_outside_v1_are_404_in_the_envelope(http, tenants, method):
    for path in UNKNOWN_PATHS:
        for headers in ({}, auth(tenants["a"].key)):
            response = http.request(method, path, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == "application/json"
            if method != "HEAD":
                validate_error(response.json())
                assert response.json()["error"]["code"] == "unknown_url"
                assert response.json()["error"]["message"] == f"Invalid URL ({method} {path})"


def test_a_wrong_method_on_a_known_path_is_405_in_the_envelope(http, tenants):
    for method, path in (
        ("PUT", "/v1/files"),
        ("PATCH", "/v1/fine_tuning/jobs"),
        ("DELETE", "/healthz"),
        ("POST", "/metrics"),
        ("POST", "/openapi.json"),
    ):
        response = http.request(method, path, headers=auth(tenants["a"].key))
        assert response.status_code == 405, (method, path, response.text)
        validate_error(response.json())
        assert response.json()["error"]["code"] == "method_not_allowed"


def test_every_response_carries_a_request_id(http, tenants):
    for response in (
        http.get("/v1/files", headers=auth(tenants["a"].key)),
        http.get("/v1/files"),
        http.get("/v1/nothing"),
        http.get("/healthz"),
    ):
        assert response.headers["x-request-id"].startswith("req_")


def test_unexpected_failures_are_500_with_the_request_id(http, stores, tenants, monkeypatch, caplog):
    def explode(**_kwargs):
        raise RuntimeError("database exploded")

    monkeypatch.setattr(stores.metadata, "list_files", explode)
    response = http.get("/v1/files", headers=auth(tenants["a"].key))
    assert response.status_code == 500
    validate_error(response.json())
    body = response.json()["error"]
    assert body["type"] == "server_error"
    assert response.headers["x-request-id"] in body["message"]
    assert "exploded" not in body["message"]
    assert "database exploded" in caplog.text


def test_healthz_answers_ok_and_503_when_a_store_fails(http, stores, monkeypatch):
    assert http.get("/healthz").json() == {"status": "ok"}

    def down():
        from tunewright.storage.errors import Unavailable

        raise Unavailable("connection refused")

    monkeypatch.setattr(stores.blobs, "ping", down)
    response = http.get("/healthz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["blobs: connection refused"]


def test_healthz_and_metrics_report_the_trainers_that_serve_supervises(settings, stores, tmp_path):
    from litestar.testing import TestClient

    from tunewright.api.app import create_app
    from tunewright.storage.supervision import STALE_S, TrainerStatus, write_status

    path = tmp_path / "run" / "serve-1.json"
    app = create_app(settings, stores, sweep=False, trainer_status=path)
    with TestClient(app, base_url="http://testserver.local") as client:

        def health(running, restarts=0, age=0.0):
            write_status(
                path, TrainerStatus(expected=2, running=running, restarts=restarts, updated_at=time.time() - age)
            )
            response = client.get("/healthz")
            return response.status_code, response.json()

        assert health(2) == (200, {"status": "ok", "trainers": {"expected": 2, "running": 2, "restarts": 0}})
        # A dead trainer keeps the API in its load balancer: 200, degraded.
        assert health(1, restarts=3) == (
            200,
            {
                "status": "degraded",
                "problems": ["trainers: 1 of 2 running"],
                "trainers": {"expected": 2, "running": 1, "restarts": 3},
            },
        )
        metrics = client.get("/metrics").text
        assert "tunewright_trainer_restarts_total 3.0" in metrics
        assert "tunewright_trainer_expected_processes 2.0" in metrics
        assert "tunewright_trainer_running_processes 1.0" in metrics
        # A supervisor that stopped reporting vouches for no trainer.
        status, body = health(2, age=STALE_S + 5)
        assert (status, body["status"], body["trainers"]["running"]) == (200, "degraded", 0)
        assert body["problems"][0].startswith("trainers: no status from the supervisor for ")
        path.unlink()
        assert client.get("/healthz").json()["problems"] == ["trainers: no status from the supervisor"]


def test_metrics_count_requests_by_route_template_and_jobs_by_status(http, client_a, tenants):
    client_a.files.list()
    http.get("/v1/files/file-unknown", headers=auth(tenants["a"].key))
    text = http.get("/metrics").text
    assert 'tunewright_http_requests_total{method="GET",route="/v1/files",status="200"}' in text
    assert 'route="/v1/files/{file_id}",status="404"' in text
    assert "tunewright_http_request_duration_seconds_bucket" in text
    assert "tunewright_queue_depth_jobs" in text


def http_series(text):
    prefixes = ("tunewright_http_requests_total{", "tunewright_http_request_duration_seconds_count{")
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def test_made_up_methods_and_paths_add_no_metrics_series(http, tenants):
    http.get("/v1/nowhere-0")
    http.request("FOO0", "/v1/files")
    http.request("BAR0", "/made-up-0")
    before = http_series(http.get("/metrics").text)
    for i in range(1, 40):
        http.request(f"FOO{i}", "/v1/files", headers=auth(tenants["a"].key))
        http.request(f"BAR{i}", f"/made-up-{i}")
        http.get(f"/v1/nowhere-{i}/deeper-{i}")
        http.get(f"/x{i}")
    after = http_series(http.get("/metrics").text)
    assert len(after) == len(before) + 2, after  # the new series: the scrape of /metrics itself
    assert any('method="other",route="unmatched",status="405"' in line for line in after)
    assert any('method="other",route="unmatched",status="404"' in line for line in after)
    assert not any("FOO" in line or "BAR" in line or "made-up" in line or "nowhere" in line for line in after)


def test_openapi_document_lists_the_api(http):
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    for path in (
        "/v1/files",
        "/v1/uploads",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/estimate",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports",
        "/v1/fine_tuning/jobs/{fine_tuning_job_id}/exports/{export_id}",
        "/v1/models",
        "/v1/organization/projects/{project_id}/spend_limit",
        "/v1/organization/spend_alerts/{alert_id}",
        "/v1/organization/spend_limit",
    ):
        assert path in document["paths"]


def test_the_sweeper_removes_expired_files_but_not_those_in_use(client_a, stores, tenants):
    from pathlib import Path

    from tunewright.storage.sweeps import sweep_expired_files

    data = (Path(__file__).resolve().parent.parent / "assets" / "valid_chat.jsonl").read_bytes()
    expiring = client_a.files.create(
        file=("a.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    used = client_a.files.create(
        file=("b.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    client_a.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=used.id)
    assert sweep_expired_files(stores, now=int(time.time())) == 0
    assert sweep_expired_files(stores, now=int(time.time()) + 7200) == 1
    with pytest.raises(openai.NotFoundError):
        client_a.files.retrieve(expiring.id)
    assert client_a.files.retrieve(used.id).id == used.id
