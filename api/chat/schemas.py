"""Wire objects of /v1/chat/completions, mirroring OpenAI's schemas field for field.

Every request field of `CreateChatCompletionRequest` is declared. Fields we cannot honour and that would
change the result answer 400 from `service.check_request`; the harmless ones (`user`, `metadata`,
`service_tier`, `safety_identifier`, `prompt_cache_key`, `prompt_cache_retention`, `parallel_tool_calls`,
`stream_options.include_obfuscation`) are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from tunewright.api.metering import CompletionUsage
from tunewright.api.parameters import (
    ChatCompletionStreamOptions,
    ChoiceCount,
    MaxTokens,
    Metadata,
    Penalty,
    Seed,
    ServiceTier,
    Stop,
    Temperature,
    TopLogprobs,
    TopP,
)
from tunewright.api.schemas import Request, Response

# ------------------------------------------------------------------------------------ content parts


class ChatCompletionRequestMessageContentPartText(Request, tag_field="type", tag="text"):
    """A text part; parts of one message are joined before the chat template sees them."""

    text: str
    prompt_cache_breakpoint: dict[str, Any] | UnsetType = UNSET


class ChatCompletionRequestMessageContentPartImage(Request, tag_field="type", tag="image_url"):
    """An image part (declared; the served models read text only)."""

    image_url: dict[str, Any]


class ChatCompletionRequestMessageContentPartAudio(Request, tag_field="type", tag="input_audio"):
    """An audio part (declared; the served models read text only)."""

    input_audio: dict[str, Any]


class ChatCompletionRequestMessageContentPartFile(Request, tag_field="type", tag="file"):
    """A file part (declared; the served models read text only)."""

    file: dict[str, Any]


class ChatCompletionRequestMessageContentPartRefusal(Request, tag_field="type", tag="refusal"):
    """A refusal part of an earlier assistant message."""

    refusal: str


TextParts = list[ChatCompletionRequestMessageContentPartText]
UserPart = (
    ChatCompletionRequestMessageContentPartText
    | ChatCompletionRequestMessageContentPartImage
    | ChatCompletionRequestMessageContentPartAudio
    | ChatCompletionRequestMessageContentPartFile
)
AssistantPart = ChatCompletionRequestMessageContentPartText | ChatCompletionRequestMessageContentPartRefusal

# ----------------------------------------------------------------------------------------- messages


class FunctionCall(Request):
    """A function call's name and JSON arguments."""

    name: str
    arguments: str


class ChatCompletionMessageToolCall(Request, tag_field="type", tag="function"):
    """A function tool call made by an earlier assistant message."""

    id: str
    function: FunctionCall


class ChatCompletionMessageCustomToolCall(Request, tag_field="type", tag="custom"):
    """A custom tool call made by an earlier assistant message."""

    id: str
    custom: dict[str, Any]


ToolCall = ChatCompletionMessageToolCall | ChatCompletionMessageCustomToolCall


class ChatCompletionRequestDeveloperMessage(Request, tag_field="role", tag="developer"):
    """`developer` message (rendered as the template renders it, or as a system message)."""

    content: str | TextParts
    name: str | UnsetType = UNSET


class ChatCompletionRequestSystemMessage(Request, tag_field="role", tag="system"):
    """`system` message."""

    content: str | TextParts
    name: str | UnsetType = UNSET


class ChatCompletionRequestUserMessage(Request, tag_field="role", tag="user"):
    """`user` message."""

    content: str | list[UserPart]
    name: str | UnsetType = UNSET


class ChatCompletionRequestAssistantMessage(Request, tag_field="role", tag="assistant"):
    """`assistant` message of the conversation so far."""

    content: str | list[AssistantPart] | None | UnsetType = UNSET
    refusal: str | None | UnsetType = UNSET
    name: str | UnsetType = UNSET
    audio: dict[str, Any] | None | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    function_call: FunctionCall | None | UnsetType = UNSET


class ChatCompletionRequestToolMessage(Request, tag_field="role", tag="tool"):
    """`tool` message: a tool's result."""

    content: str | TextParts
    tool_call_id: str


class ChatCompletionRequestFunctionMessage(Request, tag_field="role", tag="function"):
    """`function` message (deprecated)."""

    content: str | None
    name: str


ChatCompletionRequestMessage = (
    ChatCompletionRequestDeveloperMessage
    | ChatCompletionRequestSystemMessage
    | ChatCompletionRequestUserMessage
    | ChatCompletionRequestAssistantMessage
    | ChatCompletionRequestToolMessage
    | ChatCompletionRequestFunctionMessage
)

# ------------------------------------------------------------------------------- tools and formats


class FunctionObject(Request, kw_only=True):
    """A function the model may call, handed to the chat template."""

    description: str | UnsetType = UNSET
    name: str
    parameters: dict[str, Any] | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET


class ChatCompletionTool(Request, tag_field="type", tag="function"):
    """A function tool."""

    function: FunctionObject


class CustomToolChatCompletions(Request, tag_field="type", tag="custom"):
    """A custom tool (declared; not supported)."""

    custom: dict[str, Any]


class ChatCompletionNamedToolChoice(Request, tag_field="type", tag="function"):
    """Force one function (declared; not supported)."""

    function: dict[str, Any]


