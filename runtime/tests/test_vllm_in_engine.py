"""Deciding inside vLLM's engine (``DSG_DECIDE_IN=engine``): the clamp's op decides each request
whose whole prompt is in the step exactly as dsg's guardrail decides that prompt on the same
residual (rate, strict threshold, BOS never a hit), beside requests decided before; the runner's
bookkeeping keeps each decision for the request's later steps and clamps a prompt that reaches
the engine in part as if it fired. No vLLM needed."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from test_vllm_clamp import D, M, expected, jumprelu_bundle, topk_bundle, weights

from dsg_runtime.guardrail import FeatureColumns, Guardrail, ThresholdGate
from dsg_runtime.vllm.checks import GuardrailRefused, engine_config_problems
from dsg_runtime.vllm.clamp import TokenClamp
from dsg_runtime.vllm.in_engine import (
    DECIDE_ENV,
    DECIDED,
    decides_in_engine,
    engine_threshold,
    keep_decisions,
    step_decisions,
)


def guardrail(w: dict[str, torch.Tensor | None], threshold: float) -> Guardrail:
    columns = FeatureColumns(w["w_enc"], w["b_enc"], w["w_dec"], w["b_dec_in"], w["jump"])  # type: ignore[arg-type]
    return Guardrail(columns, ThresholdGate(threshold), M)


def prompt_rate(guard: Guardrail, resid: torch.Tensor) -> float:
    guard.decide_prompt(resid[None], torch.ones(1, resid.shape[0], dtype=torch.bool))
    assert guard.rates is not None
    return float(guard.rates[0])


def step(lengths: list[int], starts: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat step: request i's ``lengths[i]`` tokens at positions from ``starts[i]``."""
    g = torch.Generator().manual_seed(seed)
    resid = torch.randn(sum(lengths), D, generator=g) * 2
    positions = torch.cat([torch.arange(n) + s for n, s in zip(lengths, starts, strict=True)])
    return resid, positions


def rows(lengths: list[int], i: int) -> slice:
    return slice(sum(lengths[:i]), sum(lengths[: i + 1]))


def test_whole_prompts_are_decided_as_the_guardrail_decides_them_alone() -> None:
    """Three prompts decided in one step beside a decode token decided before (fired) and
    one not fired: the threshold sits between the prompts' own rates, so both outcomes occur;
    each deciding row's decision and edit are the guardrail's on that prompt alone."""
    w = weights(3)
    lengths, starts = [9, 1, 7, 1, 12], [0, 20, 0, 33, 0]
    deciding = np.array([True, False, True, False, True])
    known = np.array([False, True, False, False, False])
    resid, positions = step(lengths, starts, seed=4)
    probe = guardrail(w, 0.5)
    rates = sorted(prompt_rate(probe, resid[rows(lengths, i)]) for i in (0, 2, 4))
    assert rates[0] < rates[2], "the prompts' rates must differ for this test"
    threshold = rates[1] if rates[1] > rates[0] else rates[2]  # the one at the threshold: no
    guard = guardrail(w, threshold)
    clamp = TokenClamp(w, M, max_tokens=64, device="cpu", threshold=threshold, max_requests=8)
    clamp.fill(known, np.array(lengths), deciding)
    out = clamp(positions, resid)
    decided = clamp.decided_rows(len(lengths))
    outcomes = set()
    for i in range(len(lengths)):
        r = rows(lengths, i)
        if deciding[i]:
            guard.decide_prompt(resid[r][None], torch.ones(1, lengths[i], dtype=torch.bool))
            assert guard.fired is not None
            fired = bool(guard.fired[0])
            assert bool(decided[i]) == fired
            outcomes.add(fired)
        else:
            fired = bool(known[i])
        torch.testing.assert_close(out[r], expected(guard, resid[r], positions[r], fired))
        if not fired:
            assert torch.equal(out[r], resid[r])
    assert outcomes == {True, False}


