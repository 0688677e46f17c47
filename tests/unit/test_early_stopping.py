"""The early-stopping rule: patience counts evaluations that do not beat the best by more than min_delta."""

from __future__ import annotations

import pytest

from tunewright.trainer.early_stopping import EarlyStoppingState, observe, should_stop


def run(losses: list[float], *, patience: int, min_delta: float = 0.0) -> tuple[int | None, EarlyStoppingState]:
    """Feed one loss per evaluation (steps 10, 20, …); return the step it stops at (None: never) and the state."""
    state = EarlyStoppingState()
    for index, loss in enumerate(losses, start=1):
        state = observe(state, step=index * 10, loss=loss, min_delta=min_delta)
        if should_stop(state, patience):
            return index * 10, state
    return None, state


def test_the_first_evaluation_is_the_best_so_far() -> None:
    state = observe(EarlyStoppingState(), step=5, loss=2.0, min_delta=0.5)
    assert state == EarlyStoppingState(best_loss=2.0, best_step=5, reference_loss=2.0, since_improvement=0)


def test_a_loss_that_stops_improving_stops_after_patience_evaluations() -> None:
    stop, state = run([3.0, 2.0, 2.5, 2.4], patience=2)
    assert stop == 40
    assert (state.best_loss, state.best_step, state.since_improvement) == (2.0, 20, 2)


def test_an_improvement_resets_the_count() -> None:
    assert run([3.0, 3.1, 2.9, 3.0, 3.2], patience=2) == (
        50,
        EarlyStoppingState(best_loss=2.9, best_step=30, reference_loss=2.9, since_improvement=2),
    )
    assert run([3.0, 3.1, 2.9, 3.0, 2.8, 2.7], patience=2)[0] is None


def test_patience_one_stops_at_the_first_evaluation_without_improvement() -> None:
    assert run([3.0, 2.0, 2.0], patience=1)[0] == 30  # equal is not better
    assert run([3.0, 2.0, 1.0], patience=1)[0] is None


def test_gains_within_min_delta_move_the_best_but_do_not_reset_the_count() -> None:
    stop, state = run([3.0, 2.95, 2.92, 2.91], patience=3, min_delta=0.1)
    assert stop == 40
    assert (state.best_loss, state.best_step) == (2.91, 40)  # the lowest loss is still the checkpoint to publish
    assert state.reference_loss == 3.0


def test_small_gains_add_up_to_an_improvement() -> None:
    # 2.89 is within 0.1 of 2.95, the loss before it, but more than 0.1 below 3.0, the last improvement.
    assert run([3.0, 2.95, 2.89, 2.85], patience=2, min_delta=0.1)[0] is None
    assert run([3.0, 2.95, 2.91, 2.85], patience=2, min_delta=0.1)[0] == 30


def test_a_worse_loss_never_moves_the_best() -> None:
    _, state = run([2.0, 5.0, 4.0], patience=10)
    assert (state.best_loss, state.best_step, state.since_improvement) == (2.0, 10, 2)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_delta"):
        observe(EarlyStoppingState(), step=1, loss=1.0, min_delta=-0.1)
    with pytest.raises(ValueError, match="patience"):
        should_stop(EarlyStoppingState(), 0)
