"""``RemoteEngine``: the API's client of OpenAI-protocol inference servers (``TUNEWRIGHT_INFERENCE_URLS``).

The servers are ``tunewright inference`` nodes or vLLM (``--enable-lora``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``,
``--served-model-name`` set to our base model's name): both speak OpenAI's protocol with vLLM's additions, and
this one client drives either. The API keeps everything that needs the tenants' data: it authenticates, resolves
the model, renders the prompt with the base model's tokenizer (loaded here from the local model directory; the
weights are never loaded in the API) and meters usage. A server is asked for:

- ``GET /v1/models``: which base models it serves and their ``max_model_len`` (asked once per server).
- ``POST /v1/load_lora_adapter`` ``{lora_name, lora_path, base_model_name}`` before the first request for an
  adapter on that server. ``lora_path`` is a directory under ``TUNEWRIGHT_INFERENCE_ADAPTER_DIR`` when that is
  set (the API copies the adapter there from the blob store; the servers must see that directory at the same
  path, a shared volume: what vLLM needs), else ``blob://<prefix>`` (a ``tunewright inference`` node fetches it
  from the blob store it shares with the API). "Already loaded" counts as loaded.
- ``POST /v1/completions`` with the prompt's token ids, ``stream: true``, ``logprobs`` (0 when the caller asked
  for none) and ``return_tokens_as_token_ids``: each chunk names the token ids it covers, so usage counts and
  logprobs are exact and rendered here as the local engine renders them. A server that answers 404 for an
  adapter it was told to load (it restarted) is told again, once.
- ``POST /v1/unload_lora_adapter`` on every server when a model is deleted.

Routing: a fine-tuned model goes to the server that last served its adapter (it is in its memory); one no
server has served yet goes to the server its name hashes to among those serving its base, so every API replica
sends it to the same place; base-model requests go round-robin. A server that refuses the connection is skipped;
when none can be reached the request fails with ``engine_unavailable`` (503).

Connections: each server has a ``FairPool`` of at most ``TUNEWRIGHT_INFERENCE_CONNECTIONS_PER_SERVER`` threads,
each streaming one request at a time; requests beyond that wait in the pool's queue, and a free connection goes
to the waiting project with the fewest requests streaming on that server. Each request names its project as
OpenAI's ``user``, by which a node shares its batch places among projects the same way (vLLM ignores it).

Cancellation: when ``cancelled`` is set (the API's client went away) the event iterator stops at the next chunk
and closes the HTTP response; the server sees the disconnect and frees the request's rows.

The message shapes and the completion body are in ``inference/remote_wire.py``; the reading of one streamed
answer into events in ``inference/remote_stream.py``.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from tunewright.inference.adapters import fetch_adapter, folder_name
from tunewright.inference.engine import EngineError
from tunewright.inference.fair import FairPool
from tunewright.inference.models import context_length_of
from tunewright.inference.remote_stream import CompletionEvents
from tunewright.inference.remote_wire import ModelList, completion_body, model_not_found, server_error, unavailable
from tunewright.modeling.loading import load_tokenizer
from tunewright.modeling.registry import ModelUnavailableError, UnknownModelError, resolve_model_dir
from tunewright.storage.settings import SettingsError

if TYPE_CHECKING:
    from tunewright.inference.engine import AdapterRef, EventSink, GenerationRequest, ModelTarget
    from tunewright.storage.base import BlobStore
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=30.0)
"""Reads wait long: a server's first request for a base model may load it before the first token."""
SPARE_CONNECTIONS = 16
"""Connections beyond the generations' for model lists and adapter unloads, asked from the API's threads."""


# ---------------------------------------------------------------------------------------- engine


@dataclass
class Server:
    """What the engine knows of one server: the base models it serves (once asked) and the adapters it holds."""

    url: str
    bases: dict[str, int | None] | None = None
    loaded: set[str] = field(default_factory=set)


@dataclass(eq=False)
class Job:
    """A submitted request, waiting for a connection to ``servers[0]`` or streaming from it."""

    request: GenerationRequest
    sink: EventSink
    cancelled: threading.Event
    body: bytes
    servers: list[Server]
    """Where it may run, best first; a server that cannot be reached hands it to the next."""


