"""``dsg attack NAME``: an attack plugin's conditions, scored by the evaluate engine.

The run is evaluate's up to the sweep (the SAE, the selections, the question subset, the
configurations); then the attack builds prompts for each of its conditions and
:meth:`Target.score` answers them unguarded and under every configuration in one pass per set
(the split at the hook, batching, the guardrails' decisions), caching each set's answers in the
run directory keyed by the prompts and everything else that made them. The run's ``--scoring``
mode decides how a question is answered, as in ``dsg evaluate``: by letters, or by the choices'
log-likelihoods after the context (``ClozeScorer``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api.data import read_text_corpus
from dsg.api.interfaces import (
    Attack,
    AttackPrompt,
    AttackRow,
    ClozeFormat,
    EvalSet,
    Intervention,
    PromptFormat,
    SetScores,
)
from dsg.api.prompts import LETTERS, answer_token_ids, choose_format
from dsg.core.artifacts import META_FILE, RunDir, artifact_key, canonical_json, read_json
from dsg.core.errors import UserError, excerpt
from dsg.core.progress import Tracker
from dsg.scoring.cloze import ClozeItem, cloze_item
from dsg.scoring.letter import Scorer
from dsg.scoring.loglik import ClozeScorer, choose, require_prefix
from dsg.scoring.rows import encode
from dsg.stages import select
from dsg.stages.corpus import case_texts
from dsg.stages.evaluate import evaluate
from dsg.stages.evaluate.modes import ClozeMode, Mode

if TYPE_CHECKING:
    from dsg.config.settings import Settings
    from dsg.engine.session import Session

STAGE = "attack-set"
VERSION = 1
ATTACKS_DIR = "attacks"


@dataclass
class Target:
    """What an attack sees (:class:`dsg.api.interfaces.AttackTarget`), and the engine behind it."""

    settings: Settings
    tokenizer: Any
    n_ctx: int
    prompt_format: PromptFormat
    eval_sets: list[EvalSet]
    mode: Mode
    """The run's scoring mode (evaluate's), whose scorer answers the prompts."""
    session: Session
    run_dir: RunDir
    configs: list[dict[str, Any]] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    common: dict[str, Any] = field(default_factory=dict)
    """What every cached answer depends on besides its prompts (model, SAE, configurations)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def scoring(self) -> str:
        return self.mode.name

    @property
    def cloze_format(self) -> ClozeFormat | None:
        return self.mode.fmt if isinstance(self.mode, ClozeMode) else None

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.warnings.append(message)
        self.session.console.print(f"[yellow]warning:[/] {escape(message)}")

    def benign_texts(self) -> list[str]:
        s = self.settings
        if s.benign_corpus is not None and s.benign_questions is not None:
            raise UserError("pass --benign-corpus or --benign-questions, not both")
        if s.benign_questions is not None:
            texts, where = self._question_texts(s.benign_questions), f"set {s.benign_questions!r}"
        elif s.benign_corpus is not None:
            texts, where = read_text_corpus(s.benign_corpus), f"benign corpus {s.benign_corpus}"
        else:
            texts = case_texts(self.session, "retain")
            where = (
                f"retain corpus {s.retain_corpus} (the default benign corpus)"
                if s.retain_corpus is not None
                else f"case {s.case!r}'s retain corpus (the default benign corpus)"
            )
        kept = [t for t in texts if t.strip()]
        if not kept:
            raise UserError(f"the {where} has no text; pass --benign-corpus with some documents")
        return kept

    def _question_texts(self, name: str) -> list[str]:
        """Every question of the case's eval set ``name`` (all of them, not the run's subset),
        without its choices. The target set is refused: its questions are the hazard itself,
        not benign text."""
        sets = {e.name: e for e in self.session.case.eval_sets(self.session.data)}
        if name not in sets:
            raise UserError(f"unknown eval set {excerpt(name)}; choose one of: {', '.join(sets)}")
        target, *others = sets
        if name == target:
            raise UserError(
                f"--benign-questions {name!r} is the target set, whose questions are the hazard "
                "the guardrail stops, not benign text; choose a side-effect set: "
                f"{', '.join(others) or '(the case has none; pass --benign-corpus)'}"
            )
        return [q.question for q in sets[name].questions]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return encode(self.tokenizer, texts, self.n_ctx)

    def cloze_prompt(
        self, context: str, continuations: Sequence[str], choices: Sequence[str], gold: int
    ) -> AttackPrompt:
        item = cloze_item(self.tokenizer, context, continuations, choices, self.n_ctx)
        return AttackPrompt(item.context, gold, item.continuations, item.lengths)

    def evaluated_prompts(self) -> dict[str, list[AttackPrompt]]:
        out = {}
        for e in self.eval_sets:
            prompts = self.mode.prompts(e, list(range(len(e.questions))))
            out[e.name] = [
                AttackPrompt(item.context, g, item.continuations, item.lengths)
                if isinstance(item, ClozeItem)
                else AttackPrompt(tuple(item), g)
                for item, g in zip(prompts.items, prompts.gold.tolist(), strict=True)
            ]
        return out

    def held_out_forget(self) -> tuple[int, Any]:
        from dsg.stages.attack.relearn import held_out_rows

        return held_out_rows(self.session, self.tokenizer)

    def trainable_model(self) -> tuple[Any, dict[str, Any]]:
        from dsg.stages.attack.relearn import copy_model

        return copy_model(self.session.model().model), {"model": self.common["model"]}

    def score(
        self,
        prompts: Mapping[str, Sequence[AttackPrompt]],
        *,
        letters: Sequence[str] = LETTERS,
        model: Any = None,
        model_key: dict[str, Any] | None = None,
    ) -> dict[str, SetScores]:
        if model is not None and model_key is None:
            raise ValueError("score(model=...) needs the model_key that identifies its weights")
        cloze = self.cloze_format is not None
        if any(r.is_cloze != cloze for rows in prompts.values() for r in rows):
            given = "letter" if cloze else "log-likelihood"
            raise UserError(
                f"the attack gave {given} prompts to a run that scores by --scoring "
                f"{self.scoring}; run it with the other --scoring"
            )
        scorer = self.mode.scorer
        if model is not None:
            from dsg.engine.backends.transformer_lens import TransformerLensBackend

            backend = TransformerLensBackend(model, self.tokenizer)
            kind = ClozeScorer if cloze else Scorer
            scorer = kind(backend, self.session.sae().hook_name, self.settings.batch_size)
            scorer.on_rows = self.mode.scorer.on_rows
        common = {**self.common, "scoring": self.scoring}
        if model_key is not None:
            common["model"] = model_key
        if isinstance(scorer, ClozeScorer):
            return {
                name: self._score_set(scorer, name, list(rows), common)
                for name, rows in prompts.items()
            }
        common["letters"] = list(letters)
        answer_ids = scorer.answer_ids
        scorer.answer_ids = answer_token_ids(self.tokenizer, letters)
        try:
            return {
                name: self._score_set(scorer, name, list(rows), common)
                for name, rows in prompts.items()
            }
        finally:
            scorer.answer_ids = answer_ids

    def _score_set(
        self,
        scorer: Scorer | ClozeScorer,
        name: str,
        rows: list[AttackPrompt],
        common: dict[str, Any],
    ) -> SetScores:
        inputs = {**common, "set": name, "prompts": prompts_digest(rows)}
        key = artifact_key(STAGE, VERSION, inputs)
        folder = self.run_dir.find(STAGE, VERSION, key, force=self.settings.force)
        if folder is not None:
            return scores_from_json(read_json(folder / META_FILE)["scores"])
        none: tuple[tuple[Any, ...], ...] = tuple(() for _ in self.interventions)
        scores = SetScores((), (), none, none)  # a set with no question in the subset
        if rows:
            if isinstance(scorer, ClozeScorer):
                items = [ClozeItem(r.ids, r.continuations, r.lengths) for r in rows]
                deciding = [require_prefix(i, type(i).__name__) for i in self.interventions]
                loglik, outcomes = scorer.sweep(items, deciding)
                base = choose(loglik)
            else:
                base, outcomes = scorer.sweep([list(r.ids) for r in rows], self.interventions)
            scores = SetScores(
                gold=tuple(r.gold for r in rows),
                unguarded=tuple(base.tolist()),
                guarded=tuple(tuple(o.predicted.tolist()) for o in outcomes),
                fired=tuple(tuple(o.fired.tolist()) for o in outcomes),
            )
        self.run_dir.commit(STAGE, VERSION, key, inputs, extra={"scores": scores_to_json(scores)})
        return scores


