"""The ``relearn`` attack: fine-tune a copy of the model on hazard text, keep the guardrail that
was calibrated on the original model, and score the copy after every epoch.

This is the paper's own robustness test. The fine-tuning text is forget documents that feature
selection never saw (:meth:`AttackTarget.held_out_forget`); the training loop is this
module's (next-token loss, AdamW, one step per batch, rows in a seeded order that is the same at
every learning rate). Every epoch, 0 (the original weights) included, is scored on the
TransformerLens model that is trained, whatever ``--backend`` says, so a curve never mixes
backends; with the TransformerLens backend (the default on CPU) epoch 0 is exactly what
``dsg evaluate`` reports.
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


class RelearnAttack:
    """A fine-tuned copy of the model against the original model's guardrail."""

    name = "relearn"
    description = (
        "fine-tune a copy of the model on forget text selection never saw, at several learning "
        "rates; score it after each epoch with the original guardrail"
    )
    axis = "epoch"

    def check(self, target: AttackTarget) -> None:
        check_learning_rates(target.settings.learning_rates)
        if target.settings.epochs < 1:
            raise UserError(f"relearning needs at least 1 epoch, got {target.settings.epochs}")
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
            start = target.score(prompts, model=tuner.model, model_key=tuner.key(0))
            yield AttackRow({"learning_rate": rate, "epoch": 0}, start, {**data, "loss": None})
            for epoch in range(1, s.epochs + 1):
                loss = tuner.epoch()
                scores = target.score(prompts, model=tuner.model, model_key=tuner.key(epoch))
                seconds = round(time.perf_counter() - began, 3)
                details = {**data, "loss": loss, "seconds": seconds}
                yield AttackRow({"learning_rate": rate, "epoch": epoch}, scores, details)


class FineTuner:
    """One learning rate's copy of the model, its optimizer and its seeded row order."""

    def __init__(self, target: AttackTarget, rows: Any, rate: float) -> None:
        import torch

        self.target, self.rows, self.rate = target, rows, rate
        with torch.inference_mode(False):
            self.model, self.base_key = target.trainable_model()
            self.optimizer = adamw(self.model, rate)
            self.generator = seeded_generator(target.settings.seed)
            self.rows = rows.clone()  # a normal tensor: the embedding keeps it for backward

    def epoch(self) -> float:
        """One pass over the rows; the mean training loss. Runs outside inference mode, which
        the attack command scores in."""
        import torch

        with torch.inference_mode(False):
            return train_epoch(
                self.model, self.optimizer, self.rows, self.target.settings.batch_size,
                self.generator,
            )  # fmt: skip

    def key(self, epoch: int) -> dict[str, Any]:
        """Everything that made the copy's weights after ``epoch`` epochs (at 0, the run's
        weights on this backend, the same at every learning rate)."""
        if epoch == 0:
            return {"relearned_from": self.base_key, "epoch": 0, "backend": "transformer_lens"}
        return {
            "relearned_from": self.base_key,
            "learning_rate": self.rate,
            "epoch": epoch,
            "rows": rows_digest(self.rows),
            "batch_size": self.target.settings.batch_size,
            "seed": self.target.settings.seed,
            "optimizer": "AdamW",
        }


def adamw(model: Any, rate: float) -> torch.optim.Optimizer:
    import torch

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return torch.optim.AdamW(model.parameters(), lr=rate)


def seeded_generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed)


def train_epoch(
    model: Any,
    optimizer: torch.optim.Optimizer,
    rows: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over the rows in a seeded order, one optimizer step per batch; the mean loss."""
    import torch

    order = torch.randperm(rows.shape[0], generator=generator)
    losses = []
    model.train()
    with torch.enable_grad():
        for start in range(0, len(order), batch_size):
            batch = rows[order[start : start + batch_size]].to(model.W_U.device)
            loss = model(batch, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    return sum(losses) / len(losses)
