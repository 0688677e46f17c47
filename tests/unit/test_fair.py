"""Fair shares across projects: the queue's order, the pool's bound, and the scheduler admitting another project's
row while one project's large request fills the batch (a model stand-in whose steps the test holds)."""

from __future__ import annotations

import queue
import threading
from operator import itemgetter
from typing import Any

import pytest

from tunewright.inference.engine import GenerationRequest, ModelTarget, SamplingParams
from tunewright.inference.fair import FairPool, FairQueue
from tunewright.inference.scheduler import Scheduler, Ticket

WAIT_S = 30  # a safety net against a hang, never a measurement


def test_the_next_item_is_the_oldest_of_the_key_with_the_fewest_in_service():
    waiting: FairQueue[tuple[str, int]] = FairQueue(key=itemgetter(0))
    waiting.extend([("a", k) for k in range(4)])
    assert waiting.take(2) == [("a", 0), ("a", 1)]
    waiting.extend([("b", 0), ("b", 1), ("c", 0)])
    assert waiting.take(3) == [("b", 0), ("c", 0), ("b", 1)]  # b and c catch up with a's two
    assert waiting.pop() == ("a", 2)  # only a has items waiting
    waiting.done(("a", 0))
    waiting.done(("a", 1))
    waiting.extend([("b", 2)])
    assert waiting.pop() == ("a", 3)  # a has one in service, b two
    assert len(waiting) == 1
    assert waiting.remove(lambda item: item[0] == "b") == [("b", 2)]
    with pytest.raises(IndexError):
        waiting.pop()


def test_a_pool_runs_at_most_its_workers_and_a_free_one_goes_to_the_project_with_fewest():
    started: queue.Queue[tuple[str, int]] = queue.Queue()
    release = {item: threading.Event() for item in [*(("a", k) for k in range(5)), ("b", 0)]}

    def work(item: tuple[str, int]) -> None:
        started.put(item)
        release[item].wait(WAIT_S)

    pool = FairPool(work, key=itemgetter(0), workers=2, name="test-pool")
    for k in range(5):
        pool.put(("a", k))
    assert {started.get(timeout=WAIT_S), started.get(timeout=WAIT_S)} == {("a", 0), ("a", 1)}
    pool.put(("b", 0))
    assert pool.running() == 2
    release[("a", 0)].set()
    assert started.get(timeout=WAIT_S) == ("b", 0)  # before a's three older ones
    for event in release.values():
        event.set()
    assert sorted(started.get(timeout=WAIT_S) for _ in range(3)) == [("a", 2), ("a", 3), ("a", 4)]
    assert pool.close() == []


class Letters:
    """A tokenizer stand-in: every token is one letter `x`."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


class HeldModel:
    """A model stand-in for the scheduler: token 1 always wins (never a stop), and the first forward pass waits
    until the test lets it go, so the test knows what is in the batch and what waits."""

    model_id = "held"
    vocab_size = 4
    device = "cpu"
    pad_id = 0
    stop_ids = frozenset({0})
    tokenizer = Letters()

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str]) -> Any:
        import torch

        self.entered.set()
        self.go.wait(WAIT_S)
        logits = torch.zeros((ids.shape[0], self.vocab_size))
        logits[:, 1] = 10.0
        return logits


class Log:
    """Every project's items in the order the scheduler thread delivered them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.ended: dict[str, threading.Event] = {}

    def sink(self, project: str) -> Any:
        self.ended[project] = threading.Event()
        log = self

        class Sink:
            def put(self, item: Any) -> None:
                log.items.append((project, item))
                if item is None:
                    log.ended[project].set()

        return Sink()


def ticket(log: Log, project: str, *, n: int, tokens: int) -> Ticket:
    request = GenerationRequest(
        target=ModelTarget(base_model="held"),
        prompt_ids=[1, 2, 3],
        params=SamplingParams(max_new_tokens=tokens, temperature=0.0),
        n=n,
        project_id=project,
    )
    return Ticket(request=request, adapter="base", cancelled=threading.Event(), sink=log.sink(project))


def test_a_second_project_gets_a_place_while_the_first_ones_large_request_fills_the_batch():
    model = HeldModel()
    scheduler = Scheduler(model, max_batch=4)  # type: ignore[arg-type]
    log = Log()
    try:
        scheduler.submit(ticket(log, "big", n=12, tokens=6))
        assert model.entered.wait(WAIT_S)  # four of its rows are in the batch, eight wait
        scheduler.submit(ticket(log, "small", n=1, tokens=2))
        model.go.set()
        assert log.ended["small"].wait(WAIT_S)
        assert log.ended["big"].wait(WAIT_S)
    finally:
        scheduler.close()
    order = [(project, item.finish_reason) for project, item in log.items if item is not None]
    small_done = order.index(("small", "length"))
    big_finished_first = sum(1 for project, reason in order[:small_done] if project == "big" and reason)
    assert big_finished_first == 4  # the first batch only: first come, first served would make it all 12 (or 8)
    assert sum(1 for project, reason in order if project == "big" and reason == "length") == 12
