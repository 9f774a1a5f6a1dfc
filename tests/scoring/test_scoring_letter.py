"""The MCQ engine: answer-position scoring, batching and the reuse of hook-layer activations."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import TinyWorld, build_model, build_sae

from dsg.api.prompts import answer_token_ids
from dsg.core.errors import UserError
from dsg.engine.backends.base import split_layer
from dsg.engine.backends.transformer_lens import TransformerLensBackend
from dsg.guardrail import DynamicClamp, StaticClamp
from dsg.scoring.letter import Scorer

PROMPTS = [
    "<bos>The pathogen vex3 spreads by spores. Answer: (",
    "<bos>The city of Orla2 lies on the river and trades grain. Answer: (",
    "<bos>A B C D",
    "<bos>The pathogen vex7 infects the host quickly near the marsh and spreads. Answer: (",
    "<bos>wool and timber every spring",
    "<bos>The following are multiple choice questions",
] * 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("mcq"), d_sae=64, threshold=0.3)


def full_forward_probs(
    model, ids: list[int], hook_name: str | None = None, fn=None
) -> torch.Tensor:
    """The reference path: batch 1, full logits, optional hook on the residual stream."""
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        if fn is None:
            logits = model(tokens)
        else:
            mask = torch.ones_like(tokens, dtype=torch.bool)
            logits = model.run_with_hooks(
                tokens, fwd_hooks=[(hook_name, lambda resid, hook: fn(resid, mask))]
            )
    return logits[0, -1].softmax(-1)


def test_split_layer() -> None:
    assert split_layer("blocks.3.hook_resid_post") == 4
    assert split_layer("blocks.3.hook_resid_pre") == 3
    with pytest.raises(UserError, match="resid"):
        split_layer("blocks.3.hook_mlp_out")


def test_scores_match_a_hand_computation(world: TinyWorld) -> None:
    """Logits fixed by the unembedding bias: the probabilities are known in closed form."""
    model = build_model(world.tokenizer, seed=1)
    ids = answer_token_ids(world.tokenizer)
    bias = torch.zeros(model.cfg.d_vocab)
    bias[ids[0]] = torch.tensor([40.0, 10.0, 40.0, 5.0])  # A and C tie on the bare letters
    bias[ids[1]] = torch.tensor([0.0, 20.0, 0.0, 45.0])  # " D" beats every bare letter
    with torch.no_grad():
        model.W_U.zero_()
        model.b_U.copy_(bias)
    scorer = Scorer(
        TransformerLensBackend(model, world.tokenizer), "blocks.0.hook_resid_post", batch_size=4
    )
    probs = scorer.probabilities(scorer.encode(PROMPTS[:3]))

    cap = 30.0
    capped = [cap * math.tanh(b / cap) for b in bias.tolist()]
    z = sum(math.exp(c) for c in capped)
    bare, spaced = ids.tolist()
    pairs = zip(bare, spaced, strict=True)
    expected = [max(math.exp(capped[a]), math.exp(capped[s])) / z for a, s in pairs]
    assert probs[0].tolist() == pytest.approx(expected, rel=1e-5)
    uncapped = torch.softmax(bias, -1)[ids].amax(0)
    assert not torch.allclose(probs[0], uncapped)  # the softcap was applied
    assert scorer.predict(scorer.encode(PROMPTS[:1])).tolist() == [3]

    with torch.no_grad():
        model.b_U[ids[1, 3]] = 0.0
    assert scorer.predict(scorer.encode(PROMPTS[:1])).tolist() == [0]  # tie A/C: first wins


@pytest.mark.parametrize(
    "hook",
    [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_post",
        "blocks.0.hook_resid_pre",
    ],
)
def test_split_forward_equals_full_forward(world: TinyWorld, hook: str) -> None:
    scorer = Scorer(TransformerLensBackend(world.model, world.tokenizer), hook, batch_size=16)
    ids = scorer.encode(PROMPTS)
    probs = scorer.probabilities(ids)
    answer = answer_token_ids(world.tokenizer)
    for i, row in enumerate(ids):
        expected = full_forward_probs(world.model, row)[answer].amax(0)
        torch.testing.assert_close(probs[i], expected, rtol=1e-5, atol=1e-8)


def interventions(world: TinyWorld, sae, features: list[int]):
    index = torch.tensor(features)
    return [
        DynamicClamp(sae, index, threshold=0.2, multiplier=40.0),
        DynamicClamp(sae, index, threshold=0.6, multiplier=40.0),
        StaticClamp(sae, index, multiplier=40.0),
        StaticClamp(sae, index[:1], multiplier=3.0),
    ]


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
def test_sweep_equals_rerunning_everything(world: TinyWorld, hook: str) -> None:
    """Reusing hook activations and baseline answers changes no answer and no decision."""
    sae = build_sae(world.model.cfg.d_model, 64, hook_name=hook, threshold=0.3)
    features = [0, 5, 9, 17, 33, 40]
    scorer = Scorer(TransformerLensBackend(world.model, world.tokenizer), hook, batch_size=5)
    ids = scorer.encode(PROMPTS)
    base, outcomes = scorer.sweep(ids, interventions(world, sae, features))
    answer = answer_token_ids(world.tokenizer)

    changed = 0
    for k, clamp in enumerate(interventions(world, sae, features)):
        for i, row in enumerate(ids):
            expected = full_forward_probs(world.model, row, hook, clamp)[answer].amax(0)
            assert int(outcomes[k].predicted[i]) == int(expected.argmax())
            assert bool(outcomes[k].fired[i]) == bool(clamp.fired[0])
            changed += int(outcomes[k].predicted[i] != base[i])
    fired = torch.stack([o.fired for o in outcomes])
    assert fired.any() and not fired.all()  # both paths were exercised
    assert changed > 0  # the clamps move answers, so a wrong reuse would show


def test_batch_size_does_not_change_results(world: TinyWorld) -> None:
    sae = world.sae
    features = [1, 2, 3, 11, 30]
    results = {}
    for batch_size in (1, 16):
        scorer = Scorer(
            TransformerLensBackend(world.model, world.tokenizer),
            world.hook_name,
            batch_size=batch_size,
        )
        ids = scorer.encode(PROMPTS)
        base, outcomes = scorer.sweep(ids, interventions(world, sae, features))
        results[batch_size] = (scorer.probabilities(ids), base, outcomes)
    probs1, base1, out1 = results[1]
    probs16, base16, out16 = results[16]
    torch.testing.assert_close(probs1, probs16, rtol=1e-5, atol=1e-8)
    assert torch.equal(base1, base16)
    for a, b in zip(out1, out16, strict=True):
        assert torch.equal(a.predicted, b.predicted)
        assert torch.equal(a.fired, b.fired)


def test_known_baseline_is_used_for_rows_that_do_not_fire(world: TinyWorld) -> None:
    scorer = Scorer(
        TransformerLensBackend(world.model, world.tokenizer), world.hook_name, batch_size=4
    )
    ids = scorer.encode(PROMPTS)
    clamp = DynamicClamp(world.sae, torch.tensor([1, 2]), threshold=1.0, multiplier=40.0)
    fake_baseline = (torch.arange(len(ids)) % 4).long()
    base, (outcome,) = scorer.sweep(ids, [clamp], baseline=fake_baseline)
    assert not outcome.fired.any()  # a rate never exceeds 1
    assert torch.equal(outcome.predicted, fake_baseline)
    assert torch.equal(base, fake_baseline)


class LetterTokenizer:
    """Encodes each character as one id, except strings listed in ``merged``."""

    def __init__(self, merged: dict[str, int]) -> None:
        self.merged = merged

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.merged[text]] if text in self.merged else [ord(c) for c in text]


def test_answer_ids_fall_back_to_the_bare_letter() -> None:
    ids = answer_token_ids(LetterTokenizer({" A": 1000, " C": 1002}))
    assert ids.tolist() == [[65, 66, 67, 68], [1000, 66, 1002, 68]]


def test_a_split_letter_is_a_user_error() -> None:
    class Split(LetterTokenizer):
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [1, 2] if text == "B" else super().encode(text)

    with pytest.raises(UserError, match="'B'"):
        answer_token_ids(Split({}))
