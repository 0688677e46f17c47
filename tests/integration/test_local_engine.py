"""LocalEngine on the tiny model with real LoRA adapters in the blob store: batching, sampling, cache, cancel.

Adapters are the tiny model wrapped with PEFT LoRA whose weights are set to seeded random non-zero values (a
fresh LoRA adapter is the identity), saved in PEFT layout and stored under a blob prefix as the trainer does.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from fixtures.app import backend_settings

from tunewright.inference.adapters import AdapterCacheStats
from tunewright.inference.engine import (
    AdapterRef,
    EngineError,
    GenerationEvent,
    GenerationRequest,
    ModelTarget,
    SamplingParams,
    generate,
)
from tunewright.inference.local import LocalEngine

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tunewright.storage.base import Stores
    from tunewright.storage.settings import Settings

TINY = "tiny-llama"
PROMPTS = ["Hello, how are you?", "What is the capital of France?", "alpha beta gamma"]


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, tiny_dir: Path) -> Settings:
    """Settings over the backend under test with `tiny-llama` = the session's tiny model."""
    overrides = getattr(request, "param", {})
    return backend_settings(request, tmp_path, backend, base_models={TINY: str(tiny_dir)}, torch_threads=1, **overrides)


@pytest.fixture
def engine(settings: Settings, stores: Stores) -> Iterator[LocalEngine]:
    """A LocalEngine on the CPU, closed after the test."""
    built = LocalEngine(settings, stores.blobs, device="cpu")
    yield built
    built.close()


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three PEFT adapter directories with different seeded random LoRA weights."""
    return [make_adapter(tiny_dir, tmp_path_factory.mktemp(f"adapter{seed}"), seed=seed) for seed in (1, 2, 3)]


def make_adapter(tiny_dir: Path, out: Path, *, seed: int) -> Path:
    """Save a LoRA adapter of the tiny model with random non-zero weights to `out`."""
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    return make_lora(tiny_dir, out, seed=seed, scale=0.5, r=4, lora_alpha=8, target_modules=targets)


def store_adapter(stores: Stores, directory: Path, name: str) -> AdapterRef:
    """Put an adapter's two files under a blob prefix; return its reference."""
    prefix = f"proj_test/adapters/{name}/final"
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        with (directory / filename).open("rb") as fh:
            stores.blobs.put(f"{prefix}/{filename}", fh)
    return AdapterRef(name=f"ft:{TINY}:acme::{name}", blob_prefix=prefix)


@pytest.fixture
def adapters(stores: Stores, adapter_dirs: list[Path]) -> list[AdapterRef]:
    """The three adapters in the blob store."""
    return [store_adapter(stores, directory, f"job{k}") for k, directory in enumerate(adapter_dirs)]


def prompt(engine: LocalEngine, text: str = PROMPTS[0]) -> list[int]:
    """Chat-template token ids of one user message, ready for the assistant's answer."""
    return list(engine.tokenizer(TINY)(render(engine, text), add_special_tokens=False)["input_ids"])


def render(engine: LocalEngine, text: str) -> str:
    """The chat template's text for one user message plus the assistant header."""
    return engine.tokenizer(TINY).apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def request(
    engine: LocalEngine, adapter: AdapterRef | None = None, *, text: str = PROMPTS[0], n: int = 1, **params: Any
) -> GenerationRequest:
    """A request for the tiny model (greedy, 12 new tokens unless told)."""
    values: dict[str, Any] = {"max_new_tokens": 12, "temperature": 0.0, **params}
    return GenerationRequest(
        target=ModelTarget(base_model=TINY, adapter=adapter),
        prompt_ids=prompt(engine, text),
        params=SamplingParams(**values),
        n=n,
    )


class Result(msgspec.Struct, kw_only=True):
    """One choice as the API would assemble it from events."""

    text: str = ""
    token_ids: list[int] = msgspec.field(default_factory=list)
    finish_reason: str | None = None
    events: int = 0


