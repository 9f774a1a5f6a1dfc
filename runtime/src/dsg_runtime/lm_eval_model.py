"""The guarded model as an lm-evaluation-harness model type, ``dsg``.

It is lm-eval's own Hugging Face model (``HFLM``) with a guardrail bundle attached, so every
option of ``--model hf`` still works: ``--model_args pretrained=MODEL,bundle=BUNDLE_DIR``.
Without ``bundle`` it is the unguarded model. Importing this module registers the type; lm-eval
has no entry point for third-party models, so ``dsg-lm-eval`` (lm-eval's command line with the
type registered) is the command to run. See docs/lm-eval.md.

Request types (each also documented there):

- log-likelihood: lm-eval scores context + continuation in one right-padded pass with no
  attention mask. Each row is decided on its context (the prompt) alone, and that decision
  applies to the continuation tokens, as in generation; padding is neither counted nor clamped.
- rolling log-likelihood (perplexity): there is no prompt, so each window is decided on the
  whole of its input.
- generation: ``model.generate`` with lm-eval's mask; :mod:`dsg_runtime.hf` decides on the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ModuleNotFoundError as missing:  # lm-eval is optional: pip install 'dsg-runtime[lm-eval]'
    raise ModuleNotFoundError(
        "the dsg model type needs lm-evaluation-harness: pip install 'dsg-runtime[lm-eval]'"
    ) from missing

from dsg_runtime.errors import UserError
from dsg_runtime.hf import GuardrailStateError

if TYPE_CHECKING:
    from dsg_runtime.bundle import Bundle
    from dsg_runtime.hf import GuardrailHandle

MODEL_NAME = "dsg"
PAD_ID = 0  # lm-eval's right padding of log-likelihood batches (pad_and_concat) is zeros


@register_model(MODEL_NAME)
class GuardedLM(HFLM):
    """lm-eval's ``hf`` model with a dsg guardrail bundle on it. ``bundle`` is a directory or a
    loaded :class:`~dsg_runtime.bundle.Bundle`; ``strategies`` (from Python only) are the plugin
    strategies by name that a directory's bundle may name besides the built-in ones;
    ``allow_model_mismatch`` (``true``/``false``) overrides the check that the model is the one
    the bundle was calibrated on (the override is logged and kept in ``binding_note``)."""

    def __init__(
        self,
        pretrained: Any = None,
        bundle: Any = None,
        strategies: Mapping[str, Any] | None = None,
        allow_model_mismatch: bool | str = False,
        **kwargs: Any,
    ) -> None:
        from dsg_runtime.bundle import Bundle
        from dsg_runtime.remote_code import refuse_custom_code, refuse_trusting_code

        self.allow_model_mismatch = flag("allow_model_mismatch", allow_model_mismatch)
        loaded = bundle
        if bundle is not None and not isinstance(bundle, Bundle):
            loaded = Bundle.load(bundle, strategies)
        if pretrained is None:
            pretrained = loaded.base_model.get("hf") if loaded is not None else None
        if not pretrained:
            raise UserError(
                "no model to guard: pass pretrained=MODEL in --model_args (the bundle does not "
                "record a transformers model)"
            )
        refuse_trusting_code(kwargs)
        refuse_seq2seq(kwargs.get("backend"))
        for reference in (pretrained, kwargs.get("tokenizer"), kwargs.get("delta")):
            if isinstance(reference, str):
                refuse_custom_code(reference)
        kwargs["trust_remote_code"] = False
        try:
            super().__init__(pretrained=pretrained, **kwargs)
        except TypeError as exc:
            raise unknown_argument(exc, kwargs) from None
        if self.backend != "causal":
            raise UserError("the dsg model type guards causal LMs only, not seq2seq models")
        self.handle: GuardrailHandle | None = None
        self._context_lengths: dict[tuple[int, ...], int | None] | None = None
        self._whole_windows = False
        self.use_bundle(loaded)

    def use_bundle(self, bundle: Bundle | None) -> None:
        """Guard the model with ``bundle`` from now on (None: unguarded)."""
        from dsg_runtime.hf import attach

        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if bundle is not None:
            self.handle = attach(self.model, bundle, allow_mismatch=self.allow_model_mismatch)

    @property
    def binding_note(self) -> str | None:
        """What differed between the model and the bundle's record when the check was
        overridden (None: it matched, or no bundle)."""
        return None if self.handle is None else self.handle.binding_note

    def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
        self._whole_windows = True
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._whole_windows = False

    def _loglikelihood_tokens(
        self, requests: Any, disable_tqdm: bool = False, override_bs: Any = None
    ) -> Any:
        self._context_lengths = context_lengths(
            [(ctx, cont) for _, ctx, cont in requests], self.max_length, self._whole_windows
        )
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        finally:
            self._context_lengths = None

    def _detect_batch_size(self, requests: Any = None, pos: int = 0) -> Any:
        # batch_size=auto probes with dummy rows that match no request; their output is dropped
        saved, self._context_lengths = self._context_lengths, None
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._context_lengths = saved

    def _model_call(
        self,
        inps: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.handle is None or self._context_lengths is None:
            # unguarded, or lm-eval probing the batch size with a dummy batch
            return super()._model_call(inps, attn_mask, labels)
        decide, apply = row_masks(inps, self._context_lengths)
        with self.handle.decided_on_prefix(decide, apply):
            return super()._model_call(inps, attn_mask, labels)


def flag(name: str, value: bool | str) -> bool:
    """A boolean model argument: ``--model_args`` passes strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise UserError(f"{name} must be true or false, not {str(value)[:40]!r}")


