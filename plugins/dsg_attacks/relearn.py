"""The ``relearn`` attack: fine-tune a copy of the model on hazard text, keep the guardrail that
was calibrated on the original model, and score the copy every few optimiser steps.

This is the paper's own robustness test. The fine-tuning text is forget documents that feature
selection never saw (:meth:`AttackTarget.held_out_forget`); the training loop is this
module's (next-token loss, AdamW, ``relearn_batch`` rows per step, drawn in a seeded order that
cycles through the rows, reshuffled every pass, and is the same at every learning rate). Training
is counted in optimiser steps, not passes, so a small held-out set still gets a real attack. Every
stage, step 0 (the original weights) included, is scored on the TransformerLens model that is
trained, whatever ``--backend`` says, so a curve never mixes backends; with the TransformerLens
backend (the default on CPU) step 0 is exactly what ``dsg evaluate`` reports.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dsg.api import AttackRow, AttackTarget, UserError

if TYPE_CHECKING:
    import torch

OVERRIDE_NOTE = (
    "the guardrail calibrated on the original model is applied to fine-tuned copies on purpose: "
    "the model-binding check that refuses a bundle on a model it was not calibrated on is "
    "overridden for this attack"
)
"""Said in the report: what a deployed bundle would refuse (docs/bundle.md) is the point here."""

ORDER = "seeded randperm per pass, steps span passes"
"""How the rows are drawn (:func:`row_batches`); in the cache key, so a change keys copies apart."""

OPTIMIZER = "AdamW, torch defaults besides the learning rate"
"""The optimiser :func:`adamw` makes, as the cache key names it."""


def rows_digest(rows: Any) -> str:
    """A hash of the fine-tuning rows' token ids."""
    return hashlib.sha256(rows.cpu().numpy().tobytes()).hexdigest()


def check_learning_rates(rates: Sequence[float]) -> list[float]:
    """Learning rates, each finite and above 0; a UserError names the first that is not."""
    if not rates:
        raise UserError("give at least one learning rate")
    for rate in rates:
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"learning rate {rate!r} is not a finite number above 0")
    return [float(r) for r in rates]


COUNTS = (
    ("relearn_batch", "rows per optimiser step"),
    ("relearn_stage_steps", "optimiser steps per stage"),
    ("relearn_stages", "stages"),
)
"""The training schedule's counts, each a whole number of at least 1."""


class RelearnAttack:
    """A fine-tuned copy of the model against the original model's guardrail."""

    name = "relearn"
    description = (
        "fine-tune a copy of the model on forget text selection never saw, at several learning "
        "rates; score it every few optimiser steps with the original guardrail"
    )
    axis = "step"

    def check_settings(self, settings: Any) -> None:
        check_learning_rates(settings.learning_rates)
        for name, what in COUNTS:
            value = getattr(settings, name)
            if not (isinstance(value, int) and value >= 1):
                raise UserError(f"relearning needs at least 1 of {what} ({name}), got {value!r}")

    def check(self, target: AttackTarget) -> None:
        self.check_settings(target.settings)
        target.held_out_forget()  # nothing held out fails here, before any work

    def run(self, target: AttackTarget) -> Iterator[AttackRow]:
        s = target.settings
        target.warn(OVERRIDE_NOTE)
        prompts = target.evaluated_prompts()  # as dsg evaluate scores them, in the run's mode
        n_docs, rows = target.held_out_forget()
        data = {"documents": n_docs, "rows": int(rows.shape[0])}
        for rate in dict.fromkeys(s.learning_rates):
            began = time.perf_counter()
            tuner = FineTuner(target, rows, rate)
            start = target.score(prompts, model=tuner.model, model_key=tuner.key())
            yield AttackRow({"learning_rate": rate, "step": 0}, start, {**data, "loss": None})
            for _ in range(s.relearn_stages):
                loss = tuner.train(s.relearn_stage_steps)
                scores = target.score(prompts, model=tuner.model, model_key=tuner.key())
                seconds = round(time.perf_counter() - began, 3)
                details = {**data, "loss": loss, "seconds": seconds}
                yield AttackRow({"learning_rate": rate, "step": tuner.steps}, scores, details)


class FineTuner:
    """One learning rate's copy of the model, its optimizer and its seeded row order."""

    def __init__(self, target: AttackTarget, rows: Any, rate: float) -> None:
        import torch

        s = target.settings
        self.target, self.rate, self.steps = target, rate, 0
        with torch.inference_mode(False):
            self.model, self.base_key = target.trainable_model()
            self.optimizer = adamw(self.model, rate)
            self.rows = rows.clone()  # a normal tensor: the embedding keeps it for backward
        self.batches = row_batches(int(rows.shape[0]), s.relearn_batch, s.seed)

    def train(self, steps: int) -> float:
        """``steps`` more optimiser steps; their mean training loss. Runs outside inference
        mode, which the attack command scores in."""
        import torch

        with torch.inference_mode(False):
            loss = train_steps(self.model, self.optimizer, self.rows, self.batches, steps)
        self.steps += steps
        return loss

    def key(self) -> dict[str, Any]:
        """Everything that made the copy's weights so far (at step 0, the run's weights on this
        backend, the same at every learning rate)."""
        if self.steps == 0:
            return {"relearned_from": self.base_key, "step": 0, "backend": "transformer_lens"}
        s = self.target.settings
        return {
            "relearned_from": self.base_key,
            "learning_rate": self.rate,
            "step": self.steps,
            "rows": rows_digest(self.rows),
            "rows_per_step": s.relearn_batch,
            "seed": s.seed,
            "order": ORDER,
            "optimizer": OPTIMIZER,
        }


def adamw(model: Any, rate: float) -> torch.optim.Optimizer:
    import torch

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return torch.optim.AdamW(model.parameters(), lr=rate)


def row_batches(n_rows: int, per_step: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices for each optimiser step, ``per_step`` at a time, endlessly: the rows in a
    seeded random order, reshuffled every pass; a step that needs more rows than the pass has
    left takes the rest from the next pass, so every step has exactly ``per_step`` rows."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    queue = torch.empty(0, dtype=torch.long)
    while True:
        while len(queue) < per_step:
            queue = torch.cat([queue, torch.randperm(n_rows, generator=generator)])
        yield queue[:per_step]
        queue = queue[per_step:]


def train_steps(
    model: Any,
    optimizer: torch.optim.Optimizer,
    rows: torch.Tensor,
    batches: Iterator[torch.Tensor],
    steps: int,
) -> float:
    """``steps`` optimizer steps, each on the next batch of rows; the mean loss (each step's
    measured before its update)."""
    import torch

    losses = []
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            batch = rows[next(batches)].to(model.W_U.device)
            loss = model(batch, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    return sum(losses) / len(losses)
