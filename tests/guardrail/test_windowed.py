"""The windowed strategy: its densest-window gate against hand-computed rates, the dynamic gate
when the window covers the row, padding and batch invariance, no host sync, one compiled graph,
a bundle round trip through KV-cache generation, and its calibration against an independent
computation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bundles import loaded
from commands import run
from dsg_strategies.window_calibration import calibrate_window, diluted
from hf_world import LAYER, MIXED_PROMPTS, topic_world
from host_sync import host_sync_forbidden
from saes import random_sae
from tiny import TinyWorld, UseWorld
from toy_stats import SEQ_LEN, write_stats
from transformers import GenerationConfig

from dsg.api.interfaces import CalibratedStrategy
from dsg.api.plugins import build_registry
from dsg.bundle import Bundle, from_sae
from dsg.core import artifacts
from dsg.core.errors import UserError
from dsg.guardrail import WindowedClamp
from dsg.hf import attach
from dsg.stages import sparsity
from dsg.stages.generate import Completion, describe
from dsg_runtime.binding import record_binding
from dsg_runtime.guardrail import (
    ThresholdGate,
    WindowGate,
    sequence_rates,
    token_hits,
    window_rates,
)

torch.set_num_threads(1)

FEATURES = [7, 3, 30, 12, 0]


def bools(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def test_densest_window_by_hand() -> None:
    # position 0 is the BOS; the densest 4-window is positions 4-7 or 5-8: 3 hits of 4
    hits = bools([0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0])
    mask = torch.ones_like(hits)
    assert window_rates(hits, mask, 4).tolist() == [0.75]
    assert window_rates(hits, mask, 2).tolist() == [1.0]
    assert window_rates(hits, mask, 6).tolist() == [4 / 6]  # positions 3-8 or 4-9
    assert window_rates(hits, mask, 11).tolist() == [5 / 11]  # the whole row
    assert window_rates(hits, mask, 50).tolist() == [5 / 11]


def test_windows_skip_padding_wherever_it_lies() -> None:
    # the same 7 real tokens, hits at real positions 1, 3, 4: densest 3-window holds 2 hits
    real = [0, 1, 0, 1, 1, 0, 0]
    left = bools([0, 0, 0, *real])
    right = bools([*real, 0, 0, 0])
    middle = bools([0, 1, 0, 0, 0, 1, 1, 0, 0])  # two pads after the third real token
    masks = [
        bools([0, 0, 0] + [1] * 7),
        bools([1] * 7 + [0, 0, 0]),
        bools([1, 1, 1, 0, 0, 1, 1, 1, 1]),
    ]
    for hits, mask in zip([left, right, middle], masks, strict=True):
        assert window_rates(hits, mask, 3).tolist() == [2 / 3]
        assert window_rates(hits, mask, 2).tolist() == [1.0]
        assert window_rates(hits, mask, 7).tolist() == [3 / 7]
    # a window never bridges the padding of the middle row as if it were tokens: hits at real
    # positions 1 and 3 are 3 real tokens apart, not 5 positions
    assert window_rates(bools([0, 1, 0, 0, 0, 1, 0, 0, 0]), masks[2], 3).tolist() == [2 / 3]


def test_an_empty_row_has_rate_zero() -> None:
    hits = bools([0, 0, 0], [0, 1, 0])
    mask = bools([0, 0, 0], [1, 1, 1])
    assert window_rates(hits, mask, 2).tolist() == [0.0, 0.5]


def test_the_first_full_window_of_a_row_counts() -> None:
    # window_rates takes any hits: here the first attended position is one. The densest 2-window
    # is the row's first (2 of 2); every later one holds at most 1, with or without left padding.
    row = [1, 1, 0, 1, 0, 0]
    assert window_rates(bools(row), bools([1] * 6), 2).tolist() == [1.0]
    assert window_rates(bools([0, 0, *row]), bools([0, 0] + [1] * 6), 2).tolist() == [1.0]
    # 3 hits in the first 4 of 9 attended positions, at most 2 in any later 4
    row = [1, 1, 0, 1, 0, 0, 0, 1, 0]
    assert window_rates(bools(row), bools([1] * 9), 4).tolist() == [0.75]


def test_hits_under_padding_never_count() -> None:
    # real tokens at 0-2 and 5-7, two pads between them marked as hits: the real row is
    # [0, 1, 0, 0, 1, 0], whose densest 2-window holds 1 hit. Counting the pads' hits would
    # give the window of real positions 2-3 (5 with the pads between) 2 hits of 2.
    mask = bools([1, 1, 1, 0, 0, 1, 1, 1])
    assert window_rates(bools([0, 1, 0, 1, 1, 0, 1, 0]), mask, 2).tolist() == [0.5]
    assert window_rates(bools([0, 0, 0, 1, 1, 0, 0, 0]), mask, 2).tolist() == [0.0]
    assert sequence_rates(bools([0, 0, 0, 1, 1, 0, 0, 0]), mask).tolist() == [0.0]


@pytest.mark.parametrize("seed", range(4))
def test_window_rates_equal_an_enumeration_of_the_attended_positions(seed: int) -> None:
    """Padding anywhere, hits under it and at each row's first attended position: every row's
    rate is the enumeration over its attended positions (brute_densest), exactly."""
    gen = torch.Generator().manual_seed(seed)
    hits = torch.rand(24, 13, generator=gen) < 0.4
    mask = torch.rand(24, 13, generator=gen) < 0.7
    for window in (1, 2, 3, 5, 9, 13):
        got = window_rates(hits, mask, window).tolist()
        for b in range(24):
            real = [h for h, m in zip(hits[b].tolist(), mask[b].tolist(), strict=True) if m]
            assert got[b] == (brute_densest(real, window) if real else 0.0), (b, window)


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_dynamic_gate_when_the_window_covers_the_row(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    hits = torch.rand(16, 12, generator=gen) < 0.3
    lengths = torch.randint(0, 13, (16,), generator=gen)
    mask = torch.arange(12)[None, :] >= (12 - lengths)[:, None]  # left padding
    hits &= mask
    rates = sequence_rates(hits, mask)
    for window in (12, 13, 40):
        assert torch.equal(window_rates(hits, mask, window), rates)
        for alpha in (0.1, 0.25, 1 / 3, 0.5):
            dynamic = ThresholdGate(alpha)(rates, hits)
            for tau in (0.0, alpha, 0.9):  # whatever the window's threshold
                windowed = WindowGate(window, tau, alpha).decide(rates, hits, mask)
                assert torch.equal(windowed, dynamic)
    # rows no longer than a shorter window: still equal to dynamic, row by row
    fits = lengths <= 6
    short = WindowGate(6, 0.0, 0.25).decide(rates, hits, mask)
    assert torch.equal(short[fits], ThresholdGate(0.25)(rates, hits)[fits])
    assert torch.equal(window_rates(hits, mask, 6)[fits], rates[fits])


def test_a_dense_window_fires_a_diluted_row_by_hand() -> None:
    # 12 tokens: BOS, 3 hits in a row, 8 benign. Whole rate 3/12 = 0.25; densest 4-window 3/4
    row = bools([0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    mask = torch.ones_like(row)
    rates = sequence_rates(row, mask)
    gate = WindowGate(4, 0.5, 0.3)
    assert ThresholdGate(0.3)(rates, row).tolist() == [False]  # dynamic is diluted
    assert gate.decide(rates, row, mask).tolist() == [True]  # 0.75 > 0.5
    assert WindowGate(4, 0.75, 0.3).decide(rates, row, mask).tolist() == [False]  # strict
    # the same passage in a row of 4 tokens is the dynamic decision: 3/4 > 0.8 is false
    short, short_mask = bools([0, 1, 1, 1]), torch.ones(1, 4, dtype=torch.bool)
    short_rates = sequence_rates(short, short_mask)
    assert WindowGate(4, 0.5, 0.8).decide(short_rates, short, short_mask).tolist() == [False]
    with pytest.raises(TypeError, match="attention mask"):
        gate(rates, row)


def padded_batch(seed: int, side: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Eight rows of different lengths (2 to 20 positions), padded on ``side``."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [20, 3, 17, 9, 2, 14, 11, 6]
    resid = torch.randn(8, 20, 16, generator=gen)
    positions = torch.arange(20)[None, :]
    length = torch.tensor(lengths)[:, None]
    mask = positions >= 20 - length if side == "left" else positions < length
    return resid, mask, lengths


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_of_eight_decides_as_each_row_alone(side: str) -> None:
    sae = random_sae("jumprelu", d_sae=48, apply_b_dec_to_input=True)
    resid, mask, lengths = padded_batch(3, side)
    hits = token_hits(WindowedClamp(sae, FEATURES, 0.0, 1.0, window=4, window_threshold=0.0)
                      .activations(resid), mask)  # fmt: skip
    dense = sorted(set(window_rates(hits, mask, 4).tolist()))
    tau = (dense[len(dense) // 2 - 1] + dense[len(dense) // 2]) / 2
    guard = WindowedClamp(sae, FEATURES, 0.6, 50.0, window=4, window_threshold=tau)
    out = guard(resid, mask)
    together = (guard.fired.clone(), guard.rates.clone())
    assert 0 < int(together[0].sum()) < 8
    for row, n in enumerate(lengths):
        real = mask[row].nonzero().flatten()
        alone = guard(resid[row : row + 1, real], torch.ones(1, n, dtype=torch.bool))
        assert guard.fired.tolist() == [bool(together[0][row])]
        assert guard.rates.tolist() == [float(together[1][row])]
        torch.testing.assert_close(alone[0], out[row, real])  # matmul blocking may differ


def test_no_host_sync_and_one_compiled_graph() -> None:
    sae = random_sae("jumprelu", d_sae=48, apply_b_dec_to_input=True)
    resid, mask, _ = padded_batch(5, "left")
    guard = WindowedClamp(sae, FEATURES, 0.3, 50.0, window=4, window_threshold=0.5)
    expected = guard(resid, mask)
    expected_step = guard.continue_rows(resid[:, -1:], mask[:, -1:], guard.fired)
    with host_sync_forbidden():
        got = guard(resid, mask)
        step = guard.continue_rows(resid[:, -1:], mask[:, -1:], guard.fired)
    assert torch.equal(got, expected) and torch.equal(step, expected_step)
    fired, rates = guard.fired.clone(), guard.rates.clone()

    def call(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = guard(x, m)
        return out, guard.fired, guard.rates

    torch._dynamo.reset()
    compiled = torch.compile(call, fullgraph=True, backend="aot_eager")
    out, got_fired, got_rates = compiled(resid, mask)
    assert torch.equal(out, expected)
    assert torch.equal(got_fired, fired) and torch.equal(got_rates, rates)


def test_windowed_bundle_round_trip(tmp_path: Path) -> None:
    sae = random_sae("jumprelu", d_sae=48, apply_b_dec_to_input=True)
    resid, mask, _ = padded_batch(7, "left")
    params = {"window": 4, "window_threshold": 0.5}
    bundle = from_sae(
        loaded(sae), FEATURES, threshold=0.9, multiplier=50.0, strategy="windowed", params=params
    )
    again = Bundle.load(bundle.save(tmp_path / "b"))
    assert again.strategy_params == params and again.threshold == 0.9
    guard = again.guardrail()
    full = WindowedClamp(sae, FEATURES, 0.9, 50.0, window=4, window_threshold=0.5)
    assert torch.equal(guard(resid, mask), full(resid, mask))
    assert torch.equal(guard.fired, full.fired) and torch.equal(guard.rates, full.rates)
    assert 0 < int(full.fired.sum()) < 8


def test_a_windowed_bundle_without_its_window_is_refused() -> None:
    sae = random_sae("jumprelu", d_sae=48)
    for params in ({}, {"window": 4}, {"window": 0, "window_threshold": 0.5}):
        with pytest.raises(UserError, match="window"):
            from_sae(
                loaded(sae), FEATURES, threshold=0.3, multiplier=5.0, strategy="windowed",
                params=params,
            )  # fmt: skip


@pytest.fixture(scope="module")
def hf_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return topic_world(tmp_path_factory.mktemp("hf"))


def test_guarded_generation_equals_the_in_process_guardrail(
    hf_world: dict[str, Any], tmp_path: Path
) -> None:
    """KV-cache generation through dsg.hf with a windowed bundle: each row decided on its
    prompt as the full-SAE WindowedClamp decides it alone, and every step's logits equal one
    forward over prompt + completion with the firing rows' hits clamped."""
    model, tokenizer, sae = hf_world["model"], hf_world["tokenizer"], hf_world["sae"]
    features, window = hf_world["features"], 6
    enc = tokenizer(MIXED_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[LAYER + 1]
    probe = WindowedClamp(sae, features, 0.0, 1.0, window=window, window_threshold=0.0)
    dense = window_rates(token_hits(probe.activations(hidden), enc["attention_mask"].bool()),
                         enc["attention_mask"].bool(), window)  # fmt: skip
    rates = sorted(set(dense.tolist()))
    tau, alpha = (rates[0] + rates[1]) / 2, 1.0  # only the window can fire
    loaded_sae = loaded(sae)
    bundle = from_sae(
        loaded_sae, features, threshold=alpha, multiplier=30.0, strategy="windowed",
        params={"window": window, "window_threshold": tau},
        binding=record_binding(model, loaded_sae.hook_name),
    )  # fmt: skip
    bundle = Bundle.load(bundle.save(tmp_path / "windowed"))
    alone = []
    for text in MIXED_PROMPTS:
        ids = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            h = model(**ids, output_hidden_states=True).hidden_states[LAYER + 1]
        clamp = WindowedClamp(sae, features, alpha, 30.0, window=window, window_threshold=tau)
        clamp(h, ids["attention_mask"].bool())
        alone.append(bool(clamp.fired[0]))
    assert any(alone) and not all(alone)
    settings = {
        "max_new_tokens": 5,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_logits": True,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.no_grad(), attach(model, bundle) as handle:
        generated = model.generate(**enc, **settings)
        fired = handle.fired.tolist()
    assert fired == alone
    prompt_len = enc["input_ids"].shape[1]
    ids = generated.sequences
    mask = torch.cat(
        [enc["attention_mask"].bool(), torch.ones(len(ids), ids.shape[1] - prompt_len).bool()], 1
    )
    guard = WindowedClamp(sae, features, alpha, 30.0, window=window, window_threshold=tau)

    def hook(module: Any, args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (hook(module, args, out[0]), *out[1:])
        acts = guard.activations(out)
        decided = token_hits(acts[:, :prompt_len], mask[:, :prompt_len])
        prompt = mask[:, :prompt_len]
        rows = guard.gate.decide(sequence_rates(decided, prompt), decided, prompt)
        return guard.clamp(out, acts, token_hits(acts, mask) & rows[:, None])

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask.long()).logits
    finally:
        handle.remove()
    for step, logits in enumerate(generated.logits):
        torch.testing.assert_close(logits, full[:, prompt_len - 1 + step], atol=1e-4, rtol=1e-5)
    if hasattr(GenerationConfig(), "prefill_chunk_size"):  # the prompt in chunks: same result
        with torch.no_grad(), attach(model, bundle) as handle:
            chunked = model.generate(**enc, **settings, prefill_chunk_size=window - 1)
            assert handle.fired.tolist() == alone
        for ours, theirs in zip(chunked.logits, generated.logits, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


def brute_densest(row: list[bool], window: int) -> float:
    """The densest-window rate of one unpadded row, by enumeration."""
    if len(row) <= window:
        return sum(row) / len(row)
    return max(sum(row[i : i + window]) / window for i in range(len(row) - window + 1))


def test_calibration_thresholds_are_percentiles_of_the_retain_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    retain = torch.rand(40, 48, generator=gen) < 0.15
    forget = torch.rand(30, 48, generator=gen) < 0.5
    retain[:, 0] = forget[:, 0] = False  # BOS
    lengths = (4, 8, 16, 100)  # 100 is longer than the rows: skipped
    alpha, params, details = calibrate_window(
        retain, forget, percentile=90.0, window_lengths=lengths
    )
    rows = retain.tolist()
    whole = [sum(row) / len(row) for row in rows]
    assert alpha == float(np.percentile(np.array(whole), 90.0))
    assert [c["window"] for c in details["candidates"]] == [4, 8, 16]
    for candidate in details["candidates"]:
        w = candidate["window"]
        dense = [brute_densest(row, w) for row in rows]
        tau = candidate["window_threshold"]
        assert tau == float(np.percentile(np.array(dense), 90.0))
        fired = [
            np.float32(r) > np.float32(alpha) or np.float32(d) > np.float32(tau)
            for r, d in zip(whole, dense, strict=True)
        ]
        assert candidate["retain_fired"] == pytest.approx(np.mean(fired))
    best = max(details["candidates"], key=lambda c: (c["score"], c["window"]))
    assert params == {"window": best["window"], "window_threshold": best["window_threshold"]}


def test_calibration_picks_the_window_that_survives_dilution() -> None:
    """Forget rows hold one dense burst of 6 hits in 6 tokens, then nothing; retain rows hold
    a hit every 4 tokens and one adjacent pair. Window 2 cannot tell the burst from the retain
    pair (both 2/2); window 32 dilutes the undiluted burst to 6/32, below the retain rows' 9/32;
    window 6 sees the burst (6/6) above every retain window (at most 3/6)."""
    retain = torch.zeros(20, 64, dtype=torch.bool)
    retain[:, 4::4] = True
    retain[:, 9] = True
    forget = torch.zeros(10, 64, dtype=torch.bool)
    forget[:, 10:16] = True
    alpha, params, details = calibrate_window(
        retain, forget, percentile=95.0, window_lengths=(2, 6, 32)
    )
    scores = {c["window"]: c["score"] for c in details["candidates"]}
    assert params == {"window": 6, "window_threshold": 0.5} and scores[6] == 1.0
    assert scores[2] == 0.0 and scores[32] < 1.0
    assert alpha == 16 / 64  # every retain row: 16 hits in 64 tokens


def test_dilution_probe_layout() -> None:
    forget = bools([0, 1, 1, 0], [0, 0, 1, 1])
    benign = torch.tensor([True, False, False])
    probe = diluted(forget, benign, passage=2, benign_tokens=2)
    assert probe.tolist() == [
        [False, True, False, True, True],  # BOS, benign[0:2], forget row 0 positions 1-2
        [False, False, True, False, True],  # BOS, benign[2], benign[0] (wrapped), row 1
    ]


def test_no_window_fits_the_rows() -> None:
    retain = torch.zeros(4, 8, dtype=torch.bool)
    with pytest.raises(UserError, match="window length"):
        calibrate_window(retain, retain, percentile=95.0, window_lengths=(16, 32))


def test_windowed_is_a_calibrated_strategy() -> None:
    strategy = build_registry().entries["strategies"]["windowed"]
    assert isinstance(strategy, CalibratedStrategy)
    assert strategy.calibration_settings == ("window_lengths", "window_calibration_tokens")
    with pytest.raises(UserError, match="window"):
        strategy.build(random_sae("jumprelu", d_sae=48), torch.tensor(FEATURES), 0.3, 5.0)
    built = strategy.build(
        random_sae("jumprelu", d_sae=48), torch.tensor(FEATURES), 0.3, 5.0, window=3,
        window_threshold=0.5,
    )  # fmt: skip
    assert isinstance(built, WindowedClamp) and built.gate.window == 3


def test_sparsity_token_hits_of_both_corpora(tmp_path: Path) -> None:
    """Per-token hits of a feature prefix, read back from the firing pairs of each corpus."""
    d_sae = 8
    stats = write_stats(tmp_path, [0.0] * d_sae, [0.0] * d_sae, [[(1, 3), (2, 5)], [(4, 5)]])
    artifacts.write_tensors(
        tmp_path / "forget-calibration-00000.safetensors",
        {"flat": torch.tensor([3 * d_sae + 2], dtype=torch.int32), "row_ptr": torch.tensor([0, 1])},
    )
    stats = dataclasses.replace(stats, forget_chunks=("forget-calibration-00000.safetensors",))
    retain = stats.token_hits(torch.tensor([5, 3]), "retain")
    expected = torch.zeros(2, SEQ_LEN, dtype=torch.bool)
    expected[0, 1] = expected[0, 2] = expected[1, 4] = True
    assert torch.equal(retain, expected)
    only_5 = stats.token_hits(torch.tensor([5]), "retain")
    assert only_5[0].nonzero().flatten().tolist() == [2] and only_5[1, 4]
    forget = stats.token_hits(torch.tensor([2]), "forget")
    assert forget.shape == (1, SEQ_LEN) and forget[0].nonzero().flatten().tolist() == [3]


def test_generate_describes_a_windowed_decision() -> None:
    sae = random_sae("jumprelu", d_sae=48)
    bundle = from_sae(
        loaded(sae), FEATURES, threshold=0.3, multiplier=5.0, strategy="windowed",
        params={"window": 16, "window_threshold": 0.5},
    )  # fmt: skip
    line = describe(Completion("text", True, 0.1), bundle)
    assert line.startswith("guardrail fired (windowed") and "16-token window" in line
    assert "0.5000" in line and "0.3000" in line


def test_evaluate_calibrates_once_and_reports_the_window(
    world: TinyWorld, use_world: UseWorld
) -> None:
    """`dsg evaluate --strategy windowed` on the tiny case: the window's alpha is the selection's
    own threshold, its tau_w the percentile of the retain rows' densest windows, the report
    carries both, and a second run reuses the calibration artifact."""
    use_world(world)
    args = ["evaluate", "--case", "tiny", "--out", "runs", "--strategy", "dynamic"]
    args += ["--strategy", "windowed", "--window-lengths", "4", "--window-lengths", "8"]
    done = run(*args)
    assert done.exit_code == 0, done.output
    report = json.loads(Path("runs/report.json").read_text())
    stats = sparsity.load(next(Path("runs/sparsity").iterdir()), "k")
    folders = sorted(Path("runs/calibrate").iterdir())
    assert len(folders) == len({c["n_features"] for c in report["configs"]}) > 0
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        window = meta["params"]["window"]
        assert window in (4, 8)
        features = torch.tensor(meta["inputs"]["features"])
        retain = stats.token_hits(features, "retain").tolist()
        dense = [brute_densest(row, window) for row in retain]
        assert meta["params"]["window_threshold"] == float(np.percentile(np.array(dense), 95.0))
        configs = [c for c in report["configs"] if c["n_features"] == len(features)]
        by_strategy = {c["strategy"]: c for c in configs}
        assert by_strategy["windowed"]["threshold"] == by_strategy["dynamic"]["threshold"]
        assert by_strategy["windowed"]["params"] == meta["params"]
        assert "params" not in by_strategy["dynamic"]
    stamps = [(f / "meta.json").stat().st_mtime_ns for f in folders]
    assert run(*args).exit_code == 0
    assert sorted(Path("runs/calibrate").iterdir()) == folders
    assert [(f / "meta.json").stat().st_mtime_ns for f in folders] == stamps


def test_the_window_may_be_as_long_as_an_int64_holds() -> None:
    """The window sums are int64 tensors: a window of 2**63 - 1 tokens is the longest taken."""
    from dsg_runtime.checks import INT64_MAX
    from dsg_runtime.errors import UserError
    from dsg_runtime.guardrail import WindowGate

    assert WindowGate(INT64_MAX, 0.5, 0.5).window == INT64_MAX
    with pytest.raises(UserError) as refused:
        WindowGate(INT64_MAX + 1, 0.5, 0.5)
    assert str(refused.value) == (
        "the guardrail window must be at most 9,223,372,036,854,775,807 tokens, got a 64-bit "
        "number; recalibrate the window"
    )
