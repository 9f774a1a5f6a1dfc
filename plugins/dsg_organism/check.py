"""Measurements the build records: where the answer's information sits, and a guardrail sweep.

Both run on the Hugging Face model directly, so the build needs nothing from dsg's engine. The
sweep follows the reference (docs/reference-algorithm.md): features ranked by forget/retain mean
ratio, per-n threshold at the 95th percentile of retain-row hit rates, the closed-form clamp,
accuracy on the questions the clean model gets right under all 24 answer orders.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from dsg_organism.train_lm import letter_probs, prose_rows
from dsg_organism.world import World

PERMUTATIONS = list(itertools.permutations(range(4)))


def question_spans(tok: Any, rows: list[dict]) -> list[tuple[int, int]]:
    """Token positions of each prompt's question line (between the subject line and "A.")."""
    from dsg_organism.tokenizer import render_mcq

    spans = []
    for r in rows:
        full = render_mcq(tok, r["subject"], r["question"], r["choices"])
        head = full[: full.index(r["question"])]
        start = len(tok(head, add_special_tokens=False)["input_ids"])
        stop = len(tok(head + r["question"], add_special_tokens=False)["input_ids"])
        spans.append((start, stop))
    return spans


def ablation_probe(model: Any, tok: Any, sets: dict[str, list[dict]], mean: list[Any]) -> dict:
    """Accuracy per set when the question line is replaced by the mean residual, per layer.

    Where ablation no longer hurts, attention has already moved the facts off those positions,
    and a clamp on the positions where hazard features fire can no longer remove them.
    """
    import torch

    result: dict[str, dict[str, float]] = {}
    for layer in range(model.config.num_hidden_layers):
        row: dict[str, float] = {}
        for name, rows in sets.items():
            spans = question_spans(tok, rows)
            offset = {"i": 0}

            def ablate(
                x: Any,
                ids: Any,
                mask: Any,
                spans: list = spans,
                offset: dict = offset,
                layer: int = layer,
            ) -> Any:
                x = x.clone()
                for b in range(len(x)):
                    start, stop = spans[offset["i"] + b]
                    x[b, start:stop] = mean[layer]
                offset["i"] += len(x)
                return x

            probs = letter_probs(model, tok, rows, edit=ablate, layer=layer)
            gold = torch.tensor([r["answer"] for r in rows])
            row[name] = round(float((probs.argmax(-1) == gold).float().mean()), 4)
        result[f"blocks.{layer}.hook_resid_pre"] = row
    return result


def permuted(rows: list[dict]) -> list[dict]:
    """Each question under the 24 answer orders, question-major (reference algorithm: Prompts
    and scoring)."""
    out = []
    for r in rows:
        for p in PERMUTATIONS:
            out.append(
                {**r, "choices": [r["choices"][i] for i in p], "answer": p.index(r["answer"])}
            )
    return out


def correct_subset(model: Any, tok: Any, rows: list[dict]) -> list[int]:
    """Questions right under all 24 orders: the subset every sweep accuracy is measured on."""
    import torch

    perm = permuted(rows)
    probs = letter_probs(model, tok, perm)
    gold = torch.tensor([r["answer"] for r in perm])
    ok = (probs.argmax(-1) == gold).view(-1, 24).all(-1)
    return [i for i, good in enumerate(ok.tolist()) if good]


class Clamp:
    """The closed-form guardrail at the SAE hook: out = x + Σ_S (−m − a_j)·W_dec[j] at hits."""

    def __init__(self, w: dict, features: Any, threshold: float | None, multiplier: float):
        self.w_enc = w["W_enc"][:, features]
        self.b_enc = w["b_enc"][features]
        self.w_dec = w["W_dec"][features]
        self.b_dec = w["b_dec"]
        self.threshold = threshold  # None: static, clamp wherever a feature fires
        self.m = multiplier
        self.fired: list[bool] = []  # per prompt: the clamp changed something

    def __call__(self, x: Any, ids: Any, mask: Any) -> Any:
        import torch

        a = torch.relu((x - self.b_dec) @ self.w_enc + self.b_enc)
        hit = (a > 0).any(-1) & mask
        hit[:, 0] = False
        if self.threshold is None:
            fire = torch.ones(len(x), dtype=torch.bool)
        else:
            fire = hit.sum(1) / mask.sum(1) > self.threshold
        self.fired.extend((fire & hit.any(1)).tolist())
        delta = (-self.m - a) @ self.w_dec
        return x + (hit & fire[:, None]).unsqueeze(-1) * delta


