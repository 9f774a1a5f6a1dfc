"""The decision taken before vLLM's engine, and the bookkeeping that carries it: the same
decisions as dsg.hf's guarded generate, a cache salt per decision, sealed decisions that cannot
be forged or moved to another prompt or bundle, engine processes that must prove their bundle
and key, untested set-ups refused. No vLLM needed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import Bundle, from_sae
from dsg.core.errors import UserError
from dsg_runtime.vllm.checks import GuardrailRefused, check_config, check_version
from dsg_runtime.vllm.decision import BATCH_MIN_TOKENS, PromptDecider, cache_salt
from dsg_runtime.vllm.engine import (
    RequestRefused,
    check_request,
    decide_request,
    request_decisions,
)
from dsg_runtime.vllm.in_engine import ENGINE_TAG
from dsg_runtime.vllm.seal import FIRED_KEY, SEAL_KEY, check_proofs, prove, seal

torch.set_num_threads(1)
HIDDEN, VOCAB, LAYERS = 32, 96, 3
KEY, DIGEST = b"k" * 32, "d" * 64


def write_model(path: Path) -> Path:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
        sliding_window=8, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    Gemma2ForCausalLM(config).eval().save_pretrained(path)
    return path


def random_sae(seed: int) -> Any:
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=HIDDEN, d_sae=24, apply_b_dec_to_input=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=g) * 0.3 - 0.5)
    return sae


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    return [[2, *torch.randint(3, VOCAB, (int(n),), generator=g).tolist()] for n in range(4, 16)]


def bundle_for(model_dir: Path, hook: str, strategy: str = "dynamic") -> Bundle:
    """A bundle whose threshold lies between the median prompt rates, so about half fire."""
    sae = random_sae(int(hook.split(".")[1]))
    loaded = LoadedSAE(sae, "random", hook, int(hook.split(".")[1]), fingerprint="r")
    probe = from_sae(loaded, [0, 1, 2, 3], threshold=0.5, multiplier=20.0)
    decider = PromptDecider.load(probe, model_dir, torch.float32, "cpu", allow_mismatch=True)
    rates = []
    for ids in prompts():
        guard = probe.guardrail()
        resid = decider.residual(torch.tensor([ids])).float()
        guard.decide_prompt(resid, torch.ones(resid.shape[:2], dtype=torch.bool))
        rates.append(float(guard.rates[0]))  # type: ignore[index]
    low, high = sorted(rates)[len(rates) // 2 - 1 : len(rates) // 2 + 1]
    assert low < high, rates
    threshold = (low + high) / 2 if strategy == "dynamic" else None
    bundle = from_sae(loaded, [0, 1, 2, 3], threshold=threshold, multiplier=20.0, strategy=strategy)
    return bound_to(bundle, model_dir)


def bound_to(bundle: Bundle, model_dir: Path) -> Bundle:
    """``bundle`` with the binding record of the model in ``model_dir``."""
    from transformers import AutoModelForCausalLM

    from dsg_runtime.binding import record_binding

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return dataclasses.replace(bundle, binding=record_binding(model, bundle.hook_name))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("vllm-decision") / "model")


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"])
def test_decisions_equal_dsg_hf_guarded_generate(model_dir: Path, hook: str) -> None:
    from transformers import AutoModelForCausalLM

    from dsg.hf import attach

    bundle = bundle_for(model_dir, hook)
    decider = PromptDecider.load(bundle, model_dir, torch.float32, "cpu")
    assert len(decider.model.model.layers) == bundle.hook_layer + 1  # later layers not loaded
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ours, theirs = [], []
    with attach(model, bundle) as handle:
        for ids in prompts():
            model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False)
            theirs.append(bool(handle.fired[0]))  # type: ignore[index]
            ours.append(decider.decide(ids))
    assert ours == theirs
    assert 0 < sum(ours) < len(ours)  # both kinds of prompt


def mixed_lengths() -> list[list[int]]:
    """Prompts of many lengths, several of each (short ones too, below the batching floor),
    in no order: what a batch of concurrent requests looks like."""
    g = torch.Generator().manual_seed(5)
    lengths = [1, 2, 3, 5, 7, 8, 9, 11, 12, 16, 31, 32, 33, 40, 47, 64]
    rows = [[2, *torch.randint(3, VOCAB, (n - 1,), generator=g).tolist()] for n in lengths * 3]
    order = torch.randperm(len(rows), generator=g).tolist()
    return [*prompts(), *(rows[i] for i in order)]


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"])
def test_prompts_decided_together_are_decided_as_alone(model_dir: Path, hook: str) -> None:
    """Batch invariance: each prompt decided in a batch of mixed lengths gets its decision
    alone, and its rate; the residual at the hook of each prompt batched with others of its
    length equals its own, bit for bit (the batch pads nothing: each length runs as one batch,
    and prompts too short to batch are decided alone)."""
    decider = PromptDecider.load(bundle_for(model_dir, hook), model_dir, torch.float32, "cpu")
    rows = mixed_lengths()
    alone, rates = [], []
    for ids in rows:
        alone.append(decider.decide(ids))
        rates.append(decider.guardrail.rates.clone())
    assert decider.decide_many(rows) == alone
    assert 0 < sum(alone) < len(alone)  # both kinds of prompt
    for n in sorted({len(ids) for ids in rows if len(ids) >= BATCH_MIN_TOKENS}):
        same = [ids for ids in rows if len(ids) == n]
        together = decider.residual(torch.tensor(same))
        for row, ids in enumerate(same):
            assert torch.equal(together[row], decider.residual(torch.tensor([ids]))[0]), n
            decider.decide_many([ids])
            assert torch.equal(decider.guardrail.rates, rates[rows.index(ids)])


def test_smollm2_prompts_decided_together_are_decided_as_alone(smollm2_folder: Path) -> None:
    """The same on SmolLM2 (a Llama, sdpa attention, 576 wide) under its shipped TopK SAE:
    there a matrix product of fewer than 12 rows rounds otherwise than the same rows inside a
    larger one, which the batching floor keeps out of every batch."""
    from dsg_smollm2 import SAE_NAME
    from transformers import AutoModelForCausalLM

    from dsg.api.plugins import registry
    from dsg_runtime.binding import record_binding

    loader = registry().get("sae_loaders", "smollm2")
    shipped = loader.load(SAE_NAME, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    binding = record_binding(hf, shipped.hook_name)
    features = list(range(0, 4096, 64))
    g = torch.Generator().manual_seed(7)
    lengths = [1, 4, 9, 11, 12, 31, 32, 33, 48, 64, 65]
    rows = [[1, *torch.randint(3, 49000, (n - 1,), generator=g).tolist()] for n in lengths * 3]
    probe = from_sae(shipped, features, threshold=0.5, multiplier=20.0, binding=binding)
    decider = PromptDecider.load(probe, smollm2_folder, torch.float32, "cpu")
    rates = []
    for ids in rows:
        decider.decide(ids)
        rates.append(float(decider.guardrail.rates[0]))
    threshold = sorted(rates)[len(rates) // 2]
    bundle = from_sae(shipped, features, threshold=threshold, multiplier=20.0, binding=binding)
    decider = PromptDecider.load(bundle, smollm2_folder, torch.float32, "cpu")
    alone = [decider.decide(ids) for ids in rows]
    assert decider.decide_many(rows) == alone
    assert 0 < sum(alone) < len(alone)
    for n in (n for n in lengths if n >= BATCH_MIN_TOKENS):
        same = [ids for ids in rows if len(ids) == n]
        together = decider.residual(torch.tensor(same))
        for row, ids in enumerate(same):
            assert torch.equal(together[row], decider.residual(torch.tensor([ids]))[0]), n


def test_an_empty_prompt_is_refused(model_dir: Path) -> None:
    decider = PromptDecider.load(
        bundle_for(model_dir, "blocks.0.hook_resid_pre"), model_dir, torch.float32, "cpu"
    )
    with pytest.raises(UserError, match="empty prompt"):
        decider.decide_many([[2, 5, 7], []])


def test_the_static_clamp_applies_to_every_request(model_dir: Path) -> None:
    bundle = bundle_for(model_dir, "blocks.0.hook_resid_pre", strategy="static")
    decider = PromptDecider.load(bundle, model_dir, torch.float32, "cpu")
    assert all(decider.decide(ids) for ids in prompts())


def test_the_decider_refuses_a_bundle_for_another_model(model_dir: Path, tmp_path: Path) -> None:
    bundle = bundle_for(model_dir, "blocks.0.hook_resid_pre")
    deep = dataclasses.replace(bundle, hook_name=f"blocks.{LAYERS}.hook_resid_post")
    with pytest.raises(UserError, match="has 3 layers"):
        PromptDecider.load(deep, model_dir, torch.float32, "cpu")


def test_the_decider_refuses_a_bundle_not_bound_to_the_served_model(
    model_dir: Path, tmp_path: Path
) -> None:
    bundle = bundle_for(model_dir, "blocks.1.hook_resid_post")
    unbound = dataclasses.replace(bundle, binding=None)
    with pytest.raises(UserError, match="records no model binding"):
        PromptDecider.load(unbound, model_dir, torch.float32, "cpu")
    from transformers import AutoModelForCausalLM

    drifted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():  # a fine-tuned copy: the layer below the hook moved
        for p in drifted.model.layers[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    drifted.save_pretrained(tmp_path / "drifted")
    with pytest.raises(UserError, match="calibrated on another model"):
        PromptDecider.load(bundle, tmp_path / "drifted", torch.float32, "cpu")
    PromptDecider.load(bundle, model_dir, torch.bfloat16, "cpu")  # another dtype: the same model


def test_cache_salt_separates_decisions_bundles_and_tenants() -> None:
    salts = {
        cache_salt(user, digest, fired)
        for user in (None, "tenant-a")
        for digest in ("d1", "d2")
        for fired in (False, True)
    }
    assert len(salts) == 8
    assert cache_salt(None, "d1", True) == cache_salt(None, "d1", True)


def engine_request(ids: list[int], extra: dict[str, Any] | None = None, **over: Any) -> Any:
    params = SimpleNamespace(extra_args=extra)
    fields = dict(
        sampling_params=params, pooling_params=None, prompt_embeds=None, mm_features=None,
        prompt_token_ids=ids, cache_salt=None, request_id="r", resumable=False,
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **over})


def test_decide_request_overwrites_a_client_decision_and_salts(model_dir: Path) -> None:
    bundle = bundle_for(model_dir, "blocks.0.hook_resid_pre")
    decider = PromptDecider.load(bundle, model_dir, torch.float32, "cpu")
    for ids in prompts():
        truth = decider.decide(ids)
        client = {FIRED_KEY: not truth, SEAL_KEY: "0" * 64, "other": 1}
        forged = engine_request(ids, client, cache_salt="t")
        decide_request(decider, DIGEST, KEY, forged)
        tag = seal(KEY, ids, truth, DIGEST)
        assert forged.sampling_params.extra_args == {FIRED_KEY: truth, SEAL_KEY: tag, "other": 1}
        assert forged.cache_salt == cache_salt("t", DIGEST, truth)
        assert check_request(forged, KEY, DIGEST) is truth  # the engine core accepts it


def test_a_decision_taken_ahead_serves_only_its_own_prompt(model_dir: Path) -> None:
    """``process_inputs`` uses a decision taken ahead in its own call only for exactly the
    tokens it was taken on; a prompt one token longer or shorter is decided itself."""
    from dsg_runtime.vllm.engine import _DECIDED_AHEAD, prompt_tokens

    bundle = bundle_for(model_dir, "blocks.0.hook_resid_pre")
    decider = PromptDecider.load(bundle, model_dir, torch.float32, "cpu")
    for ids in prompts():
        truth = decider.decide(ids)
        near = {tuple(ids[:-1]): not truth, (*ids, 5): not truth}
        for ahead, want in ((near, truth), ({**near, tuple(ids): not truth}, not truth)):
            token = _DECIDED_AHEAD.set(ahead)
            try:
                request = engine_request(ids)
                decide_request(decider, DIGEST, KEY, request)
            finally:
                _DECIDED_AHEAD.reset(token)
            assert request.sampling_params.extra_args[FIRED_KEY] is want
    assert prompt_tokens({"type": "token", "prompt_token_ids": [2, 5]}) == [2, 5]
    for other in (
        "text",
        {"prompt_token_ids": [2, 5]},  # a raw TokensPrompt: rendered, and decided, later
        {"prompt": "text"},
        {"type": "embeds", "prompt_token_ids": [2, 5]},
        {"type": "multimodal", "prompt_token_ids": [2, 5]},
        {"type": "token", "prompt_token_ids": []},
        {"type": "token", "prompt_token_ids": [2, True]},
        {"type": "token", "prompt_token_ids": (2, 5)},
    ):
        assert prompt_tokens(other) is None, other


def sealed(ids: list[int], fired: bool, digest: str = DIGEST, **over: Any) -> Any:
    extra = {FIRED_KEY: fired, SEAL_KEY: seal(KEY, ids, fired, digest)}
    return engine_request(ids, extra, cache_salt=cache_salt("t", digest, fired), **over)


def test_the_engine_core_refuses_forged_moved_and_unsealed_decisions() -> None:
    ids, other = [2, 7, 9, 11], [2, 7, 9, 12]
    assert check_request(sealed(ids, False), KEY, DIGEST) is False
    assert check_request(sealed(ids, True), KEY, DIGEST) is True
    flipped = sealed(ids, True)
    flipped.sampling_params.extra_args[FIRED_KEY] = False  # a forged "not fired"
    moved = sealed(other, False)
    moved.prompt_token_ids = ids  # a seal taken from another prompt
    salted = sealed(ids, True)
    salted.cache_salt = cache_salt("t", DIGEST, False)  # KV blocks of the other decision
    forged = engine_request(ids, {FIRED_KEY: False, SEAL_KEY: seal(b"x" * 32, ids, False, DIGEST)})
    refused = {
        "flipped": flipped,
        "moved": moved,
        "salted": salted,
        "another key": forged,
        "another bundle": sealed(ids, False, digest="e" * 64),
        "no decision": engine_request(ids, None),
        "a bare bool": engine_request(ids, {FIRED_KEY: False}),
        "streamed": sealed(ids, False, resumable=True),
        "embeddings": sealed(ids, False, prompt_embeds=torch.zeros(4, HIDDEN)),
        "pooling": sealed(ids, False, pooling_params=object()),
    }
    for name, request in refused.items():
        with pytest.raises(RequestRefused) as error:
            check_request(request, KEY, DIGEST)
        assert "\n" not in str(error.value), name


def test_an_engine_core_that_decides_in_the_engine_reads_no_decision_but_refuses_the_rest() -> None:
    """Under the digest it proved when it decides in the engine, the engine core takes a request
    whatever decision it carries (the worker decides), and still refuses what cannot be decided."""
    ids, engine = [2, 7, 9, 11], DIGEST + ENGINE_TAG
    for request in (engine_request(ids, None), engine_request(ids, {FIRED_KEY: False})):
        check_request(request, KEY, engine)
        with pytest.raises(RequestRefused, match="no decision this server's front end made"):
            check_request(request, KEY, DIGEST)
    for why, over in {
        "streamed prompts grow": {"resumable": True},
        "without plain prompt tokens": {"prompt_embeds": torch.zeros(4, HIDDEN)},
        "pooling requests are not guarded": {"pooling_params": object()},
    }.items():
        with pytest.raises(RequestRefused, match=why):
            check_request(engine_request(ids, None, **over), KEY, engine)


def test_engine_proofs_must_name_the_front_ends_bundle_and_key() -> None:
    nonce = "n1"
    good = [prove(KEY, nonce, "engine core", DIGEST), prove(KEY, nonce, "worker", DIGEST)]
    check_proofs(KEY, nonce, DIGEST, good)
    bad = {
        "another bundle": [good[0], prove(KEY, nonce, "worker", "e" * 64)],
        "another key": [good[0], prove(b"x" * 32, nonce, "worker", DIGEST)],
        "an old answer": [good[0], prove(KEY, "n0", "worker", DIGEST)],
        "no answer": [],
        "not a proof": ["worker"],
    }
    for name, proofs in bad.items():
        with pytest.raises(GuardrailRefused) as error:
            check_proofs(KEY, nonce, DIGEST, proofs)
        assert "\n" not in str(error.value), name
    engine = DIGEST + ENGINE_TAG  # the same bundle, decided in the engine
    with pytest.raises(GuardrailRefused) as error:
        check_proofs(KEY, nonce, DIGEST, [good[0], prove(KEY, nonce, "worker", engine)])
    assert (
        f"worker guards with bundle {DIGEST[:16]} (deciding in the engine) but the front end "
        f"with {DIGEST[:16]} (deciding in the front end)"
    ) in str(error.value)
    check_proofs(KEY, nonce, engine, [prove(KEY, nonce, r, engine) for r in ("core", "worker")])


def test_requests_that_cannot_be_decided_are_refused(model_dir: Path) -> None:
    bundle = bundle_for(model_dir, "blocks.0.hook_resid_pre")
    decider = PromptDecider.load(bundle, model_dir, torch.float32, "cpu")
    for bad in (
        engine_request([2, 5], prompt_embeds=torch.zeros(2, HIDDEN)),
        engine_request([2, 5], mm_features=[object()]),
        engine_request([2, 5], pooling_params=object()),
    ):
        with pytest.raises(RequestRefused):
            decide_request(decider, DIGEST, KEY, bad)


def worker_state(ids: list[int], extra: dict[str, Any] | None) -> Any:
    return SimpleNamespace(prompt_token_ids=ids, sampling_params=SimpleNamespace(extra_args=extra))


def test_batch_decisions_follow_batch_order_and_clamp_unverified_requests() -> None:
    """The worker reads verified decisions only; one without a seal for its prompt and this
    worker's bundle is clamped as if it fired (guarded, not refused: the others in the step
    must not fail with it), so a forged "not fired" still runs guarded."""
    requests = {
        name: worker_state(ids, {FIRED_KEY: fired, SEAL_KEY: seal(KEY, ids, fired, DIGEST)})
        for name, ids, fired in (("a", [2, 3], True), ("b", [2, 4], False), ("c", [2], True))
    }
    assert request_decisions(requests, ["b", "c", "a"], KEY, DIGEST).tolist() == [
        False,
        True,
        True,
    ]
    requests["d"] = worker_state([2, 5], None)
    requests["e"] = worker_state([2, 5], {FIRED_KEY: False})
    requests["f"] = worker_state([2, 5], {**requests["b"].sampling_params.extra_args})  # moved
    requests["g"] = worker_state([2, 4], {**requests["b"].sampling_params.extra_args})  # same
    got = request_decisions(requests, ["b", "d", "e", "f", "g"], KEY, DIGEST)
    assert got.tolist() == [False, True, True, True, False]
    assert request_decisions(requests, ["b"], KEY, "e" * 64).tolist() == [False]  # cached once
    assert request_decisions(requests, [], KEY, DIGEST).dtype == np.bool_


def vllm_config(**over: Any) -> Any:
    parallel = SimpleNamespace(
        tensor_parallel_size=over.pop("tp", 1),
        pipeline_parallel_size=over.pop("pp", 1),
        data_parallel_size=1,
    )
    parallel.worker_extension_cls = over.pop("extension", "")
    model = SimpleNamespace(
        architectures=over.pop("arch", ["Gemma2ForCausalLM"]),
        runner_type=over.pop("runner", "generate"),
        quantization=over.pop("quantization", None),
        quantization_config=None,
        hf_overrides=over.pop("hf_overrides", {}),
        model_class_overrides={},
        hf_config_path=None,
        model_weights=over.pop("model_weights", ""),
        model_impl=over.pop("model_impl", "auto"),
    )
    load = SimpleNamespace(load_format=over.pop("load_format", "auto"), download_dir=None)
    fields = dict(
        parallel_config=parallel, model_config=model, load_config=load, speculative_config=None,
        kv_transfer_config=None, use_v2_model_runner=False, lora_config=None,
        weight_transfer_config=None,
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **over})


@pytest.mark.parametrize(
    ("over", "what"),
    [
        ({"tp": 2}, "tensor parallelism"),
        ({"pp": 2}, "pipeline parallelism"),
        ({"speculative_config": object()}, "speculative decoding"),
        ({"kv_transfer_config": object()}, "KV-cache transfer"),
        ({"use_v2_model_runner": True}, "V2 model runner"),
        ({"runner": "pooling"}, "'pooling' runner"),
        ({"arch": ["Qwen2ForCausalLM"]}, "Qwen2ForCausalLM"),
        ({"arch": ["LlamaForCausalLM", "MistralForCausalLM"]}, "MistralForCausalLM"),
        ({"lora_config": object()}, "LoRA adapters"),
        ({"quantization": "fp8"}, "quantization"),
        ({"hf_overrides": {"num_hidden_layers": 2}}, "hf_overrides"),
        ({"model_weights": "/elsewhere"}, "weights from another path"),
        ({"model_impl": "transformers"}, "model_impl transformers"),
        ({"load_format": "dummy"}, "load format dummy"),
        ({"weight_transfer_config": object()}, "weight transfer"),
        ({"extension": "my.Extension"}, "worker extension"),
    ],
)
def test_untested_setups_are_refused_in_one_line(over: dict[str, Any], what: str) -> None:
    check_config(vllm_config())
    check_config(vllm_config(arch=["LlamaForCausalLM"]))
    with pytest.raises(GuardrailRefused, match=what) as refused:
        check_config(vllm_config(**over))
    assert "\n" not in str(refused.value)


def test_untested_vllm_versions_are_refused() -> None:
    check_version("0.32.0")
    for version in ("0.32.1", "0.34.0", "dev"):
        with pytest.raises(GuardrailRefused, match=f"vLLM {version} is untested"):
            check_version(version)


def test_missing_vllm_internals_are_refused() -> None:
    from dsg_runtime.vllm.engine import _wrap

    class Runner:
        def load_model(self) -> None: ...

    with pytest.raises(GuardrailRefused, match=r"Runner\._prepare_inputs is missing"):
        _wrap(Runner, "_prepare_inputs", lambda original: original)
    _wrap(Runner, "load_model", lambda original: lambda self: "wrapped")
    _wrap(Runner, "load_model", lambda original: lambda self: "twice")  # idempotent
    assert Runner().load_model() == "wrapped"  # type: ignore[func-returns-value]


def test_a_decoder_layer_with_another_call_signature_is_refused() -> None:
    """The hooks read ``(positions, hidden_states, residual)``: a layer taking anything else
    (another order, an extra argument) is refused before a request is served."""
    from dsg_runtime.vllm.engine import check_layer

    class Served(torch.nn.Module):
        def forward(self, positions: Any, hidden_states: Any, residual: Any) -> Any: ...

    class Reordered(torch.nn.Module):
        def forward(self, hidden_states: Any, positions: Any, residual: Any) -> Any: ...

    class Extra(torch.nn.Module):
        def forward(self, positions: Any, hidden_states: Any, residual: Any, aux: Any) -> Any: ...

    check_layer(Served())
    for layer in (Reordered(), Extra()):
        with pytest.raises(GuardrailRefused, match=f"{type(layer).__name__}.forward takes"):
            check_layer(layer)
