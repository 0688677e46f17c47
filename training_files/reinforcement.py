"""Reinforcement fine-tuning (RFT) data and graders: what both the API and the worker check.

Pure Python (no torch). A reinforcement training line is a chat prompt plus any extra keys its grader reads:

- ``messages``: the prompt, checked as a chat's messages (roles, content, tool calls) but with no assistant turn
  required. A final ``assistant`` message is refused: the model writes the assistant's reply, so a prompt that
  already ends with one would be graded on something else (earlier assistant turns are context, as in DPO);
- ``tools`` / ``parallel_tool_calls`` / ``functions`` as in a chat line;
- any other key: the item of ``{{ item.… }}`` templates. Each line must fill every item template of the job's
  grader (``Runtime.check(grader, item=line)``); a line that cannot is refused naming its line.

The job's grader (``method.reinforcement.grader``) runs where the job trains: python graders only when the
operator enabled them (``TUNEWRIGHT_PYTHON_GRADERS``), ``score_model`` / ``label_model`` graders only when they name
the job's own base model (the trainer answers them with its model, adapter disabled), and no ``cosine`` metric (no
embedding model in the worker).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from tunewright.graders import GraderError, ModelGraderError, Runtime, SandboxLimits, model_graders, parse_grader
from tunewright.training_files.chat_format import check_messages, check_tool_fields

if TYPE_CHECKING:
    from tunewright.graders import Grader, ModelReply, ModelSampler, SamplingParams
    from tunewright.training_files.errors import Problems

GRADER_PARAM = "method.reinforcement.grader"


class Settings(Protocol):
    """The settings the graders read (`storage.settings.Settings` has them; this package imports no storage)."""

    python_graders: bool
    python_grader_timeout_s: float
    python_grader_memory_bytes: int


def grader_runtime(settings: Settings, sample_model: ModelSampler | None) -> Runtime:
    """What a grader may use here: ``sample_model`` for model graders, python graders when the operator enabled them."""
    python = None
    if settings.python_graders:
        python = SandboxLimits(
            wall_s=settings.python_grader_timeout_s,
            cpu_s=max(1, math.ceil(settings.python_grader_timeout_s)),
            memory_bytes=settings.python_grader_memory_bytes,
        )
    return Runtime(sample_model=sample_model, python=python)


def check_job_grader(value: Any, settings: Settings, *, base_model: str) -> Grader:
    """Decode and check a job's grader; model graders must name the job's base model.

    Raises:
        GraderError: naming the path under ``method.reinforcement.grader``.
    """
    grader = parse_grader(value, param=GRADER_PARAM)
    for where, model in model_graders(grader, GRADER_PARAM):
        if model != base_model:
            raise GraderError(
                f"Unsupported value for '{where}': a reinforcement job's model grader runs on the job's own base "
                f"model, '{base_model}' (with the adapter disabled); '{model}' is not available to it.",
                param=where,
                code="unsupported_value",
            )
    grader_runtime(settings, unavailable_sampler).check(grader, param=GRADER_PARAM)
    return grader


def unavailable_sampler(model: str, messages: list[dict[str, Any]], params: SamplingParams) -> ModelReply:
    """Stands for a model sampler while checking (a check never samples)."""
    raise ModelGraderError("not sampling while checking")


def check_reinforcement_example(obj: dict[str, Any], out: Problems) -> None:
    """Check an RFT line: chat messages that end before the assistant's reply."""
    messages = obj.get("messages")
    check_messages(messages, "messages", out, require_target=False)
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        out.add(
            f"messages[{len(messages) - 1}]",
            "must not be an assistant message: in reinforcement fine-tuning the model writes the reply",
        )
    check_tool_fields(obj, "", out)


class ItemCheck:
    """Checks each line against the item templates of a grader (``Runtime.check(grader, item=line)``)."""

    def __init__(self, grader: Grader) -> None:
        """Check lines against ``grader`` (already checked by ``check_job_grader``)."""
        self.grader = grader
        self.runtime = Runtime(sample_model=unavailable_sampler, python=SandboxLimits())

    def __call__(self, obj: dict[str, Any], out: Problems) -> None:
        """Add a problem when ``obj`` cannot fill one of the grader's ``{{ item.… }}`` templates."""
        try:
            self.runtime.check(self.grader, param=GRADER_PARAM, item=obj)
        except GraderError as exc:
            out.add("", f"cannot be graded: {exc.message}")
