"""One streamed completion of a remote server, read as the engine's events."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from tunewright.inference.detokenize import token_text
from tunewright.inference.engine import EngineError, GenerationEvent, TokenLogprob, TopLogprob
from tunewright.inference.remote_wire import Chunk, ChunkLogprobs, error_of, no_token_ids, token_id, unavailable

if TYPE_CHECKING:
    import threading

    from tunewright.inference.engine import SamplingParams
    from tunewright.inference.remote_wire import ChunkChoice

logger = logging.getLogger(__name__)


class CompletionEvents:
    """The events of one streamed completion; closing it (or ``cancelled``) closes the connection.

    ``cancelled`` is checked as each chunk arrives: the server sends one per decoded piece of text, so the
    connection closes within a token of the API's client leaving, and the server then frees the rows.
    """

    def __init__(
        self, response: httpx.Response, cancelled: threading.Event, tokenizer: Any, params: SamplingParams
    ) -> None:
        """Read ``response``'s server-sent events; render log-probabilities as ``params`` ask."""
        self._response = response
        self._cancelled = cancelled
        self._tokenizer = tokenizer
        self._logprobs = params.logprobs or params.top_logprobs > 0
        self._top = params.top_logprobs
        self._lines = response.iter_lines()

    def __iter__(self) -> CompletionEvents:
        """Return the stream itself."""
        return self

    def __next__(self) -> GenerationEvent:
        """Return the next choice event; raise the server's ``EngineError`` from an error frame.

        Raises:
            EngineError: the server's error, or ``engine_unavailable`` when the connection breaks.
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
                raise unavailable("The inference server went away during generation.") from exc
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            try:
                chunk = msgspec.json.decode(data, type=Chunk)
            except msgspec.DecodeError as exc:
                self.close()
                logger.error("inference server sent an unreadable chunk: %.200r", data)
                raise EngineError(
                    "The inference server sent an unreadable chunk.", code="server_error", status=500
                ) from exc
            if chunk.error is not None:
                self.close()
                raise error_of(chunk.error, 500)
            if chunk.choices:
                return self._event(chunk.choices[0])
        self.close()
        raise StopIteration

    def _event(self, choice: ChunkChoice) -> GenerationEvent:
        if choice.logprobs is None and choice.text:
            raise no_token_ids()
        logprobs = choice.logprobs or ChunkLogprobs()
        ids = [token_id(name) for name in logprobs.tokens]
        entries = None
        if self._logprobs:
            tops = logprobs.top_logprobs or [None] * len(ids)
            entries = [
                self._entry(tid, logprob, top)
                for tid, logprob, top in zip(ids, logprobs.token_logprobs, tops, strict=False)
            ]
        finish = choice.finish_reason
        return GenerationEvent(
            index=choice.index,
            text=choice.text,
            token_ids=ids,
            logprobs=entries,
            finish_reason=None if finish is None else ("length" if finish == "length" else "stop"),
        )

    def _entry(self, tid: int, logprob: float | None, top: dict[str, float] | None) -> TokenLogprob:
        text, raw = token_text(self._tokenizer, tid)
        alternatives = []
        # vLLM adds the chosen token to the alternatives when it is not among the best `top_logprobs`
        for name, value in sorted((top or {}).items(), key=lambda item: -item[1])[: self._top]:
            alt = token_id(name)
            alt_text, alt_raw = token_text(self._tokenizer, alt)
            alternatives.append(TopLogprob(token_id=alt, token=alt_text, logprob=value, bytes=alt_raw))
        return TokenLogprob(
            token_id=tid, token=text, logprob=float(logprob or 0.0), bytes=raw, top_logprobs=alternatives
        )

    def close(self) -> None:
        """Close the connection (the server sees the disconnect and stops generating)."""
        self._response.close()
