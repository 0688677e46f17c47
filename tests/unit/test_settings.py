"""Settings: env over TOML over defaults, one line naming a bad setting, base model parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunewright.storage.settings import DEFAULT_BASE_MODELS, Price, Settings, SettingsError, load_settings


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tunewright.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_serve_the_embedded_mode(tmp_path: Path) -> None:
    settings = load_settings({"TUNEWRIGHT_DATA_DIR": str(tmp_path / "data")})
    data = (tmp_path / "data").resolve()
    assert settings.database_url == f"sqlite:///{data / 'tunewright.db'}"
    assert settings.blob_url == f"file://{data / 'blobs'}"
    assert settings.base_models == DEFAULT_BASE_MODELS
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_path == data


def test_default_data_dir_is_dot_tunewright() -> None:
    assert load_settings({}).data_dir == "./.tunewright"


def test_env_wins_over_toml_which_wins_over_defaults(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = 9000\nlease_s = 120\nhost = '0.0.0.0'\n")
    settings = load_settings({"TUNEWRIGHT_PORT": "9100"}, config)
    assert settings.port == 9100  # env over TOML
    assert settings.lease_s == 120  # TOML over default
    assert settings.host == "0.0.0.0"
    assert settings.heartbeat_s == Settings().heartbeat_s  # default


def test_command_line_overrides_win_over_env(tmp_path: Path) -> None:
    settings = load_settings({"TUNEWRIGHT_PORT": "9100"}, None, port=9200, host=None)
    assert settings.port == 9200
    assert settings.host == "127.0.0.1"  # a None override is "not given"


def test_config_path_comes_from_tunewright_config_env(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_running_jobs_per_project = 5\n")
    assert load_settings({"TUNEWRIGHT_CONFIG": config}).max_running_jobs_per_project == 5


def test_env_strings_are_converted_to_field_types() -> None:
    settings = load_settings({"TUNEWRIGHT_TORCH_THREADS": "4", "TUNEWRIGHT_S3_ENDPOINT_URL": "http://x:9000"})
    assert settings.torch_threads == 4
    assert settings.s3_endpoint_url == "http://x:9000"


def test_webhook_settings_refuse_private_targets_unless_told() -> None:
    assert load_settings({}).webhook_allow_private is False
    settings = load_settings({"TUNEWRIGHT_WEBHOOK_ALLOW_PRIVATE": "true", "TUNEWRIGHT_WEBHOOK_RETRY_BASE_S": "0.01"})
    assert (settings.webhook_allow_private, settings.webhook_retry_base_s) == (True, 0.01)
    assert load_settings({}).webhook_retry_window_s == 24 * 3600


def test_unrelated_tunewright_variables_are_ignored() -> None:
    env = {"TUNEWRIGHT_TEST_DATABASE_URL": "postgresql://x/y", "TUNEWRIGHT_API_KEY": "sk-x"}
    assert load_settings(env).database_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TUNEWRIGHT_PORT": "eighty"}, "TUNEWRIGHT_PORT"),
        ({"TUNEWRIGHT_PORT": "70000"}, "TUNEWRIGHT_PORT"),
        ({"TUNEWRIGHT_LEASE_S": "0"}, "TUNEWRIGHT_LEASE_S"),
        ({"TUNEWRIGHT_S3_PART_SIZE": "1024"}, "TUNEWRIGHT_S3_PART_SIZE"),
        ({"TUNEWRIGHT_DATABASE_URL": "mysql://db/x"}, "TUNEWRIGHT_DATABASE_URL"),
        ({"TUNEWRIGHT_BLOB_URL": "/var/blobs"}, "TUNEWRIGHT_BLOB_URL"),
        ({"TUNEWRIGHT_HEARTBEAT_S": "60", "TUNEWRIGHT_LEASE_S": "60"}, "TUNEWRIGHT_HEARTBEAT_S"),
        ({"TUNEWRIGHT_BASE_MODELS": "tiny"}, "TUNEWRIGHT_BASE_MODELS"),
        ({"TUNEWRIGHT_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "TUNEWRIGHT_WEBHOOK_ALLOW_PRIVATE"),
        ({"TUNEWRIGHT_WEBHOOK_TIMEOUT_S": "0"}, "TUNEWRIGHT_WEBHOOK_TIMEOUT_S"),
        ({"TUNEWRIGHT_REDIS_URL": "127.0.0.1:6379"}, "TUNEWRIGHT_REDIS_URL"),
        ({"TUNEWRIGHT_RATE_LIMIT_REQUESTS_PER_MINUTE": "0"}, "TUNEWRIGHT_RATE_LIMIT_REQUESTS_PER_MINUTE"),
        ({"TUNEWRIGHT_REDIS_TIMEOUT_S": "0"}, "TUNEWRIGHT_REDIS_TIMEOUT_S"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(named + ":")
    assert "\n" not in message


def test_bad_toml_value_names_the_env_variable(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_file_bytes = -1\n")
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_MAX_FILE_BYTES:"):
        load_settings({}, config)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = 8000\nbogus_knob = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'bogus_knob'"):
        load_settings({}, config)


def test_missing_config_file_names_tunewright_config(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_CONFIG: no such file"):
        load_settings({}, str(tmp_path / "absent.toml"))


def test_malformed_toml_names_tunewright_config(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = = 1\n")
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_CONFIG:"):
        load_settings({}, config)


def test_base_models_env_is_parsed_as_id_equals_source() -> None:
    env = {"TUNEWRIGHT_BASE_MODELS": " tiny = /models/tiny , qwen=Qwen/Qwen2.5-0.5B-Instruct,, "}
    assert load_settings(env).base_models == {
        **DEFAULT_BASE_MODELS,
        "tiny": "/models/tiny",
        "qwen": "Qwen/Qwen2.5-0.5B-Instruct",
    }


def test_base_models_add_to_the_built_ins_and_may_redefine_them() -> None:
    env = {"TUNEWRIGHT_BASE_MODELS": "smollm2-135m-instruct=/models/smol"}
    assert load_settings(env).base_models == {"smollm2-135m-instruct": "/models/smol"}


def test_base_models_in_toml_as_string_or_table(tmp_path: Path) -> None:
    as_string = write_toml(tmp_path, 'base_models = "a=/m/a,b=org/b"\n')
    assert load_settings({}, as_string).base_models == {**DEFAULT_BASE_MODELS, "a": "/m/a", "b": "org/b"}
    as_table = write_toml(tmp_path, '[base_models]\na = "/m/a"\n')
    assert load_settings({}, as_table).base_models == {**DEFAULT_BASE_MODELS, "a": "/m/a"}


@pytest.mark.parametrize("entry", ["=/path", "tiny=", "tiny"])
def test_base_models_entry_without_id_or_source_is_refused(entry: str) -> None:
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_BASE_MODELS: expected id=path-or-repo"):
        load_settings({"TUNEWRIGHT_BASE_MODELS": entry})


def test_production_urls_are_accepted() -> None:
    settings = load_settings(
        {
            "TUNEWRIGHT_DATABASE_URL": "postgresql://tw:secret@db:5432/tunewright",
            "TUNEWRIGHT_BLOB_URL": "s3://bucket/prefix",
            "TUNEWRIGHT_S3_ENDPOINT_URL": "http://minio:9000",
        }
    )
    assert settings.database_url.startswith("postgresql://")
    assert settings.blob_url == "s3://bucket/prefix"


PRICES = """
[prices."tiny-llama"]
input = 0.10
output = 0.40
training = 3
[prices.default]
input = 0.05
[prices.storage]
gb_month = 0.02
"""


def test_prices_come_from_toml_tables_with_a_default_and_a_storage_price(tmp_path: Path) -> None:
    settings = load_settings({}, write_toml(tmp_path, PRICES))
    tiny = settings.model_price("tiny-llama")
    assert (tiny.input, tiny.output, tiny.training) == (0.10, 0.40, 3.0)
    other = settings.model_price("smollm2-135m-instruct")
    assert (other.input, other.output, other.training) == (0.05, 0.0, 0.0)
    assert settings.storage_price == 0.02


def test_without_prices_everything_is_free() -> None:
    settings = load_settings({})
    assert settings.model_price("tiny-llama") == Price()
    assert settings.storage_price == 0.0


def test_prices_cannot_come_from_the_environment() -> None:
    with pytest.raises(SettingsError, match=r"^TUNEWRIGHT_PRICES: prices are read from the TOML config only"):
        load_settings({"TUNEWRIGHT_PRICES": "tiny=1"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[prices."tiny"]\ninput = -1\n', r'^\[prices\."tiny"\]\.input in the config file: Expected `float` >= 0'),
        ('[prices."tiny"]\ninputs = 1\n', r'^\[prices\."tiny"\] in the config file: .*unknown field `inputs`'),
        ('[prices."tiny"]\ninput = "cheap"\n', r'^\[prices\."tiny"\]\.input in the config file: Expected `float`'),
        ("prices = 3\n", r"^prices in the config file: expected tables"),
        ("[prices.storage]\ninput = 1\n", r"the storage price is `gb_month` only"),
        ("[prices.default]\ngb_month = 1\n", r"`gb_month` belongs in \[prices.storage\]"),
        ('[prices."ft:tiny:acme::abc"]\ninput = 1\n', r"fine-tuned models are billed at their base model's prices"),
    ],
)
def test_a_bad_price_is_one_line_naming_its_table(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({}, write_toml(tmp_path, toml))


def test_rate_limit_settings_from_env() -> None:
    settings = load_settings(
        {
            "TUNEWRIGHT_RATE_LIMITS": "false",
            "TUNEWRIGHT_REDIS_URL": "redis://127.0.0.1:6379/3",
            "TUNEWRIGHT_RATE_LIMIT_TOKENS_PER_MINUTE": "5000",
            "TUNEWRIGHT_KEY_REQUESTS_PER_MINUTE": "0",
        }
    )
    assert settings.rate_limits is False
    assert settings.redis_url == "redis://127.0.0.1:6379/3"
    assert (settings.rate_limit_tokens_per_minute, settings.key_requests_per_minute) == (5000, 0)
    assert load_settings({"TUNEWRIGHT_REDIS_URL": ""}).redis_url is None


def test_the_estimates_default_throughput_is_a_setting(tmp_path: Path) -> None:
    assert Settings().estimate_tokens_per_s == 1000.0
    config = write_toml(tmp_path, "estimate_tokens_per_s = 2500\n")
    assert load_settings({}, config).estimate_tokens_per_s == 2500.0
    assert load_settings({"TUNEWRIGHT_ESTIMATE_TOKENS_PER_S": "12.5"}, config).estimate_tokens_per_s == 12.5
    with pytest.raises(SettingsError, match="TUNEWRIGHT_ESTIMATE_TOKENS_PER_S"):
        load_settings({"TUNEWRIGHT_ESTIMATE_TOKENS_PER_S": "0"})