def test_a_rate_equal_to_the_threshold_does_not_fire() -> None:
    """Strict, in float32, as the gate: a prompt whose rate is the threshold does not fire;
    one float32 step lower, it does."""
    w = weights(7)
    resid, positions = step([16], [0], seed=8)
    rate = prompt_rate(guardrail(w, 0.5), resid)
    assert 0 < rate < 1
    below = float(np.nextafter(np.float32(rate), np.float32(0)))
    for threshold, fires in ((rate, False), (below, True)):
        clamp = TokenClamp(w, M, 32, "cpu", threshold=threshold, max_requests=2)
        clamp.fill(np.array([False]), np.array([16]), np.array([True]))
        clamp(positions, resid)
        assert clamp.decided_rows(1).tolist() == [fires]


def test_the_bos_counts_in_the_length_but_never_as_a_hit() -> None:
    """A prompt whose every position has an active feature: its rate is (P - 1) / P."""
    w = weights(1)
    w["b_enc"] = torch.full((w["w_enc"].shape[1],), 50.0)  # type: ignore[union-attr]
    resid, positions = step([5], [0], seed=2)
    for threshold, fires in ((0.79, True), (0.8, False)):
        clamp = TokenClamp(w, M, 8, "cpu", threshold=threshold, max_requests=1)
        clamp.fill(np.array([False]), np.array([5]), np.array([True]))
        clamp(positions, resid)
        assert clamp.decided_rows(1).tolist() == [fires]


def test_compiled_deciding_op_matches_eager() -> None:
    """Traced once with dynamic shapes, the op still decides each step's rows from the buffers
    (a graph that baked the first step's rows in would fail the second)."""
    w = weights(5)
    resid, positions = step([6, 6], [0, 0], seed=6)
    rates = [prompt_rate(guardrail(w, 0.5), resid[rows([6, 6], i)]) for i in (0, 1)]
    threshold = min(rates)
    clamp = TokenClamp(w, M, 16, "cpu", threshold=threshold, max_requests=4)
    compiled = torch.compile(clamp.__call__, fullgraph=True, backend="aot_eager", dynamic=True)
    for deciding in ([True, False], [False, True], [True, True]):
        clamp.fill(np.array([True, True]), np.array([6, 6]), np.array(deciding))
        got = compiled(positions, resid)
        got_rows = clamp.decided_rows(2)
        assert torch.equal(got, clamp(positions, resid))
        assert np.array_equal(got_rows, clamp.decided_rows(2))


def test_a_row_reads_undecided_until_a_pass_decides_it() -> None:
    """After a fill and before the pass, every row reads -1 (a pass of the last step cannot
    answer for this one); the pass writes 1 or 0."""
    w = weights(2)
    resid, positions = step([4], [0], seed=3)
    clamp = TokenClamp(w, M, 8, "cpu", threshold=0.0, max_requests=2)
    assert clamp.decided_rows(2).tolist() == [-1, -1] and clamp.decided_rows(2).dtype == np.int8
    for _ in range(2):
        clamp.fill(np.array([False]), np.array([4]), np.array([True]))
        assert clamp.decided_rows(2).tolist() == [-1, -1]
        clamp(positions, resid)
        assert clamp.decided_rows(2).tolist() == [int(prompt_rate(guardrail(w, 0.0), resid) > 0), 0]


@pytest.mark.parametrize("make", [jumprelu_bundle, topk_bundle], ids=["jumprelu", "topk"])
def test_a_bundle_s_clamp_decides_as_its_guardrail(make: Any) -> None:
    """From a bundle, with the threshold the engine reads from it: a prompt whose rate is the
    threshold does not fire, one below it does, as the bundle's own guardrail decides."""
    resid, positions = step([12], [0], seed=21)
    rate = prompt_rate(make(True).guardrail(), resid)
    assert 0 < rate < 1
    for threshold, fires in ((rate, False), (rate / 2, True)):
        bundle = make(True, threshold)
        clamp = TokenClamp.from_bundle(bundle, 16, "cpu", engine_threshold(bundle), 2)
        clamp.fill(np.array([False]), np.array([12]), np.array([True]))
        out = clamp(positions, resid)
        assert clamp.decided_rows(1).tolist() == [fires]
        torch.testing.assert_close(out, expected(bundle.guardrail(), resid, positions, fires))


