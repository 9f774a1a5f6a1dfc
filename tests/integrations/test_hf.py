"""The guardrail on a plain transformers model: same decisions, residuals and logits as the
TransformerLens path, carried through KV-cache generation, and loadable the way open-unlearning
loads models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hf_world import (
    FORGET_PROMPTS,
    HOOK,
    LAYER,
    MIXED_PROMPTS,
    RETAIN_PROMPTS,
    layer_resid,
    write_bundle,
)

from dsg.bundle import Bundle
from dsg.core.errors import UserError
from dsg.guardrail import DynamicClamp
from dsg.hf import attach
from dsg_runtime.guardrail import sequence_rates, token_hits

torch.set_num_threads(1)

ATOL = 1e-4


def test_hf_matches_transformer_lens_under_the_guardrail(world: dict[str, Any]) -> None:
    from dsg_transformer_lens.local_dir import load_local_model

    model, tokenizer = world["model"], world["tokenizer"]
    tl = load_local_model(world["model_dir"], device="cpu", dtype=torch.float32).model
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    captured: dict[str, torch.Tensor] = {}
    handle = attach(model, Bundle.load(world["bundle_dir"]))
    capture = model.model.layers[LAYER].register_forward_hook(
        lambda m, a, out: captured.update(resid=out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            hf_logits = model(**enc).logits
    finally:
        capture.remove()
        handle.remove()
    fired = []
    for row, text in enumerate(MIXED_PROMPTS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        clamp = DynamicClamp(world["sae"], world["features"], world["alpha"], 30.0)
        seen: dict[str, torch.Tensor] = {}

        def hook(resid: torch.Tensor, hook: Any, clamp: Any = clamp, seen: dict = seen) -> Any:
            seen["resid"] = clamp(resid, torch.ones(resid.shape[:2], dtype=torch.bool))
            return seen["resid"]

        with torch.no_grad():
            tl_logits = tl.run_with_hooks(ids, fwd_hooks=[(HOOK, hook)])
        fired.append(bool(clamp.fired[0]))
        n = ids.shape[1]
        torch.testing.assert_close(
            captured["resid"][row, -n:], seen["resid"][0], atol=ATOL, rtol=1e-5
        )
        torch.testing.assert_close(hf_logits[row, -n:], tl_logits[0], atol=ATOL, rtol=1e-5)
    assert handle.fired.tolist() == fired == [True, False, True, False]


def test_left_padding_does_not_change_a_rows_decision(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    with attach(model, Bundle.load(world["bundle_dir"])) as handle:
        alone = []
        for text in MIXED_PROMPTS:
            with torch.no_grad():
                model(**tokenizer([text], return_tensors="pt"))
            alone.append((bool(handle.fired[0]), float(handle.rates[0])))
        with torch.no_grad():
            model(**tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True))
        together = list(zip(handle.fired.tolist(), handle.rates.tolist(), strict=True))
    assert together == alone


def prompt_decided_logits(
    model: Any, bundle: Bundle, ids: torch.Tensor, mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Logits of one full forward over prompt + completion with the rows decided on the prompt
    and every hit of a firing row clamped: what cached generation must reproduce."""
    guard = bundle.guardrail()

    def hook(module: Any, args: Any, out: Any) -> Any:
        if isinstance(out, tuple):  # transformers 4.x decoder layers
            return (hook(module, args, out[0]), *out[1:])
        acts = guard.activations(out)
        prompt_hits = token_hits(acts[:, :prompt_len], mask[:, :prompt_len])
        rates = sequence_rates(prompt_hits, mask[:, :prompt_len])
        fired = rates.float() > torch.tensor(bundle.threshold, dtype=torch.float32)
        return guard.clamp(out, acts, token_hits(acts, mask) & fired[:, None])

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask.long()).logits
    finally:
        handle.remove()


