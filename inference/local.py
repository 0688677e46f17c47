"""``LocalEngine``: transformers + PEFT in this process, many adapters of one base model batched together.

Cheap to build (no torch import): base models, the adapter cache and the scheduler threads start on the first
request that needs them. One copy of each base model is loaded, wrapped once for PEFT (``inference.models``);
tenants' adapters are loaded into it by name through the ``AdapterCache``; a ``Scheduler`` thread per base model
runs continuous batching over the rows of every request for that base (``inference.scheduler``).

``submit`` does its checks and loads the adapter before it returns, so its ``EngineError``s are raised by the
call itself, before any event; the scheduler thread then hands the events to the request's sink.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from tunewright.inference.adapters import AdapterCache, AdapterCacheStats
from tunewright.inference.engine import EngineError
from tunewright.inference.models import BASE_ADAPTER, BaseModel, context_length_of
from tunewright.inference.scheduler import Scheduler, Ticket
from tunewright.modeling.loading import load_tokenizer
from tunewright.modeling.registry import ModelUnavailableError, UnknownModelError, model_available, resolve_model_dir

if TYPE_CHECKING:
    from pathlib import Path

    from tunewright.inference.adapters import AdapterState
    from tunewright.inference.engine import EventSink, GenerationRequest
    from tunewright.storage.base import BlobStore
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)


class LocalEngine:
    """Serves base models and their adapters from this process (``InferenceEngine``)."""

    def __init__(self, settings: Settings, blobs: BlobStore, *, device: str | None = None) -> None:
        """Remember the settings; nothing is loaded until a request needs it.

        Args:
            settings: Base models, batch size, adapter cache bounds, torch threads, data dir.
            blobs: The blob store that holds the adapters (no database: the engine never reads one).
            device: ``cpu``, ``cuda``, ``cuda:1``…; default: CUDA when available, else the CPU.
        """
        self.settings = settings
        self.blobs = blobs
        self._device = device
        self._lock = threading.Lock()
        self._base_locks: dict[str, threading.Lock] = {}
        self._tokenizers: dict[str, Any] = {}
        self._context: dict[str, int] = {}
        self._models: dict[str, BaseModel] = {}
        self._schedulers: dict[str, Scheduler] = {}
        self._adapters: AdapterCache | None = None
        self._closed = False

    def tokenizer(self, base_model: str) -> Any:
        """Return the base model's tokenizer (loaded once).

        Raises:
            EngineError: ``model_not_found`` (404) when the base model is not configured or not on this machine.
        """
        with self._base_lock(base_model):
            if base_model not in self._tokenizers:
                self._tokenizers[base_model] = load_tokenizer(self._directory(base_model))
            return self._tokenizers[base_model]

    def context_length(self, base_model: str) -> int:
        """Return the most tokens (prompt + completion) the base model takes (its max positions)."""
        tokenizer = self.tokenizer(base_model)
        with self._base_lock(base_model):
            if base_model not in self._context:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(self._directory(base_model), local_files_only=True)
                self._context[base_model] = context_length_of(config, tokenizer)
            return self._context[base_model]

    def submit(self, request: GenerationRequest, sink: EventSink, *, cancelled: threading.Event) -> None:
        """Check the request, load its adapter, queue its rows; the scheduler thread hands its events to ``sink``.

        Raises:
            EngineError: ``model_not_found``, ``context_length_exceeded``, ``invalid_value`` (bad ``n`` or
                ``max_new_tokens``), or ``adapter_unavailable`` (only this request fails).
        """
        self._check(request)
        model = self._model(request.target.base_model)
        adapter = request.target.adapter
        ticket = Ticket(request=request, adapter=BASE_ADAPTER, cancelled=cancelled, sink=sink)
        if adapter is not None:
            cache = self._adapter_cache()
            lease = cache.acquire(adapter, model)
            ticket.adapter = lease.peft_name
            ticket.done = functools.partial(cache.release, lease)
        try:
            self._scheduler(request.target.base_model, model).submit(ticket)
        except BaseException:
            if ticket.done is not None:
                ticket.done()
            raise

    def forget(self, adapter_name: str) -> None:
        """Drop an adapter from memory and disk now; its next request fetches it again (and fails if deleted)."""
        with self._lock:
            cache = self._adapters
        if cache is not None:
            cache.forget(adapter_name)

    def close(self) -> None:
        """Stop the scheduler threads (running requests end with an error) and drop the models."""
        with self._lock:
            self._closed = True
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.close()
        with self._lock:
            self._models.clear()

    def has_model(self, base_model: str) -> bool:
        """Whether the base model is configured and on this machine (checked without loading or importing it)."""
        return model_available(base_model, self.settings)

    def known_context_length(self, base_model: str) -> int | None:
        """The base model's context length if it was asked for already, else None (never loads anything)."""
        with self._lock:
            return self._context.get(base_model)

    def active_rows(self) -> int:
        """Rows running or waiting in every base model's batch (0 when the engine is idle)."""
        with self._lock:
            schedulers = list(self._schedulers.values())
        return sum(scheduler.active_rows() for scheduler in schedulers)

    def adapter_states(self) -> dict[str, AdapterState]:
        """Each cached adapter's state (``fetching``, ``on_disk``, ``loaded``)."""
        with self._lock:
            cache = self._adapters
        return cache.states() if cache is not None else {}

    def adapter_cache_stats(self) -> AdapterCacheStats:
        """The adapter cache's hits, misses and evictions (all 0 before the first adapter)."""
        with self._lock:
            cache = self._adapters
        return cache.stats() if cache is not None else AdapterCacheStats()

    def _check(self, request: GenerationRequest) -> None:
        if request.n < 1:
            raise EngineError("n must be at least 1", code="invalid_value", param="n")
        if request.params.max_new_tokens < 1:
            raise EngineError("max_tokens must be at least 1", code="invalid_value", param="max_tokens")
        if not request.prompt_ids:
            raise EngineError("the prompt is empty", code="invalid_value", param="messages")
        limit = self.context_length(request.target.base_model)
        wanted = len(request.prompt_ids) + request.params.max_new_tokens
        if wanted > limit:
            raise EngineError(
                f"This model's maximum context length is {limit} tokens. However, you requested {wanted} tokens "
                f"({len(request.prompt_ids)} in the messages, {request.params.max_new_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                code="context_length_exceeded",
                param="messages",
            )

    def _directory(self, base_model: str) -> Path:
        try:
            return resolve_model_dir(base_model, self.settings)
        except (UnknownModelError, ModelUnavailableError) as exc:
            raise EngineError(
                f"The model `{base_model}` does not exist or you do not have access to it.",
                code="model_not_found",
                status=404,
                param="model",
            ) from exc

    def _base_lock(self, base_model: str) -> threading.Lock:
        with self._lock:
            return self._base_locks.setdefault(base_model, threading.Lock())

    def _model(self, base_model: str) -> BaseModel:
        """Return the loaded base model, loading it (once, whoever asks first) on first use."""
        tokenizer = self.tokenizer(base_model)
        with self._base_lock(base_model):
            model = self._models.get(base_model)
            if model is None:
                self._load_torch()
                directory = self._directory(base_model)
                model = BaseModel(base_model, directory, device=self._resolve_device(), tokenizer=tokenizer)
                with self._lock:
                    self._models[base_model] = model
            return model

    def _scheduler(self, base_model: str, model: BaseModel) -> Scheduler:
        with self._lock:
            if self._closed:
                raise EngineError("the inference engine is shutting down", code="engine_closed", status=503)
            scheduler = self._schedulers.get(base_model)
            if scheduler is None:
                scheduler = Scheduler(model, max_batch=self.settings.inference_max_batch)
                self._schedulers[base_model] = scheduler
            return scheduler

    def _adapter_cache(self) -> AdapterCache:
        with self._lock:
            if self._adapters is None:
                self._adapters = AdapterCache(
                    self.settings.data_path / "adapter-cache",
                    self.blobs,
                    max_loaded=self.settings.adapter_cache_count,
                    max_bytes=self.settings.adapter_cache_bytes,
                )
            return self._adapters

    def _load_torch(self) -> None:
        import torch

        if torch.get_num_threads() != self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

    def _resolve_device(self) -> str:
        if self._device is not None:
            return self._device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
