"""The `tunewright` command line, run in-process over a tmp data dir named by the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tunewright.api.auth import authenticate
from tunewright.api.errors import AuthenticationError
from tunewright.clients.cli import serve
from tunewright.clients.cli.main import main
from tunewright.storage.api_keys import hash_secret
from tunewright.storage.audit import AuditLogFilter
from tunewright.storage.base import Stores
from tunewright.storage.registry import open_stores
from tunewright.storage.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Iterator


class Result(msgspec.Struct):
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.rstrip("\n").splitlines()[-1]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data dir as the only Tunewright setting in the environment."""
    for name in list(os.environ):
        if name.startswith("TUNEWRIGHT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TUNEWRIGHT_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def cli(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Result:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def stores(data_dir: Path) -> Iterator[Stores]:
    """The stores the CLI writes to (connections open lazily; the CLI itself migrates)."""
    opened = open_stores(load_settings(os.environ))
    yield opened
    opened.close()


def test_keys_create_prints_the_secret_last_and_stores_only_its_hash(cli: Any, data_dir: Path, stores: Stores) -> None:
    result = cli("keys", "create", "--org", "Acme Corp", "--project", "research", "--name", "ci")
    assert result.code == 0, result.err
    secret = result.last_line
    assert secret.startswith("sk-proj-")
    record = stores.metadata.find_api_key(hash_secret(secret))
    assert record is not None
    assert (record.kind, record.name, record.secret_hash) == ("project", "ci", hash_secret(secret))
    organization = stores.metadata.get_organization(record.organization_id)
    assert (organization.name, organization.slug) == ("Acme Corp", "acme-corp")
    assert stores.metadata.get_project(record.project_id, organization_id=organization.id).name == "research"
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_keys_create_reuses_the_organization_and_project(cli: Any, stores: Stores) -> None:
    first = cli("keys", "create", "--org", "acme", "--project", "p")
    second = cli("keys", "create", "--org", "ACME", "--project", "p")
    one = stores.metadata.find_api_key(hash_secret(first.last_line))
    two = stores.metadata.find_api_key(hash_secret(second.last_line))
    assert one is not None and two is not None
    assert (one.organization_id, one.project_id) == (two.organization_id, two.project_id)
    assert one.id != two.id


def test_keys_create_admin_makes_an_organization_admin_key(cli: Any, stores: Stores) -> None:
    result = cli("keys", "create", "--org", "acme", "--admin")
    assert result.code == 0, result.err
    secret = result.last_line
    assert secret.startswith("sk-admin-")
    record = stores.metadata.find_api_key(hash_secret(secret))
    assert record is not None
    assert (record.kind, record.project_id) == ("admin", None)
    principal = authenticate(secret, stores, operator_key=None, organization_header=None)
    assert principal.is_admin
    assert principal.organization_id == record.organization_id


def test_keys_create_without_project_or_admin_is_a_usage_error(cli: Any) -> None:
    result = cli("keys", "create", "--org", "acme")
    assert result.code == 2
    assert "--project" in result.err


def test_keys_create_refuses_an_organization_without_slug_characters(cli: Any) -> None:
    result = cli("keys", "create", "--org", "!!!", "--project", "p")
    assert result.code == 2
    assert result.err.startswith("tunewright: ")


def test_keys_list_shows_keys_but_never_their_secrets(cli: Any, stores: Stores) -> None:
    project = cli("keys", "create", "--org", "acme", "--project", "p", "--name", "alpha").last_line
    admin = cli("keys", "create", "--org", "globex", "--admin", "--name", "boss").last_line
    result = cli("keys", "list")
    assert result.code == 0, result.err
    assert project not in result.out
    assert admin not in result.out
    header = result.out.splitlines()[0].split()
    assert header[:6] == ["ID", "KIND", "ORG", "PROJECT", "NAME", "KEY"]
    for secret in (project, admin):
        record = stores.metadata.find_api_key(hash_secret(secret))
        assert record is not None
        row = next(line for line in result.out.splitlines() if line.startswith(record.id))
        assert record.redacted_value in row
        assert record.name in row


def test_keys_list_on_an_empty_database_says_so(cli: Any) -> None:
    result = cli("keys", "list")
    assert result.code == 0
    assert "no API keys" in result.out


def test_keys_revoke_stops_the_key_at_once(cli: Any, stores: Stores) -> None:
    secret = cli("keys", "create", "--org", "acme", "--project", "p").last_line
    record = stores.metadata.find_api_key(hash_secret(secret))
    assert record is not None
    authenticate(secret, stores, operator_key=None, organization_header=None)
    result = cli("keys", "revoke", record.id)
    assert result.code == 0, result.err
    assert record.id in result.out
    with pytest.raises(AuthenticationError):
        authenticate(secret, stores, operator_key=None, organization_header=None)
    assert record.id not in cli("keys", "list").out


def test_what_keys_create_and_revoke_change_is_audited_as_the_operator(cli: Any, stores: Stores) -> None:
    secret = cli("keys", "create", "--org", "acme", "--project", "p").last_line
    record = stores.metadata.find_api_key(hash_secret(secret))
    assert record is not None
    assert cli("keys", "revoke", record.id).code == 0
    page = stores.metadata.list_audit_logs(
        organization_id=record.organization_id, filters=AuditLogFilter(), after=None, before=None, limit=10
    )
    assert [(e.type, e.resource_id) for e in page.items] == [
        ("api_key.deleted", record.id),
        ("api_key.created", record.id),
        ("project.created", record.project_id),
    ]
    assert {(e.actor_kind, e.actor_key_id) for e in page.items} == {("operator", "operator")}


def test_keys_revoke_of_an_unknown_id_fails(cli: Any) -> None:
    result = cli("keys", "revoke", "key_doesnotexist")
    assert result.code == 1
    assert "key_doesnotexist" in result.err
    assert result.out == ""


def test_keys_revoke_twice_fails_the_second_time(cli: Any, stores: Stores) -> None:
    secret = cli("keys", "create", "--org", "acme", "--project", "p").last_line
    record = stores.metadata.find_api_key(hash_secret(secret))
    assert record is not None
    assert cli("keys", "revoke", record.id).code == 0
    assert cli("keys", "revoke", record.id).code == 1


def test_migrate_is_idempotent(cli: Any, data_dir: Path) -> None:
    first = cli("migrate")
    assert first.code == 0, first.err
    assert first.out.startswith("applied ")
    assert data_dir.is_dir()
    second = cli("migrate")
    assert second.code == 0
    assert second.out.strip() == "database is up to date"


def test_bad_setting_exits_2_with_one_line(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEWRIGHT_PORT", "eighty")
    result = cli("migrate")
    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tunewright: TUNEWRIGHT_PORT:")


def test_config_flag_is_read_and_its_errors_exit_2(cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "tw.toml"
    config.write_text("unknown_thing = 1\n", encoding="utf-8")
    result = cli("--config", str(config), "migrate")
    assert result.code == 2
    assert result.err.strip() == "tunewright: unknown setting 'unknown_thing' in the config file"
    config.write_text(f"data_dir = '{tmp_path / 'from-toml'}'\n", encoding="utf-8")
    assert cli("--config", str(config), "migrate").code == 0  # the env's data dir still wins
    assert not (tmp_path / "from-toml").exists()


def test_serve_first_start_creates_the_default_tenant_once(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(os.environ)
    created = serve.prepare(settings)
    assert created is not None
    assert (created.organization.slug, created.project and created.project.name) == ("default", "default")
    serve.print_first_start(created)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == created.secret
    assert "First start: created organization 'default', project 'default'." in out[-2]
    assert serve.prepare(settings) is None
    opened = open_stores(settings)
    try:
        principal = authenticate(created.secret, opened, operator_key=None, organization_header=None)
        assert principal.project_id == created.project.id
    finally:
        opened.close()


def test_serve_makes_no_default_tenant_when_keys_exist(cli: Any) -> None:
    assert cli("keys", "create", "--org", "acme", "--project", "p").code == 0
    assert serve.prepare(load_settings(os.environ)) is None


def test_serve_sweeps_stale_blob_temp_files(data_dir: Path) -> None:
    settings = load_settings(os.environ)
    serve.prepare(settings)
    stale = settings.data_path / "blobs" / "p" / ".x.tmp-0123456789abcdef"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    serve.prepare(settings)
    assert not stale.exists()


def test_serve_refuses_a_bad_log_level_before_starting(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEWRIGHT_LOG_LEVEL", "loud")
    result = cli("serve")
    assert result.code == 2
    assert result.err.startswith("tunewright: TUNEWRIGHT_LOG_LEVEL:")


def test_serve_refuses_zero_workers(cli: Any) -> None:
    result = cli("serve", "--workers", "0")
    assert result.code == 2


def test_models_make_tiny_calls_the_builder(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, int]] = []

    def fake_make_tiny(directory: Path, *, seed: int = 0) -> Path:
        calls.append((directory, seed))
        return directory

    monkeypatch.setattr("tunewright.modeling.tiny.make_tiny", fake_make_tiny)
    result = cli("models", "make-tiny", str(tmp_path / "tiny"), "--seed", "7")
    assert result.code == 0, result.err
    assert calls == [(tmp_path / "tiny", 7)]
    assert str(tmp_path / "tiny") in result.out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "migrate", "keys", "models", "usage", "files", "jobs", "chat", "projects", "import"):
        assert command in out


def test_serve_help_explains_trainers_in_its_own_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "start_trainers" not in out, "a function name is no help to a user"
    assert "`tunewright worker` subprocess" in out
    assert "$TUNEWRIGHT_TRAINERS" in out


def test_keys_create_refuses_an_archived_project_and_bad_flags(cli: Any, stores: Stores) -> None:
    assert cli("keys", "create", "--org", "acme", "--project", "p").code == 0
    organization = stores.metadata.find_organization(slug="acme")
    assert organization is not None
    project = stores.metadata.find_project(organization_id=organization.id, name="p")
    assert project is not None
    stores.metadata.update_project(project.id, organization_id=organization.id, status="archived", archived_at=1)
    archived = cli("keys", "create", "--org", "acme", "--project", "p")
    assert archived.code == 1
    assert archived.err.strip() == "tunewright: keys create: project 'p' is archived"
    assert "sk-" not in archived.out
    for flags in (("--project", "q", "--admin"), ("--project", "   "), ("--project", "q", "--name", " ")):
        assert cli("keys", "create", "--org", "acme", *flags).code == 2
    assert stores.metadata.find_project(organization_id=organization.id, name="q") is None  # nothing created


USAGE_PRICES = """
[prices."tiny"]
input = 0.10
output = 0.40
training = 3.0
[prices.storage]
gb_month = 0.3
"""
JAN_1 = 1_735_689_600  # 2025-01-01T00:00:00Z


def seed_usage(stores: Stores, project_id: str, key_id: str) -> None:
    """Inference, training and storage usage of one project on 2025-01-01."""
    from tunewright.storage.ids import new_id
    from tunewright.storage.records import FileRecord, TrainingUsageRecord, UsageRecord
    from tunewright.storage.rows import to_params

    metadata = stores.metadata
    for prompt, completion in ((600, 200), (400, 300)):
        metadata.insert_usage(
            UsageRecord(
                id=new_id("usage"),
                project_id=project_id,
                api_key_id=key_id,
                model="ft:tiny:acme:x:abcdefgh",
                base_model="tiny",
                endpoint="chat.completions",
                streamed=False,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=1,
                created_at=JAN_1 + 36_000,
            )
        )
    step = TrainingUsageRecord(
        job_id=f"ftjob-{project_id}",
        step=1,
        project_id=project_id,
        model="tiny",
        base_model="tiny",
        trained_tokens=2000,
        created_at=JAN_1 + 39_600,
    )
    with metadata.database.transaction() as conn:
        conn.run("insert_training_usage", to_params(step))
    metadata.insert_file(
        FileRecord(
            id=new_id("file"),
            project_id=project_id,
            bytes=2**30,
            created_at=JAN_1,
            filename="f",
            purpose="fine-tune",
            blob_key="k",
            sha256="0" * 64,
        )
    )
    metadata.snapshot_storage(now=JAN_1 + 43_200)


def test_usage_prints_each_projects_usage_and_cost_for_the_period(cli: Any, stores: Stores, tmp_path: Path) -> None:
    assert cli("keys", "create", "--org", "acme", "--project", "research").code == 0
    assert cli("keys", "create", "--org", "globex", "--project", "ops").code == 0
    projects = {
        stores.metadata.get_project(key.project_id, organization_id=None).name: key
        for key in stores.metadata.list_all_api_keys()
    }
    seed_usage(stores, projects["research"].project_id, projects["research"].id)
    seed_usage(stores, projects["ops"].project_id, projects["ops"].id)
    config = tmp_path / "prices.toml"
    config.write_text(USAGE_PRICES)

    result = cli("--config", str(config), "usage", "--start", "2025-01-01", "--end", "2025-01-02", "--org", "acme")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert (
        lines[0]
        == "Usage from 2025-01-01 00:00:00 to 2025-01-02 00:00:00 (UTC), costs in USD from the configured prices"
    )
    assert lines[1].split() == [
        "ORG",
        "PROJECT",
        "PROJECT",
        "ID",
        "REQUESTS",
        "INPUT",
        "TOKENS",
        "OUTPUT",
        "TOKENS",
        "TRAINED",
        "TOKENS",
        "GiB-HOURS",
        "COST",
        "(USD)",
    ]
    # 1000 x 0.10 + 500 x 0.40 + 2000 x 3.00 per million tokens, and 1 GiB for a day at 0.30 a GiB-month.
    assert lines[2].split() == [
        "acme",
        "research",
        projects["research"].project_id,
        "2",
        "1000",
        "500",
        "2000",
        "24.000",
        "0.016300",
    ]
    assert lines[3].split() == ["TOTAL", "2", "1000", "500", "2000", "24.000", "0.016300"]
    everyone = cli("--config", str(config), "usage", "--start", str(JAN_1), "--end", "2025-01-02T00:00:00Z")
    assert [line.split()[0] for line in everyone.out.splitlines()[2:]] == ["acme", "globex", "TOTAL"]
    assert everyone.out.splitlines()[-1].split()[-1] == "0.032600"


def test_usage_of_an_empty_period_and_bad_periods(cli: Any) -> None:
    result = cli("usage", "--start", "2020-01-01", "--end", "2020-02-01")
    assert result.code == 0
    assert result.out.splitlines()[-1] == "no usage in this period"
    assert cli("usage", "--start", "2020-02-01", "--end", "2020-01-01").code == 2
    bad = cli("usage", "--start", "yesterday")
    assert bad.code == 2
    assert bad.err.startswith("tunewright: usage: ")
    assert cli("usage", "--org", "nobody").code == 1
