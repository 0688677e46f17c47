"""Early stopping on the validation loss, and the best checkpoint it publishes (docs/architecture.md "Training").

The evaluations that count are the full validation file's, at each checkpoint (every epoch end): each has a
checkpoint, so the best one can be published, and they all measure the same examples (the every-N-steps figure
is a sample). An evaluation improves when its loss is below the loss of the last improvement by more than
``min_delta`` (as Keras's ``EarlyStopping`` counts: small gains add up until they make one); after ``patience``
evaluations in a row that do not, the job stops. The best checkpoint is the one with the lowest loss so far (the
one ``publish.checkpoints_to_drop`` always keeps), so a gain smaller than ``min_delta`` still moves it, without
resetting the count.

Pure Python: the state is a msgspec Struct saved in the job's resume point (``resume.TrainingProgress``), so a
crash, a pause or a worker stop resumes the count where it was.
"""

from __future__ import annotations

import msgspec


class EarlyStoppingState(msgspec.Struct, kw_only=True, frozen=True):
    """What early stopping remembers between evaluations.

    Attributes:
        best_loss: The lowest full validation loss so far (None before the first evaluation).
        best_step: The step (and checkpoint) it was measured at.
        reference_loss: The loss of the last evaluation that counted as an improvement.
        since_improvement: Evaluations since that one.
    """

    best_loss: float | None = None
    best_step: int | None = None
    reference_loss: float | None = None
    since_improvement: int = 0


def observe(state: EarlyStoppingState, *, step: int, loss: float, min_delta: float) -> EarlyStoppingState:
    """Return the state after an evaluation of ``loss`` at ``step``.

    Raises:
        ValueError: ``min_delta`` is negative.
    """
    if min_delta < 0:
        raise ValueError(f"min_delta must not be negative, got {min_delta}")
    improved = state.reference_loss is None or loss < state.reference_loss - min_delta
    lower = state.best_loss is None or loss < state.best_loss
    return EarlyStoppingState(
        best_loss=loss if lower else state.best_loss,
        best_step=step if lower else state.best_step,
        reference_loss=loss if improved else state.reference_loss,
        since_improvement=0 if improved else state.since_improvement + 1,
    )


def should_stop(state: EarlyStoppingState, patience: int) -> bool:
    """Whether ``patience`` evaluations in a row have not improved.

    Raises:
        ValueError: ``patience`` is below 1.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    return state.since_improvement >= patience
