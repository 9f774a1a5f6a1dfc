"""The in-engine clamp on vLLM's flat token batch: the same edit as dsg's guardrail on each
request's tokens, only where the request fired, never at position 0, wherever the request's
tokens sit in a step and however its prompt is split into steps. No vLLM needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsg_runtime.bundle import JUMP_THRESHOLD, Bundle
from dsg_runtime.guardrail import FeatureColumns, Guardrail, ThresholdGate
from dsg_runtime.vllm.clamp import TokenClamp

D, K, M = 16, 4, 7.0


def weights(seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w_enc": torch.randn(D, K, generator=g),
        "b_enc": torch.randn(K, generator=g) * 0.5,
        "w_dec": torch.randn(K, D, generator=g),
        "b_dec_in": torch.randn(D, generator=g) * 0.1,
        "jump": torch.rand(K, generator=g) * 0.3,
    }


def reference(w: dict[str, torch.Tensor | None]) -> Guardrail:
    columns = FeatureColumns(w["w_enc"], w["b_enc"], w["w_dec"], w["b_dec_in"], w["jump"])  # type: ignore[arg-type]
    return Guardrail(columns, ThresholdGate(0.5), M)


def expected(guard: Guardrail, resid: torch.Tensor, positions: torch.Tensor, fired: bool):
    """dsg.hf's edit of one request's tokens decided elsewhere: prompt positions other than
    the BOS and generated positions clamp their hits when the request fired."""
    decided = (positions > 0)[None]
    later = torch.zeros_like(decided)
    return guard.apply_decision(resid[None], decided, later, torch.tensor([fired]))[0]


def test_each_request_gets_its_own_decision_in_one_batch() -> None:
    w = weights()
    guard = reference(w)
    clamp = TokenClamp(w, M, max_tokens=32, device="cpu")
    g = torch.Generator().manual_seed(1)
    lengths, fired = [5, 3, 6], [True, False, True]
    resid = torch.randn(sum(lengths), D, generator=g) * 2
    positions = torch.cat(
        [torch.arange(n) + start for n, start in zip(lengths, [0, 4, 9], strict=True)]
    )
    clamp.fill(np.array(fired), np.array(lengths))
    out = clamp(positions, resid)
    for i, (n, f) in enumerate(zip(lengths, fired, strict=True)):
        rows = slice(sum(lengths[:i]), sum(lengths[:i]) + n)
        want = expected(guard, resid[rows], positions[rows], f)
        torch.testing.assert_close(out[rows], want, rtol=1e-6, atol=1e-5)
        if not f:
            assert torch.equal(out[rows], resid[rows])  # bit for bit
    assert not torch.equal(out[:5], resid[:5])  # the fired request was edited somewhere


def test_position_zero_is_never_clamped() -> None:
    w = weights()
    w["b_enc"] = torch.full((K,), 50.0)  # every feature active everywhere
    clamp = TokenClamp(w, M, max_tokens=8, device="cpu")
    resid = torch.randn(4, D)
    clamp.fill(np.array([True]), np.array([4]))
    out = clamp(torch.arange(4), resid)
    assert torch.equal(out[0], resid[0])
    assert not torch.equal(out[1:], resid[1:])


def test_a_prompt_in_chunks_is_clamped_as_in_one_step() -> None:
    """Chunked prefill: the same request's tokens, split over steps with another request
    beside them, get exactly the edit they get in one step."""
    w = weights(2)
    clamp = TokenClamp(w, M, max_tokens=32, device="cpu")
    resid = torch.randn(9, D) * 2
    whole_positions = torch.arange(9)
    clamp.fill(np.array([True]), np.array([9]))
    whole = clamp(whole_positions, resid)
    other = torch.randn(2, D) * 2
    pieces = []
    for lo, hi in ((0, 4), (4, 9)):
        step = torch.cat([other, resid[lo:hi]])
        clamp.fill(np.array([False, True]), np.array([2, hi - lo]))
        out = clamp(torch.cat([torch.tensor([7, 8]), whole_positions[lo:hi]]), step)
        assert torch.equal(out[:2], other)
        pieces.append(out[2:])
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=0)


def test_the_buffer_keeps_its_storage_and_padding_never_fires() -> None:
    clamp = TokenClamp(weights(), M, max_tokens=10, device="cpu")
    address = clamp.fired.data_ptr()
    clamp.fill(np.array([True, True]), np.array([4, 4]))
    clamp.fill(np.array([True, False]), np.array([2, 1]))
    assert clamp.fired.data_ptr() == address
    assert clamp.fired.tolist() == [True, True, False] + [False] * 7
    with pytest.raises(ValueError) as caught:
        clamp.fill(np.array([True]), np.array([11]))
    assert str(caught.value) == "a step of 11 tokens exceeds the 10 the guardrail was sized for"


def test_the_split_residual_is_clamped_whole() -> None:
    """vLLM carries the stream as hidden + residual; the clamp edits their sum and hands the
    next layer the whole stream with a zero residual."""
    w = weights(3)
    clamp = TokenClamp(w, M, max_tokens=8, device="cpu")
    hidden, residual = torch.randn(5, D), torch.randn(5, D)
    positions = torch.arange(5)
    clamp.fill(np.array([True]), np.array([5]))
    new_hidden, new_residual = clamp.residual(positions, hidden, residual)
    assert new_residual is not None and not new_residual.any()
    assert torch.equal(new_hidden, clamp(positions, hidden + residual))
    alone, none = clamp.residual(positions, hidden, None)
    assert none is None and torch.equal(alone, clamp(positions, hidden))


def test_low_precision_streams_are_clamped_in_float32() -> None:
    w = weights(4)
    clamp = TokenClamp(w, M, max_tokens=8, device="cpu")
    resid = (torch.randn(6, D) * 2).to(torch.bfloat16)
    clamp.fill(np.array([True]), np.array([6]))
    out = clamp(torch.arange(6), resid)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, clamp(torch.arange(6), resid.float()).to(torch.bfloat16))


def test_compiled_op_matches_eager() -> None:
    """The op traces into one graph (no host sync, no data-dependent branch) and a refill of
    the buffer between calls is seen by the compiled code."""
    w = weights(5)
    clamp = TokenClamp(w, M, max_tokens=16, device="cpu")
    compiled = torch.compile(clamp.__call__, fullgraph=True, backend="eager", dynamic=True)
    resid, positions = torch.randn(8, D) * 2, torch.arange(8)
    for fired in ([True, False], [False, True]):
        clamp.fill(np.array(fired), np.array([4, 4]))
        assert torch.equal(compiled(positions, resid), clamp(positions, resid))


def jumprelu_bundle(b_dec_in: bool, threshold: float = 0.5) -> Bundle:
    """A JumpReLU bundle of four features whose decoder bias is (or is not) subtracted from the
    input; its jump threshold leaves many pre-activations below it (JumpReLU is not ReLU)."""
    w = weights(6)
    w["jump"] = torch.full((K,), 4.0)
    return Bundle(
        hook_name="blocks.0.hook_resid_post",
        features=(0, 1, 2, 3),
        threshold=threshold,
        multiplier=M,
        strategy="dynamic",
        activation="jumprelu",
        apply_b_dec_to_input=b_dec_in,
        d_sae=K,
        tensors={
            "W_enc": w["w_enc"],
            "b_enc": w["b_enc"],
            "W_dec": w["w_dec"],
            "b_dec": torch.randn(D, generator=torch.Generator().manual_seed(7)),
            JUMP_THRESHOLD: w["jump"],
        },
    )


def topk_bundle(b_dec_in: bool, threshold: float = 0.5) -> Bundle:
    """A TopK bundle: the whole encoder of 12 latents, 3 kept per token, 3 selected."""
    g = torch.Generator().manual_seed(13)
    d_sae = 12
    return Bundle(
        hook_name="blocks.0.hook_resid_post",
        features=(5, 2, 9),
        threshold=threshold,
        multiplier=M,
        strategy="dynamic",
        activation="topk",
        top_k=3,
        apply_b_dec_to_input=b_dec_in,
        d_sae=d_sae,
        tensors={
            "W_enc": torch.randn(D, d_sae, generator=g),
            "b_enc": torch.randn(d_sae, generator=g) * 0.5,
            "W_dec": torch.randn(3, D, generator=g),
            "b_dec": torch.randn(D, generator=g) * 0.1,
        },
    )


@pytest.mark.parametrize("b_dec_in", [True, False])
def test_a_bundle_s_clamp_is_its_guardrail_s_edit(b_dec_in: bool) -> None:
    """From a JumpReLU bundle whose decoder bias is (or is not) subtracted from the input: the
    clamp edits each fired token as the bundle's own guardrail does."""
    bundle = jumprelu_bundle(b_dec_in)
    clamp = TokenClamp.from_bundle(bundle, max_tokens=8, device="cpu")
    assert (clamp.weights["b_dec_in"] is not None) is b_dec_in
    resid, positions = (
        torch.randn(6, D, generator=torch.Generator().manual_seed(8)) * 2,
        torch.arange(6),
    )
    clamp.fill(np.array([True]), np.array([6]))
    want = expected(bundle.guardrail(), resid, positions, True)
    assert not torch.equal(want, resid)
    torch.testing.assert_close(clamp(positions, resid), want, rtol=1e-6, atol=1e-5)


