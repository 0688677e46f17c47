"""Per-row sampling (bias, penalties, temperature, top-p, seeds, logprobs) and stop-string holdback, no model."""

from __future__ import annotations

import math

import pytest
import torch

from tunewright.inference.detokenize import StopText
from tunewright.inference.engine import SamplingParams
from tunewright.inference.sampling import RowSampler, nucleus, row_seed

VOCAB = 8


def sampler(seed: int = 0, **params: object) -> RowSampler:
    values: dict[str, object] = {"max_new_tokens": 16, **params}
    return RowSampler(SamplingParams(**values), seed=seed, vocab_size=VOCAB)  # type: ignore[arg-type]


def logits(*values: float) -> torch.Tensor:
    return torch.tensor(values + (0.0,) * (VOCAB - len(values)), dtype=torch.float32)


def test_greedy_picks_the_argmax() -> None:
    row = sampler(temperature=0)
    assert row.choose(logits(1.0, 3.0, 2.0)).token_id == 1


@pytest.mark.parametrize("temperature", [9e-6, 1e-45, 1e-300, 5e-324])
def test_a_vanishing_temperature_is_greedy_rather_than_non_finite(temperature: float) -> None:
    row = sampler(seed=3, temperature=temperature, logit_bias={2: 100.0})
    assert [row.choose(logits(1.0, 3.0, 2.0)).token_id for _ in range(3)] == [2, 2, 2]


def test_logit_bias_moves_the_choice_and_ignores_ids_outside_the_vocabulary() -> None:
    row = sampler(temperature=0, logit_bias={2: 5.0, VOCAB + 3: 100.0})
    assert row.choose(logits(1.0, 3.0, 2.0)).token_id == 2


def test_frequency_penalty_grows_with_each_repeat() -> None:
    row = sampler(temperature=0, frequency_penalty=0.6)
    scores = logits(2.0, 1.0)
    assert [row.choose(scores).token_id for _ in range(3)] == [0, 0, 1]
    assert row.counts[0].item() == 2
    assert row.adjust(scores)[0].item() == pytest.approx(2.0 - 1.2)


def test_presence_penalty_counts_a_token_once() -> None:
    row = sampler(temperature=0, presence_penalty=0.5)
    scores = logits(2.0, 1.8)
    assert [row.choose(scores).token_id for _ in range(3)] == [0, 1, 0]
    assert row.adjust(scores)[0].item() == pytest.approx(1.5)


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = nucleus(probs, 0.7)
    assert kept.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert nucleus(probs, 0.0).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def test_top_p_sampling_never_draws_outside_the_nucleus() -> None:
    row = sampler(seed=1, temperature=1.0, top_p=0.5)
    scores = logits(4.0, 3.9, 0.0, 0.0)
    assert {row.choose(scores).token_id for _ in range(200)} <= {0, 1}


def test_the_same_seed_gives_the_same_draws_and_another_seed_differs() -> None:
    scores = logits(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

    def draws(seed: int) -> list[int]:
        row = sampler(seed=seed, temperature=1.0)
        return [row.choose(scores).token_id for _ in range(32)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_row_seeds_follow_the_choice_index_and_unseeded_rows_differ() -> None:
    assert [row_seed(10, i) for i in range(3)] == [10, 11, 12]
    assert row_seed(None, 0) != row_seed(None, 0)


def test_logprobs_use_the_raw_logits_before_temperature_and_bias() -> None:
    row = sampler(temperature=0.5, logprobs=True, top_logprobs=2, logit_bias={3: 50.0})
    scores = logits(2.0, 1.0)
    choice = row.choose(scores)
    expected = torch.log_softmax(scores, dim=-1)
    assert choice.token_id == 3
    assert choice.logprob == pytest.approx(expected[3].item())
    assert [token for token, _ in choice.top] == [0, 1]
    assert choice.top[0][1] == pytest.approx(expected[0].item())
    assert math.isclose(sum(math.exp(v) for v in expected.tolist()), 1.0, rel_tol=1e-5)


def test_no_logprobs_unless_asked() -> None:
    choice = sampler(temperature=0).choose(logits(1.0))
    assert choice.logprob is None
    assert choice.top == []


def test_stop_text_holds_back_a_possible_stop_start_and_cuts_before_the_stop() -> None:
    text = StopText(["END"])
    assert text.update("Hello E") == "Hello "
    assert text.update("Hello EN") == ""
    assert text.update("Hello ENx") == "ENx"
    assert text.update("Hello ENx and EN") == " and "
    assert text.update("Hello ENx and END more") == ""
    assert text.stopped
    assert text.update("Hello ENx and END more and more") == ""


def test_stop_text_finds_a_stop_string_spanning_released_text() -> None:
    text = StopText(["ab", "xyz"])
    assert text.update("1x") == "1"
    assert text.update("1xy") == ""
    assert text.update("1xyz2") == ""
    assert text.stopped


def test_stop_text_holds_an_incomplete_character_until_it_completes_or_the_row_ends() -> None:
    text = StopText([])
    assert text.update("caf\ufffd") == "caf"
    assert text.update("café") == "é"
    assert text.update("café \ufffd") == " "
    assert text.update("café \ufffd", final=True) == "\ufffd"


def test_stop_text_final_flushes_a_held_back_stop_prefix() -> None:
    text = StopText(["###"])
    assert text.update("done #") == "done "
    assert text.update("done ##", final=True) == "##"
    assert not text.stopped
