"""TopK bundles (format 6): the whole encoder and top_k give exactly what sae_lens's
``TopKSAE.encode`` gives for the selected features, ties included, and the bundle's guardrail
is the full SAE's bit for bit; a missing, contradicting or out-of-range top_k is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bundles import batch, edit_config, loaded, random_sae, split_threshold

from dsg.bundle import CONFIG_FILE, Bundle, from_sae
from dsg.core.errors import UserError
from dsg.guardrail import DynamicClamp, EncodedFeatures
from dsg_runtime.guardrail import TopKFeatures, feature_index

torch.set_num_threads(1)

FEATURES = [7, 3, 30, 12, 0, 41]


def topk_sae(k: int = 6, **cfg: Any) -> Any:
    return random_sae("topk", k=k, **cfg)


@pytest.mark.parametrize("b_dec_in", [False, True])
def test_a_topk_bundle_round_trips_and_equals_the_full_sae(tmp_path: Path, b_dec_in: bool) -> None:
    sae = topk_sae(apply_b_dec_to_input=b_dec_in)
    resid, mask = batch()
    alpha = split_threshold(sae, FEATURES, resid, mask)
    from_sae(loaded(sae), FEATURES, threshold=alpha, multiplier=50.0).save(tmp_path / "b")
    bundle = Bundle.load(tmp_path / "b")
    config = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    assert config["format_version"] == 6
    assert (config["activation"], config["top_k"], config["d_sae"]) == ("topk", 6, 48)
    assert bundle.top_k == 6 and bundle.features == tuple(FEATURES)
    assert torch.equal(bundle.tensors["W_enc"], sae.W_enc.detach())  # the whole encoder
    assert torch.equal(bundle.tensors["b_enc"], sae.b_enc.detach())
    assert torch.equal(bundle.tensors["W_dec"], sae.W_dec.detach()[FEATURES])
    guard = bundle.guardrail()
    assert isinstance(guard.selected, TopKFeatures)
    encoded = EncodedFeatures(sae, feature_index(FEATURES, 48))
    acts = guard.activations(resid)
    assert torch.equal(acts, encoded.activations(resid))
    assert 0 < int((acts > 0).sum()) < acts.numel()
    reference = DynamicClamp(sae, FEATURES, alpha, 50.0)
    expected = reference(resid, mask)
    assert torch.equal(guard(resid, mask), expected)
    assert torch.equal(guard.fired, reference.fired) and torch.equal(guard.rates, reference.rates)
    assert 0 < int(reference.fired.sum()) < 4  # some rows fire, some do not


def test_ties_go_to_the_latents_sae_lens_keeps() -> None:
    """Latents in groups of twelve with identical columns and biases: every token's k-th largest
    pre-activation is shared by latents TopK keeps and latents it drops."""
    sae = topk_sae(k=5)
    with torch.no_grad():
        sae.W_enc.copy_(sae.W_enc[:, :4].repeat(1, 12))
        sae.b_enc.copy_(sae.b_enc[:4].repeat(12))
    features = [0, 4, 8, 12, 16, 1, 5, 9, 13, 2, 6]  # several copies of groups 0, 1 and 2
    resid, _ = batch(3)
    want = EncodedFeatures(sae, feature_index(features, 48)).activations(resid)
    tied = sae.encode(resid) > 0
    copies = tied.reshape(*tied.shape[:2], 12, 4).sum(dim=2)
    assert ((copies > 0) & (copies < 12)).any()  # some group was split by the tie
    got = from_sae(loaded(sae), features, threshold=0.5, multiplier=5.0).guardrail()
    assert torch.equal(got.activations(resid), want)


def test_a_batch_of_eight_gives_each_row_its_batch_of_one_result() -> None:
    sae = topk_sae()
    resid = torch.randn(8, 7, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(8, 7, dtype=torch.bool)
    alpha = split_threshold(sae, FEATURES, resid, mask)
    guard = from_sae(loaded(sae), FEATURES, threshold=alpha, multiplier=50.0).guardrail()
    together = guard(resid, mask)
    fired = guard.fired.clone()
    for r in range(8):
        assert torch.equal(guard(resid[r : r + 1], mask[r : r + 1]), together[r : r + 1])
        assert bool(guard.fired[0]) == bool(fired[r])
    assert 0 < int(fired.sum()) < 8


@pytest.mark.parametrize(
    ("cfg", "why"),
    [
        ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm"),
        ({"normalize_activations": "expected_average_only_in"}, "input normalisation"),
    ],
)
def test_topk_configurations_a_bundle_cannot_reproduce_are_refused(
    cfg: dict[str, Any], why: str
) -> None:
    with pytest.raises(UserError, match=f"TopKSAE cannot be exported.*{why}"):
        from_sae(loaded(topk_sae(**cfg)), [1], threshold=0.1, multiplier=5.0)


def _set(**fields: Any) -> Any:
    return lambda config: config.update(fields)


def _v5(config: dict[str, Any]) -> None:
    config.pop("top_k")
    config["format_version"] = 5


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("topk", _set(top_k=None), "a topk bundle needs top_k"),
        ("topk", _set(top_k=0), r"top_k must be within \[1, 48\], got 0"),
        ("topk", _set(top_k=49), r"top_k must be within \[1, 48\], got 49"),
        ("topk", _set(top_k=2.5), "top_k must be an integer, not 2.5"),
        ("topk", _set(top_k=True), "top_k must be an integer, not True"),
        ("topk", _set(activation="relu"), "top_k 6 contradicts activation 'relu'"),
        ("topk", _v5, "a topk bundle needs top_k"),  # version 5 has no TopK bundles
        ("jumprelu", _set(top_k=6), "top_k 6 contradicts activation 'jumprelu'"),
        ("standard", _set(activation="topk", top_k=6), r"tensor W_enc has shape \(16, 6\)"),
        ("jumprelu", _set(activation="tanh"), "activation 'tanh' is none of relu, jumprelu"),
        ("jumprelu", lambda c: c.update(format_version=5), "unknown field 'top_k'"),
    ],
)
def test_a_wrong_top_k_is_refused_in_one_line(
    tmp_path: Path, kind: str, edit: Any, message: str
) -> None:
    sae = topk_sae() if kind == "topk" else random_sae(kind)
    from_sae(loaded(sae), FEATURES, threshold=0.1, multiplier=5.0).save(tmp_path / "b")
    edit_config(tmp_path / "b", edit, resign=True)
    with pytest.raises(UserError, match=message) as refused:
        Bundle.load(tmp_path / "b")
    assert "\n" not in str(refused.value)


def test_a_version_5_bundle_still_loads(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    made = from_sae(loaded(sae), FEATURES, threshold=0.1, multiplier=5.0)
    made.save(tmp_path / "b")
    edit_config(tmp_path / "b", _v5, resign=True)
    old = Bundle.load(tmp_path / "b")
    assert old.top_k is None and old.activation == "jumprelu"
    resid, mask = batch()
    assert torch.equal(old.guardrail()(resid, mask), made.guardrail()(resid, mask))
