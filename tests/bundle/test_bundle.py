"""Guardrail bundles: the k-column guardrail equals DynamicClamp on the full SAE, the files round
trip, and foreign or damaged bundles are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bundles import HOOK, batch, edit_config, loaded, random_sae, split_threshold

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, TENSORS_FILE, Bundle, from_sae
from dsg.core.errors import UserError
from dsg.guardrail import DynamicClamp, StaticClamp

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("kind", "b_dec_in"), [("jumprelu", False), ("jumprelu", True), ("standard", True)]
)
def test_bundle_guardrail_equals_dynamic_clamp_on_full_sae(kind: str, b_dec_in: bool) -> None:
    sae = random_sae(kind, apply_b_dec_to_input=b_dec_in)
    features = [7, 3, 30, 12, 0]
    resid, mask = batch()
    alpha = split_threshold(sae, features, resid, mask)
    reference = DynamicClamp(sae, features, alpha, 50.0)
    expected = reference(resid, mask)
    guard = from_sae(loaded(sae), features, threshold=alpha, multiplier=50.0).guardrail()
    got = guard(resid, mask)
    assert torch.equal(guard.fired, reference.fired)
    assert torch.equal(guard.rates, reference.rates)
    assert 0 < int(reference.fired.sum()) < 4  # some rows fire, some do not
    assert torch.equal(got, expected)


def test_static_bundle_equals_static_clamp() -> None:
    sae = random_sae("jumprelu")
    resid, mask = batch(2)
    reference = StaticClamp(sae, [5, 9], 20.0)
    guard = from_sae(
        loaded(sae), [5, 9], threshold=None, multiplier=20.0, strategy="static"
    ).guardrail()
    assert torch.equal(guard(resid, mask), reference(resid, mask))
    assert torch.equal(guard.fired, reference.fired)


def test_round_trip(tmp_path: Path) -> None:
    sae = random_sae("jumprelu", apply_b_dec_to_input=True)
    bundle = from_sae(
        loaded(sae),
        [4, 1, 8],
        threshold=0.25,
        multiplier=500.0,
        base_model={"hf": "some/model"},
        provenance={"n": 3},
    )
    bundle.save(tmp_path / "b")
    back = Bundle.load(tmp_path / "b")
    assert back.features == (4, 1, 8)
    assert back.threshold == 0.25 and back.multiplier == 500.0 and back.strategy == "dynamic"
    assert back.hook_layer == 1 and back.hook_point == "hook_resid_post"
    assert back.base_model == {"hf": "some/model"} and back.provenance == {"n": 3}
    assert back.sae["fingerprint"] == "fp"
    for name, tensor in bundle.tensors.items():
        assert torch.equal(back.tensors[name], tensor)
    assert torch.equal(back.tensors["W_enc"], sae.W_enc.detach()[:, [4, 1, 8]])
    assert torch.equal(back.tensors["jump_threshold"], sae.threshold.detach()[[4, 1, 8]])
    config = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    assert config["format_version"] == 6 and config["threshold"] == 0.25  # alpha, by one name
    assert config["strategy_params"] == {} and config["top_k"] is None
    assert config["rules"]["fire"].startswith("float32(rate) > ")
    assert config["hook"] == {"name": HOOK, "layer": 1, "point": "hook_resid_post"}


def damage_version(directory: Path) -> None:
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["format_version"] = 99
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def damage_tensors(directory: Path) -> None:
    raw = bytearray((directory / TENSORS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (directory / TENSORS_FILE).write_bytes(raw)


def damage_shape(directory: Path) -> None:
    edit_config(directory, lambda c: c.update(features=c["features"][:-1]), resign=True)


def move_hook(directory: Path) -> None:
    hook = {"name": "blocks.0.hook_resid_post", "layer": 0, "point": "hook_resid_post"}
    edit_config(directory, lambda c: c.update(hook=hook))


def reorder_features(directory: Path) -> None:
    edit_config(directory, lambda c: c.update(features=c["features"][::-1]))


def zero_threshold(directory: Path) -> None:
    edit_config(directory, lambda c: c.update(threshold=0.0))


def drop_digest(directory: Path) -> None:
    edit_config(directory, lambda c: c.pop("sha256"))


def retag_tensors(directory: Path) -> None:
    """The tensors edited and their recorded hash updated, but not the description's digest."""
    damage_tensors(directory)
    with (directory / TENSORS_FILE).open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    edit_config(directory, lambda c: c["tensors"].update(sha256=digest))


def damage_json(directory: Path) -> None:
    (directory / CONFIG_FILE).write_text("{not json")


def foreign(directory: Path) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_version, "format version 99"),
        (damage_tensors, "does not match"),
        (damage_shape, "has shape"),
        (move_hook, "edited after export"),
        (reorder_features, "edited after export"),
        (zero_threshold, "edited after export"),
        (drop_digest, "edited after export"),
        (retag_tensors, "edited after export"),
        (damage_json, "unreadable or corrupted"),
        (foreign, "not a dsg guardrail bundle"),
    ],
)
def test_damaged_bundles_are_refused(tmp_path: Path, damage: Any, message: str) -> None:
    sae = random_sae("jumprelu")
    from_sae(loaded(sae), [1, 2], threshold=0.1, multiplier=5.0).save(tmp_path / "b")
    damage(tmp_path / "b")
    with pytest.raises(UserError, match=message):
        Bundle.load(tmp_path / "b")


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a dsg guardrail bundle"):
        Bundle.load(tmp_path)


def test_unexportable_sae_and_hook() -> None:
    normalised = random_sae("standard", normalize_activations="expected_average_only_in")
    with pytest.raises(UserError, match="StandardSAE cannot be exported"):
        from_sae(loaded(normalised), [1], threshold=0.1, multiplier=5.0)
    other_hook = LoadedSAE(random_sae("jumprelu"), "s", "blocks.1.attn.hook_z", 1)
    with pytest.raises(UserError, match="cannot be exported"):
        from_sae(other_hook, [1], threshold=0.1, multiplier=5.0)


class NoBundleStrategy:
    """A strategy whose plugin does not say how it travels in a bundle."""

    name = "unbundled"
    description = "builds interventions only"
    uses_threshold = True

    def build(self, sae: Any, features: Any, threshold: float, multiplier: float) -> Any:
        return DynamicClamp(sae, features, threshold, multiplier)


def test_strategies_without_bundle_support_are_refused() -> None:
    import dsg.api.plugins
    from dsg.api.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_strategies(self, register: Any) -> None:
            register(NoBundleStrategy())

    strategies = dsg.api.plugins.build_registry([("unbundled-plugin", Plugin())]).entries[
        "strategies"
    ]
    sae = loaded(random_sae("jumprelu"))
    with pytest.raises(UserError, match="'unbundled' cannot be exported to a bundle"):
        from_sae(
            sae, [1, 2], threshold=0.1, multiplier=5.0, strategy="unbundled", strategies=strategies
        )
    with pytest.raises(UserError, match="'nowhere' is not installed"):
        from_sae(
            sae, [1, 2], threshold=0.1, multiplier=5.0, strategy="nowhere", strategies=strategies
        )