def test_a_feature_active_below_one_is_a_hit_and_clamped() -> None:
    """Active means above zero (past a JumpReLU's jump), however small."""
    w = weights(1)
    w["jump"] = torch.zeros_like(w["jump"])  # type: ignore[arg-type]
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(5))
    w_enc, b_enc, b_dec = w["w_enc"], w["b_enc"], w["b_dec_in"]
    assert w_enc is not None and b_enc is not None and b_dec is not None
    pre = torch.full((w_enc.shape[1],), -3.0)
    pre[0] = 0.25  # one feature active, at 0.25
    x[1] = torch.linalg.lstsq(w_enc.T, (pre - b_enc)[:, None]).solution[:, 0] + b_dec
    x[2] = torch.linalg.lstsq(w_enc.T, (-3.0 - b_enc)[:, None]).solution[:, 0] + b_dec
    clamp = TokenClamp(w, M, 4, "cpu", threshold=0.3, max_requests=1)
    clamp.fill(np.array([False]), np.array([3]), np.array([True]))
    out = clamp(torch.arange(3), x)
    assert clamp.decided_rows(1).tolist() == [1]  # one hit in three positions: 1/3 > 0.3
    assert not torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])


def test_padding_after_the_step_s_tokens_never_counts_nor_clamps() -> None:
    """vLLM may run more rows than the step's tokens: those rows neither decide nor count
    toward any request, and are returned bit for bit."""
    w = weights(3)
    resid, positions = step([6, 10], [0, 0], seed=4)
    w_enc, b_enc, b_dec = w["w_enc"], w["b_enc"], w["b_dec_in"]
    assert w_enc is not None and b_enc is not None and b_dec is not None
    hot = torch.linalg.lstsq(w_enc.T, (3.0 - b_enc)[:, None]).solution[:, 0] + b_dec
    resid[6:] = hot  # every padding row a hit wherever it counted
    clamp = TokenClamp(w, M, 32, "cpu", threshold=0.0, max_requests=1)  # room for 1 request
    clamp.fill(np.array([False]), np.array([6]), np.array([True]))
    out = clamp(positions, resid)  # 16 rows, 6 of them the step's
    rate = prompt_rate(guardrail(w, 0.0), resid[:6])
    assert clamp.decided_rows(1).tolist() == [int(rate > 0)]
    clamp.threshold = rate  # exactly at the prompt's rate: any padding counted would move it
    clamp.fill(np.array([False]), np.array([6]), np.array([True]))
    clamp(positions, resid)
    assert clamp.decided_rows(1).tolist() == [0]
    assert torch.equal(out[6:], resid[6:])


def test_a_deciding_clamp_needs_the_flags_and_room_for_the_rows() -> None:
    w = weights()
    clamp = TokenClamp(w, M, 16, "cpu", threshold=0.5, max_requests=2)
    with pytest.raises(ValueError) as caught:
        clamp.fill(np.array([True]), np.array([3]))
    assert str(caught.value) == "deciding in the engine needs each request's deciding flag"
    with pytest.raises(ValueError) as caught:
        clamp.fill(np.zeros(3, dtype=bool), np.array([1, 1, 1]), np.zeros(3, dtype=bool))
    assert str(caught.value) == "a step of 3 requests exceeds the 2 the guardrail was sized for"
    with pytest.raises(ValueError) as caught:
        TokenClamp(w, M, 16, "cpu").fill(np.array([True]), np.array([3]), np.array([True]))
    assert str(caught.value) == "this clamp does not decide in the engine"
    clamp._staging = [(torch.zeros(16, dtype=torch.bool), None)]  # as a CUDA clamp has
    with pytest.raises(ValueError) as caught:
        clamp.fill(np.array([True]), np.array([3]), np.array([False]))
    assert str(caught.value) == "deciding in the engine is measured on the CPU only"
    for make in (
        lambda: TokenClamp(w, M, 16, "cpu", threshold=0.5),
        lambda: TokenClamp.from_bundle(jumprelu_bundle(True), 16, "cpu", 0.5),
    ):
        with pytest.raises(ValueError) as caught:
            make()
        assert str(caught.value) == "deciding in the engine needs the most requests a step holds"


