"""Wire objects an inference node adds to OpenAI's protocol, as vLLM spells them.

vLLM's server with `--enable-lora` loads and unloads adapters at run time through `POST /v1/load_lora_adapter`
and `POST /v1/unload_lora_adapter`, lists models with their `parent` and `max_model_len`, and takes
`return_tokens_as_token_ids` on completions. A node speaks the same, so one client (`inference/remote.py`)
drives both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.completions.schemas import CreateCompletionRequest
from tunewright.api.schemas import Request, Response

Name = Annotated[str, Meta(min_length=1, max_length=512)]


class LoadLoRAAdapterRequest(Request, kw_only=True):
    """`POST /v1/load_lora_adapter`: serve the adapter at `lora_path` as model `lora_name`.

    `lora_path` is an absolute directory on the node holding the PEFT files, or `blob://<prefix>` in the node's
    blob store. `base_model_name` (vLLM's LoRA module field; vLLM serves one base and ignores it) names the base
    model the adapter was trained on. `load_inplace` replaces an adapter already loaded under the name.
    """

    lora_name: Name
    lora_path: Name
    base_model_name: Name | UnsetType = UNSET
    load_inplace: bool | UnsetType = UNSET


class UnloadLoRAAdapterRequest(Request, kw_only=True):
    """`POST /v1/unload_lora_adapter`: stop serving `lora_name` (vLLM also takes its integer id, unused here)."""

    lora_name: Name
    lora_int_id: int | None | UnsetType = UNSET


class NodeCompletionRequest(CreateCompletionRequest, kw_only=True):
    """`/v1/completions` on a node: up to 20 alternatives per token (chat's limit), token ids instead of texts."""

    logprobs: Annotated[int, Meta(ge=0, le=20)] | None | UnsetType = UNSET
    return_tokens_as_token_ids: bool | UnsetType = UNSET


class ModelCard(Response, kw_only=True):
    """One served model: a base model (`parent` null, `max_model_len` its context) or an adapter on one."""

    id: str
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int | None
    object: Literal["model"] = "model"


class ModelCardList(Response):
    """`GET /v1/models` on a node."""

    data: list[ModelCard]
    object: Literal["list"] = "list"