class RemoteEngine:
    """Generates on OpenAI-protocol servers with dynamic LoRA loading (``InferenceEngine``)."""

    def __init__(
        self, settings: Settings, blobs: BlobStore | None = None, *, client: httpx.Client | None = None
    ) -> None:
        """Remember the servers; nothing is contacted until a request needs it.

        Args:
            settings: ``inference_urls``, ``inference_token``, ``inference_adapter_dir``, the base models.
            blobs: The blob store adapters are copied from into ``inference_adapter_dir`` (needed only then).
            client: The HTTP client (default: a pooled one owned and closed by the engine).

        Raises:
            SettingsError: ``inference_urls`` is empty, or ``inference_adapter_dir`` is set without a blob store.
        """
        if not settings.inference_urls:
            raise SettingsError("TUNEWRIGHT_INFERENCE_URLS: the remote engine needs at least one node URL")
        if settings.inference_adapter_dir and blobs is None:
            raise SettingsError("TUNEWRIGHT_INFERENCE_ADAPTER_DIR: the remote engine needs the blob store to fill it")
        self.settings = settings
        self.blobs = blobs
        self.adapter_dir = Path(settings.inference_adapter_dir) if settings.inference_adapter_dir else None
        self.urls = [url.rstrip("/") for url in settings.inference_urls]
        token = settings.inference_token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        per_server = settings.inference_connections_per_server
        limits = httpx.Limits(max_connections=per_server * len(self.urls) + SPARE_CONNECTIONS)
        self._client = client if client is not None else httpx.Client(timeout=TIMEOUT, limits=limits)
        self._lock = threading.Lock()
        self._servers = {url: Server(url) for url in self.urls}
        self._pools = {
            url: FairPool(self._run, key=project_of, workers=per_server, name=f"inference-{k}")
            for k, url in enumerate(self.urls)
        }
        self._tokenizers: dict[str, Any] = {}
        self._context: dict[str, int] = {}
        self._affinity: dict[str, str] = {}
        self._copy_locks: dict[str, threading.Lock] = {}
        self._turn = itertools.count()

    # ------------------------------------------------------------------------------------ protocol

    def tokenizer(self, base_model: str) -> Any:
        """Return the base model's tokenizer, loaded from its local directory (the weights are not loaded).

        Raises:
            EngineError: ``model_not_found`` (404) when the base model is not configured or not on this machine.
        """
        with self._lock:
            cached = self._tokenizers.get(base_model)
        if cached is not None:
            return cached
        try:
            tokenizer = load_tokenizer(resolve_model_dir(base_model, self.settings))
        except (UnknownModelError, ModelUnavailableError) as exc:
            raise model_not_found(base_model) from exc
        with self._lock:
            return self._tokenizers.setdefault(base_model, tokenizer)

    def context_length(self, base_model: str) -> int:
        """Return the base model's context length: its config's, or less where a server reports a lower limit.

        Raises:
            EngineError: ``model_not_found`` when no reachable server serves it, ``engine_unavailable`` when
                none could be asked.
        """
        tokenizer = self.tokenizer(base_model)
        with self._lock:
            length = self._context.get(base_model)
        if length is None:
            from transformers import AutoConfig

            directory = resolve_model_dir(base_model, self.settings)
            length = context_length_of(AutoConfig.from_pretrained(directory, local_files_only=True), tokenizer)
            with self._lock:
                self._context[base_model] = length
        limits = [server.bases[base_model] for server in self._serving(base_model)]  # type: ignore[index]
        return min([length, *(limit for limit in limits if limit)])

    def submit(self, request: GenerationRequest, sink: EventSink, *, cancelled: threading.Event) -> None:
        """Queue the request on its server's pool; that pool's thread streams its events into ``sink``.

        Raises:
            EngineError: ``model_not_found`` when no server serves the base model, ``engine_unavailable`` when
                none can be asked. The server's own errors (and ``adapter_unavailable``) reach the sink.
        """
        body = msgspec.json.encode(completion_body(request))
        self._queue(Job(request, sink, cancelled, body, self._candidates(request.target)))

    def forget(self, adapter_name: str) -> None:
        """Tell every server to unload the adapter and drop the API's copy of it.

        A server that cannot be told is only logged: the API no longer routes the deleted model anywhere.
        """
        with self._lock:
            self._affinity.pop(adapter_name, None)
            for server in self._servers.values():
                server.loaded.discard(adapter_name)
        body = msgspec.json.encode({"lora_name": adapter_name})
        for url in self.urls:
            try:
                response = self._client.post(url + "/v1/unload_lora_adapter", content=body, headers=self._json())
            except httpx.HTTPError as exc:
                logger.warning("could not tell inference server %s to unload %s: %s", url, adapter_name, exc)
                continue
            if response.status_code not in (200, 400, 404):  # 400/404: it did not hold the adapter
                logger.warning(
                    "inference server %s answered %d to unloading %s", url, response.status_code, adapter_name
                )
        if self.adapter_dir is not None:
            shutil.rmtree(self.adapter_dir / folder_name(adapter_name), ignore_errors=True)

    def close(self) -> None:
        """Fail the requests still waiting for a connection, then close the HTTP connections."""
        for pool in self._pools.values():
            for job in pool.close():
                job.sink.put(closed())
                job.sink.put(None)
        self._client.close()

    # ---------------------------------------------------------------------------------- connections

    def _queue(self, job: Job) -> None:
        """Wait for a connection to the job's first server (its project's requests taken in turn).

        Raises:
            EngineError: ``engine_closed`` once the engine is closed.
        """
        try:
            self._pools[job.servers[0].url].put(job)
        except RuntimeError:
            raise closed() from None

    def _run(self, job: Job) -> None:
        """Stream one job into its sink and end it there, unless it went to another server (on a pool thread)."""
        if self._stream(job):
            job.sink.put(None)

    def _stream(self, job: Job) -> bool:
        """Send the job and hand its events to the sink; return False if another server took it over."""
        try:
            if job.cancelled.is_set():
                return True
            events = self._open(job)
            if events is None:
                return False
            for event in events:
                job.sink.put(event)
        except EngineError as exc:
            job.sink.put(exc)
        except Exception:  # a bug must end this request, not the pool's thread with the request hanging
            logger.exception("generation on %s failed", job.servers[0].url)
            job.sink.put(
                EngineError("The inference server's answer could not be read.", code="server_error", status=500)
            )
        return True

    def _open(self, job: Job) -> CompletionEvents | None:
        """Send the job to its server; return its events, or None when it went on to the next server.

        Raises:
            EngineError: the server's error before any event (with its status), ``adapter_unavailable`` when the
                adapter cannot be loaded, or ``engine_unavailable``.
        """
        server, target = job.servers[0], job.request.target
        try:
            response = self._complete(server, target, job.body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            logger.warning("inference server %s cannot be reached: %s", server.url, exc)
            self._lost(server)
            if len(job.servers) == 1:
                raise unavailable("No inference server can be reached; try again later.") from exc
            job.servers = job.servers[1:]
            self._queue(job)
            return None
        except httpx.TransportError as exc:
            logger.warning("inference server %s failed: %s", server.url, exc)
            raise unavailable("The inference server failed before answering; try again.") from exc
        if target.adapter is not None:
            with self._lock:
                self._affinity[target.adapter.name] = server.url
        return CompletionEvents(response, job.cancelled, self.tokenizer(target.base_model), job.request.params)

    # ------------------------------------------------------------------------------------ requests

    def _complete(self, server: Server, target: ModelTarget, body: bytes) -> httpx.Response:
        """Load the adapter if the server lacks it, send the completion; return the streamed 200 response.

        Raises:
            EngineError: the server's error, or ``adapter_unavailable``.
            httpx.TransportError: the server could not be reached or failed before answering.
        """
        adapter = target.adapter
        for attempt in range(2):
            if adapter is not None:
                self._load(server, target.base_model, adapter)
            built = self._client.build_request(
                "POST", server.url + "/v1/completions", content=body, headers=self._json()
            )
            response = self._client.send(built, stream=True)
            if response.status_code == 200:
                return response
            _read(response)
            if adapter is not None and response.status_code == 404 and attempt == 0:
                logger.info("inference server %s no longer holds %s; loading it again", server.url, adapter.name)
                with self._lock:
                    server.loaded.discard(adapter.name)
                continue
            raise server_error(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _load(self, server: Server, base_model: str, adapter: AdapterRef) -> None:
        """``POST /v1/load_lora_adapter`` unless the server holds the adapter already.

        Raises:
            EngineError: ``adapter_unavailable`` when the server cannot load it.
        """
        with self._lock:
            if adapter.name in server.loaded:
                return
        body = {"lora_name": adapter.name, "lora_path": self._lora_path(adapter), "base_model_name": base_model}
        response = self._client.post(
            server.url + "/v1/load_lora_adapter", content=msgspec.json.encode(body), headers=self._json()
        )
        if response.status_code != 200 and not (response.status_code == 400 and "already been loaded" in response.text):
            error = server_error(response)
            if error.code == "engine_unavailable":
                raise error
            logger.warning("inference server %s could not load %s: %s", server.url, adapter.name, error.message)
            raise EngineError(
                f"model {adapter.name!r} cannot be served: the inference server could not load its adapter",
                code="adapter_unavailable",
                status=503 if response.status_code >= 500 else 500,
            )
        with self._lock:
            server.loaded.add(adapter.name)

    def _lora_path(self, adapter: AdapterRef) -> str:
        """Where the server finds the adapter: a copy under the shared adapter dir, or the blob store prefix.

        Raises:
            EngineError: ``adapter_unavailable`` when its blobs are missing or the blob store cannot be reached.
        """
        if self.adapter_dir is None:
            return f"blob://{adapter.blob_prefix}" if adapter.blob_prefix is not None else str(adapter.path)
        target = self.adapter_dir / folder_name(adapter.name)
        with self._lock:
            lock = self._copy_locks.setdefault(adapter.name, threading.Lock())
        with lock:
            if not target.is_dir():
                self.adapter_dir.mkdir(parents=True, exist_ok=True)
                fetch_adapter(adapter, self.blobs, target)  # type: ignore[arg-type]
        return str(target)

    # ------------------------------------------------------------------------------------ routing

    def _candidates(self, target: ModelTarget) -> list[Server]:
        """The servers of the target's base model, best first.

        An adapter's last server, else the one its name hashes to; round-robin for base models.
        """
        serving = self._serving(target.base_model)
        if target.adapter is None:
            start = next(self._turn) % len(serving)
        else:
            with self._lock:
                preferred = self._affinity.get(target.adapter.name)
            urls = [server.url for server in serving]
            if preferred in urls:
                start = urls.index(preferred)
            else:
                start = zlib.crc32(target.adapter.name.encode()) % len(serving)
        return serving[start:] + serving[:start]

    def _serving(self, base_model: str) -> list[Server]:
        """The servers that serve ``base_model`` (each asked for its models once; an unreachable one is skipped).

        Raises:
            EngineError: ``model_not_found`` when every server answered and none serves it, else
                ``engine_unavailable``.
        """
        serving, unreachable = [], 0
        for url in self.urls:
            server = self._servers[url]
            if server.bases is None:
                try:
                    self._discover(server)
                except EngineError:
                    unreachable += 1
                    continue
            if base_model in (server.bases or {}):
                serving.append(server)
        if serving:
            return serving
        if unreachable:
            raise unavailable("No inference server can be reached; try again later.")
        raise model_not_found(base_model)

    def _discover(self, server: Server) -> None:
        """Ask the server which base models it serves.

        Raises:
            EngineError: the server cannot be reached or does not answer a model list.
        """
        try:
            response = self._client.get(server.url + "/v1/models", headers=self._headers)
        except httpx.TransportError as exc:
            logger.warning("inference server %s cannot be reached: %s", server.url, exc)
            raise unavailable("No inference server can be reached; try again later.") from exc
        if response.status_code != 200:
            raise server_error(response)
        try:
            cards = msgspec.json.decode(response.content, type=ModelList).data
        except msgspec.DecodeError as exc:
            logger.error("inference server %s answered /v1/models with %.200r", server.url, response.content)
            raise unavailable("The inference server answered with an unreadable model list.") from exc
        bases = {card.id: card.max_model_len for card in cards if card.parent is None}
        with self._lock:
            server.bases = bases
            server.loaded = {card.id for card in cards if card.parent is not None}

    def _lost(self, server: Server) -> None:
        """Forget what a server that went away held (it is asked again when it is back)."""
        with self._lock:
            server.bases = None
            server.loaded = set()

    def _json(self) -> dict[str, str]:
        return {**self._headers, "Content-Type": "application/json"}


def project_of(job: Job) -> str:
    """Whose request a job is: what a server's connections are shared by."""
    return job.request.project_id


def closed() -> EngineError:
    """503 ``engine_closed``: the engine is shutting down."""
    return EngineError("the inference engine is shutting down", code="engine_closed", status=503)


def _read(response: httpx.Response) -> bytes:
    """Read a whole (small) answer and close it.

    Raises:
        EngineError: ``engine_unavailable`` when the connection breaks while reading.
    """
    try:
        return response.read()
    except httpx.TransportError as exc:
        raise unavailable("The inference server failed while answering; try again.") from exc
    finally:
        response.close()