class ChatCompletionAllowedToolsChoice(Request, tag_field="type", tag="allowed_tools"):
    """Restrict the tools (declared; not supported)."""

    allowed_tools: dict[str, Any]


class ChatCompletionNamedToolChoiceCustom(Request, tag_field="type", tag="custom"):
    """Force one custom tool (declared; not supported)."""

    custom: dict[str, Any]


ToolChoice = (
    Literal["none", "auto", "required"]
    | ChatCompletionNamedToolChoice
    | ChatCompletionAllowedToolsChoice
    | ChatCompletionNamedToolChoiceCustom
)


class ResponseFormatText(Request, tag_field="type", tag="text"):
    """Plain text output: the only format served."""


class ResponseFormatJsonSchema(Request, tag_field="type", tag="json_schema"):
    """Structured output (declared; not supported)."""

    json_schema: dict[str, Any]


class ResponseFormatJsonObject(Request, tag_field="type", tag="json_object"):
    """JSON mode (declared; not supported)."""


ResponseFormat = ResponseFormatText | ResponseFormatJsonSchema | ResponseFormatJsonObject


class CreateChatCompletionRequest(Request, kw_only=True):
    """`CreateChatCompletionRequest` (with `ModelResponseProperties` and `CreateModelResponseProperties`)."""

    metadata: Metadata | None | UnsetType = UNSET
    top_logprobs: TopLogprobs | None | UnsetType = UNSET
    temperature: Temperature | None | UnsetType = UNSET
    top_p: TopP | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    safety_identifier: str | None | UnsetType = UNSET
    prompt_cache_key: str | None | UnsetType = UNSET
    prompt_cache_retention: Literal["in_memory", "24h"] | None | UnsetType = UNSET
    prompt_cache_options: dict[str, Any] | None | UnsetType = UNSET
    messages: Annotated[list[ChatCompletionRequestMessage], Meta(min_length=1)]
    model: str
    service_tier: ServiceTier | None | UnsetType = UNSET
    modalities: list[Literal["text", "audio"]] | None | UnsetType = UNSET
    verbosity: Literal["low", "medium", "high"] | None | UnsetType = UNSET
    reasoning_effort: str | None | UnsetType = UNSET
    max_completion_tokens: MaxTokens | None | UnsetType = UNSET
    frequency_penalty: Penalty | None | UnsetType = UNSET
    presence_penalty: Penalty | None | UnsetType = UNSET
    web_search_options: dict[str, Any] | UnsetType = UNSET
    response_format: ResponseFormat | UnsetType = UNSET
    audio: dict[str, Any] | None | UnsetType = UNSET
    store: bool | None | UnsetType = UNSET
    moderation: dict[str, Any] | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET
    stop: Stop | None | UnsetType = UNSET
    logit_bias: dict[str, int] | None | UnsetType = UNSET
    logprobs: bool | None | UnsetType = UNSET
    max_tokens: MaxTokens | None | UnsetType = UNSET
    n: ChoiceCount | None | UnsetType = UNSET
    prediction: dict[str, Any] | None | UnsetType = UNSET
    seed: Seed | None | UnsetType = UNSET
    stream_options: ChatCompletionStreamOptions | None | UnsetType = UNSET
    tools: list[ChatCompletionTool | CustomToolChatCompletions] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    function_call: Literal["none", "auto"] | dict[str, Any] | UnsetType = UNSET
    functions: list[FunctionObject] | UnsetType = UNSET


# ----------------------------------------------------------------------------------------- responses


class TopLogprob(Response):
    """One of the most likely tokens at a position (`ChatCompletionTokenLogprob.top_logprobs` items)."""

    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(Response):
    """`ChatCompletionTokenLogprob`: a chosen token, its log-probability and exact bytes, the best alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatCompletionLogprobs(Response):
    """A choice's `logprobs`: one entry per content token; refusals are never produced."""

    content: list[ChatCompletionTokenLogprob] | None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class ChatCompletionResponseMessage(Response):
    """`ChatCompletionResponseMessage`: the generated text (tool calls are not parsed out of it)."""

    content: str | None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"


class ChatCompletionChoice(Response):
    """One choice of a `chat.completion`."""

    finish_reason: Literal["stop", "length"]
    index: int
    message: ChatCompletionResponseMessage
    logprobs: ChatCompletionLogprobs | None


class CreateChatCompletionResponse(Response, kw_only=True):
    """`CreateChatCompletionResponse`; `model` echoes the request."""

    id: str
    choices: list[ChatCompletionChoice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    usage: CompletionUsage


class ChatCompletionStreamResponseDelta(Response):
    """`ChatCompletionStreamResponseDelta`: the role first, then content pieces, then `{}` with the finish."""

    content: str | None | UnsetType = UNSET
    role: Literal["assistant"] | UnsetType = UNSET


class ChatCompletionStreamChoice(Response):
    """One choice of a `chat.completion.chunk`."""

    delta: ChatCompletionStreamResponseDelta
    logprobs: ChatCompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    index: int


class CreateChatCompletionStreamResponse(Response):
    """`CreateChatCompletionStreamResponse`; `usage` is present (null but on the last chunk) only when asked."""

    id: str
    choices: list[ChatCompletionStreamChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: CompletionUsage | None | UnsetType = UNSET
