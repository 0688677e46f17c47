"""What an inference node serves: its base models, and the adapters the API asked it to load.

A node knows nothing of tenants: the API checks who may call which model, names the adapter by its model id
and tells the node where its files are. Adapters are registered by name and loaded into memory on their first
request (the engine's `AdapterCache` fetches and evicts them); unloading forgets them at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunewright.api.completions.service import check_request, complete
from tunewright.api.errors import InvalidRequestError, NotFoundError
from tunewright.api.metering import Meter
from tunewright.api.node.schemas import ModelCard
from tunewright.inference.adapters import ADAPTER_FILES
from tunewright.inference.engine import AdapterRef, ModelTarget
from tunewright.storage.errors import NotFound

if TYPE_CHECKING:
    from litestar.response import Stream

    from tunewright.api.completions.schemas import CreateCompletionResponse
    from tunewright.api.node.schemas import LoadLoRAAdapterRequest, NodeCompletionRequest
    from tunewright.inference.engine import InferenceEngine
    from tunewright.inference.local import LocalEngine
    from tunewright.storage.base import BlobStore
    from tunewright.storage.settings import Settings

BLOB_SCHEME = "blob://"
"""`lora_path` prefix naming a blob store prefix instead of a local directory."""


@dataclass(frozen=True)
class Served:
    """An adapter the node serves: its base model, where its files are, since when."""

    ref: AdapterRef
    base_model: str
    lora_path: str
    created: int


class AdapterRegistry:
    """The adapters loaded by name (`/v1/load_lora_adapter`), and model resolution over them and the bases."""

    def __init__(self, settings: Settings, blobs: BlobStore, engine: LocalEngine) -> None:
        """Start with no adapter."""
        self.settings = settings
        self.blobs = blobs
        self.engine = engine
        self._lock = threading.Lock()
        self._served: dict[str, Served] = {}

    def load(self, data: LoadLoRAAdapterRequest) -> str:
        """Register an adapter (idempotent for the same files); return vLLM's success line.

        Raises:
            InvalidRequestError: a name that is a base model or taken by other files, an unknown base model, or a
                `lora_path` that holds no adapter.
        """
        if data.lora_name in self.settings.base_models:
            raise _invalid("lora_name", f"`{data.lora_name}` is a base model of this node.")
        base = self._base_of(data)
        ref = self._ref(data.lora_name, data.lora_path)
        with self._lock:
            known = self._served.get(data.lora_name)
            if known is not None and known.lora_path == data.lora_path and known.base_model == base:
                return f"Success: LoRA adapter '{data.lora_name}' added successfully."
            if known is not None and not data.load_inplace:
                raise _invalid(
                    "lora_name",
                    f"The lora adapter '{data.lora_name}' has already been loaded (from other files; "
                    "`load_inplace: true` replaces it).",
                )
            self._served[data.lora_name] = Served(ref, base, data.lora_path, int(time.time()))
        if known is not None:
            self.engine.forget(data.lora_name)
        return f"Success: LoRA adapter '{data.lora_name}' added successfully."

    def unload(self, name: str) -> str:
        """Forget an adapter: drop it from memory and disk; return vLLM's success line.

        Raises:
            NotFoundError: no adapter of that name is loaded.
        """
        with self._lock:
            served = self._served.pop(name, None)
        if served is None:
            raise NotFoundError(f"The lora adapter '{name}' cannot be found.", param="lora_name", code="not_found")
        self.engine.forget(name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def target(self, model: str) -> ModelTarget:
        """The base model, or an adapter loaded on it.

        Raises:
            NotFoundError: `model_not_found` for anything else.
        """
        if model in self.settings.base_models:
            return ModelTarget(base_model=model)
        with self._lock:
            served = self._served.get(model)
        if served is None:
            raise NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return ModelTarget(base_model=served.base_model, adapter=served.ref)

    def cards(self) -> list[ModelCard]:
        """The base models on this machine, then the adapters.

        A base model's `max_model_len` is given once the node has loaded it (null before: a packaged model is
        imported on its first request, which takes longer than a listing should).
        """
        cards = []
        for base, location in self.settings.base_models.items():
            if not self.engine.has_model(base):
                continue  # configured but not installed here: another node serves it
            cards.append(
                ModelCard(
                    id=base,
                    created=0,
                    owned_by="tunewright",
                    root=location,
                    parent=None,
                    max_model_len=self.engine.known_context_length(base),
                )
            )
        with self._lock:
            served = sorted(self._served.items())
        for name, entry in served:
            cards.append(
                ModelCard(
                    id=name,
                    created=entry.created,
                    owned_by="tunewright",
                    root=entry.lora_path,
                    parent=entry.base_model,
                    max_model_len=None,
                )
            )
        return cards

    def _base_of(self, data: LoadLoRAAdapterRequest) -> str:
        bases = sorted(self.settings.base_models)
        name = data.base_model_name or None
        if name is None:
            if len(bases) != 1:
                raise _invalid("base_model_name", f"names the adapter's base model (one of: {', '.join(bases)}).")
            return bases[0]
        if name not in self.settings.base_models:
            raise _invalid("base_model_name", f"`{name}` is not a base model of this node ({', '.join(bases)}).")
        return name

    def _ref(self, name: str, lora_path: str) -> AdapterRef:
        """Check that `lora_path` holds the adapter's files (the first request loads them)."""
        if lora_path.startswith(BLOB_SCHEME):
            prefix = lora_path.removeprefix(BLOB_SCHEME).strip("/")
            try:
                for filename in ADAPTER_FILES:
                    self.blobs.size(f"{prefix}/{filename}")
            except NotFound:
                raise _invalid("lora_path", f"no LoRA adapter at `{lora_path}` in the node's blob store.") from None
            return AdapterRef(name=name, blob_prefix=prefix)
        path = Path(lora_path)
        if not path.is_absolute():
            raise _invalid("lora_path", f"must be an absolute directory or {BLOB_SCHEME}<prefix>, got `{lora_path}`.")
        missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise _invalid("lora_path", f"`{lora_path}` holds no LoRA adapter (missing {', '.join(missing)}).")
        return AdapterRef(name=name, path=str(path))


async def create_completion(
    engine: InferenceEngine, registry: AdapterRegistry, data: NodeCompletionRequest, *, max_choices: int
) -> CreateCompletionResponse | Stream:
    """Run one completion on the node (usage reported in the answer; the API meters it).

    The API names the request's project as `user`: the node's scheduler shares its batch places among projects by it.
    """
    check_request(data, max_choices=max_choices)
    target = registry.target(data.model)
    meter = Meter(None, None, data.model, "completions", bool(data.stream))
    project_id = data.user if isinstance(data.user, str) else ""
    return await complete(
        engine, data, target, meter, project_id=project_id, token_ids=bool(data.return_tokens_as_token_ids)
    )


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid value for '{param}': {message}", param=param, code="invalid_value")