# ------------------------------------------------------------------ the runner's bookkeeping


def state(prompt: int, **decided: bool) -> Any:
    out = SimpleNamespace(num_prompt_tokens=prompt)
    for name, value in decided.items():
        setattr(out, name, value)
    return out


def test_each_request_decides_once_on_its_whole_prompt(caplog: pytest.LogCaptureFixture) -> None:
    requests = {
        "new": state(8),  # its whole prompt from its first token: decides now
        "old": state(5, **{DECIDED: False}),  # decided before: keeps it
        "chunk": state(8),  # the first part of its prompt: never decided, fires
        "cached": state(8),  # a cached prefix, the rest now: never decided, fires
    }
    requests["hot"] = state(5, **{DECIDED: True})  # decided before, fired: keeps it
    caplog.set_level(logging.ERROR)
    fired, deciding = step_decisions(
        requests,
        ["new", "old", "chunk", "cached", "hot"],
        computed=np.array([0, 7, 0, 4, 6]),
        scheduled=np.array([8, 1, 4, 4, 1]),
        decides=True,
    )
    assert fired.dtype == np.bool_ and deciding.dtype == np.bool_
    assert deciding.tolist() == [True, False, False, False, False]
    assert fired.tolist() == [False, False, True, True, True]
    assert getattr(requests["chunk"], DECIDED) is True  # and for every later step
    assert getattr(requests["cached"], DECIDED) is True
    assert not hasattr(requests["new"], DECIDED)
    assert [r.getMessage() for r in caplog.records] == [
        "dsg guardrail: request chunk's prompt reached the engine in part (4 tokens from "
        "position 0 of 8) before it was decided; clamped as if it fired",
        "dsg guardrail: request cached's prompt reached the engine in part (4 tokens from "
        "position 4 of 8) before it was decided; clamped as if it fired",
    ]


def test_the_static_clamp_fires_every_request_and_decides_none() -> None:
    fired, deciding = step_decisions(
        {"a": state(3)}, ["a"], np.array([0]), np.array([3]), decides=False
    )
    assert fired.dtype == np.bool_ and deciding.dtype == np.bool_
    assert fired.tolist() == [True] and deciding.tolist() == [False]


