"""infra/compose: `docker compose config` accepts the file with .env.example, and every Tunewright service's
command and environment are what the real CLI and settings accept, on one PostgreSQL, one bucket and one Redis.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.infra import INFRA, ROOT, check_container, find_tool, run_tool

from tunewright.clients.cli.supervise import TRAINER_STOP_S

COMPOSE = INFRA / "compose"
ENV_EXAMPLE = COMPOSE / ".env.example"
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose_command() -> list[str]:
    """`docker compose` where the plugin is installed, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None and run_tool([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    return [find_tool("docker-compose")]


def env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines of an env file (comments and blanks skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` in every string of `value`; `$$` is `$`."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, kind, argument = match.groups()
        if variables.get(name):
            return variables[name]
        if kind == "?":
            pytest.fail(f"{name} is required ({argument}) and .env.example does not set it")
        return argument or ""

    return VARIABLE.sub(substitute, value).replace("$$", "$")


def services() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return interpolate(config, env_file(ENV_EXAMPLE))["services"]


def ours(all_services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run our image."""
    return {name: service for name, service in all_services.items() if "build" in service}


def test_docker_compose_accepts_the_file_with_the_example_env() -> None:
    command = compose_command()
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]):
        args = [item for name in files for item in ("-f", str(COMPOSE / name))]
        result = run_tool([*command, *args, "--env-file", str(ENV_EXAMPLE), "config", "-q"], cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("# nothing\n")
    command = [*compose_command(), "-f", str(COMPOSE / "compose.yaml"), "--env-file", str(empty), "config", "-q"]
    result = run_tool(command, cwd=ROOT)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stdout + result.stderr


def test_every_tunewright_service_runs_a_real_command_on_the_shared_stores() -> None:
    found = ours(services())
    roles = {}
    stores = set()
    for name, service in found.items():
        parsed, settings = check_container(service["command"], service["environment"])
        roles[name] = parsed.command
        stores.add((settings.database_url, settings.blob_url, settings.s3_endpoint_url))
        if parsed.command == "serve":
            assert settings.trainers == 0, f"{name}: the API replicas train nowhere; the worker service does"
            assert settings.redis_url is not None, f"{name}: replicas share their rate-limit counters in Redis"
            assert service["healthcheck"]["test"]
    assert roles == {"migrate": "migrate", "api-1": "serve", "api-2": "serve", "worker": "worker"}
    assert len(stores) == 1, "every process must use the same database and bucket"
    ((database_url, blob_url, _endpoint),) = stores
    assert database_url.startswith("postgresql://") and blob_url.startswith("s3://")
    bucket = blob_url.removeprefix("s3://").split("/")[0]
    assert f"mc mb --ignore-existing local/{bucket}" in services()["minio-init"]["command"][0]


def test_the_worker_has_time_to_save_its_resume_point() -> None:
    worker = services()["worker"]
    minutes, seconds = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", worker["stop_grace_period"]).groups()
    assert int(minutes or 0) * 60 + int(seconds or 0) >= TRAINER_STOP_S


def test_startup_order_and_mounted_files() -> None:
    found = services()
    migrate_first = {"condition": "service_completed_successfully"}
    assert found["migrate"]["depends_on"]["minio-init"] == migrate_first
    assert found["api-1"]["depends_on"]["migrate"] == migrate_first
    assert found["worker"]["depends_on"]["migrate"] == migrate_first
    assert found["api-2"]["depends_on"]["api-1"] == {"condition": "service_healthy"}
    for name, service in found.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which does not exist"
