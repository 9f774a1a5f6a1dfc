"""The organism, a bundle of its topic features, its prompts and dsg.hf's guarded generations:
what the vLLM tests compare vLLM's serving against."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

MAX_NEW = 12


N_FEATURES = 8


def organism_model() -> Path:
    from dsg_organism import MODEL_DIR

    return MODEL_DIR


def texts(name: str, n: int) -> list[str]:
    from dsg_organism import DATA as DATA_DIR

    lines = (DATA_DIR / "world" / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


def organism_bundle(directory: Path, pair: list[list[int]]) -> Path:
    """Features the organism's forget prose activates far more than its retain prose (ranked by
    the reference's ratio). The threshold lies above the 95th percentile of retain rates (the
    reference's calibration) and between the rates of ``pair``, two prompts that share a prefix
    with hits: one fires, the other does not, and their shared KV blocks differ."""
    from dsg_organism import OrganismSAELoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dsg.bundle import from_sae
    from dsg_runtime.binding import record_binding
    from dsg_runtime.guardrail import (
        calibrate_threshold,
        select_features,
        sequence_rates,
        token_hits,
    )
    from dsg_runtime.vllm.decision import PromptDecider

    model_dir = organism_model()
    loaded = OrganismSAELoader().load("organism", device="cpu", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    probe = from_sae(loaded, list(range(8)), threshold=0.5, multiplier=20.0)
    decider = PromptDecider.load(probe, model_dir, torch.float32, "cpu", allow_mismatch=True)

    def residuals(corpus: list[str]) -> list[torch.Tensor]:
        return [decider.residual(torch.tensor([tok(t)["input_ids"]]))[0] for t in corpus]

    forget, retain = residuals(texts("forget", 40)), residuals(texts("retain", 60))
    with torch.no_grad():
        f_mean = torch.cat([loaded.sae.encode(r[1:]) for r in forget]).mean(0)
        r_mean = torch.cat([loaded.sae.encode(r[1:]) for r in retain]).mean(0)
    features = select_features(f_mean, r_mean, ratio_percentile=99.0)[:N_FEATURES].tolist()
    columns = from_sae(loaded, features, threshold=0.5, multiplier=20.0).guardrail()

    def rate(resid: torch.Tensor) -> float:
        mask = torch.ones(1, resid.shape[0], dtype=torch.bool)
        acts = columns.activations(resid[None].float())
        return float(sequence_rates(token_hits(acts, mask), mask)[0])

    low, high = (rate(decider.residual(torch.tensor([p]))[0]) for p in pair[::-1])
    assert calibrate_threshold([rate(r) for r in retain], 95.0) < low < high, (low, high)
    bundle_threshold = (low + high) / 2
    bundle = from_sae(loaded, features, threshold=bundle_threshold, multiplier=20.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    binding = record_binding(model, bundle.hook_name)
    return dataclasses.replace(bundle, binding=binding).save(directory)


def prompt_ids() -> list[list[int]]:
    """Forget and retain prose, and last a pair that shares a prefix of forget prose (with hits,
    over a whole KV block) but not a decision: more forget prose, or a long retain passage."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(organism_model())
    forget, retain = texts("forget", 4), texts("retain", 4)
    prefix = forget[1][:200]
    shared = [prefix + " " + forget[2][:300], prefix + " " + retain[1][:600]]
    return [tok(t[:400])["input_ids"] for t in [*forget, *retain]] + [
        tok(t)["input_ids"] for t in shared
    ]


def hf_generations(
    bundle_dir: Path, ids: list[list[int]], guarded: bool
) -> tuple[list[list[int]], list[bool]]:
    """dsg.hf's greedy generations, each prompt alone; and whether each prompt fired."""
    from transformers import AutoModelForCausalLM

    from dsg.bundle import Bundle
    from dsg.hf import attach

    model = AutoModelForCausalLM.from_pretrained(organism_model(), dtype=torch.float32).eval()
    handle = attach(model, Bundle.load(bundle_dir)) if guarded else None
    out, fired = [], []
    for prompt in ids:
        x = torch.tensor([prompt])
        seq = model.generate(x, max_new_tokens=MAX_NEW, do_sample=False, min_new_tokens=MAX_NEW)
        out.append(seq[0, x.shape[1] :].tolist())
        fired.append(bool(handle.fired[0]) if handle else False)  # type: ignore[index]
    return out, fired
