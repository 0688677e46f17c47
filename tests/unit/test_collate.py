"""Tokenized examples become right-padded tensors: target mask and attention mask 0 on padding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunewright.modeling.dataset import PreferenceExample, TokenizedExample
from tunewright.trainer.collate import collate_examples, collate_preferences, pad_id_of

torch = pytest.importorskip("torch")

PAD = 99


def test_supervised_examples_are_right_padded_to_the_longest() -> None:
    short = TokenizedExample(ids=[1, 2, 3], mask=[0, 1, 1], line=1)
    long = TokenizedExample(ids=[4, 5, 6, 7, 8], mask=[0, 0, 1, 1, 1], line=2)
    batch = collate_examples([short, long], PAD)
    assert batch.input_ids.tolist() == [[1, 2, 3, PAD, PAD], [4, 5, 6, 7, 8]]
    assert batch.mask.tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 1]]
    assert batch.attention_mask is not None
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.input_ids.dtype == batch.mask.dtype == batch.attention_mask.dtype == torch.long


def test_preference_masks_cover_each_output_and_not_the_prompt() -> None:
    pair = PreferenceExample(prompt=[1, 2], chosen=[3, 4, 5], rejected=[6], line=1)
    other = PreferenceExample(prompt=[7], chosen=[8], rejected=[9, 10, 11, 12], line=2)
    batch = collate_preferences([pair, other], PAD)
    assert batch.chosen.input_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, PAD, PAD, PAD]]
    assert batch.chosen.mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert batch.rejected.input_ids.tolist() == [[1, 2, 6, PAD, PAD], [7, 9, 10, 11, 12]]
    assert batch.rejected.mask.tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert batch.rejected.attention_mask is not None
    assert batch.rejected.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # Each half's target tokens are exactly that output's tokens.
    assert int(batch.chosen.mask.sum()) == len(pair.chosen) + len(other.chosen)


def test_an_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate_examples([], PAD)
    with pytest.raises(ValueError, match="empty"):
        collate_preferences([], PAD)


@pytest.mark.parametrize(
    ("pad", "eos", "expected"),
    [(5, 7, 5), (None, 7, 7), (None, None, 0), (0, 7, 0)],
)
def test_pad_id_falls_back_to_eos_then_zero(pad: int | None, eos: int | None, expected: int) -> None:
    assert pad_id_of(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == expected
