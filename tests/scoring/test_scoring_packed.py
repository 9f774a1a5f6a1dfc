"""Packed log-likelihood rows (a question's context once, its four options after it): the
attention pattern by hand, and the packed engine against one row per option and against the
model's own forward pass with the guardrail hooked in, on the tiny Gemma-2 (sliding window of
8 tokens, contexts of 115 and more)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny import FORGET_TEXTS, TinyWorld, build_sae, tiny_questions

from dsg.api.interfaces import EvalSet, MCQuestion
from dsg.api.prompts import PlainClozeFormat, render_cloze
from dsg.engine.backends.transformer_lens import TransformerLensBackend
from dsg.engine.backends.transformers import TransformersBackend
from dsg.guardrail import DynamicClamp, StaticClamp, WindowedClamp, sae_features
from dsg.scoring.cloze import ClozeItem
from dsg.scoring.cloze_batches import Read, option_batches, packed_batches
from dsg.scoring.loglik import ClozeScorer, choose, choose_norm, packs
from dsg_runtime.guardrail import Guardrail, ThresholdGate

HOOK = "blocks.1.hook_resid_post"
TOLERANCE = {"atol": 1e-4, "rtol": 1e-5}
"""float32: the same sums over differently shaped attention."""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    from tiny_gemma import tiny_gemma_backend

    return tiny_gemma_backend(tmp_path_factory.mktemp("packed"))


@pytest.fixture(scope="module")
def items(backend: TransformersBackend) -> list[ClozeItem]:
    """Counting questions (one-token-merge choices) and forget-text questions whose choices
    are 6 to 10 tokens long."""
    forget = tuple(
        MCQuestion(text[:40] + "?", ("spores", "grain", "the marsh", "timber"), 0)
        for text in FORGET_TEXTS[:4]
    )
    eval_set = EvalSet("s", "pathogens", tiny_questions("n", 4) + forget)
    scorer = ClozeScorer(backend, HOOK, 8)
    rendered = [
        render_cloze(PlainClozeFormat(), backend.tokenizer, eval_set, q) for q in eval_set.questions
    ]
    return [
        scorer.encode(context, continuations, q.choices)
        for (context, continuations, _), q in zip(rendered, eval_set.questions, strict=True)
    ]


def guardrails(backend: TransformersBackend) -> list[Any]:
    sae = build_sae(backend.d_model, 64, hook_name=HOOK, threshold=0.5)
    return [
        DynamicClamp(sae, torch.tensor([40]), threshold=0.4, multiplier=40.0),
        DynamicClamp(sae, torch.tensor([0, 5]), threshold=0.4, multiplier=40.0),
        StaticClamp(sae, torch.tensor([0, 5, 9, 17, 33, 40]), multiplier=40.0),
        WindowedClamp(
            sae,
            torch.tensor([40]),
            threshold=0.45,
            multiplier=40.0,
            window=6,
            window_threshold=0.8,
        ),
    ]


def test_a_packed_row_by_hand() -> None:
    """Context (1, 2, 3), options of 2, 1, 3 and 2 tokens: each option's tokens but its last
    follow the context at the positions they would have alone, attend to the context and to
    their own option, and are read with the context's last position first. The second,
    shorter row's padding attends to its first token only."""
    first = ClozeItem((1, 2, 3), ((4, 5), (6,), (7, 8, 9), (10, 11)), (1, 1, 1, 1))
    second = ClozeItem((1, 2), ((3,), (4,), (5,), (6,)), (1, 1, 1, 1))
    batch = next(packed_batches([second, first], 2, pad_id=0))
    assert batch.questions.tolist() == [1, 0]  # longest first
    assert batch.tokens.tolist() == [[1, 2, 3, 4, 7, 8, 10], [1, 2, 0, 0, 0, 0, 0]]
    assert batch.positions is not None and batch.allowed is not None
    assert batch.positions[0].tolist() == [0, 1, 2, 3, 3, 4, 3]
    assert batch.context[0].tolist() == [True] * 3 + [False] * 4
    assert batch.mask[1].tolist() == [True] * 2 + [False] * 5
    assert batch.reads[:4] == (
        Read(0, 1, 0, (2, 3), (4, 5)),
        Read(0, 1, 1, (2,), (6,)),
        Read(0, 1, 2, (2, 4, 5), (7, 8, 9)),
        Read(0, 1, 3, (2, 6), (10, 11)),
    )
    assert batch.reads[4:] == tuple(Read(1, 0, o, (1,), (3 + o,)) for o in range(4))
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],  # option 0
        [1, 1, 1, 0, 1, 0, 0],  # option 2, first token
        [1, 1, 1, 0, 1, 1, 0],  # option 2, second token
        [1, 1, 1, 0, 0, 0, 1],  # option 3
    ]
    assert batch.allowed[0].int().tolist() == expected
    padding = [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]] + [[1, 0, 0, 0, 0, 0, 0]] * 5
    assert batch.allowed[1].int().tolist() == padding
    # token ids, position ids and question indices are what a model's embedding reads: long
    for ids in (batch.tokens, batch.positions, batch.questions):
        assert ids.dtype == torch.long


