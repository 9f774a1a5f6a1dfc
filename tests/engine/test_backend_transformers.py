"""The transformers backend on its own (no TransformerLens): its hand-built masks, its resumed
forward pass and its shared prompt prefixes against the model's own forward pass. These run in
the transformers 4.57 / 5.0 cells of the version matrix as well."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_questions
from tiny_gemma import SLIDING_WINDOW, padded_batch, tiny_gemma_backend

from dsg.api.interfaces import EvalSet
from dsg.api.prompts import choose_format, render_question
from dsg.engine.backends.transformers import TransformersBackend, additive_mask, causal_allowed
from dsg.scoring.letter import Scorer
from dsg.stages.evaluate import subsets

TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
"""float32, the same function computed in a different order (see test_backends.py)."""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    return tiny_gemma_backend(tmp_path_factory.mktemp("hf-backend"))


def test_gemma_2_runs_eager_attention(backend: TransformersBackend) -> None:
    """SDPA would drop Gemma-2's attention softcap."""
    assert backend.model.config._attn_implementation == "eager"
    assert backend.windows == [SLIDING_WINDOW, None, SLIDING_WINDOW]


def test_additive_mask_by_hand() -> None:
    real = torch.tensor([[True, True, True, False]])
    positions = torch.arange(4)[None]
    got = additive_mask(causal_allowed(real), positions, window=2, dtype=torch.float32)
    low = torch.finfo(torch.float32).min
    allowed = [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],  # the window of 2 drops key 0
        [0, 0, 1, 0],  # key 3 is padding
    ]
    expected = torch.tensor(allowed, dtype=torch.bool)
    assert torch.equal(got[0, 0] == 0, expected)
    assert torch.equal(got[0, 0][~expected], torch.full((int((~expected).sum()),), low))


def test_resuming_equals_the_models_own_forward(backend: TransformersBackend) -> None:
    """The hand-built masks and rotary positions reproduce transformers' own forward pass,
    padding and sliding window included."""
    tokens, mask, last = padded_batch(backend.model.config.vocab_size)
    with torch.inference_mode():
        own = backend.model(input_ids=tokens, attention_mask=mask.long()).logits
        split = backend.from_hook(backend.to_hook(tokens, mask, 1), mask, last, 1)
    torch.testing.assert_close(split, own[torch.arange(3), last], **TOLERANCE)


def test_shared_prefixes_change_no_answer(backend: TransformersBackend) -> None:
    """A question's answer orders share a prefix: computing it once through the KV cache gives
    the same logits as the whole prompts (sliding window included) and the same subsets."""
    fmt = choose_format(None, backend.tokenizer)
    eval_set = EvalSet("tiny", "counting", tiny_questions("vex", 3))
    scorer = Scorer(backend, "blocks.1.hook_resid_post", batch_size=4)
    texts = [
        render_question(fmt, backend.tokenizer, eval_set, eval_set.questions[0], order)[0]
        for order in subsets.PERMUTATIONS[:6]
    ]
    ids = scorer.encode(texts)
    cut = 60
    assert all(row[:cut] == ids[0][:cut] for row in ids) and cut > 3 * SLIDING_WINDOW
    with torch.inference_mode():
        shared = backend.prefix_shared_logits(
            ids[0][:cut], [row[cut:] for row in ids], 4, scorer.pad_id
        )
        whole = backend.prefix_shared_logits([], ids, 4, scorer.pad_id)
    torch.testing.assert_close(shared, whole, **TOLERANCE)
    torch.testing.assert_close(scorer.probabilities(ids), scorer.answer_probabilities(shared))

    groups: list[int] = []

    def predict(texts: list[str], group: int) -> list[int]:
        groups.append(group)
        return scorer.predict(scorer.encode(texts), group).tolist()

    found = {}
    for share in (True, False):
        scorer.share_prefixes = share
        found[share] = subsets.compute(predict, fmt, backend.tokenizer, eval_set)
    assert found[True] == found[False]
    assert max(groups) > 1  # the grouped rounds ran
