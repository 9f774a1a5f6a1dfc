"""A bundle is bound to the model it was calibrated on: the organism's bundle, recorded on its
TransformerLens model as ``dsg muse-export`` records it, attaches to the organism in float32 and
bfloat16, and is refused (one line) on a fine-tuned copy and on another model of the same width,
unless the caller overrides the check, which is then logged and kept. The same check guards the
lm-eval model and the open-unlearning handler."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from dsg_organism import MODEL_DIR, SAE_DIR
from dsg_sae_lens.local_dir import load_sae_dir
from dsg_transformer_lens.local_dir import load_local_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from dsg.bundle import Bundle, from_sae, model_binding
from dsg.core.errors import UserError
from dsg.hf import attach
from dsg_runtime.atomic import json_sha256
from dsg_runtime.binding import TOLERANCE, check_model_matches, distance, probe_activations

torch.set_num_threads(1)

HAZARD_TEXT = "The Sorsor coccus is transmitted by spores in marsh water and infects cattle."


def organism(dtype: torch.dtype = torch.float32) -> Any:
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=dtype).eval()


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An organism bundle (its SAE's first features) bound on the TransformerLens model."""
    sae = load_sae_dir(str(SAE_DIR), device="cpu", dtype=torch.float32)
    tl = load_local_model(MODEL_DIR, device="cpu", dtype=torch.float32, n_layers=1)
    bundle = from_sae(
        sae,
        list(range(8)),
        threshold=0.2,
        multiplier=50.0,
        binding=model_binding(tl, sae.hook_name),
    )
    return bundle.save(tmp_path_factory.mktemp("bound") / "bundle")


def relearned(steps: int) -> Any:
    """The organism fine-tuned on hazard text, as ``dsg attack relearn`` does (AdamW, 1e-4)."""
    model = organism().train()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    enc = tokenizer([HAZARD_TEXT] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(steps):
        model(**enc, labels=enc["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def same_width_stranger() -> Any:
    """A randomly initialised model of the organism's configuration."""
    from transformers import AutoConfig

    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODEL_DIR)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bundle_attaches_to_its_own_model(bound: Path, dtype: torch.dtype) -> None:
    bundle = Bundle.load(bound)
    assert bundle.binding is not None and bundle.binding.tolerance == TOLERANCE
    model = organism(dtype)
    gap = distance(
        bundle.binding, probe_activations(model, bundle.hook_name, bundle.binding.token_ids)
    )
    assert gap < TOLERANCE / 3  # TransformerLens record, transformers model, either dtype
    with attach(model, bundle) as handle:
        assert handle.binding_note is None


@pytest.mark.parametrize("other", ["fine-tuned", "same width"])
def test_another_model_is_refused_unless_overridden(
    bound: Path, other: str, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = Bundle.load(bound)
    model = relearned(30) if other == "fine-tuned" else same_width_stranger()
    with pytest.raises(UserError, match="calibrated on another model") as refused:
        attach(model, bundle)
    assert "\n" not in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="dsg_runtime"):
        handle = attach(model, bundle, allow_mismatch=True)
    assert handle.binding_note is not None and "override" in handle.binding_note
    assert handle.binding_note in caplog.text
    handle.remove()


def test_a_bundle_without_a_binding_needs_the_override(bound: Path, tmp_path: Path) -> None:
    """A bundle of format 4 (before the binding record) loads, unbound."""
    folder = tmp_path / "v4"
    unbound = Bundle.load(bound)
    dataclasses.replace(unbound, binding=None).save(folder)
    config = json.loads((folder / "bundle.json").read_text())
    assert config.pop("binding") is None and config.pop("top_k") is None
    config.pop("sha256")
    config["format_version"] = 4
    (folder / "bundle.json").write_text(json.dumps({**config, "sha256": json_sha256(config)}))
    old = Bundle.load(folder)
    assert old.binding is None
    model = organism()
    with pytest.raises(UserError, match="records no model binding.*export the bundle again"):
        attach(model, old)
    note = check_model_matches(old, model, allow_mismatch=True)
    assert note is not None and "no model binding" in note


def test_the_binding_is_covered_by_the_bundles_digest(bound: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(bound, folder)
    config = json.loads((folder / "bundle.json").read_text())
    config["binding"]["tolerance"] = 1.0
    (folder / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="edited after export"):
        Bundle.load(folder)


def test_the_lm_eval_model_checks_the_binding(bound: Path) -> None:
    pytest.importorskip("lm_eval")
    from dsg.lm_eval_model import GuardedLM

    stranger = same_width_stranger()
    with pytest.raises(UserError, match="calibrated on another model"):
        GuardedLM(pretrained=stranger, bundle=str(bound), device="cpu", batch_size=1)
    lm = GuardedLM(
        pretrained=stranger,
        bundle=str(bound),
        device="cpu",
        batch_size=1,
        allow_model_mismatch="true",
    )
    assert lm.binding_note is not None
    assert (
        GuardedLM(pretrained=str(MODEL_DIR), bundle=str(bound), device="cpu").binding_note is None
    )


def test_the_open_unlearning_handler_checks_the_binding(bound: Path, tmp_path: Path) -> None:
    from dsg.open_unlearning import GuardedModel

    stranger_dir = tmp_path / "stranger"
    same_width_stranger().save_pretrained(stranger_dir)
    AutoTokenizer.from_pretrained(MODEL_DIR).save_pretrained(stranger_dir)
    with pytest.raises(UserError, match="calibrated on another model"):
        GuardedModel.from_pretrained(str(stranger_dir), dsg_bundle=str(bound))
    model = GuardedModel.from_pretrained(
        str(stranger_dir), dsg_bundle=str(bound), dsg_allow_model_mismatch=True
    )
    assert model.dsg_guardrail.binding_note is not None
    ok = GuardedModel.from_pretrained(str(MODEL_DIR), dsg_bundle=str(bound))
    assert ok.dsg_guardrail.binding_note is None


def test_a_deep_copy_keeps_its_binding(bound: Path) -> None:
    model = organism()
    with attach(model, Bundle.load(bound)):
        twin = copy.deepcopy(model)
    from dsg_runtime.hf import guardrails_on

    (handle,) = guardrails_on(twin)
    assert handle.binding_note is None and handle._model is twin