def test_packed_batches_hold_each_question_once_longest_first() -> None:
    """Five questions in batches of two: three batches, every question in exactly one, each
    batch as wide as its longest row."""
    items = [
        ClozeItem(tuple(range(1, 2 + n)), ((50,), (51,), (52,), (53, 54)), (1, 1, 1, 1))
        for n in (3, 0, 5, 1, 2)
    ]  # packed lengths 5, 2, 7, 3, 4
    batches = list(packed_batches(items, 2, pad_id=0))
    assert [b.questions.tolist() for b in batches] == [[2, 0], [4, 3], [1]]
    assert [b.tokens.shape[1] for b in batches] == [7, 4, 2]


def test_one_row_per_option_by_hand() -> None:
    """Each row is the context and its option but the option's last token, longest rows first;
    the guardrail decides on the context positions only, and the option is read from the
    context's last position on."""
    first = ClozeItem((1, 2, 3), ((4, 5), (6,), (7, 8, 9), (10, 11)), (1, 1, 1, 1))
    second = ClozeItem((1, 2), ((3,), (4,), (5,), (6,)), (1, 1, 1, 1))
    batches = list(option_batches([first, second], 4, 3, pad_id=0))
    assert [b.tokens.shape for b in batches] == [(3, 5), (3, 3), (2, 2)]
    rows = {}
    for b in batches:
        assert len(b.reads) == b.tokens.shape[0]
        for read in b.reads:
            real = b.mask[read.row]
            assert b.questions[read.row] == read.question
            rows[read.question, read.option] = (
                b.tokens[read.row][real].tolist(),
                b.context[read.row][real].int().tolist(),
                read.positions,
                read.targets,
            )
    assert rows == {
        (0, 0): ([1, 2, 3, 4], [1, 1, 1, 0], (2, 3), (4, 5)),
        (0, 1): ([1, 2, 3], [1, 1, 1], (2,), (6,)),
        (0, 2): ([1, 2, 3, 7, 8], [1, 1, 1, 0, 0], (2, 3, 4), (7, 8, 9)),
        (0, 3): ([1, 2, 3, 10], [1, 1, 1, 0], (2, 3), (10, 11)),
        **{(1, o): ([1, 2], [1, 1], (1,), (3 + o,)) for o in range(4)},
    }
    assert all(not b.context[~b.mask].any() for b in batches)  # padding is never decided on


@pytest.mark.parametrize("batch_size", [1, 5])
def test_packed_equals_one_row_per_option(
    backend: TransformersBackend, items: list[ClozeItem], batch_size: int
) -> None:
    """Unguarded log-likelihoods, answers (acc and acc_norm) and firing decisions of every
    guardrail, the windowed one with a window shorter than every context."""
    found = guardrails(backend)
    packed = ClozeScorer(backend, HOOK, batch_size)
    assert packed.packer is backend
    rows = ClozeScorer(backend, HOOK, batch_size, packed=False)
    base_packed, with_packed = packed.sweep(items, found)
    base_rows, with_rows = rows.sweep(items, found)
    torch.testing.assert_close(base_packed, base_rows, **TOLERANCE)
    for a, b in zip(with_packed, with_rows, strict=True):
        assert torch.equal(a.predicted, b.predicted)
        assert torch.equal(a.predicted_norm, b.predicted_norm)
        assert torch.equal(a.fired, b.fired)
    assert 0 < int(with_packed[0].fired.sum()) < len(items)  # fires on some questions only
    assert any(not torch.equal(o.predicted, choose(base_packed)) for o in with_packed)


