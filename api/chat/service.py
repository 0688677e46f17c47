"""Rules of /v1/chat/completions: refuse what cannot be honoured, render the chat, answer or stream it."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from msgspec import UNSET

from tunewright.api.chat.schemas import (
    ChatCompletionChoice,
    ChatCompletionLogprobs,
    ChatCompletionMessageCustomToolCall,
    ChatCompletionRequestAssistantMessage,
    ChatCompletionResponseMessage,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponseDelta,
    ChatCompletionTokenLogprob,
    ChatCompletionTool,
    CreateChatCompletionRequest,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    ResponseFormatText,
    TopLogprob,
)
from tunewright.api.errors import echo
from tunewright.api.generation import EventRelay, call_engine, collect, open_stream, resolve_target, sse
from tunewright.api.metering import Meter
from tunewright.api.parameters import check_choices, completion_budget, invalid, sampling_params, unsupported
from tunewright.api.ratelimits.limiter import charged_tokens
from tunewright.api.spend.quota import admit_inference
from tunewright.inference.engine import GenerationRequest
from tunewright.modeling.chat import ChatTemplateError, render_chat, template_tools
from tunewright.storage.ids import new_id

if TYPE_CHECKING:
    from litestar.response import Stream

    from tunewright.api.auth import Principal
    from tunewright.api.metering import CompletionUsage
    from tunewright.api.metrics import Metrics
    from tunewright.api.ratelimits.limiter import Quota
    from tunewright.inference.engine import GenerationEvent, InferenceEngine, TokenLogprob
    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings


async def create_chat_completion(
    stores: Stores,
    settings: Settings,
    engine: InferenceEngine,
    data: CreateChatCompletionRequest,
    principal: Principal,
    limits: Quota,
    metrics: Metrics | None = None,
) -> CreateChatCompletionResponse | Stream:
    """Answer one chat completion request, as one JSON object or (`stream: true`) as server-sent events.

    The request is admitted against the project's rate limits once its prompt is rendered and its budget known.
    """
    streamed = bool(data.stream)
    meter = Meter(stores, principal, data.model, "chat.completions", streamed, metrics=metrics)
    check_request(data)
    check_choices(1, data.n or 1, settings.max_choices_per_request)
    await admit_inference(stores, settings, principal)
    prepare_request = partial(prepare, stores, settings, engine, data, project_id=principal.project_id or "")
    request = await anyio.to_thread.run_sync(prepare_request)
    meter.base_model, meter.prompt_tokens = request.target.base_model, len(request.prompt_ids)
    meter.admission = await limits.admit(principal, request.target.base_model, charged_tokens([request]))
    relay = EventRelay(engine, [request])
    answer = ChatAnswer(data, n=request.n)
    if streamed:
        return await open_stream(relay, meter, answer)
    return answer.response(await collect(relay, meter), meter.usage())


def check_request(data: CreateChatCompletionRequest) -> None:
    """Refuse the fields we cannot honour where ignoring them would change the result.

    Raises:
        InvalidRequestError: naming the field.
    """
    for name in ("audio", "prediction", "web_search_options", "reasoning_effort", "verbosity", "moderation"):
        if getattr(data, name) not in (None, UNSET):
            raise unsupported(name)
    if data.prompt_cache_options not in (None, UNSET):
        raise unsupported("prompt_cache_options")
    if data.store:
        raise unsupported("store", "is not supported: completions are not stored (use `store: false`)")
    if data.response_format is not UNSET and not isinstance(data.response_format, ResponseFormatText):
        raise invalid("response_format", 'only `{"type": "text"}` is supported by this server.')
    if data.modalities not in (None, UNSET) and data.modalities != ["text"]:
        raise invalid("modalities", 'only `["text"]` is supported by this server.')
    if data.tool_choice is not UNSET and data.tool_choice not in ("none", "auto"):
        raise invalid("tool_choice", "only `none` and `auto` are supported by this server.")
    if data.function_call is not UNSET and data.function_call not in ("none", "auto"):
        raise invalid("function_call", "only `none` and `auto` are supported by this server.")
    if data.tools is not UNSET and any(not isinstance(tool, ChatCompletionTool) for tool in data.tools):
        raise invalid("tools", "only function tools are supported by this server.")
    if data.stream_options not in (None, UNSET) and not data.stream:
        raise invalid("stream_options", "`stream_options` is only allowed when `stream` is true.")
    if data.top_logprobs not in (None, UNSET) and not data.logprobs:
        raise invalid("logprobs", "`logprobs` must be true when `top_logprobs` is set.")


def prepare(
    stores: Stores, settings: Settings, engine: InferenceEngine, data: CreateChatCompletionRequest, *, project_id: str
) -> GenerationRequest:
    """Resolve the model, render the chat into token ids and size the completion (on a worker thread)."""
    target = resolve_target(stores, settings, data.model, project_id=project_id)
    tokenizer = call_engine(engine.tokenizer, target.base_model)
    prompt_ids = render(tokenizer, data)
    requested = data.max_completion_tokens or data.max_tokens or None
    budget = completion_budget(
        len(prompt_ids),
        requested,
        default=settings.default_max_tokens,
        context=call_engine(engine.context_length, target.base_model),
        param="messages",
    )
    params = sampling_params(
        data,
        max_new_tokens=budget,
        vocab_size=len(tokenizer),
        logprobs=bool(data.logprobs),
        top_logprobs=data.top_logprobs or 0,
    )
    return GenerationRequest(target=target, prompt_ids=prompt_ids, params=params, n=data.n or 1, project_id=project_id)


def render(tokenizer: Any, data: CreateChatCompletionRequest) -> list[int]:
    """Render the messages (and tools) into the prompt's token ids with the renderer training uses.

    Raises:
        InvalidRequestError: a part the models cannot read, or a chat the template cannot render.
    """
    messages = [_message(message, index) for index, message in enumerate(data.messages)]
    try:
        return render_chat(tokenizer, messages, tools=_tools(data), add_generation_prompt=True, with_mask=False).ids
    except ChatTemplateError as exc:
        raise invalid(exc.param or "messages", f"{echo(str(exc))}.") from exc


def _message(message: Any, index: int) -> dict[str, Any]:
    """A request message as JSON, once its tool calls are known to be function calls."""
    if isinstance(message, ChatCompletionRequestAssistantMessage) and message.tool_calls is not UNSET:
        for position, call in enumerate(message.tool_calls):
            if isinstance(call, ChatCompletionMessageCustomToolCall):
                raise invalid(f"messages[{index}].tool_calls[{position}]", "custom tool calls are not supported.")
    return msgspec.to_builtins(message)


def _tools(data: CreateChatCompletionRequest) -> list[dict[str, Any]] | None:
    """Function tools (and deprecated `functions`) for the template; none when `tool_choice` is `none`."""
    if data.tool_choice == "none":
        return None
    functions = [msgspec.to_builtins(function) for function in data.functions or []]
    return template_tools([msgspec.to_builtins(tool) for tool in data.tools or []], functions)


def chat_logprobs(entries: list[TokenLogprob]) -> ChatCompletionLogprobs:
    """The wire `logprobs` of the engine's entries."""
    return ChatCompletionLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=entry.token,
                logprob=entry.logprob,
                bytes=entry.bytes,
                top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in entry.top_logprobs],
            )
            for entry in entries
        ]
    )


