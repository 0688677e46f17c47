"""The running batch's tensors: a left-padded KV cache and attention mask that rows join and leave between steps.

Rows have prompts of different lengths. Each row's cached keys already carry its own rotary positions, so rows
can be aligned on the right by left-padding their cache with masked zeros: a newly prefilled group is merged
into the running batch by padding the shorter of the two on the left, and rows that finish are dropped with
``index_select`` (then columns that every remaining row masks are cut off). The model sees an ordinary
left-padded batch with a 2-D attention mask and explicit position ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


class KVBatch:
    """A batch's KV cache (a transformers ``DynamicCache``) and its ``[rows, positions]`` attention mask."""

    def __init__(self, cache: Any, mask: torch.Tensor) -> None:
        """Wrap a cache filled by a forward pass and the mask it was computed with."""
        self.cache = cache
        self.mask = mask

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.mask.shape[0])

    def layers(self) -> list[Any]:
        """The cache's per-layer objects (each with ``keys`` and ``values`` tensors ``[rows, heads, T, dim]``)."""
        return list(self.cache.layers)

    def extend(self, other: KVBatch) -> None:
        """Append ``other``'s rows after this batch's rows, left-padding whichever is shorter."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.layers(), other.layers(), strict=True):
            for attr in ("keys", "values"):
                a, b = getattr(mine, attr), getattr(theirs, attr)
                a = F.pad(a, (0, 0, length - a.shape[2], 0))
                b = F.pad(b, (0, 0, length - b.shape[2], 0))
                setattr(mine, attr, torch.cat([a, b], dim=0))
        self.mask = torch.cat(
            [F.pad(self.mask, (length - self.mask.shape[1], 0)), F.pad(other.mask, (length - other.mask.shape[1], 0))]
        )

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at ``indices`` (in that order) and drop columns no remaining row uses."""
        import torch

        index = torch.tensor(list(indices), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0].item()) if used.numel() else mask.shape[1]
        self.mask = mask[:, start:]
        for layer in self.layers():
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def grow(self) -> torch.Tensor:
        """Extend the mask by one attended column for the step about to run; return it."""
        import torch

        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self.mask


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(input_ids, attention_mask)`` of prompts left-padded to the longest."""
    import torch

    length = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, length - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded prefill: 0 at each row's first real token (pads get 0 too)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def new_cache() -> Any:
    """An empty transformers ``DynamicCache``."""
    from transformers import DynamicCache

    return DynamicCache()