def plain_loop(backend: TransformersBackend, items: list[ClozeItem], guardrail: Any) -> Any:
    """Batch 1, the model's own forward on ``context + option`` with the guardrail deciding on
    the context at the output of decoder layer 1: log-likelihoods ``[Q, 4]``."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        decide = torch.zeros(hidden.shape[:2], dtype=torch.bool)
        decide[:, : hook.context] = True  # type: ignore[attr-defined]
        edited = guardrail.decide_on_prefix(hidden, decide, torch.ones_like(decide))
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    handle = backend.layers[1].register_forward_hook(hook)
    out = torch.empty(len(items), 4, dtype=torch.float64)
    try:
        for q, item in enumerate(items):
            hook.context = len(item.context)  # type: ignore[attr-defined]
            for o, continuation in enumerate(item.continuations):
                with torch.inference_mode():
                    ids = torch.tensor([[*item.context, *continuation]])
                    logits = backend.model(input_ids=ids).logits
                logp = torch.log_softmax(logits[0].float(), -1)
                start = len(item.context) - 1
                out[q, o] = sum(float(logp[start + k, t]) for k, t in enumerate(continuation))
    finally:
        handle.remove()
    return out


def test_packed_guarded_equals_the_models_own_forward(
    backend: TransformersBackend, items: list[ClozeItem]
) -> None:
    found = guardrails(backend)
    _, outcomes = ClozeScorer(backend, HOOK, 4).sweep(items, found)
    for guardrail, outcome in zip(found, outcomes, strict=True):
        expected = plain_loop(backend, items, guardrail)
        assert torch.equal(outcome.predicted, choose(expected))
        assert torch.equal(outcome.predicted_norm, choose_norm(expected, items))


def test_transformer_lens_cannot_pack(tmp_path) -> None:
    world = TinyWorld(tmp_path, d_sae=64, threshold=0.3)
    backend = TransformerLensBackend(world.model, world.tokenizer)
    assert ClozeScorer(backend, "blocks.0.hook_resid_post", 8).packer is None
    with pytest.raises(ValueError, match="the transformer_lens backend cannot run packed rows"):
        ClozeScorer(backend, "blocks.0.hook_resid_post", 8, packed=True)


class ThreeLaterHits:
    """A plugin gate that also clamps a row's later positions once three of them hit: how many
    later positions share a row matters to it, so packed rows would change its answers."""

    def __init__(self, threshold: float) -> None:
        self.decided = ThresholdGate(threshold)

    def __call__(self, rates: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return self.decided(rates, hits)

    def carry(self, fired: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
        return fired | (hits.sum(dim=1) >= 3)


def test_a_gate_that_counts_later_positions_is_scored_a_row_per_option(
    backend: TransformersBackend, items: list[ClozeItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    sae = build_sae(backend.d_model, 64, hook_name=HOOK, threshold=0.5)
    counting = Guardrail(sae_features(sae, torch.tensor([5])), ThreeLaterHits(0.99), 40.0)
    assert [packs(g) for g in guardrails(backend)] == [True] * 4
    assert not packs(counting)
    assert not packs(lambda resid, attention_mask: resid)  # type: ignore[arg-type]

    def answers(scorer: ClozeScorer) -> tuple[torch.Tensor, torch.Tensor]:
        outcome = scorer.sweep(items, [counting])[1][0]
        assert outcome.predicted_norm is not None
        return outcome.predicted, outcome.predicted_norm

    rows = answers(ClozeScorer(backend, HOOK, 8, packed=False))
    assert all(
        torch.equal(a, b) for a, b in zip(answers(ClozeScorer(backend, HOOK, 8)), rows, strict=True)
    )
    monkeypatch.setattr("dsg.scoring.loglik.packs", lambda intervention: True)
    forced = answers(ClozeScorer(backend, HOOK, 8))
    assert not all(
        torch.equal(a, b) for a, b in zip(forced, rows, strict=True)
    )  # packing would differ