class ChatAnswer:
    """Assembles `chat.completion` objects and `chat.completion.chunk` frames from engine events."""

    def __init__(self, data: CreateChatCompletionRequest, *, n: int) -> None:
        """Fix the id, timestamp and echoed model shared by every object of the answer."""
        self.id = new_id("chat")
        self.created = int(time.time())
        self.model = data.model
        self.n = n
        self.logprobs = bool(data.logprobs)
        self.include_usage = bool(data.stream_options and data.stream_options.include_usage)

    def response(self, events: list[GenerationEvent], usage: CompletionUsage) -> CreateChatCompletionResponse:
        """The non-streamed answer."""
        texts = [""] * self.n
        finishes: list[Any] = ["stop"] * self.n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(self.n)]
        for event in events:
            texts[event.index] += event.text
            logprobs[event.index].extend(event.logprobs or [])
            if event.finish_reason is not None:
                finishes[event.index] = event.finish_reason
        choices = [
            ChatCompletionChoice(
                finish_reason=finishes[i],
                index=i,
                message=ChatCompletionResponseMessage(content=texts[i]),
                logprobs=chat_logprobs(logprobs[i]) if self.logprobs else None,
            )
            for i in range(self.n)
        ]
        return CreateChatCompletionResponse(
            id=self.id, choices=choices, created=self.created, model=self.model, usage=usage
        )

    def _chunk(self, choices: list[ChatCompletionStreamChoice], usage: Any = None) -> bytes:
        chunk = CreateChatCompletionStreamResponse(
            id=self.id,
            choices=choices,
            created=self.created,
            model=self.model,
            usage=usage if self.include_usage else UNSET,
        )
        return sse(chunk)

    def opening(self) -> list[bytes]:
        """One chunk per choice: `delta: {"role": "assistant", "content": ""}`."""
        delta = ChatCompletionStreamResponseDelta(role="assistant", content="")
        return [
            self._chunk([ChatCompletionStreamChoice(delta=delta, logprobs=None, finish_reason=None, index=i)])
            for i in range(self.n)
        ]

    def on_event(self, event: GenerationEvent) -> list[bytes]:
        """A content chunk for new text, then a `delta: {}` chunk with the finish reason when the choice ends."""
        frames = []
        if event.text or event.logprobs:
            logprobs = chat_logprobs(event.logprobs or []) if self.logprobs else None
            delta = ChatCompletionStreamResponseDelta(content=event.text)
            choice = ChatCompletionStreamChoice(delta=delta, logprobs=logprobs, finish_reason=None, index=event.index)
            frames.append(self._chunk([choice]))
        if event.finish_reason is not None:
            delta = ChatCompletionStreamResponseDelta()
            choice = ChatCompletionStreamChoice(
                delta=delta, logprobs=None, finish_reason=event.finish_reason, index=event.index
            )
            frames.append(self._chunk([choice]))
        return frames

    def closing(self, usage: CompletionUsage) -> list[bytes]:
        """The usage chunk (`choices: []`) when `stream_options.include_usage` asked for it."""
        return [self._chunk([], usage)] if self.include_usage else []