def test_weights_are_kept_in_float32_and_a_full_step_fits() -> None:
    low = {name: t.to(torch.bfloat16) for name, t in weights(9).items() if t is not None}
    clamp = TokenClamp(low, M, max_tokens=6, device="cpu")
    assert {t.dtype for t in clamp.weights.values() if t is not None} == {torch.float32}
    clamp.fill(np.array([True, False]), np.array([4, 2]))  # exactly max_tokens
    assert clamp.fired.tolist() == [True] * 4 + [False] * 2


def test_a_fired_token_without_an_active_feature_is_untouched() -> None:
    """Only tokens where a selected feature is active are edited, in a request that fired too:
    the clamp of an inactive token would add -multiplier times every direction."""
    w = weights(10)
    clamp = TokenClamp(w, M, max_tokens=8, device="cpu")
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(11)) * 2
    assert torch.equal(clamp(torch.arange(4), x), x)  # nothing fired yet: bit for bit
    w_enc, b_enc, b_dec = w["w_enc"], w["b_enc"], w["b_dec_in"]
    assert w_enc is not None and b_enc is not None and b_dec is not None
    quiet = torch.linalg.lstsq(w_enc.T, (-5.0 - b_enc)[:, None]).solution[:, 0]
    x[2] = quiet + b_dec  # every pre-activation -5 here: no feature active
    clamp.fill(np.array([True]), np.array([4]))
    out = clamp(torch.arange(4), x)
    assert torch.equal(out[2], x[2])
    assert not torch.equal(out[1], x[1]) or not torch.equal(out[3], x[3])


