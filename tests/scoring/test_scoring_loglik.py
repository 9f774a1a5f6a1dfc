"""Log-likelihood scoring: the split engine against a plain loop, unguarded and guarded, its
batch invariance, acc_norm by hand and lm-eval's context/continuation split."""

from __future__ import annotations

import pytest
import torch
from tiny import FORGET_TEXTS, TinyWorld, build_sae, tiny_questions

from dsg.api.interfaces import EvalSet, MCQuestion
from dsg.api.prompts import PlainClozeFormat, render_cloze
from dsg.core.errors import UserError
from dsg.engine.backends.transformer_lens import TransformerLensBackend
from dsg.guardrail import DynamicClamp, StaticClamp
from dsg.scoring.cloze import ClozeItem, encode_pair
from dsg.scoring.loglik import ClozeScorer, choose, choose_norm, require_prefix

HOOK = "blocks.0.hook_resid_post"
FEATURES = torch.tensor([0, 5, 9, 17, 33, 40])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("loglik"), d_sae=64, threshold=0.3)


@pytest.fixture(scope="module")
def items(world: TinyWorld) -> list[ClozeItem]:
    """Counting questions and questions about the forget corpus (where the guardrail fires)."""
    forget = tuple(
        MCQuestion(text[:40] + "?", ("spores", "grain", "the marsh", "timber"), 0)
        for text in FORGET_TEXTS[:4]
    )
    eval_set = EvalSet("s", "pathogens", tiny_questions("n", 4) + forget)
    scorer = ClozeScorer(TransformerLensBackend(world.model, world.tokenizer), HOOK, 8)
    fmt = PlainClozeFormat()
    out = []
    for q in eval_set.questions:
        context, continuations, _ = render_cloze(fmt, world.tokenizer, eval_set, q)
        out.append(scorer.encode(context, continuations, q.choices))
    return out


def plain_loop(world: TinyWorld, items: list[ClozeItem], intervention=None) -> torch.Tensor:
    """The reference: batch 1, ``model(context + continuation)``, log_softmax, the sum over the
    continuation's tokens; guarded, a hook at the layer deciding on the context."""
    out = torch.empty(len(items), 4, dtype=torch.float64)
    for q, item in enumerate(items):
        for o, continuation in enumerate(item.continuations):
            full = torch.tensor([[*item.context, *continuation]])
            with torch.inference_mode():
                if intervention is None:
                    logits = world.model(full)
                else:
                    decide = torch.zeros_like(full, dtype=torch.bool)
                    decide[:, : len(item.context)] = True
                    every = torch.ones_like(full, dtype=torch.bool)

                    def hook(resid, hook, decide=decide, every=every):
                        return intervention.decide_on_prefix(resid, decide, every)

                    logits = world.model.run_with_hooks(full, fwd_hooks=[(HOOK, hook)])
            logp = torch.log_softmax(logits[0].float(), -1)
            start = len(item.context) - 1
            picked = [logp[start + k, t] for k, t in enumerate(continuation)]
            out[q, o] = float(sum(p.double() for p in picked))
    return out


def guardrails(world: TinyWorld):
    sae = build_sae(world.model.cfg.d_model, 64, hook_name=HOOK, threshold=0.3)
    return [
        DynamicClamp(sae, torch.tensor([40]), threshold=0.3, multiplier=40.0),
        DynamicClamp(sae, torch.tensor([0, 5]), threshold=0.55, multiplier=40.0),
        StaticClamp(sae, FEATURES, multiplier=40.0),
    ]


def test_unguarded_equals_a_plain_loop(world: TinyWorld, items: list[ClozeItem]) -> None:
    scorer = ClozeScorer(TransformerLensBackend(world.model, world.tokenizer), HOOK, 8)
    got = scorer.logliks(items)
    expected = plain_loop(world, items)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(choose(got), choose(expected))


