"""The client commands' plumbing that needs no server: flags, refused connections, progress reporting."""

from __future__ import annotations

import pytest
from fixtures.server import free_port

from tunewright.clients.cli import remote
from tunewright.clients.cli.files import ProgressReader
from tunewright.clients.cli.job_actions import pairs
from tunewright.clients.cli.main import main


@pytest.fixture
def no_server_env(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "TUNEWRIGHT_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_ORG_ID"):
        monkeypatch.delenv(name, raising=False)


def test_a_refused_connection_exits_1_in_one_line(no_server_env, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["files", "list", "--base-url", url, "--api-key", "sk-proj-x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tunewright: files list: cannot connect to {url}")
    assert err.count("\n") == 1


def test_missing_keys_exit_2_naming_where_a_key_comes_from(no_server_env, capsys):
    assert main(["models", "list"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["projects", "list"]) == 2
    assert "OPENAI_ADMIN_KEY" in capsys.readouterr().err
    assert main(["keys", "get", "key_x", "--project-id", "proj_x"]) == 2


def test_the_flag_wins_over_the_environment(no_server_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert remote.resolve_key(None, admin=False) == "from-openai"
    monkeypatch.setenv("TUNEWRIGHT_API_KEY", "from-tunewright")
    assert remote.resolve_key(None, admin=False) == "from-tunewright"
    assert remote.resolve_key("from-flag", admin=False) == "from-flag"
    assert remote.resolve_key(None, admin=True) is None
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "admin")
    assert remote.resolve_key(None, admin=True) == "admin"


def test_name_value_flags():
    assert pairs(["a=1", "b=x=y", "c="], "--metadata") == {"a": "1", "b": "x=y", "c": ""}
    assert pairs(["r=16", 'm=["q_proj"]', "s=all-linear"], "--hyperparameter", parse_json=True) == {
        "r": 16,
        "m": ["q_proj"],
        "s": "all-linear",
    }
    for bad in ("novalue", "=1"):
        with pytest.raises(remote.UsageError):
            pairs([bad], "--metadata")


def test_progress_reader_reports_each_position_and_a_seek_back(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10_000)
    seen = []
    with path.open("rb") as handle:
        reader = ProgressReader(handle, seen.append)
        assert reader.read(4096) == b"x" * 4096
        reader.seek(0)  # a retried request reads it again
        assert len(reader.read()) == 10_000
    assert seen == [4096, 10_000]


def test_the_progress_bar_draws_on_stderr_when_enabled(capsys):
    with remote.progress(100, "uploading f", enabled=True) as update:
        update(50)
        update(100)
    with remote.progress(100, "uploading f", enabled=False) as update:
        update(100)
    assert capsys.readouterr().out == ""
