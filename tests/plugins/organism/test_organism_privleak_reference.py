"""privleak's reference for the organism: the shipped retain model and its min-k% MIA log, which
``python -m dsg_organism.privleak_reference`` recomputes from it."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from dsg_organism import MODEL_DIR, MUSE_DIR, RETAIN_LOGS, RETAIN_MODEL_DIR, OrganismCase
from dsg_organism.privleak_reference import (
    auc,
    min_k_score,
    privleak,
    privleak_texts,
    reference_log,
    token_log_probs,
)
from dsg_organism.train_lm import LMConfig


def test_min_k_is_minus_the_mean_of_the_lowest_forty_percent() -> None:
    assert min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0]) == 4.5  # int(5 * 0.4) = 2 lowest
    assert min_k_score([-1.0, -2.0]) == 2.0  # at least one
    assert min_k_score([]) == 0.0


def test_auc_counts_holdout_above_forget_ties_a_half() -> None:
    assert auc([1.0, 2.0], [2.0, 3.0]) == 3.5 / 4
    assert auc([1.0], [2.0]) == 1.0 and auc([2.0], [1.0]) == 0.0


def test_privleak_is_the_relative_difference_of_one_minus_auc() -> None:
    assert privleak(0.99, 0.5) == pytest.approx(-98.0)
    assert privleak(0.7, 0.7) == pytest.approx(0.0)
    assert privleak(0.4, 0.8) == pytest.approx(200.0)  # (0.6 - 0.2) / 0.2


def test_token_log_probs_skip_the_bos_and_the_last_token_whatever_the_padding() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    texts = privleak_texts(MUSE_DIR)["forget"][:3]
    rows = [tok(t)["input_ids"] for t in texts]
    assert rows[0][0] == tok.bos_token_id and len({len(r) for r in rows}) > 1
    batched = token_log_probs(model, tok, rows)
    for row, got in zip(rows, batched, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0]
        want = [torch.log_softmax(logits[i], -1)[row[i + 1]].item() for i in range(len(row) - 2)]
        assert got == pytest.approx(want, abs=1e-5)


def test_the_shipped_log_is_the_shipped_retain_models() -> None:
    shipped = json.loads(RETAIN_LOGS.read_text())["mia_min_k"]
    again = reference_log(RETAIN_MODEL_DIR, MUSE_DIR)["mia_min_k"]
    for split in ("forget", "holdout"):
        got = [v["score"] for v in shipped[split]["value_by_index"].values()]
        want = [v["score"] for v in again[split]["value_by_index"].values()]
        assert got == pytest.approx(want, abs=1e-4)
    assert shipped["agg_value"] == shipped["auc"] == pytest.approx(again["auc"], abs=1e-3)


def test_the_retain_model_is_the_organisms_recipe_without_the_pathogens() -> None:
    info = json.loads((RETAIN_MODEL_DIR / "retain-build-info.json").read_text())
    organism = json.loads((MODEL_DIR.parent / "build-info.json").read_text())
    assert info["model"] == asdict(LMConfig()) and info["seed"] == organism["seed"]
    assert info["retain_docs"] == organism["world"]["retain_docs"]
    shape, retain = (
        json.loads((d / "config.json").read_text()) for d in (MODEL_DIR, RETAIN_MODEL_DIR)
    )
    shape.pop("transformers_version"), retain.pop("transformers_version")
    assert retain == shape
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (RETAIN_MODEL_DIR / name).read_bytes() == (MODEL_DIR / name).read_bytes()
    muse = OrganismCase().muse_data()
    assert (muse.retain_model, muse.retain_logs) == (RETAIN_MODEL_DIR, RETAIN_LOGS)