CAUSAL_BACKENDS = ("default", "causal")
"""The ``backend`` values of lm-eval's ``hf`` model that the dsg type takes (``default`` is
checked again once the model has loaded)."""


def refuse_seq2seq(backend: Any) -> None:
    """``backend=seq2seq`` (or anything but a causal backend) is refused before the model loads:
    the guardrail hooks a decoder-only model's layers."""
    if backend is not None and backend not in CAUSAL_BACKENDS:
        raise UserError(
            f"the dsg model type guards causal LMs only, so --model_args backend="
            f"{str(backend)[:40]} is refused; pass backend=causal or leave it off"
        )


def unknown_argument(exc: TypeError, given: Mapping[str, Any]) -> Exception:
    """A UserError naming the ``--model_args`` argument that neither lm-eval nor the model takes
    (lm-eval hands unknown ones to the model's constructor, which raises the TypeError), or
    ``exc`` itself when it is about no argument the user gave."""
    import re

    found = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if found is None or found.group(1) not in given:
        return exc
    return UserError(
        f"--model_args {found.group(1)}=... is not an argument of lm-eval's hf model nor of "
        f"the model's constructor ({type(exc).__name__}: {str(exc)[:200]}); leave it off"
    )


def context_lengths(
    pairs: list[tuple[list[int], list[int]]], max_length: int, whole: bool
) -> dict[tuple[int, ...], int | None]:
    """For each model input lm-eval will build (context + continuation, left-truncated to
    ``max_length + 1`` tokens, last token dropped): how many of its tokens are context.
    ``whole``: the entire input decides. Two requests with the same input but a different
    split map to None, and a batch holding that input is refused."""
    found: dict[tuple[int, ...], int | None] = {}
    for context, continuation in pairs:
        full = (context + continuation)[-(max_length + 1) :]
        inp = tuple(full[:-1])
        dropped = len(context) + len(continuation) - len(full)
        n = len(inp) if whole else max(len(context) - dropped, 0)
        if inp in found and found[inp] != n:
            found[inp] = None
        else:
            found.setdefault(inp, n)
    return found


def row_masks(
    inps: torch.Tensor, lengths: dict[tuple[int, ...], int | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` masks of each row's context (the decision) and of all its real tokens (where
    the decision applies), found by matching each right-padded row to the input it came from.

    A row that matches no request, or more than one way, is refused: the guardrail does not
    guess where a prompt ends."""
    batch, width = inps.shape
    by_length: dict[int, dict[tuple[int, ...], int | None]] = {}
    for inp, n in lengths.items():
        if len(inp) <= width:
            by_length.setdefault(len(inp), {})[inp] = n
    decide = torch.zeros(batch, width, dtype=torch.bool)
    apply = torch.zeros(batch, width, dtype=torch.bool)
    for r, row in enumerate(inps.tolist()):
        matches = set()
        for length, known in by_length.items():
            if all(t == PAD_ID for t in row[length:]) and tuple(row[:length]) in known:
                matches.add((length, known[tuple(row[:length])]))
        if len(matches) != 1 or next(iter(matches))[1] is None:
            raise GuardrailStateError(
                f"the guardrail cannot tell where the prompt of batch row {r} ends "
                f"({len(matches)} matching requests), so it refuses to score the row"
            )
        length, n = next(iter(matches))
        apply[r, :length] = True
        decide[r, : int(n or 0)] = True
    return decide.to(inps.device), apply.to(inps.device)


def main() -> None:
    """``dsg-lm-eval``: lm-eval's command line, with the ``dsg`` model type registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
