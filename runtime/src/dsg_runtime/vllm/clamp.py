"""The clamp inside the engine: one tensor op per forward pass over vLLM's flat token batch.

vLLM runs every scheduled token of every request as one ``[N, D]`` batch, with no row per
request, and splits Gemma/Llama residual streams into ``hidden + residual``. The decision of
each request was taken on its whole prompt before it reached the engine; before every step the
runner writes, per token, whether that token's request fired into :attr:`TokenClamp.fired`, a
persistent buffer (same storage for the engine's life, so compiled graphs and CUDA graphs read
the current step's values). The op itself is dense: no host synchronisation, no Python branch
on a tensor's value.

On CUDA the per-token decisions travel to the device by an asynchronous copy from pinned host
memory, and with vLLM's async scheduling the host prepares step N+1 while the device still runs
step N. A pinned buffer is therefore never written while a copy that reads it may be pending:
see :meth:`TokenClamp.fill`.

Deciding in the engine (``threshold`` set, :mod:`dsg_runtime.vllm.in_engine`): requests whose
whole prompt is in the step are decided inside the same op, on the residual the engine computed
there, by the dynamic gate's rule (hits over the prompt's positions other than the BOS, divided
by its length in float64, ``float32(rate) > float32(threshold)``), with per-token buffers
(which batch row a token belongs to, whether that row decides now) and index additions: dense,
no host synchronisation, so a graph traced once decides every step. Each deciding row's
decision is left in :attr:`TokenClamp.rows_fired` for the runner to keep (``-1`` until a pass
has decided it, so a decision is never read from a pass that did not run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from dsg_runtime.bundle import Bundle


class TokenClamp:
    """The bundle's clamp on vLLM's flat batch: at position ``p > 0`` (position 0 is the BOS,
    never a hit) of a request that fired, every selected feature active there is set to
    ``-multiplier``; every other token is returned bit for bit. Computed in float32, as
    ``dsg.hf`` does, and cast back to the residual's dtype.

    ``weights``: ``w_enc``, ``b_enc``, ``w_dec``, ``b_dec_in`` and ``jump`` as
    :func:`~dsg_runtime.guardrail.encode_columns` takes them; with ``top_k`` (a TopK SAE) the
    whole encoder, ``w_dec``, ``b_dec_in`` and the selected ``index``, as
    :func:`~dsg_runtime.guardrail.encode_topk` takes them. ``threshold``: the dynamic gate's,
    when requests are decided in the engine (``max_requests``: the most rows a step holds)."""

    def __init__(
        self,
        weights: dict[str, torch.Tensor | None],
        multiplier: float,
        max_tokens: int,
        device: Any,
        top_k: int | None = None,
        threshold: float | None = None,
        max_requests: int = 0,
    ) -> None:
        def on_device(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=torch.float32 if t.is_floating_point() else t.dtype)

        # float32 on the device once, so a compiled graph sees plain tensors and casts nothing
        self.weights = {name: on_device(t) for name, t in weights.items()}
        self.top_k = top_k
        self.multiplier = float(multiplier)
        self.fired = torch.zeros(max_tokens, dtype=torch.bool, device=device)
        self.threshold = threshold
        if threshold is not None:
            if max_requests < 1:
                raise ValueError("deciding in the engine needs the most requests a step holds")
            self.deciding = torch.zeros(max_tokens, dtype=torch.bool, device=device)
            self.row_of = torch.zeros(max_tokens, dtype=torch.long, device=device)
            self.rows_fired = torch.full((max_requests,), -1, dtype=torch.int8, device=device)
        self._staging: list[tuple[torch.Tensor, Any]] = []
        if self.fired.device.type == "cuda":
            # two pinned slots used in turn, each with the event recorded after its last copy
            self._staging = [
                (torch.zeros(max_tokens, dtype=torch.bool, pin_memory=True), torch.cuda.Event())
                for _ in range(2)
            ]
        self._turn = 0

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        max_tokens: int,
        device: Any,
        threshold: float | None = None,
        max_requests: int = 0,
    ) -> TokenClamp:
        """The clamp of a bundle: k encoder columns (ReLU or JumpReLU) or, for a TopK bundle, the
        whole encoder and the selected features' index; deciding in the engine with
        ``threshold``."""
        from dsg_runtime.guardrail import TopKFeatures

        selected = bundle.selected()
        weights = {
            "w_enc": selected.w_enc,
            "b_enc": selected.b_enc,
            "w_dec": selected.w_dec,
            "b_dec_in": selected.b_dec_in,
        }
        if isinstance(selected, TopKFeatures):
            weights["index"] = selected.index
            top_k: int | None = selected.top_k
        else:
            weights["jump"] = selected.jump
            top_k = None
        return cls(weights, bundle.multiplier, max_tokens, device, top_k, threshold, max_requests)

    def fill(
        self,
        fired_per_request: np.ndarray,
        tokens_per_request: np.ndarray,
        deciding_per_request: np.ndarray | None = None,
    ) -> None:
        """Before a step: token ``t`` of the step belongs to request ``i`` in batch order (vLLM
        lays requests out contiguously); tokens beyond the step's (padding) never clamp.
        ``deciding_per_request`` (deciding in the engine): the requests whose whole prompt is
        this step's tokens, decided in the op (their ``fired_per_request`` is not read)."""
        per_token = np.repeat(fired_per_request.astype(np.bool_), tokens_per_request)
        n, size = per_token.size, self.fired.numel()
        if n > size:
            raise ValueError(f"a step of {n} tokens exceeds the {size} the guardrail was sized for")
        if self.threshold is not None:
            self._fill_deciding(per_token, tokens_per_request, deciding_per_request)
            return
        if deciding_per_request is not None:
            raise ValueError("this clamp does not decide in the engine")
        if not self._staging:
            # a copy from host memory to a host tensor is synchronous: the step's values are in
            # place when copy_ returns, and nothing later can reach them before the step runs
            self.fired[:n] = torch.from_numpy(per_token)
            self.fired[n:] = False
            return
        # Why this is correct on CUDA, with async scheduling too:
        # - the host side: the slot written now was last read by the copy enqueued two fills
        #   ago, and that copy's completion event is waited on before the slot is touched, so
        #   no pending copy can read another step's values (one shared slot, refilled every
        #   step, could be overwritten before its non_blocking copy ran);
        # - the device side: the copy is enqueued on the current stream, the stream vLLM's
        #   runner prepares inputs and runs the forward pass on, so step N's reads of `fired`
        #   are ordered before step N+1's copy overwrites it.
        host, copied = self._staging[self._turn]
        copied.synchronize()  # returns at once while the event was never recorded
        host[:n] = torch.from_numpy(per_token)
        host[n:] = False
        self.fired.copy_(host, non_blocking=True)
        copied.record()
        self._turn = (self._turn + 1) % len(self._staging)

    def _fill_deciding(
        self, per_token: np.ndarray, tokens: np.ndarray, deciding: np.ndarray | None
    ) -> None:
        """The per-token buffers of a step decided in the engine, written in place (the CPU
        runner only: :func:`~dsg_runtime.vllm.checks.engine_config_problems`)."""
        rows = tokens.size
        if deciding is None or deciding.shape != (rows,):
            raise ValueError("deciding in the engine needs each request's deciding flag")
        if rows > self.rows_fired.numel():
            raise ValueError(
                f"a step of {rows} requests exceeds the {self.rows_fired.numel()} the guardrail "
                "was sized for"
            )
        if self._staging:
            raise ValueError("deciding in the engine is measured on the CPU only")
        n = per_token.size
        decide = np.repeat(deciding.astype(np.bool_), tokens)
        self.fired[:n] = torch.from_numpy(per_token & ~decide)
        self.fired[n:] = False
        self.deciding[:n] = torch.from_numpy(decide)
        self.deciding[n:] = False
        self.row_of[:n] = torch.from_numpy(np.repeat(np.arange(rows, dtype=np.int64), tokens))
        self.row_of[n:] = 0
        self.rows_fired.fill_(-1)

    def decided_rows(self, rows: int) -> np.ndarray:
        """After a step decided in the engine: the decisions of its first ``rows`` batch rows
        (1 fired, 0 not; meaningful for the rows that decided; -1 if no pass ran since the
        step's :meth:`fill`)."""
        return self.rows_fired[:rows].cpu().numpy().copy()

    def residual(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clamped stream as a new ``(hidden, residual)`` pair: the whole residual in
        ``hidden`` and zeros in ``residual``, so the next fused add-norm sees it exactly."""
        whole = hidden if residual is None else hidden + residual
        clamped = self(positions, whole)
        return clamped, None if residual is None else torch.zeros_like(residual)

    def __call__(self, positions: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """``resid [N, D]`` with the clamp applied at the firing requests' active tokens."""
        from dsg_runtime.guardrail import apply_clamp, encode_columns, encode_topk

        w = self.weights
        x = resid.float()
        if self.top_k is None:  # fixed for the engine's life: no branch on a tensor
            acts = encode_columns(x, w["w_enc"], w["b_enc"], w["b_dec_in"], w["jump"])  # type: ignore[arg-type]
        else:
            acts = encode_topk(x, w["w_enc"], w["b_enc"], w["index"], self.top_k, w["b_dec_in"])  # type: ignore[arg-type]
        counted = positions > 0  # a prompt's BOS is never a hit
        active = (acts > 0).any(dim=-1)
        fired = self.fired[: x.shape[0]]
        if self.threshold is not None:  # fixed for the engine's life, like top_k
            fired = fired | self._decide(active & counted)
        where = active & fired & counted
        out = apply_clamp(x, acts, where, w["w_dec"], self.multiplier)  # type: ignore[arg-type]
        return out.to(resid.dtype)

    def _decide(self, hits: torch.Tensor) -> torch.Tensor:
        """Per token, whether its request decides in this step and fires: each deciding row's
        rate is its hits over its tokens (:func:`~dsg_runtime.guardrail.sequence_rates` on its
        whole prompt), gated as :class:`~dsg_runtime.guardrail.ThresholdGate` gates it."""
        from dsg_runtime.guardrail import rate_gate

        n = hits.shape[0]
        deciding, rows = self.deciding[:n], self.row_of[:n]
        zeros = torch.zeros(self.rows_fired.shape, dtype=torch.float64, device=hits.device)
        counted = zeros.index_add(0, rows, (hits & deciding).to(torch.float64))
        length = zeros.index_add(0, rows, deciding.to(torch.float64))
        rows_fired = rate_gate(counted / length.clamp(min=1), self.threshold)  # type: ignore[arg-type]
        self.rows_fired.copy_(rows_fired.to(torch.int8))
        return deciding & rows_fired[rows]
