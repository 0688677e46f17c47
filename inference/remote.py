"""``RemoteEngine``: the API's client of ``tunewright inference`` nodes (``TUNEWRIGHT_INFERENCE_URLS``).

The API keeps everything that needs the tenants' data: it authenticates, resolves the model, renders the prompt
with the base model's tokenizer (loaded here from the local model directory; the weights are never loaded in
the API) and meters usage. A node runs a ``LocalEngine`` and speaks the protocol in ``inference/node.py``:
``POST /internal/generate`` with a JSON ``GenerationRequest``, answered with one JSON ``GenerationEvent`` per line.

Routing: a fine-tuned model goes to the node that last served its adapter (the adapter is already in its
memory); a model no node has served yet goes to the node its name hashes to, so every API replica sends it to
the same place; base-model requests go round-robin. A node that refuses the connection is skipped for the
next one; when none can be reached the request fails with ``engine_unavailable`` (503).

Cancellation: when ``cancelled`` is set (the API's client went away) the event iterator stops at the next line
from the node and closes the HTTP response; the node sees the disconnect and frees the request's rows.

vLLM: a vLLM server started with ``--enable-lora`` (and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) speaks OpenAI's
protocol and loads adapters through ``POST /v1/load_lora_adapter`` from a *local path*, so a vLLM backend needs
a client that renders requests as OpenAI completions over token ids and a sidecar that copies the adapter from
the blob store to the vLLM host's disk first. That client is not implemented: this engine talks only to
``tunewright inference`` nodes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec

from tunewright.inference.engine import EngineError, GenerationEvent
from tunewright.storage.settings import SettingsError
from tunewright.trainer.modeling import ModelUnavailableError, UnknownModelError, load_tokenizer, resolve_model_dir

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.inference.engine import GenerationRequest
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=30.0)
"""Reads wait long: a node's first request for a base model loads it before the first token."""
LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=64)
"""Every running generation holds one connection to its node."""
ERROR_PREFIX = b'{"error"'
"""An error line starts so; an event line starts with its first field, ``{"index"``."""


class NodeError(msgspec.Struct, kw_only=True):
    """The ``error`` object of a node's error line."""

    message: str
    code: str
    status: int = 500
    param: str | None = None


class NodeErrorLine(msgspec.Struct, kw_only=True):
    """A node's error line: ``{"error": {...}}``."""

    error: NodeError


def unavailable(message: str) -> EngineError:
    """503 ``engine_unavailable``: no node could serve the request (a retry may succeed)."""
    return EngineError(message, code="engine_unavailable", status=503)