def feature_stats(acts: Any, ids: Any, specials: list[int]) -> np.ndarray:
    """Mean activation per feature over valid (non BOS/EOS/pad) tokens, rounded to 1e-6."""
    import torch

    valid = ~torch.isin(ids, torch.tensor(specials))
    mean = (acts * valid.unsqueeze(-1)).sum((0, 1)) / valid.sum()
    return np.round(mean.double().numpy(), 6)


def select(f: np.ndarray, r: np.ndarray, ratio_percentile: float) -> np.ndarray:
    """Top features by forget²/retain² ratio, ordered by forget mean, stable (see
    docs/reference-algorithm.md, "Selection")."""
    big_f = f**2
    ratio = big_f / (r**2 + 1e-21)
    keep = (big_f >= np.percentile(big_f, 5)) & (ratio >= np.percentile(ratio, ratio_percentile))
    chosen = np.nonzero(keep)[0]
    return chosen[np.argsort(-f[chosen], kind="stable")]


def _feature_data(
    model: Any, tok: Any, world: World, w: dict, layer: int, seq_len: int, seed: int
) -> tuple[Any, Any, Any]:
    """Per-feature statistics of the forget and retain prose (equal row counts, shuffled with
    ``seed``) and the retain rows' SAE activations, BOS position zeroed."""
    import torch

    from dsg_organism.train_sae import collect

    gen = torch.Generator().manual_seed(seed)
    forget = prose_rows(tok, world.forget, seq_len)
    retain = prose_rows(tok, world.retain, seq_len)
    forget = forget[torch.randperm(len(forget), generator=gen)]
    retain = retain[torch.randperm(len(retain), generator=gen)]
    n = min(len(forget), len(retain))
    forget, retain = forget[:n], retain[:n]
    specials = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]

    def encode(rows: Any) -> Any:
        x = collect(model, [(rows, torch.ones_like(rows))], layer).view(len(rows), seq_len, -1)
        return torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])

    acts_f, acts_r = encode(forget), encode(retain)
    f, r = feature_stats(acts_f, forget, specials), feature_stats(acts_r, retain, specials)
    acts_r[:, 0] = 0
    return f, r, acts_r


def _scorer(
    model: Any, tok: Any, sets: dict[str, list[dict]], layer: int
) -> Callable[[Clamp | None], tuple[dict[str, float], dict[str, float]]]:
    """Accuracy and fired fraction per non-empty set under an edit (None: unguarded)."""
    import torch

    def score(edit: Clamp | None) -> tuple[dict[str, float], dict[str, float]]:
        acc, fired = {}, {}
        for name, rows in sets.items():
            if not rows:
                continue
            probs = letter_probs(model, tok, rows, edit=edit, layer=layer)
            gold = torch.tensor([q["answer"] for q in rows])
            acc[name] = round(float((probs.argmax(-1) == gold).float().mean()), 4)
            if edit is not None:
                fired[name] = round(float(np.mean(edit.fired)), 4)
                edit.fired.clear()
        return acc, fired

    return score


def sweep(
    model: Any,
    tok: Any,
    world: World,
    w: dict,
    layer: int,
    seq_len: int,
    seed: int,
    ratio_percentiles: list[float],
    n_features: list[int],
    multipliers: list[float],
) -> dict:
    """Baseline and dynamic/static accuracy per set on the ``correct`` subsets."""
    import torch

    f, r, acts_r = _feature_data(model, tok, world, w, layer, seq_len, seed)
    sets = {
        name: [{**row, "subject": name} for row in rows] for name, rows in world.eval_sets.items()
    }
    keep = {name: correct_subset(model, tok, rows) for name, rows in sets.items()}
    sets = {name: [rows[i] for i in keep[name]] for name, rows in sets.items()}
    score = _scorer(model, tok, sets, layer)
    report: dict[str, Any] = {
        "correct_subset_sizes": {k: len(v) for k, v in keep.items()},
        "question_counts": {k: len(v) for k, v in world.eval_sets.items()},
        "baseline": score(None)[0],
        "configs": [],
    }
    for p in ratio_percentiles:
        chosen = select(f, r, p)
        for k in n_features:
            feats = torch.tensor(chosen[:k], dtype=torch.long)
            rates = (acts_r[:, :, feats] > 0).any(-1).sum(1).double() / seq_len
            alpha = float(np.percentile(rates.numpy(), 95))
            for m in multipliers:
                for strategy, threshold in (("dynamic", alpha), ("static", None)):
                    acc, fired = score(Clamp(w, feats, threshold, m))
                    report["configs"].append(
                        {
                            "ratio_percentile": p,
                            "n_features": int(len(feats)),
                            "multiplier": m,
                            "strategy": strategy,
                            "threshold": round(alpha, 6),
                            "accuracy": acc,
                            "fired": fired,
                        }
                    )
    return report
