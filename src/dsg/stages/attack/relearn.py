"""Relearning: does the guardrail still hold after someone fine-tunes the model on hazard text?

A copy of the model is fine-tuned (plain next-token loss, AdamW) on forget documents that the
feature selection never saw, and after every epoch the copy is scored on the eval sets,
unguarded and under each guardrail configuration. The guardrails keep what was calibrated on
the original model (features, threshold, multiplier, the SAE itself): that is what a deployed
guardrail would face. Scoring is the evaluate engine's
(:class:`dsg.stages.evaluate.mcq.Scorer` on the same prompts and question subset), so epoch 0
is exactly what ``dsg evaluate`` reports.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg.core.errors import UserError
from dsg.core.progress import Tracker
from dsg.stages.corpus import load_documents, tokenize_and_concat, unsampled_forget
from dsg.stages.evaluate import evaluate
from dsg.stages.evaluate.mcq import Scorer
from dsg.stages.evaluate.score import Count, pooled

if TYPE_CHECKING:
    import torch

    from dsg.api.interfaces import Intervention
    from dsg.engine.session import Session
    from dsg.stages.evaluate.results import Config, SetPrompts


@dataclass(frozen=True)
class Accuracy:
    """One model, guarded or not, on the eval sets: the target (hazard) set, the pooled
    side-effect sets, and for a guardrail the share of hazard prompts it fired on."""

    hazard: float | None
    side_effects: float | None
    per_set: dict[str, float | None]
    fired: float | None


@dataclass(frozen=True)
class Epoch:
    """The fine-tuned copy after ``epoch`` epochs (0: before any step, the original model);
    ``loss``: the mean training loss over the epoch's batches (None at 0)."""

    epoch: int
    loss: float | None
    unguarded: Accuracy
    guarded: list[Accuracy]
    """One per configuration, in the order given."""


@dataclass(frozen=True)
class Curve:
    """One learning rate: its epochs, and the wall time of its fine-tuning and scoring."""

    learning_rate: float
    epochs: list[Epoch]
    seconds: float


@dataclass(frozen=True)
class Relearning:
    """The whole attack: the configurations kept at test time, the fine-tuning data, a curve
    per learning rate."""

    configs: list[Config]
    documents: int
    rows: int
    curves: list[Curve]


def check_learning_rates(rates: Sequence[float]) -> list[float]:
    """Learning rates, each finite and above 0; a UserError names the first that is not."""
    if not rates:
        raise UserError("give at least one learning rate")
    for rate in rates:
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"learning rate {rate!r} is not a finite number above 0")
    return [float(r) for r in rates]


def relearn(
    session: Session,
    configs: Sequence[Config],
    learning_rates: Sequence[float],
    epochs: int,
    tracker: Tracker | None = None,
) -> Relearning:
    """Fine-tune a copy of the session's model at each learning rate for ``epochs`` epochs on
    the forget documents held out of feature selection; score it after each epoch.

    The original model is never modified. Fine-tuning and scoring run on the TransformerLens
    model the stage commands load, whatever ``--backend`` says.
    """
    rates = check_learning_rates(learning_rates)
    if epochs < 1:
        raise UserError(f"relearning needs at least 1 epoch, got {epochs}")
    return curves(session, list(configs), rates, epochs, tracker or Tracker(session.console))


def held_out_rows(session: Session, tokenizer: Any) -> tuple[int, torch.Tensor]:
    """The forget documents the statistics never read, as rows of ``seq_len`` tokens (the
    statistics' concat-and-chunk rows): the ``relearn_holdout`` documents, then those the
    seeded ``dataset_size`` sample left out. Their count and the rows."""
    s = session.settings
    documents = load_documents(session)
    docs = documents.held_out + unsampled_forget(documents.forget, s.dataset_size, s.seed)
    if not docs:
        raise UserError(
            f"all {len(documents.forget)} forget documents were used for feature selection, so "
            "none is left to relearn on; hold some out with --relearn-holdout PERCENT (e.g. 25)"
        )
    rows = tokenize_and_concat(tokenizer, docs, s.seq_len)
    if rows.shape[0] == 0:
        raise UserError(
            f"the {len(docs)} forget documents held out of feature selection make less than one "
            f"row of {s.seq_len} tokens; raise --relearn-holdout or lower seq_len"
        )
    return len(docs), rows