def test_weights_and_the_buffer_live_on_the_engine_s_device() -> None:
    """Cast once onto the device the engine runs on (the meta device stands in for a GPU), the
    buffers of deciding in the engine too, and the op computes there."""
    clamp = TokenClamp(weights(12), M, max_tokens=8, device="meta", threshold=0.5, max_requests=2)
    assert {t.device.type for t in clamp.weights.values() if t is not None} == {"meta"}
    buffers = (clamp.fired, clamp.deciding, clamp.row_of, clamp.rows_fired)
    assert {t.device.type for t in buffers} == {"meta"}
    out = clamp(torch.arange(8, device="meta"), torch.empty(8, D, device="meta"))
    assert out.device.type == "meta" and out.shape == (8, D)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (asynchronous copies)")
def test_a_later_fill_never_reaches_an_earlier_steps_pending_copy() -> None:
    """Async scheduling: the host fills step N+1 while the device is still busy before step N's
    copy. Each step must read its own decisions (a single pinned buffer refilled every step
    handed step N the values of step N+1)."""
    clamp = TokenClamp(weights(), M, max_tokens=64, device="cuda")
    steps = [np.array([i % 2 == 0, i % 3 == 0]) for i in range(6)]
    seen = []
    for fired in steps:
        torch.cuda._sleep(20_000_000)  # the device lags far behind the host
        clamp.fill(fired, np.array([30, 34]))
        seen.append(clamp.fired.clone())  # what the step's forward pass would read
    torch.cuda.synchronize()
    for fired, got in zip(steps, seen, strict=True):
        assert got.tolist() == np.repeat(fired, [30, 34]).tolist()


@pytest.mark.parametrize("b_dec_in", [True, False])
def test_a_topk_bundle_s_clamp_is_its_guardrail_s_edit(b_dec_in: bool) -> None:
    """From a TopK bundle (the whole encoder, 3 of 12 latents kept per token): the clamp
    computes the same activations as the bundle's guardrail and edits each fired token as it
    does."""
    bundle = topk_bundle(b_dec_in)
    g = torch.Generator().manual_seed(14)
    clamp = TokenClamp.from_bundle(bundle, max_tokens=16, device="cpu")
    assert clamp.top_k == 3 and clamp.weights["index"].dtype == torch.long  # type: ignore[union-attr]
    resid, positions = torch.randn(16, D, generator=g) * 2, torch.arange(16)
    guard = bundle.guardrail()
    acts = guard.activations(resid[None])[0]
    assert 0 < int((acts > 0).any(-1).sum()) < 16  # some tokens active, some not
    clamp.fill(np.array([True]), np.array([16]))
    want = expected(guard, resid, positions, True)
    assert not torch.equal(want, resid)
    got = clamp(positions, resid)
    active = (acts > 0).any(-1) & (positions > 0)
    assert torch.equal(got[~active], resid[~active])  # the rest bit for bit
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