def test_guarded_equals_a_plain_loop(world: TinyWorld, items: list[ClozeItem]) -> None:
    """Each guardrail decides on the context alone and carries its decision over the option;
    the dynamic ones fire on some questions and not on others."""
    scorer = ClozeScorer(TransformerLensBackend(world.model, world.tokenizer), HOOK, 8)
    found = guardrails(world)
    base, outcomes = scorer.sweep(items, found)
    fired_counts = []
    for guardrail, outcome in zip(found, outcomes, strict=True):
        expected = plain_loop(world, items, guardrail)
        assert torch.equal(outcome.predicted, choose(expected))
        assert outcome.predicted_norm is not None
        assert torch.equal(outcome.predicted_norm, choose_norm(expected, items))
        fired_counts.append(int(outcome.fired.sum()))
    assert fired_counts == [4, 4, len(items)]  # the dynamic ones on half the questions
    assert any(not torch.equal(o.predicted, choose(base)) for o in outcomes)  # edits matter
    torch.testing.assert_close(base, plain_loop(world, items), rtol=1e-5, atol=1e-4)


def test_batch_size_changes_no_answer(world: TinyWorld, items: list[ClozeItem]) -> None:
    backend = TransformerLensBackend(world.model, world.tokenizer)
    runs = [ClozeScorer(backend, HOOK, size).sweep(items, guardrails(world)) for size in (1, 8)]
    (base1, one), (base8, eight) = runs
    torch.testing.assert_close(base1, base8, rtol=1e-5, atol=1e-4)
    for a, b in zip(one, eight, strict=True):
        assert torch.equal(a.predicted, b.predicted)
        assert torch.equal(a.predicted_norm, b.predicted_norm)
        assert torch.equal(a.fired, b.fired)


def test_the_transformers_backend_equals_its_own_forward(tmp_path) -> None:
    """``from_hook`` with several positions a row, through the transformers backend (sliding
    window, softcaps) against the model's own forward pass."""
    from tiny_gemma import tiny_gemma_backend

    backend = tiny_gemma_backend(tmp_path)
    eval_set = EvalSet("s", "counting", tiny_questions("n", 3))
    scorer = ClozeScorer(backend, "blocks.1.hook_resid_post", 2)
    found = [
        scorer.encode(
            *render_cloze(PlainClozeFormat(), backend.tokenizer, eval_set, q)[:2], q.choices
        )
        for q in eval_set.questions
    ]
    got = scorer.logliks(found)
    for q, item in enumerate(found):
        for o, continuation in enumerate(item.continuations):
            with torch.inference_mode():
                logits = backend.model(torch.tensor([[*item.context, *continuation]])).logits
            logp = torch.log_softmax(logits[0].float(), -1)
            start = len(item.context) - 1
            expected = sum(float(logp[start + k, t]) for k, t in enumerate(continuation))
            assert float(got[q, o]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_acc_norm_by_hand() -> None:
    """lm-eval divides by the length of the choice string: -6 over 3 characters beats -3 over
    1, so acc picks option 1 and acc_norm option 0; ties go to the first index."""
    item = ClozeItem((1,), ((2,), (3,), (4,), (5,)), (3, 1, 2, 6))
    loglik = torch.tensor([[-6.0, -3.0, -5.0, -12.0]], dtype=torch.float64)
    assert choose(loglik).tolist() == [1]
    assert choose_norm(loglik, [item]).tolist() == [0]  # -2, -3, -2.5, -2: first of the tie


class Chars:
    """A character-level tokenizer that merges " x" into one token, as BPE tokenizers do."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text[i] == " " and i + 1 < len(text):
                out.append(1000 + ord(text[i + 1]))
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_the_split_moves_the_contexts_trailing_space() -> None:
    """As lm-eval: "Answer: " + "x" is split as "Answer:" + " x", so " x" stays one token."""
    assert encode_pair(Chars(), "A: ", "x") == ([ord("A"), ord(":")], [1000 + ord("x")])
    assert encode_pair(Chars(), "A:", " x") == ([ord("A"), ord(":")], [1000 + ord("x")])


def test_an_intervention_without_decide_on_prefix_is_refused() -> None:
    class Bare:
        fired = None

        def __call__(self, resid, attention_mask):
            return resid

    with pytest.raises(UserError, match="strategy 'bare' cannot be scored by log-likelihood"):
        require_prefix(Bare(), "bare")