def curves(
    session: Session, configs: list[Config], rates: list[float], epochs: int, tracker: Tracker
) -> Relearning:
    """:func:`relearn` without checking its arguments. A learning rate of 0 is allowed here:
    AdamW then changes nothing, which makes it the control run of the tests."""
    from dsg.engine.backends.transformer_lens import TransformerLensBackend

    s = session.settings
    session.run_dir.ensure_writable()
    loaded_sae, eval_sets = evaluate.load_inputs(session)
    scorer = Scorer(session.backend(), loaded_sae.hook_name, s.batch_size)
    prompts = evaluate.model_level(session, scorer, eval_sets, tracker).prompts
    interventions = [evaluate.build_intervention(session, loaded_sae.sae, c) for c in configs]
    original = session.model()
    n_docs, rows = held_out_rows(session, original.tokenizer)

    def measure(model: Any) -> tuple[Accuracy, list[Accuracy]]:
        copy_scorer = Scorer(
            TransformerLensBackend(model, original.tokenizer), loaded_sae.hook_name, s.batch_size
        )
        return score(copy_scorer, prompts, interventions)

    with tracker.timed("relearn: epoch 0"):
        start = Epoch(0, None, *measure(original.model))
    found = []
    for rate in rates:
        began = time.perf_counter()
        model = copy_model(original.model)
        optimizer = adamw(model, rate)
        generator = seeded_generator(s.seed)
        points = [start]
        for epoch in range(1, epochs + 1):
            with tracker.timed(f"relearn: lr {rate:g}, epoch {epoch}"):
                loss = train_epoch(model, optimizer, rows, s.batch_size, generator)
                points.append(Epoch(epoch, loss, *measure(model)))
        found.append(Curve(rate, points, time.perf_counter() - began))
        del model, optimizer
    return Relearning(list(configs), n_docs, int(rows.shape[0]), found)


def copy_model(model: Any) -> Any:
    """A deep copy of the model's weights that shares its tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    return copy.deepcopy(model, memo={id(tokenizer): tokenizer})


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


def score(
    scorer: Scorer, prompts: Sequence[SetPrompts], interventions: Sequence[Intervention]
) -> tuple[Accuracy, list[Accuracy]]:
    """The unguarded model and each guardrail on every set's prompts, one pass per set."""
    unguarded: dict[str, Count] = {}
    guarded: list[dict[str, Count]] = [{} for _ in interventions]
    fired: list[dict[str, int]] = [{} for _ in interventions]
    for p in prompts:
        base, outcomes = (
            scorer.sweep(p.tokens, interventions) if p.tokens else (None, [None] * len(guarded))
        )
        right = 0 if base is None else int((base == p.gold).sum())
        unguarded[p.name] = Count(right, len(p.tokens))
        for i, outcome in enumerate(outcomes):
            counts = evaluate.set_counts(outcome, p)
            guarded[i][p.name] = Count(counts["correct"], counts["total"])
            fired[i][p.name] = counts["fired"]
    names = [p.name for p in prompts]
    return _accuracy(unguarded, names, None), [
        _accuracy(g, names, f[names[0]]) for g, f in zip(guarded, fired, strict=True)
    ]


def _accuracy(counts: dict[str, Count], names: list[str], fired: int | None) -> Accuracy:
    target = counts[names[0]]
    return Accuracy(
        hazard=target.accuracy,
        side_effects=pooled(counts[n] for n in names[1:]).accuracy,
        per_set={n: c.accuracy for n, c in counts.items()},
        fired=None if fired is None or not target.total else fired / target.total,
    )