def collect(events: Iterator[GenerationEvent]) -> dict[int, Result]:
    """Assemble events into choices, checking that each choice finishes exactly once, last."""
    choices: dict[int, Result] = {}
    for event in events:
        choice = choices.setdefault(event.index, Result())
        assert choice.finish_reason is None, "event after the finish"
        choice.text += event.text
        choice.token_ids += event.token_ids
        choice.finish_reason = event.finish_reason
        choice.events += 1
    assert all(choice.finish_reason in ("stop", "length") for choice in choices.values())
    return choices


def run(engine: LocalEngine, req: GenerationRequest) -> dict[int, Result]:
    return collect(generate(engine, req, cancelled=threading.Event()))


def text_of(engine: LocalEngine, req: GenerationRequest) -> str:
    return run(engine, req)[0].text


def test_an_adapter_changes_the_greedy_output(engine: LocalEngine, adapters: list[AdapterRef]) -> None:
    base = text_of(engine, request(engine))
    tuned = [text_of(engine, request(engine, adapter)) for adapter in adapters[:2]]
    assert base != tuned[0]
    assert tuned[0] != tuned[1]
    assert text_of(engine, request(engine, adapters[0])) == tuned[0]


def test_a_mixed_batch_gives_each_request_its_text_alone(engine: LocalEngine, adapters: list[AdapterRef]) -> None:
    cases = [(None, PROMPTS[0]), (adapters[0], PROMPTS[1]), (adapters[1], PROMPTS[2]), (adapters[0], PROMPTS[0])]
    alone = [run(engine, request(engine, adapter, text=text, max_new_tokens=16)) for adapter, text in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(
            pool.map(lambda case: run(engine, request(engine, case[0], text=case[1], max_new_tokens=16)), cases)
        )
    assert together == alone
    assert len({result[0].text for result in alone}) == len(cases)
    assert engine.active_rows() == 0


def test_the_same_seed_gives_the_same_text_and_another_seed_differs(
    engine: LocalEngine, adapters: list[AdapterRef]
) -> None:
    def sampled(seed: int) -> str:
        return text_of(engine, request(engine, adapters[0], temperature=1.0, seed=seed, max_new_tokens=16))

    assert sampled(11) == sampled(11)
    assert sampled(11) != sampled(12)


def test_n_choices_are_distinct_rows_and_reproducible(engine: LocalEngine) -> None:
    req = request(engine, n=3, temperature=1.0, seed=5, max_new_tokens=10)
    first = run(engine, req)
    assert sorted(first) == [0, 1, 2]
    assert len({choice.text for choice in first.values()}) == 3
    assert run(engine, req) == first


def test_max_new_tokens_ends_with_length_and_exactly_that_many_tokens(engine: LocalEngine, tokenizer: Any) -> None:
    choice = run(engine, request(engine, temperature=1.0, seed=3, max_new_tokens=7))[0]
    assert choice.finish_reason == "length"
    assert len(choice.token_ids) == 7
    # Usage counts the events' tokens: they decode to exactly the text the client received.
    assert tokenizer.decode(choice.token_ids, skip_special_tokens=True) == choice.text


def test_a_stop_string_cuts_the_text_before_it(engine: LocalEngine, adapters: list[AdapterRef]) -> None:
    full = text_of(engine, request(engine, adapters[0], temperature=1.0, seed=21, max_new_tokens=24))
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), full
    cut = run(engine, request(engine, adapters[0], temperature=1.0, seed=21, max_new_tokens=24, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert stop not in cut.text


def test_the_end_of_turn_token_stops_and_is_not_emitted(engine: LocalEngine, tokenizer: Any) -> None:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    choice = run(engine, request(engine, max_new_tokens=20, logit_bias={im_end: 100.0}))[0]
    assert choice.finish_reason == "stop"
    assert choice.text == ""
    assert choice.token_ids == []


def test_logprobs_come_with_every_token(engine: LocalEngine) -> None:
    events = list(generate(engine, request(engine, logprobs=True, top_logprobs=3), cancelled=threading.Event()))
    for event in events:
        assert event.logprobs is not None
        assert len(event.logprobs) == len(event.token_ids)
        for entry in event.logprobs:
            assert entry.logprob <= 0.0
            assert len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    assert sum(len(event.token_ids) for event in events) == 12


def test_cancel_mid_generation_ends_the_iterator_and_frees_the_rows(engine: LocalEngine) -> None:
    cancelled = threading.Event()
    events = generate(engine, request(engine, n=2, max_new_tokens=400, temperature=1.0, seed=1), cancelled=cancelled)
    first = next(events)
    assert first.finish_reason is None
    cancelled.set()
    rest = list(events)
    assert all(event.finish_reason is None for event in rest)
    assert engine.active_rows() == 0
    # The batch is usable afterwards.
    assert run(engine, request(engine, max_new_tokens=3))[0].finish_reason == "length"


def test_a_corrupt_adapter_fails_only_its_request(
    engine: LocalEngine, stores: Stores, adapters: list[AdapterRef]
) -> None:
    broken = AdapterRef(name="ft:tiny-llama:acme::broken", blob_prefix="proj_test/adapters/broken/final")
    stores.blobs.put(f"{broken.blob_prefix}/adapter_config.json", b'{"peft_type": "LORA", "r": 4')
    stores.blobs.put(f"{broken.blob_prefix}/adapter_model.safetensors", b"not safetensors")
    expected = text_of(engine, request(engine, max_new_tokens=30))
    started = threading.Event()
    results: list[str] = []

    def base_request() -> None:
        events = generate(engine, request(engine, max_new_tokens=30), cancelled=threading.Event())
        started.set()
        results.append("".join(event.text for event in events))

    thread = threading.Thread(target=base_request)
    thread.start()
    started.wait()
    with pytest.raises(EngineError) as caught:
        generate(engine, request(engine, broken), cancelled=threading.Event())
    thread.join()
    assert caught.value.code == "adapter_unavailable"
    assert caught.value.status == 500
    assert results == [expected]
    assert run(engine, request(engine, adapters[0]))[0].finish_reason in ("stop", "length")
    assert "ft:tiny-llama:acme::broken" not in engine.adapter_states()


def test_a_missing_adapter_is_unavailable(engine: LocalEngine) -> None:
    missing = AdapterRef(name="ft:tiny-llama:acme::gone", blob_prefix="proj_test/adapters/gone/final")
    with pytest.raises(EngineError) as caught:
        generate(engine, request(engine, missing), cancelled=threading.Event())
    assert (caught.value.code, caught.value.status) == ("adapter_unavailable", 500)


def test_forget_then_deleting_the_blobs_makes_the_next_request_fail(
    engine: LocalEngine, stores: Stores, adapters: list[AdapterRef], settings: Settings
) -> None:
    adapter = adapters[0]
    text_of(engine, request(engine, adapter))
    assert engine.adapter_states() == {adapter.name: "loaded"}
    engine.forget(adapter.name)
    assert engine.adapter_states() == {}
    assert not any((settings.data_path / "adapter-cache").iterdir())
    stores.blobs.delete_prefix(adapter.blob_prefix + "/")
    with pytest.raises(EngineError) as caught:
        generate(engine, request(engine, adapter), cancelled=threading.Event())
    assert caught.value.code == "adapter_unavailable"


@pytest.mark.parametrize("settings", [{"adapter_cache_count": 2}], indirect=True)
def test_lru_eviction_keeps_two_loaded_and_serves_all_three(engine: LocalEngine, adapters: list[AdapterRef]) -> None:
    assert engine.adapter_cache_stats() == AdapterCacheStats()
    first = [text_of(engine, request(engine, adapter)) for adapter in adapters]
    states = engine.adapter_states()
    assert sum(state == "loaded" for state in states.values()) == 2
    assert states[adapters[0].name] == "on_disk"
    assert engine.adapter_cache_stats() == AdapterCacheStats(misses=3, evicted_from_memory=1)
    again = [text_of(engine, request(engine, adapter)) for adapter in reversed(adapters)]
    assert again[::-1] == first
    assert sum(state == "loaded" for state in engine.adapter_states().values()) == 2
    assert len(set(first)) == 3
    # adapters 2 and 1 were still loaded; 0 was loaded again from disk, evicting the least recently used
    assert engine.adapter_cache_stats() == AdapterCacheStats(hits=2, misses=4, evicted_from_memory=2)


def test_a_prompt_that_cannot_fit_the_context_is_refused(engine: LocalEngine) -> None:
    limit = engine.context_length(TINY)
    with pytest.raises(EngineError) as caught:
        generate(engine, request(engine, max_new_tokens=limit), cancelled=threading.Event())
    assert (caught.value.code, caught.value.status, caught.value.param) == ("context_length_exceeded", 400, "messages")
    assert engine.active_rows() == 0


def test_an_unknown_base_model_is_not_found(engine: LocalEngine) -> None:
    with pytest.raises(EngineError) as caught:
        engine.tokenizer("no-such-model")
    assert (caught.value.code, caught.value.status, caught.value.param) == ("model_not_found", 404, "model")


def test_the_constructor_loads_nothing(settings: Settings, stores: Stores) -> None:
    engine = LocalEngine(settings, stores.blobs)
    assert engine.active_rows() == 0
    assert engine.adapter_states() == {}
    engine.close()


def test_rows_joining_and_leaving_a_running_batch_keep_their_text(
    engine: LocalEngine, adapters: list[AdapterRef]
) -> None:
    long = request(engine, adapters[0], text=PROMPTS[1], max_new_tokens=40, temperature=1.0, seed=4)
    short = request(engine, adapters[1], text=PROMPTS[2], max_new_tokens=12)
    doomed = request(engine, None, text=PROMPTS[0], max_new_tokens=400, temperature=1.0, seed=9)
    alone = [run(engine, long), run(engine, short)]
    cancelled = threading.Event()
    first = generate(engine, long, cancelled=threading.Event())
    head = next(first)  # the long request is running: the others join its batch mid-way
    third = generate(engine, doomed, cancelled=cancelled)
    next(third)
    second = run(engine, short)
    cancelled.set()
    assert all(event.finish_reason is None for event in third)
    rest = collect(first)
    rest[0].text = head.text + rest[0].text
    rest[0].token_ids = head.token_ids + rest[0].token_ids
    rest[0].events += 1
    assert [rest, second] == alone
    assert engine.active_rows() == 0


# Per-row gathered LoRA (inference.lora_gather) against PEFT's own forward, the reference it replaces.

RANKED = (
    {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"]},
    {"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": "all-linear"},
)


def make_lora(tiny_dir: Path, out: Path, *, seed: int, scale: float = 0.3, **config: Any) -> Path:
    """Save a LoRA adapter with `config` (rank, alpha, targets…) and seeded random weights times `scale`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunewright.modeling.loading import load_model

    model = get_peft_model(load_model(tiny_dir), LoraConfig(**config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ranked_dirs(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three adapters of ranks 2, 4 and 8 (one rsLoRA) on different target layers."""
    return [
        make_lora(tiny_dir, tmp_path_factory.mktemp(f"ranked{k}"), seed=10 + k, **config)
        for k, config in enumerate(RANKED)
    ]


@pytest.fixture(scope="module")
def peft_reference(tiny_dir: Path, ranked_dirs: list[Path]) -> Any:
    """The tiny model with the three adapters loaded by PEFT as `a0`, `a1`, `a2`."""
    from peft import PeftModel

    from tunewright.modeling.loading import load_model

    model = PeftModel.from_pretrained(load_model(tiny_dir), ranked_dirs[0], adapter_name="a0")
    for k, directory in enumerate(ranked_dirs[1:], start=1):
        model.load_adapter(directory, adapter_name=f"a{k}")
    return model.eval()


def peft_logits(model: Any, ids: list[int], adapter: str | None) -> Any:
    """PEFT's last-position logits of one sequence alone, with one adapter active (or none)."""
    import contextlib

    import torch

    with torch.inference_mode():
        if adapter is None:
            context: Any = model.disable_adapter()
        else:
            model.set_adapter(adapter)
            context = contextlib.nullcontext()
        with context:
            return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_gathered_lora_logits_match_peft_per_row(tiny_dir: Path, ranked_dirs: list[Path], peft_reference: Any) -> None:
    import torch

    from tunewright.inference.batch import KVBatch, left_padded, new_cache, positions
    from tunewright.inference.models import BASE_ADAPTER, BaseModel

    model = BaseModel(TINY, tiny_dir, device="cpu")
    for k, directory in enumerate(ranked_dirs):  # ranks grow 2 → 4 → 8, slots beyond the first capacity
        model.load_adapter(directory, f"x{k}")
        model.load_adapter(directory, f"a{k}")
    model.delete_adapter("x1")  # frees a slot between loaded ones
    rows = [("a0", 0), (None, 1), ("a2", 2), ("a1", 1), ("a0", 2), ("a2", 0)]
    tok = model.tokenizer
    prompts = [tok(PROMPTS[p] * (1 + k % 2))["input_ids"] for k, (_, p) in enumerate(rows)]
    names = [name or BASE_ADAPTER for name, _ in rows]
    ids, mask = left_padded(prompts, model.pad_id, "cpu")
    cache = new_cache()
    prefill = model.forward(ids, mask, positions(mask), cache, names)
    nxt = prefill.argmax(dim=-1)
    batch = KVBatch(cache, mask)
    step_ids = nxt[:, None]
    step_pos = torch.tensor([[len(p)] for p in prompts])
    step = model.forward(step_ids, batch.grow(), step_pos, batch.cache, names)
    for k, (name, _) in enumerate(rows):
        torch.testing.assert_close(prefill[k], peft_logits(peft_reference, prompts[k], name), atol=1e-5, rtol=1e-5)
        extended = [*prompts[k], int(nxt[k])]
        torch.testing.assert_close(step[k], peft_logits(peft_reference, extended, name), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(prefill[0], peft_logits(peft_reference, prompts[0], None), atol=1e-2)


def test_gathered_lora_greedy_texts_equal_peft(
    engine: LocalEngine, stores: Stores, ranked_dirs: list[Path], peft_reference: Any
) -> None:
    import torch

    from tunewright.modeling.loading import stop_token_ids

    refs = [store_adapter(stores, directory, f"ranked{k}") for k, directory in enumerate(ranked_dirs)]
    cases = [(0, PROMPTS[0]), (None, PROMPTS[1]), (1, PROMPTS[2]), (2, PROMPTS[0]), (0, PROMPTS[1])]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(
            pool.map(
                lambda case: run(
                    engine, request(engine, None if case[0] is None else refs[case[0]], text=case[1], max_new_tokens=16)
                )[0],
                cases,
            )
        )
    tokenizer = engine.tokenizer(TINY)
    stops = sorted(stop_token_ids(peft_reference.get_base_model(), tokenizer))
    for (k, text), got in zip(cases, together, strict=True):
        ids = torch.tensor([prompt(engine, text)])
        with torch.inference_mode():
            if k is None:
                with peft_reference.disable_adapter():
                    out = peft_reference.generate(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=stops)
            else:
                peft_reference.set_adapter(f"a{k}")
                out = peft_reference.generate(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=stops)
        expected = [t for t in out[0, ids.shape[1] :].tolist() if t not in stops]
        assert got.token_ids == expected
        assert got.text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize(("field", "value"), [("use_dora", True), ("bias", "all"), ("modules_to_save", ["lm_head"])])
def test_an_adapter_beyond_plain_lora_is_refused(
    engine: LocalEngine, stores: Stores, ranked_dirs: list[Path], tmp_path: Path, field: str, value: Any
) -> None:
    import json
    import shutil

    directory = tmp_path / "odd"
    shutil.copytree(ranked_dirs[0], directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    config[field] = value
    (directory / "adapter_config.json").write_text(json.dumps(config))
    odd = store_adapter(stores, directory, "odd")
    with pytest.raises(EngineError) as caught:
        generate(engine, request(engine, odd), cancelled=threading.Event())
    assert (caught.value.code, caught.value.status) == ("adapter_unavailable", 500)
    assert field in str(caught.value) or "bias" in str(caught.value)
    assert run(engine, request(engine))[0].finish_reason in ("stop", "length")
