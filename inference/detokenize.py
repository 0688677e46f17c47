"""Generated tokens → text released to the client: incomplete characters and possible stop strings held back.

A row's text is always the decoding of all its generated ids (decoding piece by piece breaks multi-byte
characters and SentencePiece spaces); what has not been released yet is the new suffix. Two things are held
back: a trailing ``U+FFFD`` (a UTF-8 character whose remaining bytes are in the next token) and the longest
tail that could be the start of a stop string. A stop string found cuts the text before it and ends the row.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class StopText:
    """Releases a row's text as it grows, never releasing a stop string or the start of one."""

    def __init__(self, stop: Sequence[str]) -> None:
        """Remember the stop strings (empty ones are ignored)."""
        self.stop = tuple(s for s in stop if s)
        self.released = 0
        self.stopped = False

    def update(self, text: str, *, final: bool = False) -> str:
        """Return the newly releasable part of ``text`` (the row's whole decoded text so far).

        Args:
            text: Everything the row generated, decoded.
            final: The row ends here: release everything but a stop string (and what follows it).

        Returns:
            The new text; after a stop string is found, ``stopped`` is True and nothing more is released.
        """
        if self.stopped:
            return ""
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            return self._release(text, cut)
        if final:
            return self._release(text, len(text))
        end = len(text) - self._held_back(text)
        return self._release(text, end)

    def _release(self, text: str, end: int) -> str:
        if end <= self.released:
            return ""
        piece = text[self.released : end]
        self.released = end
        return piece

    def _find_stop(self, text: str) -> int | None:
        """Return where the earliest stop string starts in the unreleased region (plus an overlap), if any."""
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.released - longest + 1)
        found = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Count the trailing characters to hold: an incomplete character, and a possible stop string start."""
        hold = 0
        while hold < len(text) and text[len(text) - 1 - hold] == REPLACEMENT:
            hold += 1
        body = text[: len(text) - hold]
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(body)), 0, -1):
                if body.endswith(stop[:size]):
                    hold = max(hold, len(text) - len(body) + size)
                    break
        return hold


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode generated ids as the client sees them: special tokens skipped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-printable-character table that byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_text(tokenizer: Any, token_id: int) -> tuple[str, list[int]]:
    """Return a token's text and its exact bytes (for logprobs); a partial character's text shows U+FFFD.

    Byte-level BPE tokens are mapped back to their raw bytes; other vocabularies use the UTF-8 of the decoded text.
    """
    text = tokenizer.decode([token_id])
    piece = tokenizer.convert_ids_to_tokens(token_id)
    table = _byte_decoder()
    if isinstance(piece, str) and piece and all(ch in table for ch in piece) and REPLACEMENT in text:
        return text, [table[ch] for ch in piece]
    return text, list(text.encode("utf-8"))
