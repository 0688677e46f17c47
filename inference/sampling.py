"""Choosing the next token of one row: logit bias, penalties, temperature, top-p, a seeded generator, logprobs.

Every row of a batch has its own ``SamplingParams`` and its own ``torch.Generator`` (seeded with
``seed + choice_index``), so a request gives the same text whatever else shares its batch, as long as its logits
are the same. Logprobs are the log-softmax of the model's raw logits (before bias, penalties and temperature),
which is what OpenAI-compatible servers report.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from tunewright.inference.engine import SamplingParams


@dataclass(frozen=True, slots=True)
class Choice:
    """The token a row chose, with its log-probability and the best alternatives when asked for.

    Attributes:
        token_id: The chosen token.
        logprob: Its log-probability under the raw logits (only set when logprobs were asked for).
        top: ``(token_id, logprob)`` of the ``top_logprobs`` most likely tokens, best first.
    """

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def row_seed(seed: int | None, choice_index: int) -> int:
    """Return the generator seed of a row: ``seed + choice_index``, or a fresh random seed when unseeded."""
    if seed is None:
        return secrets.randbits(62)
    return (seed + choice_index) % (2**63)


class RowSampler:
    """Picks one row's tokens step by step, remembering what it generated for the penalties."""

    def __init__(self, params: SamplingParams, *, seed: int, vocab_size: int, device: str = "cpu") -> None:
        """Prepare the row's generator, bias vector and token counts.

        Args:
            params: The row's sampling settings.
            seed: The generator seed (see ``row_seed``).
            vocab_size: Size of the model's logits (bias entries outside it are ignored).
            device: Where the logits live.
        """
        import torch

        self.params = params
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.bias: torch.Tensor | None = None
        valid = {token: value for token, value in params.logit_bias.items() if 0 <= token < vocab_size}
        if valid:
            self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self.bias[list(valid)] = torch.tensor(list(valid.values()), dtype=torch.float32, device=device)

    def choose(self, logits: torch.Tensor) -> Choice:
        """Pick the next token from one row's logits (1-D, the vocabulary) and record it for the penalties."""
        raw = logits.float()
        token_id = select_token(self.adjust(raw), self.params, self.generator)
        self.counts[token_id] += 1
        if not (self.params.logprobs or self.params.top_logprobs > 0):
            return Choice(token_id=token_id)
        return with_logprobs(raw, token_id, self.params.top_logprobs)

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the logits with the bias and the presence/frequency penalties applied (before temperature)."""
        out = logits[: self.counts.shape[0]]
        if self.bias is not None:
            out = out + self.bias
        params = self.params
        if params.frequency_penalty or params.presence_penalty:
            out = out - params.frequency_penalty * self.counts - params.presence_penalty * (self.counts > 0).float()
        return out


GREEDY_BELOW = 1e-5
"""Temperatures under this are greedy (as in vLLM): dividing float32 logits by a vanishing temperature gives
infinities (and a temperature under float32's range divides by zero), while the distribution it stands for puts
all its mass on the argmax anyway."""


def select_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Return a token id: argmax at (near) temperature 0, else a draw from the temperature-scaled top-p distribution."""
    import torch

    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = nucleus(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (always at least one)."""
    import torch

    ordered, order = torch.sort(probs, descending=True)
    before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ahead of each one
    ordered = torch.where(before < top_p, ordered, torch.zeros_like(ordered))
    ordered[0] = ordered[0].clamp_min(torch.finfo(ordered.dtype).tiny)
    kept = torch.zeros_like(probs).scatter(0, order, ordered)
    return kept / kept.sum()


def with_logprobs(raw: torch.Tensor, token_id: int, top: int) -> Choice:
    """Return the choice of ``token_id`` with its log-probability and the ``top`` best under ``raw`` logits."""
    import torch

    logprobs = torch.log_softmax(raw, dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, indices = torch.topk(logprobs, min(top, logprobs.shape[0]))
        best = [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    return Choice(token_id=token_id, logprob=float(logprobs[token_id].item()), top=best)
