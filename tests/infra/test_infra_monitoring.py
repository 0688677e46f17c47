"""infra/prometheus and infra/grafana: promtool accepts the scrape config and the alert rules and passes their
unit tests; every metric the dashboard and the alerts query is one a live API or inference node exports.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest
import yaml
from fixtures.app import make_settings
from fixtures.infra import INFRA, find_tool, run_tool
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tunewright.api.app import create_app
from tunewright.api.node.routes import create_node
from tunewright.inference.local import LocalEngine
from tunewright.storage.registry import open_stores

if TYPE_CHECKING:
    from pathlib import Path

PROMETHEUS = INFRA / "prometheus"
GRAFANA = INFRA / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tunewright.json"
METRIC = re.compile(r"\btunewright_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
TOKEN = "node-token"


def exported_names(text: str) -> set[str]:
    """Every sample name a scrape can hold, from its families (labelled ones have no sample until first used)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def live_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What /metrics of a live API and of a live inference node export."""
    settings = make_settings(tmp_path_factory.mktemp("metrics"), inference_token=TOKEN)
    stores = open_stores(settings)
    try:
        stores.metadata.migrate()
        api = create_app(settings, stores, engine=LocalEngine(settings, stores.blobs), sweep=False)
        with TestClient(api) as client:
            response = client.get("/metrics")
            assert response.status_code == 200
            names = exported_names(response.text)
        node = create_node(settings, stores.blobs, LocalEngine(settings, stores.blobs))
        with TestClient(node) as client:
            response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200
            names |= exported_names(response.text)
    finally:
        stores.close()
    return names


def dashboard_queries() -> dict[str, str]:
    """Each target's PromQL by panel and target, with Grafana's `$__rate_interval` as Prometheus would get it."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {
        f"panel_{panel['id']}_{target['refId']}": target["expr"].replace("$__rate_interval", "5m")
        for panel in panels
        for target in panel.get("targets", [])
    }


def alert_queries() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_promtool_accepts_the_config_and_the_rules_pass_their_unit_tests() -> None:
    promtool = find_tool("promtool")
    for command in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        result = run_tool([promtool, *command], cwd=PROMETHEUS)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = find_tool("promtool")
    rules = [{"record": f"dashboard:{name}", "expr": expr} for name, expr in dashboard_queries().items()]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_and_the_alerts_query_only_exported_metrics(live_metric_names: set[str]) -> None:
    queried = {
        (where, name)
        for where, expr in {**dashboard_queries(), **alert_queries()}.items()
        for name in METRIC.findall(expr)
    }
    unknown = sorted((where, name) for where, name in queried if name not in live_metric_names)
    assert unknown == [], f"queried but not exported: {unknown}"
    assert len({name for _, name in queried}) >= 20  # the dashboard covers the API, jobs, inference, webhooks


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    uids = {target["datasource"]["uid"] for panel in panels for target in panel.get("targets", [])}
    assert uids == {source["uid"]}
