"""Decisions batched: prompts that arrive while a batch is being decided are decided together
next, off the caller's thread (the server's event loop never runs a forward pass).

One thread decides for the server with the :class:`~dsg_runtime.vllm.decision.PromptDecider`
(whose lock it shares with :meth:`DecisionBatcher.decide_here`'s callers). It takes every prompt
queued when it wakes (no waiting window: a lone request is decided at once, and a burst
batches itself while the previous batch runs) and decides them with
:meth:`~dsg_runtime.vllm.decision.PromptDecider.decide_many`, whose decisions are each
prompt's decision alone. Each caller gets its own future: a decision reaches only the request
that asked for it, and a batch that fails is decided again prompt by prompt, so a failure fails
only the requests it belongs to (with their exception: never a default decision).

A decision is a function of the prompt's token ids alone (for the batcher's one bundle), so the
batcher remembers the last :data:`REMEMBERED_DECISIONS` by a digest of the ids: a prompt sent
again is answered without a forward pass, as vLLM's prefix cache answers its prefill. Failures
are not remembered.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from array import array
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

MAX_BATCH_TOKENS = 16384
"""Prompt tokens taken into one batch (past this, what is still queued waits for the next)."""
REMEMBERED_DECISIONS = 65536
"""Decisions kept by prompt (a 32-byte digest and a bool each: a few MB at most)."""
Pending = tuple[list[int], "Future[bool]"]


class DecisionBatcher:
    """A decider thread fed by a queue of ``(prompt, future)``."""

    def __init__(
        self,
        decider: Any,
        max_tokens: int = MAX_BATCH_TOKENS,
        remember: int = REMEMBERED_DECISIONS,
    ) -> None:
        self.decider = decider
        self.max_tokens = max_tokens
        self.remember = remember
        self._remembered: OrderedDict[bytes, bool] = OrderedDict()
        self._memory = threading.Lock()
        self._queue: queue.SimpleQueue[list[Pending]] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, token_ids: list[int]) -> Future[bool]:
        """The prompt's decision, to come on the decider's thread (its exception where it
        cannot be decided)."""
        return self.submit_many([token_ids])[0]

    def submit_many(self, prompts: list[list[int]]) -> list[Future[bool]]:
        """Decisions to come for prompts queued at once (so decided in one batch)."""
        items = [(list(ids), Future[bool]()) for ids in prompts]
        self._queue.put(items)
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dsg-decider", daemon=True)
                self._thread.start()
        return [future for _, future in items]

    def decide_here(self, prompts: list[list[int]]) -> dict[tuple[int, ...], bool]:
        """Decisions for prompts known together (one offline call's), batched as the thread
        batches them but on the calling thread: an engine in this process runs its forward
        passes on this thread's CPU threads, which a second thread's pool would compete with.
        By prompt; a prompt whose decision failed is left out, to be decided, and fail, on its
        own request."""
        items: list[Pending] = [(list(ids), Future[bool]()) for ids in prompts]
        for _, future in items:
            future.set_running_or_notify_cancel()
        self._decide(items)
        return {tuple(ids): f.result() for ids, f in items if f.exception() is None}

    def forget(self) -> None:
        """Drop every remembered decision (a benchmark's cold start)."""
        with self._memory:
            self._remembered.clear()

    def _take(self) -> list[Pending]:
        batch = self._queue.get()
        tokens = sum(len(ids) for ids, _ in batch)
        while tokens < self.max_tokens:
            try:
                items = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.extend(items)
            tokens += sum(len(ids) for ids, _ in items)
        return batch

    def _run(self) -> None:
        while True:
            self._decide([(ids, f) for ids, f in self._take() if f.set_running_or_notify_cancel()])

    def _decide(self, batch: list[Pending]) -> None:
        """Answer the prompts decided before from memory; decide the rest, in runs of at most
        ``max_tokens`` prompt tokens, and remember their decisions."""
        todo: list[Pending] = []
        digests: dict[int, bytes] = {}
        with self._memory:
            for ids, future in batch:
                digest = digests[id(future)] = _digest(ids)
                known = self._remembered.get(digest)
                if known is None:
                    todo.append((ids, future))
                else:
                    self._remembered.move_to_end(digest)
                    future.set_result(known)
        for chunk in chunks(todo, self.max_tokens):
            decide(self.decider, chunk)
            with self._memory:
                for _, future in chunk:
                    if future.exception() is None:
                        self._keep(digests[id(future)], future.result())

    def _keep(self, digest: bytes, fired: bool) -> None:
        self._remembered[digest] = fired
        self._remembered.move_to_end(digest)
        while len(self._remembered) > self.remember:
            self._remembered.popitem(last=False)


def _digest(token_ids: list[int]) -> bytes:
    """What a remembered decision is found by: the sha256 of the ids as 64-bit integers."""
    return hashlib.sha256(array("q", token_ids).tobytes()).digest()


def chunks(batch: list[Pending], max_tokens: int) -> list[list[Pending]]:
    """The batch cut into runs of at most ``max_tokens`` prompt tokens (a longer prompt
    alone), so one call's thousands of prompts never make one forward pass."""
    out: list[list[Pending]] = []
    tokens = 0
    for item in batch:
        if not out or tokens + len(item[0]) > max_tokens:
            out.append([])
            tokens = 0
        out[-1].append(item)
        tokens += len(item[0])
    return out


def decide(decider: Any, batch: list[Pending]) -> None:
    """Fill each future with its prompt's decision; a batch that raises is retried prompt by
    prompt, so each future gets its own prompt's result or exception."""
    unique = list(dict.fromkeys(tuple(ids) for ids, _ in batch))  # a prompt sent twice: once
    try:
        fired = decider.decide_many([list(ids) for ids in unique])
        if len(fired) != len(unique):
            raise RuntimeError(f"{len(fired)} decisions for {len(unique)} prompts")
    except Exception as exc:
        if len(batch) == 1:
            batch[0][1].set_exception(exc)
            return
        for item in batch:
            decide(decider, [item])
        return
    by_prompt = dict(zip(unique, fired, strict=True))
    for ids, future in batch:
        future.set_result(bool(by_prompt[tuple(ids)]))
