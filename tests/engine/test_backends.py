"""The two model backends give the same answers: residuals at the hook agree to float32
rounding, and subsets, answers and guardrail decisions are identical.

Tolerance: both backends compute the same float32 function with different operation orders
(TransformerLens einsums and its own rotary, transformers' matmuls and rotary), so values agree
to a few float32 ulps of their magnitude per layer: ``atol 1e-5, rtol 1e-4`` on the residual
stream (measured: at most 4e-6 on the tiny Gemma-2). Discrete outputs must be equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TinyWorld, build_sae
from tiny_gemma import padded_batch, write_tiny_gemma

from dsg.api.interfaces import EvalSet, LoadedModel
from dsg.api.prompts import choose_format, render_question
from dsg.config.settings import Settings
from dsg.config.values import check
from dsg.core.errors import UserError
from dsg.engine.backends import open_backend, resolve_backend
from dsg.guardrail import DynamicClamp, StaticClamp
from dsg.scoring.letter import Scorer
from dsg.stages.evaluate import subsets

RESID_TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    from dsg_transformer_lens.local_dir import load_local_model

    path = write_tiny_gemma(tmp_path_factory.mktemp("backends") / "tiny-gemma-2")
    return load_local_model(path, device="cpu", dtype=torch.float32)


def both(loaded: LoadedModel) -> dict[str, Any]:
    return {
        name: open_backend(name, loaded, device="cpu", dtype=torch.float32)
        for name in ("transformer_lens", "transformers")
    }


@pytest.mark.parametrize("split", [0, 1, 2, 3])
def test_residuals_and_logits_agree_at_every_split(gemma: LoadedModel, split: int) -> None:
    backends = both(gemma)
    tokens, mask, last = padded_batch(backends["transformers"].model.config.vocab_size)
    with torch.inference_mode():
        resid = {n: b.to_hook(tokens, mask, split) for n, b in backends.items()}
        torch.testing.assert_close(
            resid["transformers"][mask], resid["transformer_lens"][mask], **RESID_TOLERANCE
        )
        start = resid["transformer_lens"]
        logits = {n: b.from_hook(start, mask, last, split) for n, b in backends.items()}
    torch.testing.assert_close(
        logits["transformers"], logits["transformer_lens"], **RESID_TOLERANCE
    )


def clamps(sae: Any) -> list[Any]:
    features = torch.tensor([0, 3, 7])  # rates 0.62..0.72 on the five prompts
    return [
        DynamicClamp(sae, features, threshold=0.65, multiplier=30.0),
        DynamicClamp(sae, features, threshold=0.7, multiplier=30.0),
        StaticClamp(sae, features[:2], multiplier=30.0),
    ]


def tiny_set() -> EvalSet:
    from tiny import tiny_questions

    return EvalSet("tiny", "counting", tiny_questions("vex", 3))


def test_same_subsets_answers_and_decisions_on_tiny_gemma(gemma: LoadedModel) -> None:
    hook = "blocks.1.hook_resid_post"
    sae = build_sae(gemma.model.cfg.d_model, 32, hook_name=hook, threshold=0.5)
    fmt = choose_format(None, gemma.tokenizer)
    eval_set = tiny_set()
    found, swept = {}, {}
    for name, backend in both(gemma).items():
        scorer = Scorer(backend, hook, batch_size=3)

        def predict(texts: list[str], group: int, scorer: Scorer = scorer) -> list[int]:
            return scorer.predict(scorer.encode(texts), group).tolist()

        found[name] = subsets.compute(predict, fmt, gemma.tokenizer, eval_set)
        texts = [render_question(fmt, gemma.tokenizer, eval_set, q)[0] for q in eval_set.questions]
        swept[name] = scorer.sweep(scorer.encode(texts), clamps(sae))
    assert found["transformers"] == found["transformer_lens"]
    base_hf, out_hf = swept["transformers"]
    base_tl, out_tl = swept["transformer_lens"]
    assert torch.equal(base_hf, base_tl)
    for a, b in zip(out_hf, out_tl, strict=True):
        assert torch.equal(a.predicted, b.predicted) and torch.equal(a.fired, b.fired)
    fired = torch.stack([o.fired for o in out_tl])
    assert fired.any() and not fired.all()  # decisions both ways were compared


def test_same_answers_and_decisions_on_the_organism(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped organism: identity-order answers on every set and a dynamic and a static
    guardrail's answers and decisions, the first 12 questions of each set."""
    from dsg.engine.session import Session

    monkeypatch.delenv("DSG_CONFIG", raising=False)
    session = Session.open({"case": "organism"})
    loaded, sae = session.checked_pair()
    fmt = choose_format(session.case.prompt_format(), loaded.tokenizer)
    texts = [
        render_question(fmt, loaded.tokenizer, e, q)[0]
        for e in session.case.eval_sets(session.data)
        for q in e.questions[:12]
    ]
    backends = both(loaded)
    features = torch.arange(150)
    threshold = median_rate(
        Scorer(backends["transformer_lens"], sae.hook_name, 64), texts, sae.sae, features
    )
    interventions = [
        DynamicClamp(sae.sae, features, threshold=threshold, multiplier=500.0),
        StaticClamp(sae.sae, features, multiplier=500.0),
    ]
    results = {}
    for name, backend in backends.items():
        scorer = Scorer(backend, sae.hook_name, batch_size=16)
        base, outcomes = scorer.sweep(scorer.encode(texts), interventions)
        results[name] = (base, [(o.predicted, o.fired) for o in outcomes])
    base_hf, out_hf = results["transformers"]
    base_tl, out_tl = results["transformer_lens"]
    assert torch.equal(base_hf, base_tl)
    for (pred_hf, fired_hf), (pred_tl, fired_tl) in zip(out_hf, out_tl, strict=True):
        assert torch.equal(pred_hf, pred_tl) and torch.equal(fired_hf, fired_tl)
    assert out_tl[0][1].any() and not out_tl[0][1].all()


def median_rate(scorer: Scorer, texts: list[str], sae: Any, features: torch.Tensor) -> float:
    """A dynamic threshold that fires on about half of the prompts."""
    from dsg.scoring.rows import batches

    probe = DynamicClamp(sae, features, threshold=0.0, multiplier=1.0)
    rates = []
    with torch.inference_mode():
        for batch in batches(scorer.encode(texts), scorer.batch_size, scorer.pad_id):
            probe(scorer.to_hook(batch), batch.mask)
            rates.append(probe.rates)
    return float(torch.cat(rates).median())


def test_backend_choice_and_errors(tmp_path: Path) -> None:
    assert resolve_backend("auto", "cpu") == "transformer_lens"
    assert resolve_backend("auto", "cuda:1") == "transformers"
    assert resolve_backend("transformers", "cpu") == "transformers"
    with pytest.raises(UserError, match="unknown backend 'jax'"):
        check(Settings(case="c", model="m", sae="s", backend="jax"))
    world = TinyWorld(tmp_path, threshold=0.3)  # a TransformerLens-only model
    loaded = LoadedModel(world.model, world.tokenizer, "tiny-model")
    with pytest.raises(UserError, match="--backend transformer_lens"):
        open_backend("transformers", loaded, device="cpu", dtype=torch.float32)


def test_every_backend_setting_names_a_row_of_the_one_table() -> None:
    """``--backend`` accepts exactly the table's backends, and ``auto``."""
    from dsg.config.settings import BACKENDS
    from dsg.engine.backends import KINDS

    assert sorted(BACKENDS) == sorted(["auto", *KINDS])
