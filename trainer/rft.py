"""Reinforcement fine-tuning: group-relative policy optimization (GRPO, Shao et al., 2024) as an ``Objective``.

For each prompt of a micro-batch (``RftBatch``), the model with its current adapter samples ``k`` completions
(``hyperparams.group_size``: 4 times ``compute_multiplier``, at least 2), the job's grader grades each, and each
completion's advantage is its reward relative to its group: ``(r - mean) / (std + eps)`` (population std). The
loss of a completion is the mean over its tokens of

    -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) + beta_kl * KL_t

with ``ratio = exp(log pi - log pi_old)`` and the per-token KL estimator ``exp(ref - log pi) - (ref - log pi) - 1``
to the reference, which is the model with its adapter disabled (``model.disable_adapter()``, as DPO's reference).
Log-probabilities are those of the sampling distribution: the logits divided by the sampling temperature.
Each batch of samples is trained on once, so ``pi_old`` is the policy itself, detached: the ratio is 1 and the
clip never binds, but its gradient is the policy gradient (as TRL's GRPO with one iteration); ``grpo_token_loss``
takes any ``old_logps`` and clips (tested). The normalizer unit is the completion: the loop divides the summed
sequence losses by the completions of the whole step.

Sampling uses the training model itself (no second copy): in eval mode, under ``torch.no_grad()``, batched with
left padding through ``generate``, with the RNG forked and seeded by the batch's seed (the job seed, the step and
the micro-batch), so a run, and a resumed run, samples the same completions. A fresh adapter is the identity, so
the KL term is exactly 0 at step 0.

Model graders (``score_model``, ``label_model``) name the job's base model and are answered by this same model
with its adapter disabled (``base_model_sampler``). Every sampled token (a model grader's included) and every
token trained on is counted (``take_tokens``), and billed with the step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunewright.graders import ModelReply, Sample, grade, parse_grader
from tunewright.modeling.chat import render_chat
from tunewright.modeling.dataset import TokenizedExample
from tunewright.modeling.loading import stop_token_ids
from tunewright.trainer.collate import collate_examples
from tunewright.trainer.dpo import reference
from tunewright.trainer.loop import target_logits

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import torch

    from tunewright.graders import Grader, Runtime, SamplingParams
    from tunewright.modeling.dataset import PromptExample
    from tunewright.modeling.hyperparams import ResolvedHyperparameters
    from tunewright.storage.settings import Settings

DEFAULT_MAX_COMPLETION_TOKENS = 128
DEFAULT_TEMPERATURE = 1.0
DEFAULT_CLIP_EPS = 0.2
DEFAULT_BETA_KL = 0.04
ADVANTAGE_EPS = 1e-4


@dataclass(frozen=True, slots=True)
class RftBatch:
    """A micro-batch of prompts and the seed their completions are sampled with."""

    examples: Sequence[PromptExample]
    seed: int


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled completion: its ids (up to and with its stop token), its text, and whether it was cut."""

    ids: list[int]
    text: str
    truncated: bool


@dataclass(slots=True)
class RewardStats:
    """Rewards of a set of completions: their sum, their count, and per sub-grader sums (a multi grader)."""

    total: float = 0.0
    count: int = 0
    by_grader: dict[str, float] = field(default_factory=dict)

    def means(self, prefix: str) -> dict[str, float]:
        """``{prefix_reward_mean, prefix_reward_mean/<grader>…}``: per-completion means (0 for no completion)."""
        count = max(1, self.count)
        out = {f"{prefix}_reward_mean": self.total / count}
        out.update({f"{prefix}_reward_mean/{name}": value / count for name, value in self.by_grader.items()})
        return out


