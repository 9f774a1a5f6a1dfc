"""The transformers backend: the model's own attention kernels, for any causal LM whose decoder
layers are ``model.model.layers`` (Gemma, Llama, Mistral, Qwen, ...).

Up to the hook, the model's own forward runs (its embedding scale, rotary embedding and mask
helpers) and stops at the input of block ``split``. From the hook, the decoder layers from
``split`` are called directly with the rotary embedding of positions ``0..T-1`` and an additive
causal + padding mask (``[B, 1, T, T]``, with the sliding window on the layers that have one),
which both the eager and the SDPA attention accept in transformers 4.5x and 5.x alike; then the
final norm, ``lm_head`` and the final-logit softcap at each row's last real position only.
Packed rows (:class:`~dsg.engine.backends.base.PackingBackend`) run every layer that way, from
the model's own embedding, with the positions and attention pattern the caller gives.

The checkpoint is loaded by :mod:`dsg.engine.loader`, as for ``dsg generate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsg.engine.backends.base import at_positions, split_layer

if TYPE_CHECKING:
    import torch

NAME = "transformers"


class _Reached(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a pre-hook to stop the forward pass at the hook, carrying the residual."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("reached the hook")
        self.hidden = hidden


class TransformersBackend:
    """A transformers causal LM split at a decoder layer."""

    name = NAME

    def __init__(self, model: Any, tokenizer: Any) -> None:
        from dsg_runtime.decoder import decoder_layers

        self.model = model
        self.tokenizer = tokenizer
        self.layers = decoder_layers(model)
        self.inner = model.model
        config = model.config
        self.n_layers = len(self.layers)
        self.d_model = int(config.hidden_size)
        self.n_ctx = int(config.max_position_embeddings)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.windows = [getattr(layer.self_attn, "sliding_window", None) for layer in self.layers]

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def to_hook(self, tokens: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
        target = self.layers[split] if split < self.n_layers else self.inner.norm

        def grab(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            raise _Reached(args[0] if args else kwargs["hidden_states"])

        handle = target.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.inner(
                input_ids=tokens.to(self.device),
                attention_mask=mask.to(self.device).long(),
                use_cache=False,
            )
        except _Reached as reached:
            return reached.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"the forward pass never reached decoder layer {split}")

    def from_hook(
        self,
        resid: torch.Tensor,
        mask: torch.Tensor,
        last: torch.Tensor,
        split: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        import torch

        width = int(last.max()) + 1
        device = resid.device
        positions = torch.arange(width, device=device).expand(resid.shape[0], width)
        allowed = causal_allowed(mask[:, :width].to(device))
        hidden = self._run_layers(resid[:, :width], positions, allowed, split, self.n_layers)
        return self._final_logits(self.inner.norm(at_positions(hidden, last, rows)))

    def to_hook_packed(
        self, tokens: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, split: int
    ) -> torch.Tensor:
        """The model's own forward up to the input of block 0 (its embedding and scale), then
        blocks ``0..split-1`` under the given positions and attention pattern."""
        import torch

        embedded = self.to_hook(tokens, torch.ones_like(tokens, dtype=torch.bool), 0)
        device = embedded.device
        return self._run_layers(embedded, positions.to(device), allowed.to(device), 0, split)

    def from_hook_packed(
        self,
        resid: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        read: torch.Tensor,
        split: int,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        width = int(read.max()) + 1
        device = resid.device
        hidden = self._run_layers(
            resid[:, :width],
            positions[:, :width].to(device),
            allowed[:, :width, :width].to(device),
            split,
            self.n_layers,
        )
        return self._final_logits(self.inner.norm(at_positions(hidden, read, rows)))

    def _run_layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Decoder layers ``start..stop-1`` called directly, with the rotary embedding of
        ``positions`` and an additive mask per sliding window."""
        if start == stop:
            return hidden
        rotary = self.inner.rotary_emb(hidden, positions)
        masks: dict[int | None, torch.Tensor] = {}
        for layer, window in zip(self.layers[start:stop], self.windows[start:stop], strict=True):
            if window not in masks:
                masks[window] = additive_mask(allowed, positions, window, hidden.dtype)
            out = layer(
                hidden,
                attention_mask=masks[window],
                position_embeddings=rotary,
                position_ids=positions,
            )
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def prefix_shared_logits(
        self, prefix: list[int], suffixes: list[list[int]], batch_size: int, pad_id: int
    ) -> torch.Tensor:
        """Final logits ``[N, vocab]`` at the last token of ``prefix + suffix`` for each suffix
        (each non-empty), running the prefix once and the suffixes on copies of its KV cache."""
        import copy

        import torch

        keyword = cache_keyword(self.inner)
        device = self.device
        out = []
        with torch.inference_mode():
            if prefix:
                prefix_ids = torch.tensor([prefix], device=device)
                cached = getattr(self.inner(input_ids=prefix_ids, use_cache=True), keyword)
            for start in range(0, len(suffixes), batch_size):
                chunk = suffixes[start : start + batch_size]
                width = max(len(s) for s in chunk)
                tokens = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), len(prefix) + width), dtype=torch.long)
                mask[:, : len(prefix)] = 1
                for r, suffix in enumerate(chunk):
                    tokens[r, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                    mask[r, len(prefix) : len(prefix) + len(suffix)] = 1
                extra: dict[str, Any] = {}
                if prefix:
                    cache = copy.deepcopy(cached)
                    cache.batch_repeat_interleave(len(chunk))
                    extra[keyword] = cache
                positions = torch.arange(len(prefix), len(prefix) + width).expand(len(chunk), width)
                hidden = self.inner(
                    input_ids=tokens.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=bool(prefix),
                    **extra,
                ).last_hidden_state
                last = torch.tensor([len(s) - 1 for s in chunk], device=device)
                out.append(
                    self._final_logits(hidden[torch.arange(len(chunk), device=device), last])
                )
        return torch.cat(out)

    def _final_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """``lm_head`` and the final softcap on final-normed hidden states."""
        import torch

        logits = self.model.lm_head(normed)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def hook_activations(self, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
        import torch

        return self.to_hook(
            tokens, torch.ones_like(tokens, dtype=torch.bool), split_layer(hook_name)
        )


def causal_allowed(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, T]``: query ``i`` may attend key ``j`` when ``j <= i`` and ``j`` is a real token
    (``mask``, bool ``[B, T]``)."""
    import torch

    width = mask.shape[1]
    query = torch.arange(width, device=mask.device)[:, None]
    key = torch.arange(width, device=mask.device)[None, :]
    return (key <= query)[None] & mask[:, None, :].bool()


def additive_mask(
    allowed: torch.Tensor, positions: torch.Tensor, window: int | None, dtype: torch.dtype
) -> torch.Tensor:
    """``[B, 1, T, T]``: 0 where ``allowed`` (and, with a sliding window, the key's position
    is less than ``window`` before the query's), the dtype's minimum elsewhere."""
    import torch

    if window is not None:
        allowed = allowed & (positions[:, :, None] - positions[:, None, :] < window)
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed[:, None], zero, torch.finfo(dtype).min)


def cache_keyword(module: Any) -> str:
    """The name under which a model's forward takes and returns its KV cache: ``cache`` in
    recent transformers 5 releases, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