def test_generation_carries_the_prompt_decision(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    bundle = Bundle.load(world["bundle_dir"])
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    prompt_len = enc["input_ids"].shape[1]
    settings = {
        "max_new_tokens": 6,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_logits": True,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.no_grad():
        plain = model.generate(**enc, **settings)
        with attach(model, bundle) as handle:
            first = model.generate(**enc, **settings)
            fired = handle.fired.tolist()
            second = model.generate(**enc, **settings)
    assert fired == [True, False, True, False]
    assert torch.equal(first.sequences, second.sequences)  # greedy guarded generation is stable
    for row, did_fire in enumerate(fired):
        if not did_fire:  # rows that do not fire generate exactly as without the guardrail
            assert torch.equal(first.sequences[row], plain.sequences[row])
    assert not torch.equal(first.sequences[0], plain.sequences[0])
    ids = first.sequences
    mask = torch.cat(
        [
            enc["attention_mask"].bool(),
            torch.ones(ids.shape[0], ids.shape[1] - prompt_len, dtype=torch.bool),
        ],
        1,
    )
    full = prompt_decided_logits(model, bundle, ids, mask, prompt_len)
    for step, step_logits in enumerate(first.logits):
        torch.testing.assert_close(
            step_logits, full[:, prompt_len - 1 + step], atol=ATOL, rtol=1e-5
        )


def test_resid_pre_hook_and_removal(world: dict[str, Any], tmp_path: Path) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
    # blocks.2.hook_resid_pre is the same vector as blocks.1.hook_resid_post
    pre = Bundle.load(
        write_bundle(
            tmp_path / "pre",
            world["sae"],
            world["features"],
            world["alpha"],
            hook="blocks.2.hook_resid_pre",
            model=model,
        )
    )
    post = Bundle.load(world["bundle_dir"])
    outputs = []
    for bundle in (pre, post):
        handle = attach(model, bundle)
        with torch.no_grad():
            outputs.append(model(**enc).logits)
        assert handle.fired.tolist() == [True, False, True, False]
        handle.remove()
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
    assert not torch.allclose(outputs[0], before)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


def test_attach_refuses_a_bundle_for_another_model(world: dict[str, Any], tmp_path: Path) -> None:
    far = Bundle.load(
        write_bundle(
            tmp_path / "far",
            world["sae"],
            world["features"],
            world["alpha"],
            hook="blocks.7.hook_resid_post",
        )
    )
    with pytest.raises(UserError, match="has 3 layers"):
        attach(world["model"], far)


def test_open_unlearning_handler_loads_model_and_bundle(world: dict[str, Any]) -> None:
    from dsg.open_unlearning import GuardedModel

    tokenizer = world["tokenizer"]
    model = GuardedModel.from_pretrained(  # the keyword arguments open-unlearning passes
        pretrained_model_name_or_path=str(world["model_dir"]),
        torch_dtype=torch.float32,
        attn_implementation="eager",
        dsg_bundle=str(world["bundle_dir"]),
        cache_dir=None,
    )
    for prompts, expected in ((FORGET_PROMPTS, True), (RETAIN_PROMPTS, False)):
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        assert out.shape[1] == enc["input_ids"].shape[1] + 4
        assert model.dsg_guardrail.fired.tolist() == [expected] * len(prompts)


def test_open_unlearning_handler_finds_a_bundle_inside_the_model_dir(
    world: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    from dsg.open_unlearning import BUNDLE_SUBDIR, GuardedModel

    model_dir = tmp_path / "guarded"
    shutil.copytree(world["model_dir"], model_dir)
    shutil.copytree(world["bundle_dir"], model_dir / BUNDLE_SUBDIR)
    model = GuardedModel.from_pretrained(str(model_dir))
    assert model.dsg_guardrail.bundle.features == tuple(world["features"])
    with pytest.raises(UserError, match="no dsg guardrail bundle"):
        GuardedModel.from_pretrained(str(world["model_dir"]))


def test_tuple_outputs_of_transformers_4_layers(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    bundle = Bundle.load(world["bundle_dir"])
    resid, mask = layer_resid(model, tokenizer, MIXED_PROMPTS)
    expected = bundle.guardrail()(resid, mask)
    with attach(model, bundle) as handle:
        handle._capture(None, (), {"attention_mask": mask.long()})
        out = handle._post_hook(None, (), (resid, "attention weights"))
    assert out[1] == "attention weights"
    torch.testing.assert_close(out[0], expected, atol=0, rtol=0)


def test_static_cache_generation_reads_the_prepared_mask(world: dict[str, Any]) -> None:
    model, tokenizer = world["model"], world["tokenizer"]
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with attach(model, Bundle.load(world["bundle_dir"])) as handle, torch.no_grad():
        dynamic = model.generate(**enc, **settings)
        decided = handle.fired.tolist()
        static = model.generate(**enc, **settings, cache_implementation="static")
        assert handle.fired.tolist() == decided == [True, False, True, False]
    torch.testing.assert_close(static, dynamic, atol=0, rtol=0)