class RemoteEngine:
    """Generates on ``tunewright inference`` nodes (``InferenceEngine``)."""

    def __init__(self, settings: Settings, *, client: httpx.Client | None = None) -> None:
        """Remember the nodes; nothing is contacted until a request needs it.

        Args:
            settings: ``inference_urls``, ``inference_token``, and the base models (for their tokenizers).
            client: The HTTP client (default: a pooled one owned and closed by the engine).

        Raises:
            SettingsError: ``inference_urls`` is empty.
        """
        if not settings.inference_urls:
            raise SettingsError("TUNEWRIGHT_INFERENCE_URLS: the remote engine needs at least one node URL")
        self.settings = settings
        self.urls = [url.rstrip("/") for url in settings.inference_urls]
        token = settings.inference_token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client if client is not None else httpx.Client(timeout=TIMEOUT, limits=LIMITS)
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}
        self._context: dict[str, int] = {}
        self._affinity: dict[str, str] = {}
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
            raise _model_not_found(base_model) from exc
        with self._lock:
            return self._tokenizers.setdefault(base_model, tokenizer)

    def context_length(self, base_model: str) -> int:
        """Return the base model's context length, asked of a node once.

        Raises:
            EngineError: the node's error (``model_not_found``), or ``engine_unavailable`` when none answers.
        """
        with self._lock:
            cached = self._context.get(base_model)
        if cached is not None:
            return cached
        path = "/internal/models/" + quote(base_model, safe="")
        _, response = self._request("GET", self._candidates(None), path)
        body = _read(response)
        if response.status_code != 200:
            raise self._failure(response)
        length = int(msgspec.json.decode(body)["context_length"])
        with self._lock:
            self._context[base_model] = length
        return length

    def generate(self, request: GenerationRequest, *, cancelled: threading.Event) -> Iterator[GenerationEvent]:
        """Send the request to a node; return the iterator of the events it streams back.

        Raises:
            EngineError: the node's error before any event (with its status), or ``engine_unavailable``.
        """
        adapter = request.target.adapter.name if request.target.adapter is not None else None
        candidates = self._candidates(adapter)
        url, response = self._request("POST", candidates, "/internal/generate", content=msgspec.json.encode(request))
        if response.status_code != 200:
            _read(response)
            raise self._failure(response)
        if adapter is not None:
            with self._lock:
                self._affinity[adapter] = url
        return NodeEvents(response, cancelled)

    def forget(self, adapter_name: str) -> None:
        """Tell every node to drop the adapter.

        A node that cannot be told is only logged: the API no longer routes the deleted model anywhere.
        """
        with self._lock:
            self._affinity.pop(adapter_name, None)
        body = msgspec.json.encode({"name": adapter_name})
        for url in self.urls:
            try:
                response = self._client.post(url + "/internal/forget", content=body, headers=self._json_headers())
                response.raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("could not tell inference node %s to forget %s: %s", url, adapter_name, exc)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    # ------------------------------------------------------------------------------------ routing

    def _candidates(self, adapter: str | None) -> list[str]:
        """The nodes to try, best first: the adapter's last node or its hash's node; round-robin for base models."""
        if adapter is None:
            start = next(self._turn) % len(self.urls)
        else:
            with self._lock:
                preferred = self._affinity.get(adapter)
            if preferred in self.urls:
                start = self.urls.index(preferred)
            else:
                start = zlib.crc32(adapter.encode()) % len(self.urls)
        return self.urls[start:] + self.urls[:start]

    def _request(
        self, method: str, candidates: list[str], path: str, content: bytes | None = None
    ) -> tuple[str, httpx.Response]:
        """Send to the first node that accepts the connection; return it and its streamed response (headers read).

        Raises:
            EngineError: ``engine_unavailable`` when no node can be reached, or one fails before answering.
        """
        for url in candidates:
            built = self._client.build_request(method, url + path, content=content, headers=self._json_headers())
            try:
                return url, self._client.send(built, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                logger.warning("inference node %s cannot be reached: %s", url, exc)
            except httpx.TransportError as exc:
                logger.warning("inference node %s failed: %s", url, exc)
                raise unavailable("The inference node failed before answering; try again.") from exc
        raise unavailable("No inference node can be reached; try again later.")

    def _json_headers(self) -> dict[str, str]:
        return {**self._headers, "Content-Type": "application/json"}

    def _failure(self, response: httpx.Response) -> EngineError:
        """The ``EngineError`` for a node's non-200 answer (its error object, or a generic one)."""
        if response.status_code == 401:
            logger.error("inference node %s refused the token (TUNEWRIGHT_INFERENCE_TOKEN)", response.request.url)
            return unavailable("The inference node refused the server's credentials.")
        try:
            return _line_error(response.content.strip())
        except msgspec.DecodeError:
            logger.error("inference node answered %d: %.200r", response.status_code, response.content)
            return EngineError("The inference node answered with an error.", code="server_error", status=500)


def _read(response: httpx.Response) -> bytes:
    """Read a whole (small) answer and close it.

    Raises:
        EngineError: ``engine_unavailable`` when the connection breaks while reading.
    """
    try:
        return response.read()
    except httpx.TransportError as exc:
        raise unavailable("The inference node failed while answering; try again.") from exc
    finally:
        response.close()


def _line_error(raw: bytes) -> EngineError:
    """The ``EngineError`` an error line carries.

    Raises:
        msgspec.DecodeError: the line is not an error object.
    """
    error = msgspec.json.decode(raw, type=NodeErrorLine).error
    return EngineError(error.message, code=error.code, status=error.status, param=error.param)


def _model_not_found(base_model: str) -> EngineError:
    return EngineError(
        f"The model `{base_model}` does not exist or you do not have access to it.",
        code="model_not_found",
        status=404,
        param="model",
    )


class NodeEvents:
    """The events a node streams back for one request; closing it (or ``cancelled``) closes the connection.

    ``cancelled`` is checked as each line arrives: the node sends one per decoded piece of text, so the
    connection closes within a token of the API's client leaving, and the node then frees the rows.
    """

    def __init__(self, response: httpx.Response, cancelled: threading.Event) -> None:
        """Read ``response``'s lines."""
        self._response = response
        self._cancelled = cancelled
        self._lines = response.iter_lines()

    def __iter__(self) -> NodeEvents:
        """Return the stream itself."""
        return self

    def __next__(self) -> GenerationEvent:
        """Return the next event; raise the node's ``EngineError`` from an error line.

        Raises:
            EngineError: the node's error, or ``engine_unavailable`` when the connection breaks.
        """
        while not self._cancelled.is_set():
            try:
                line = next(self._lines)
            except StopIteration:
                break
            except httpx.TransportError as exc:
                self.close()
                if self._cancelled.is_set():
                    break
                raise unavailable("The inference node went away during generation.") from exc
            raw = line.encode()
            if raw.startswith(ERROR_PREFIX):
                self.close()
                raise _line_error(raw)
            if raw.strip():
                return msgspec.json.decode(raw, type=GenerationEvent)
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Close the connection (the node sees the disconnect and stops generating)."""
        self._response.close()
