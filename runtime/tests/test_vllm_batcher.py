"""The decider thread: prompts queued together are decided together, each caller gets its own
prompt's decision, a failure fails only the requests it belongs to, and a prompt decided once is
answered from memory."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dsg_runtime.vllm.batcher import DecisionBatcher


class Parity:
    """Fires on prompts of odd sum; refuses a prompt holding -1 (a whole batch with it fails);
    records the batches it was given; ``gate``, when set, holds the first batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def decide_many(self, prompts: list[list[int]]) -> list[bool]:
        self.batches.append([list(p) for p in prompts])
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
            self.gate = None
        if any(-1 in p for p in prompts):
            raise ValueError("cannot decide")
        return [sum(p) % 2 == 1 for p in prompts]


def test_each_caller_gets_its_own_prompts_decision_from_many_threads() -> None:
    decider = Parity()
    batcher = DecisionBatcher(decider)
    rows = [[2, i] for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda ids: batcher.submit(ids).result(10), rows))
    assert got == [sum(p) % 2 == 1 for p in rows]
    assert sorted(p for batch in decider.batches for p in batch) == sorted(rows)


def test_prompts_queued_while_a_batch_runs_are_decided_together() -> None:
    decider = Parity()
    decider.gate = threading.Event()
    batcher = DecisionBatcher(decider)
    first = batcher.submit([2, 3])
    assert decider.started.wait(10)
    waiting = [batcher.submit([2, i]) for i in range(5)]
    decider.gate.set()
    assert first.result(10) is True
    assert [f.result(10) for f in waiting] == [i % 2 == 1 for i in range(5)]
    assert decider.batches == [[[2, 3]], [[2, i] for i in (0, 1, 2, 4)]]  # (2, 3) remembered


def test_a_batch_is_capped_by_its_prompt_tokens() -> None:
    decider = Parity()
    decider.gate = threading.Event()
    batcher = DecisionBatcher(decider, max_tokens=4)
    batcher.submit([1])
    assert decider.started.wait(10)
    futures = [batcher.submit([2, i]) for i in range(3)]
    decider.gate.set()
    [f.result(10) for f in futures]
    assert [len(b) for b in decider.batches] == [1, 2, 1]


def test_a_failure_fails_its_own_request_only() -> None:
    """A batch that raises is decided again prompt by prompt: the prompt that cannot be decided
    gets its exception (never a decision), the others their own decisions."""
    decider = Parity()
    decider.gate = threading.Event()
    batcher = DecisionBatcher(decider)
    batcher.submit([1])
    assert decider.started.wait(10)
    good, bad, other = batcher.submit([2, 3]), batcher.submit([2, -1]), batcher.submit([2, 4])
    decider.gate.set()
    assert good.result(10) is True and other.result(10) is False
    with pytest.raises(ValueError, match="cannot decide"):
        bad.result(10)
    assert batcher.submit([2, 5]).result(10) is True  # the thread lives on


def test_a_cancelled_request_is_not_decided() -> None:
    decider = Parity()
    decider.gate = threading.Event()
    batcher = DecisionBatcher(decider)
    batcher.submit([1])
    assert decider.started.wait(10)
    gone, kept = batcher.submit([2, 7]), batcher.submit([2, 9])
    assert gone.cancel()
    decider.gate.set()
    assert kept.result(10) is True
    assert [2, 7] not in [p for batch in decider.batches for p in batch]


def test_a_wrong_number_of_decisions_fails_the_requests() -> None:
    class Short(Parity):
        def decide_many(self, prompts: list[list[int]]) -> list[bool]:
            return []

    with pytest.raises(RuntimeError, match="0 decisions for 1 prompts"):
        DecisionBatcher(Short()).submit([2, 3]).result(10)


def test_prompts_queued_at_once_are_one_batch_cut_by_tokens_and_decided_once_each() -> None:
    decider = Parity()
    batcher = DecisionBatcher(decider, max_tokens=6)
    rows = [[2, 3], [2, 3], [2, 4], [2, 5, 7], [9] * 8]
    assert [f.result(10) for f in batcher.submit_many(rows)] == [True, True, False, False, False]
    assert decider.batches == [[[2, 3], [2, 4]], [[2, 5, 7]], [[9] * 8]]


def test_prompts_decided_here_run_on_the_calling_thread_and_failures_are_left_out() -> None:
    threads: list[str] = []

    class Here(Parity):
        def decide_many(self, prompts: list[list[int]]) -> list[bool]:
            threads.append(threading.current_thread().name)
            return super().decide_many(prompts)

    decider = Here()
    batcher = DecisionBatcher(decider, max_tokens=6)
    got = batcher.decide_here([[2, 3], [-1], [2, 4], [2, 5, 7]])
    assert got == {(2, 3): True, (2, 4): False, (2, 5, 7): False}
    assert set(threads) == {threading.current_thread().name}
    assert decider.batches[0] == [[2, 3], [-1], [2, 4]]  # then alone, each: the failure isolated


def test_a_prompt_decided_before_is_answered_from_memory() -> None:
    """Across calls, threads and ``decide_here``: the decider sees each prompt once while it is
    remembered; the memory keeps the last ``remember`` prompts, and ``forget`` empties it."""
    decider = Parity()
    batcher = DecisionBatcher(decider, remember=2)
    assert batcher.submit([2, 3]).result(10) is True
    assert batcher.decide_here([[2, 3], [2, 4]]) == {(2, 3): True, (2, 4): False}
    assert batcher.submit([2, 4]).result(10) is False
    assert decider.batches == [[[2, 3]], [[2, 4]]]
    assert batcher.submit([2, 5]).result(10) is True  # the third prompt: (2, 3) is forgotten
    assert batcher.decide_here([[2, 4], [2, 3]]) == {(2, 4): False, (2, 3): True}
    assert decider.batches == [[[2, 3]], [[2, 4]], [[2, 5]], [[2, 3]]]
    # (2, 4), used just before (2, 3) came back, is kept; (2, 5) is the least recently used
    assert batcher.submit([2, 4]).result(10) is False
    assert batcher.submit([2, 5]).result(10) is True
    assert decider.batches == [[[2, 3]], [[2, 4]], [[2, 5]], [[2, 3]], [[2, 5]]]
    batcher.forget()
    assert batcher.submit([2, 4]).result(10) is False
    assert decider.batches[-1] == [[2, 4]]


def test_prompts_that_share_a_prefix_or_differ_in_order_are_decided_apart() -> None:
    decider = Parity()
    batcher = DecisionBatcher(decider)
    rows = [[2, 3], [2, 3, 0], [3, 2], [2, 3 + 2**40]]
    assert [batcher.submit(r).result(10) for r in rows] == [True, True, True, True]
    assert [p for batch in decider.batches for p in batch] == rows


def test_a_failed_decision_is_not_remembered() -> None:
    decider = Parity()
    batcher = DecisionBatcher(decider)
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot decide"):
            batcher.submit([2, -1]).result(10)
    assert decider.batches == [[[2, -1]], [[2, -1]]]