def prompts_digest(rows: Sequence[AttackPrompt]) -> str:
    """A hash of the prompts' ids and gold answers, in order (and of a cloze prompt's
    continuations and choice lengths)."""
    payload = canonical_json(
        [
            [list(r.ids), r.gold, [list(c) for c in r.continuations], list(r.lengths)]
            if r.is_cloze
            else [list(r.ids), r.gold]
            for r in rows
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def scores_to_json(scores: SetScores) -> dict[str, Any]:
    """The answers as JSON lists (tuples of tuples become lists of lists)."""
    return {
        "gold": list(scores.gold),
        "unguarded": list(scores.unguarded),
        "guarded": [list(row) for row in scores.guarded],
        "fired": [list(row) for row in scores.fired],
    }


def scores_from_json(data: dict[str, Any]) -> SetScores:
    try:
        return SetScores(
            gold=tuple(int(g) for g in data["gold"]),
            unguarded=tuple(int(p) for p in data["unguarded"]),
            guarded=tuple(tuple(int(p) for p in row) for row in data["guarded"]),
            fired=tuple(tuple(bool(f) for f in row) for row in data["fired"]),
        )
    except (KeyError, TypeError, ValueError):
        raise UserError("a cached attack result is malformed; rerun with --force") from None


def chosen_sets(shared: evaluate.ModelLevel) -> list[EvalSet]:
    """Each eval set with only the questions of the run's subset, in evaluate's order."""
    return [
        dataclasses.replace(p.eval_set, questions=tuple(p.eval_set.questions[i] for i in ids))
        for p in shared.prompts
        for ids in [p.question_ids]
    ]


def check_settings(attack: Attack, settings: Settings) -> None:
    """The attack's checks of its settings alone (unknown placements or formats), run before
    any model loads; an attack without ``check_settings`` has only its ``check``."""
    early = getattr(attack, "check_settings", None)
    if early is not None:
        early(settings)


def run(session: Session, name: str) -> Path:
    """Run attack ``name`` and return the path of its ``attack.json``."""
    import torch

    from dsg.stages.attack import attack_report

    attack: Attack = session.registry.get("attacks", name)
    s = session.settings
    check_settings(attack, s)
    run_dir = session.run_dir
    run_dir.ensure_writable()
    tracker = Tracker(session.console)
    with tracker.timed("load"):
        loaded_sae, eval_sets = evaluate.load_inputs(session)
        backend = session.backend()
        mode = evaluate.scoring_mode(session, loaded_sae.hook_name)
        fmt = choose_format(session.case.prompt_format(), backend.tokenizer)
        target = Target(s, backend.tokenizer, backend.n_ctx, fmt, eval_sets, mode, session, run_dir)
        attack.check(target)
    with tracker.timed("select"):
        selections = select.ensure(session)
    shared = evaluate.model_level(session, mode, eval_sets, tracker)
    configs = evaluate.expand(selections, session)
    sae = session.sae().sae
    interventions = [evaluate.build_intervention(session, sae, c) for c in configs]
    for config, intervention in zip(configs, interventions, strict=True):
        mode.check(config.strategy, intervention)
    target = dataclasses.replace(
        target,
        eval_sets=chosen_sets(shared),
        configs=[c.describe() for c in configs],
        interventions=interventions,
        common={
            **shared.common,
            "sae": loaded_sae.fingerprint or loaded_sae.spec,
            "hook": loaded_sae.hook_name,
            "configs": [c.describe() for c in configs],
        },
    )
    rows: list[AttackRow] = []
    with evaluate.scoring(tracker, f"attack {name}", mode.scorer), torch.inference_mode():
        rows.extend(attack.run(target))
    with tracker.timed("report"):
        inputs = {
            "model_fingerprint": shared.common["model"],
            "sae_fingerprint": target.common["sae"],
            "hook": loaded_sae.hook_name,
            "prompt_format": shared.common["format"],
            "backend": shared.common["backend"],
            "selections": evaluate.selection_paths(selections, run_dir.root),
        }
        warnings = [*shared.warnings, *target.warnings]
        data = attack_report.build(session, attack, target, rows, inputs, warnings)
    data["timings"] = tracker.seconds
    path = attack_report.write(data, run_dir.root / ATTACKS_DIR / name)
    attack_report.print_table(data, session.console)
    tracker.summary()
    return path