def test_a_step_s_decisions_are_kept_for_the_requests_still_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Decisions read after the step land on their requests (a request no longer there is
    skipped, a row no pass decided fires, logged); a recompute after preemption then reuses
    the decision."""
    asked: list[int] = []

    def decided_rows(n: int) -> np.ndarray:
        asked.append(n)
        return np.array([1, 0, 1, -1, 0, 1], np.int8)[:n]

    clamp = SimpleNamespace(decided_rows=decided_rows)
    requests = {"a": state(4), "c": state(6), "d": state(2), "e": state(3)}
    caplog.set_level(logging.DEBUG, logger="dsg_runtime")
    keep_decisions(requests, [(0, "a"), (1, "gone"), (2, "c"), (3, "d"), (4, "e")], clamp)
    assert asked == [5]  # the rows up to the last one that decided
    assert [getattr(requests[r], DECIDED) for r in "acde"] == [True, True, True, False]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "dsg guardrail: request a decided in the engine: True"),
        ("DEBUG", "dsg guardrail: request c decided in the engine: True"),
        ("ERROR", "dsg guardrail: no forward pass decided request d; clamped as if it fired"),
        ("DEBUG", "dsg guardrail: request d decided in the engine: True"),
        ("DEBUG", "dsg guardrail: request e decided in the engine: False"),
    ]
    caplog.clear()
    requests["c"] = state(6, **{DECIDED: False})
    fired, deciding = step_decisions(
        requests, ["c"], np.array([0]), np.array([9]), decides=True
    )  # prompt and three generated tokens again
    assert fired.tolist() == [False] and deciding.tolist() == [False]


def test_where_decisions_are_taken_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(DECIDE_ENV, raising=False)
    assert decides_in_engine() is False
    monkeypatch.setenv(DECIDE_ENV, "engine")
    assert decides_in_engine() is True
    monkeypatch.setenv(DECIDE_ENV, "worker")
    with pytest.raises(GuardrailRefused, match="'front-end' \\(the default\\) or 'engine'"):
        decides_in_engine()


def engine_config(**over: Any) -> Any:
    return SimpleNamespace(
        cache_config=SimpleNamespace(enable_prefix_caching=over.get("prefix", False)),
        scheduler_config=SimpleNamespace(
            enable_chunked_prefill=over.get("chunked", False),
            long_prefill_token_threshold=over.get("long", 0),
        ),
        device_config=SimpleNamespace(device_type=over.get("device", "cpu")),
    )


@pytest.mark.parametrize(
    ("over", "what"),
    [
        ({"prefix": True}, "--no-enable-prefix-caching"),
        ({"chunked": True}, "--no-enable-chunked-prefill"),
        ({"long": 64}, "long-prefill token threshold"),
        ({"device": "cuda"}, "other than the CPU"),
    ],
)
def test_what_would_bring_a_prompt_in_parts_is_refused(over: dict[str, Any], what: str) -> None:
    assert engine_config_problems(engine_config()) == []
    (problem,) = engine_config_problems(engine_config(**over))
    assert what in problem


def test_the_engine_decides_with_the_dynamic_gate_only() -> None:
    from dsg_runtime.guardrail import AnyHitGate, WindowGate

    def bundle(gate: Any) -> Any:
        return SimpleNamespace(strategy="x", guardrail=lambda: SimpleNamespace(gate=gate))

    assert engine_threshold(bundle(ThresholdGate(0.25))) == 0.25
    assert engine_threshold(bundle(AnyHitGate())) is None
    with pytest.raises(GuardrailRefused, match="dynamic gate only"):
        engine_threshold(bundle(WindowGate(4, 0.5, 0.5)))


def test_decisions_are_kept_right_after_the_pass_and_a_failed_pass_fires() -> None:
    """The runner's ``execute_model``: after the pass, its deciding requests keep the clamp's
    decisions; if the pass raises, they are clamped as if they fired; a step that begins with
    decisions not kept (a pass that ran outside ``execute_model``) is refused."""
    from dsg_runtime.vllm.engine import _decisions_kept, _guarded_prepare_inputs

    def forward(self: Any, fail: bool) -> str:
        if fail:
            raise RuntimeError("the pass failed")
        return "out"

    clamp = SimpleNamespace(decided_rows=lambda n: np.array([False, True])[:n])
    runner = SimpleNamespace(requests={"a": state(3), "b": state(4)}, _dsg_clamp=clamp)
    execute = _decisions_kept(forward)
    runner._dsg_pending = [(0, "a"), (1, "b")]
    assert execute(runner, False) == "out"
    assert [getattr(runner.requests[r], DECIDED) for r in "ab"] == [False, True]
    assert runner._dsg_pending == []
    runner.requests = {"a": state(3), "b": state(4)}
    runner._dsg_pending = [(0, "a"), (1, "b")]
    with pytest.raises(RuntimeError, match="the pass failed"):
        execute(runner, True)
    assert [getattr(runner.requests[r], DECIDED) for r in "ab"] == [True, True]
    runner._dsg_pending = [(0, "a")]
    runner._dsg_decides = True
    runner.input_batch = SimpleNamespace(req_ids=["a"], num_reqs=1)
    prepare = _guarded_prepare_inputs(lambda *a: None)
    with pytest.raises(GuardrailRefused, match="before the last step's decisions were kept"):
        prepare(runner, None, np.array([1]))