def group_advantages(rewards: torch.Tensor, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """Return ``(r - mean) / (std + eps)`` within each row (a prompt's group) of ``rewards`` ``[prompts, k]``."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


def grpo_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float,
    beta_kl: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the clipped policy-gradient loss of each token with its KL penalty, and the KL of each token.

    All arguments are per token (``advantages`` is each token's completion's advantage).
    """
    import torch

    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1
    return -surrogate + beta_kl * kl, kl


def row_means(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean of ``values`` per row index in ``rows`` (0 for a row with none)."""
    import torch

    sums = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


class RftObjective:
    """GRPO over ``RftBatch`` micro-batches; its normalizer unit is the sampled completion.

    Metric numerators (summed over completions, divided by them by the loop): ``train_reward_mean`` (and
    ``train_reward_mean/<grader>`` for a multi grader's sub-graders), ``kl`` (mean per-token KL to the reference).
    """

    def __init__(
        self,
        grader: Grader,
        runtime: Runtime,
        tokenizer: Any,
        *,
        group_size: int,
        pad_id: int,
        max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        clip_eps: float = DEFAULT_CLIP_EPS,
        beta_kl: float = DEFAULT_BETA_KL,
    ) -> None:
        """Keep the grader and the sampling and loss settings.

        Raises:
            ValueError: ``group_size`` is below 2 (a group of one has no relative advantage).
        """
        if group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {group_size}")
        self.grader = grader
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.group_size = group_size
        self.pad_id = pad_id
        self.max_completion_tokens = max_completion_tokens
        self.temperature = temperature
        self.clip_eps = clip_eps
        self.beta_kl = beta_kl
        self.sampled_tokens = 0
        self.trained_tokens = 0

    def targets(self, batch: RftBatch) -> int:
        """Return the completions the batch samples: ``group_size`` per prompt."""
        return len(batch.examples) * self.group_size

    def take_tokens(self) -> tuple[int, int]:
        """Return ``(sampled, trained)`` tokens since the last call, and start counting again."""
        taken = (self.sampled_tokens, self.trained_tokens)
        self.sampled_tokens = self.trained_tokens = 0
        return taken

    def loss(self, model: Any, batch: RftBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample, grade, and return the GRPO loss summed over the completions with the metric numerators."""
        import torch

        prompts = [example.prompt for example in batch.examples for _ in range(self.group_size)]
        completions = sample(model, self.tokenizer, prompts, self, seed=batch.seed)
        items = [example.item for example in batch.examples for _ in range(self.group_size)]
        stats = RewardStats()
        rewards = torch.tensor([self.reward(c, item, stats) for c, item in zip(completions, items, strict=True)])
        advantages = group_advantages(rewards.view(len(batch.examples), self.group_size)).flatten()
        rows = [
            TokenizedExample(ids=p + c.ids, mask=[0] * len(p) + [1] * len(c.ids), line=0)
            for p, c in zip(prompts, completions, strict=True)
        ]
        self.trained_tokens += sum(len(row.ids) for row in rows)
        tokens = collate_examples(rows, self.pad_id)
        with torch.no_grad(), reference(model):
            ref, _ = token_logprobs(model, tokens, self.temperature)
        logps, row_of = token_logprobs(model, tokens, self.temperature)
        device = logps.device
        per_token, kl = grpo_token_loss(
            logps,
            logps.detach(),
            ref,
            advantages.to(device)[row_of],
            clip_eps=self.clip_eps,
            beta_kl=self.beta_kl,
        )
        loss = row_means(per_token, row_of, len(rows)).sum()
        numerators = {"train_reward_mean": stats.total, "kl": float(row_means(kl.detach(), row_of, len(rows)).sum())}
        numerators.update({f"train_reward_mean/{name}": value for name, value in stats.by_grader.items()})
        return loss, numerators

    def reward(self, completion: Completion, item: dict[str, Any], stats: RewardStats) -> float:
        """Grade one completion and add it to ``stats``."""
        result = grade(
            self.grader, Sample.from_text(completion.text, truncated=completion.truncated), item, self.runtime
        )
        stats.total += result.reward
        stats.count += 1
        self.sampled_tokens += result.total_tokens or 0  # a model grader's calls
        for name, value in result.sub_rewards.items():
            stats.by_grader[name] = stats.by_grader.get(name, 0.0) + value
        return float(result.reward)

    def evaluate(self, model: Any, examples: Sequence[PromptExample], *, seed: int, batch_size: int) -> RewardStats:
        """Sample one completion per prompt (seeded) and grade it: the validation reward."""
        stats = RewardStats()
        for start in range(0, len(examples), max(1, batch_size)):
            chunk = examples[start : start + max(1, batch_size)]
            completions = sample(model, self.tokenizer, [e.prompt for e in chunk], self, seed=seed + start)
            for completion, example in zip(completions, chunk, strict=True):
                self.reward(completion, example.item, stats)
        return stats


def token_logprobs(model: Any, batch: Any, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``log p`` of each target token (fp32, row-major order) and the batch row of each.

    ``p`` is the distribution the completions were sampled from: the logits divided by ``temperature`` (when
    positive).
    """
    import torch

    logits, labels, rows = target_logits(model, batch)
    if temperature > 0:
        logits = logits / temperature
    return -torch.nn.functional.cross_entropy(logits, labels, reduction="none"), rows


@contextlib.contextmanager
def sampling_mode(model: Any, seed: int) -> Iterator[None]:
    """Eval mode, no gradients, and a forked RNG seeded with ``seed``; the mode and the RNG are restored after."""
    import torch

    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def sample(
    model: Any, tokenizer: Any, prompts: list[list[int]], settings: RftObjective, *, seed: int
) -> list[Completion]:
    """Sample one completion per prompt with the model as it is now (adapter on), batched with left padding."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), settings.pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    with sampling_mode(model, seed):
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=settings.temperature > 0,
            temperature=settings.temperature if settings.temperature > 0 else None,
            top_p=None,
            top_k=None,
            max_new_tokens=settings.max_completion_tokens,
            eos_token_id=sorted(stops) or None,
            pad_token_id=settings.pad_id,
        )
    completions = [_completion(tokenizer, row[width:].tolist(), stops) for row in output]
    settings.sampled_tokens += sum(len(c.ids) for c in completions)
    return completions


def _completion(tokenizer: Any, generated: list[int], stops: frozenset[int]) -> Completion:
    """Cut a generated row at its first stop token (kept: the model learns to stop); no stop means truncated."""
    for index, token in enumerate(generated):
        if token in stops:
            ids = generated[: index + 1]
            return Completion(
                ids=ids, text=tokenizer.decode(generated[:index], skip_special_tokens=True), truncated=False
            )
    return Completion(ids=generated, text=tokenizer.decode(generated, skip_special_tokens=True), truncated=True)


def base_model_sampler(
    model: Any, tokenizer: Any, *, pad_id: int, max_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS
) -> Any:
    """A grader's model sampler answered by the job's base model: this model with its adapter disabled."""

    def sampler(name: str, messages: list[dict[str, Any]], params: SamplingParams) -> ModelReply:
        prompt = render_chat(tokenizer, messages, add_generation_prompt=True, with_mask=False).ids
        temperature = params.temperature if isinstance(params.temperature, int | float) else 0.0
        limit = params.max_completions_tokens if isinstance(params.max_completions_tokens, int) else max_tokens
        seed = params.seed if isinstance(params.seed, int) else 0
        settings = _SamplerSettings(pad_id=pad_id, temperature=temperature, max_completion_tokens=limit)
        with reference(model):
            (completion,) = sample(model, tokenizer, [prompt], settings, seed=seed)  # type: ignore[arg-type]
        return ModelReply(text=completion.text, prompt_tokens=len(prompt), completion_tokens=len(completion.ids))

    return sampler


def job_objective(
    method: dict[str, Any], settings: Settings, hyper: ResolvedHyperparameters, model: Any, tokenizer: Any
) -> RftObjective:
    """The objective of a reinforcement job: its grader, checked when the job was created, run as the API would.

    Model graders are answered by ``model`` with its adapter disabled (the job's base model).
    """
    from tunewright.modeling.hyperparams import DEFAULT_COMPUTE_MULTIPLIER, group_size
    from tunewright.trainer.collate import pad_id_of
    from tunewright.training_files.reinforcement import GRADER_PARAM, grader_runtime

    pad_id = pad_id_of(tokenizer)
    grader = parse_grader(method["reinforcement"]["grader"], param=GRADER_PARAM)
    runtime = grader_runtime(settings, base_model_sampler(model, tokenizer, pad_id=pad_id))
    compute = hyper.compute_multiplier if hyper.compute_multiplier is not None else DEFAULT_COMPUTE_MULTIPLIER
    return RftObjective(
        grader,
        runtime,
        tokenizer,
        group_size=group_size(compute),
        pad_id=pad_id,
        max_completion_tokens=settings.rft_max_completion_tokens,
    )


@dataclass(slots=True)
class _SamplerSettings:
    """What ``sample`` reads of an objective, for a model grader's call."""

    pad_id: int
    temperature: float
    max_completion_tokens: int
    sampled_tokens: int = 0
