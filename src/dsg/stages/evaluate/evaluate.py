"""The evaluate stage: question subsets, baselines, the configuration sweep and the report.

It runs whatever of sparsity and selection is missing, then evaluates every configuration
(ratio percentile x n features x multiplier x strategy) on the case's eval sets: the first is
the target, the rest are side effects. Each result is a small JSON keyed by every input that
affects it (threshold and features included), so an interrupted sweep resumes where it stopped
and a changed input is never answered from a stale file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import EvalSet, Intervention, LoadedSAE
from dsg.core.artifacts import META_FILE, RunDir, artifact_key, read_json
from dsg.core.errors import UserError
from dsg.core.progress import Tracker
from dsg.scoring.rows import Outcome
from dsg.stages import select
from dsg.stages.evaluate import subsets
from dsg.stages.evaluate.modes import Baseline, Mode, open_mode
from dsg.stages.evaluate.results import Config, ConfigResult, SetPrompts
from dsg.stages.evaluate.score import Count

if TYPE_CHECKING:
    from dsg.engine.session import Session

BASELINE_STAGE = "baseline"
CONFIG_STAGE = "evaluate"
SET_STAGE = "evaluate-set"
VERSION = 2
"""2: each (configuration, set) result carries every prompt's answer, for the held-out score."""


def expand(selections: list[select.Selection], session: Session) -> list[Config]:
    """Every configuration, in sweep order: ratio percentile, n, multiplier, strategy."""
    from dsg.stages.gate_parameters import gate_parameters

    s = session.settings
    configs = []
    for selection in selections:
        for n in s.n_features:
            features = tuple(int(j) for j in selection.top(n).tolist())
            gates = {
                name: gate_parameters(session, selection, n, strategy)
                for name, strategy in session.strategies.items()
            }
            for m in s.multipliers:
                for name in s.strategies:
                    gate = gates[name]
                    params = tuple(sorted(gate.params.items()))
                    configs.append(
                        Config(
                            name, selection.ratio_percentile, n, m, gate.threshold, features, params
                        )
                    )
    return configs


def _cached(run_dir: RunDir, stage: str, key: str, force: bool) -> dict[str, Any] | None:
    folder = run_dir.find(stage, VERSION, key, force=force)
    if folder is None:
        return None
    return read_json(folder / META_FILE)


def ensure_baseline(
    run_dir: RunDir, mode: Mode, prompts: SetPrompts, common: dict[str, Any], force: bool
) -> Baseline:
    """The clean model's answers on one set's prompts (cached)."""
    inputs = {**common, "set": prompts.name}
    key = artifact_key(BASELINE_STAGE, VERSION, inputs)
    meta = _cached(run_dir, BASELINE_STAGE, key, force)
    if meta is not None:
        return Baseline.from_json(meta)
    baseline = mode.baseline(prompts)
    run_dir.commit(BASELINE_STAGE, VERSION, key, inputs, extra=baseline.to_json())
    return baseline


def config_key(config: Config, common: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    inputs = {**common, **config.describe()}
    return artifact_key(CONFIG_STAGE, VERSION, inputs), inputs


def set_key(config: Config, set_name: str, common: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    inputs = {**config_key(config, common)[1], "set": set_name}
    return artifact_key(SET_STAGE, VERSION, inputs), inputs


def load_result(config: Config, meta: dict[str, Any]) -> ConfigResult:
    per_set = meta["per_set"]
    return ConfigResult(
        config,
        {name: Count(v["correct"], v["total"]) for name, v in per_set.items()},
        {name: v["fired"] for name, v in per_set.items()},
        {name: v["predicted"] for name, v in per_set.items()},
        {
            name: Count(v["correct_norm"], v["total"])
            for name, v in per_set.items()
            if "correct_norm" in v
        },
    )


@dataclass(frozen=True)
class Sweep:
    """What every configuration of a sweep is scored with: the run directory its results go to,
    the scoring mode, each set's prompts and baseline answers, and the inputs every key shares."""

    run_dir: RunDir
    mode: Mode
    session: Session
    prompts: list[SetPrompts]
    baselines: dict[str, Baseline]
    common: dict[str, Any]

    def results(self, configs: list[Config]) -> list[ConfigResult]:
        """Results of every configuration: loaded when already evaluated, else computed.

        Each set's prompts are run up to the hook once for all the configurations still
        missing that set; a (configuration, set) result is written as soon as it is known, and
        the configuration's own file once all its sets are.
        """
        run_dir, common = self.run_dir, self.common
        results: dict[Config, ConfigResult] = {}
        pending: list[Config] = []
        for config in dict.fromkeys(configs):
            key = config_key(config, common)[0]
            meta = _cached(run_dir, CONFIG_STAGE, key, self.session.settings.force)
            if meta is None:
                pending.append(config)
            else:
                results[config] = load_result(config, meta)
        if pending:
            per_set = self._per_set(pending)
            for config in pending:
                key, inputs = config_key(config, common)
                extra = {"per_set": per_set[config]}
                run_dir.commit(CONFIG_STAGE, VERSION, key, inputs, extra=extra)
                results[config] = load_result(config, extra)
        return [results[c] for c in configs]

    def _per_set(self, pending: list[Config]) -> dict[Config, dict[str, dict[str, Any]]]:
        """Per pending configuration and set, its counts: cached ones read, the others scored
        together, one pass over each set's prompts."""
        run_dir, mode, session, common = self.run_dir, self.mode, self.session, self.common
        sae = session.sae().sae
        interventions = {c: build_intervention(session, sae, c) for c in pending}
        for config, intervention in interventions.items():
            mode.check(config.strategy, intervention)
        per_set: dict[Config, dict[str, dict[str, Any]]] = {c: {} for c in pending}
        for p in self.prompts:
            todo = []
            for config in pending:
                meta = _cached(
                    run_dir, SET_STAGE, set_key(config, p.name, common)[0], session.settings.force
                )
                if meta is None:
                    todo.append(config)
                else:
                    per_set[config][p.name] = meta["result"]
            if not todo:
                continue
            baseline = self.baselines[p.name]
            outcomes: list[Outcome | None] = (
                list(mode.sweep(p, [interventions[c] for c in todo], baseline))
                if p.items
                else [None] * len(todo)
            )
            for config, outcome in zip(todo, outcomes, strict=True):
                result = set_counts(outcome, p, baseline.predicted_norm is not None)
                key, inputs = set_key(config, p.name, common)
                run_dir.commit(SET_STAGE, VERSION, key, inputs, extra={"result": result})
                per_set[config][p.name] = result
        return per_set


def set_counts(outcome: Outcome | None, prompts: SetPrompts, norm: bool) -> dict[str, Any]:
    """Right answers, questions, firing prompts and each prompt's answer of one configuration
    on one set; with ``norm`` (log-likelihood scoring) also the right answers by ``acc_norm``
    and each prompt's answer by it."""
    if outcome is None:
        counts: dict[str, Any] = {"correct": 0, "total": 0, "fired": 0, "predicted": []}
        return {**counts, "correct_norm": 0, "predicted_norm": []} if norm else counts
    counts = {
        "correct": int((outcome.predicted == prompts.gold).sum()),
        "total": len(prompts.items),
        "fired": int(outcome.fired.sum()),
        "predicted": outcome.predicted.tolist(),
    }
    if norm and outcome.predicted_norm is not None:
        counts["correct_norm"] = int((outcome.predicted_norm == prompts.gold).sum())
        counts["predicted_norm"] = outcome.predicted_norm.tolist()
    return counts


def build_intervention(session: Session, sae: Any, config: Config) -> Intervention:
    import torch

    strategy = session.strategies[config.strategy]
    features = torch.tensor(config.features, dtype=torch.long)
    threshold = config.threshold if config.threshold is not None else 0.0
    return strategy.build(sae, features, threshold, config.multiplier, **dict(config.params))


def choose_questions(
    session: Session, mode: Mode, model_key: dict[str, Any], eval_set: EvalSet
) -> list[int]:
    """The ids of the set's questions in the chosen subset (cached subsets, or all)."""
    s = session.settings
    if s.questions == "all":
        return list(range(len(eval_set.questions)))
    found = subsets.ensure(
        session.shared_run_dir,
        model_key,
        mode.fmt_key,
        eval_set,
        lambda: mode.subsets(eval_set),
        force=session.force_shared,
    )
    return found[s.questions]


@contextmanager
def scoring(tracker: Tracker, name: str, scorer: Any) -> Iterator[None]:
    """A stage whose progress is the prompts the scorer has finished."""
    with tracker.counting(name, unit="prompts") as advance:
        scorer.on_rows = advance
        try:
            yield
        finally:
            scorer.on_rows = None


@dataclass(frozen=True)
class ModelLevel:
    """What evaluate computes from the model, prompt format and data alone, not the SAE."""

    prompts: list[SetPrompts]
    baselines: dict[str, Baseline]
    common: dict[str, Any]
    warnings: list[str]


def model_level(
    session: Session, mode: Mode, eval_sets: list[EvalSet], tracker: Tracker
) -> ModelLevel:
    """Question subsets, prompts and baseline answers, cached in the shared run directory so
    that the SAEs of a sweep compute them once."""
    s = session.settings
    loaded_model = session.model()
    model_key = {
        "model": loaded_model.fingerprint or loaded_model.spec,
        "dtype": s.dtype,
        "backend": session.backend_name,
    }
    with scoring(tracker, "subsets", mode.scorer):
        chosen = {e.name: choose_questions(session, mode, model_key, e) for e in eval_sets}
    prompts = [mode.prompts(e, chosen[e.name]) for e in eval_sets]
    common = common_inputs(model_key, mode.fmt_key, s.questions, prompts)
    shared = session.shared_run_dir
    with scoring(tracker, "baseline", mode.scorer):
        baselines = {
            p.name: ensure_baseline(shared, mode, p, common, session.force_shared) for p in prompts
        }
    return ModelLevel(prompts, baselines, common, empty_subset_warnings(chosen, s.questions))


def prepare_shared(session: Session) -> None:
    """Compute the sweep's shared model-level artifacts once, before its SAEs run."""
    session.shared_run_dir.ensure_writable()
    _, loaded_sae = session.checked_pair()
    mode = scoring_mode(session, loaded_sae.hook_name)
    eval_sets = session.case.eval_sets(session.data)
    model_level(session, mode, eval_sets, Tracker(session.console))


def scoring_mode(session: Session, hook_name: str) -> Mode:
    """The run's ``--scoring`` mode on its model backend."""
    s = session.settings
    return open_mode(s.scoring, session.backend(), hook_name, s.batch_size, session.case)


def load_inputs(session: Session) -> tuple[LoadedSAE, list[EvalSet]]:
    """The SAE and the eval sets, checked: at least one set, no two with the same name. The
    full model is loaded first, so the sparsity stage reuses it."""
    s = session.settings
    _, loaded_sae = session.checked_pair()
    eval_sets = session.case.eval_sets(session.data)
    if not eval_sets:
        raise UserError(
            f"case {s.case!r} has no multiple-choice eval sets, so there is nothing to evaluate"
        )
    names = [e.name for e in eval_sets]
    if len(set(names)) != len(names):
        raise UserError(f"case {s.case!r} has eval sets with the same name: {names}")
    return loaded_sae, eval_sets


def empty_subset_warnings(chosen: dict[str, list[int]], subset: str) -> list[str]:
    return [
        f"eval set {name!r} has no questions in subset {subset!r}; its accuracy is reported as null"
        for name, ids in chosen.items()
        if not ids
    ]


def common_inputs(
    model_key: dict[str, Any], fmt_key: str, questions: str, prompts: list[SetPrompts]
) -> dict[str, Any]:
    """What every baseline and sweep result depends on, besides its configuration."""
    return {
        **model_key,
        "format": fmt_key,
        "questions": questions,
        "sets": [
            {
                "name": p.name,
                "fingerprint": subsets.eval_set_fingerprint(p.eval_set),
                "question_ids": p.question_ids,
            }
            for p in prompts
        ],
    }


def selection_paths(selections: list[select.Selection], root: Path) -> dict[str, str]:
    """Each selection's file, relative to the run directory when inside it; each checked to be
    still there as the run read it, so a report never names a file that another run (``--force``)
    or a hand removed or rewrote while this one went on."""
    for sel in selections:
        select.check_unchanged(sel)
    return {
        str(sel.ratio_percentile): str(sel.path.relative_to(root))
        if sel.path.is_relative_to(root)
        else str(sel.path)
        for sel in selections
    }


def run(session: Session) -> Path:
    """Run the whole evaluation and return the path of this run's ``report.json``."""
    import torch

    from dsg.stages.evaluate import report

    s = session.settings
    run_dir = session.run_dir
    run_dir.ensure_writable()
    report.check_slots(run_dir.root)
    tracker = Tracker(session.console)
    with tracker.timed("load"):
        loaded_sae, eval_sets = load_inputs(session)
        mode = scoring_mode(session, loaded_sae.hook_name)
    with tracker.timed("select"):
        selections = select.ensure(session)
    shared = model_level(session, mode, eval_sets, tracker)
    sweep_common = {
        **shared.common,
        "sae": loaded_sae.fingerprint or loaded_sae.spec,
        "hook": loaded_sae.hook_name,
    }
    configs = expand(selections, session)
    with scoring(tracker, "sweep", mode.scorer), torch.inference_mode():
        sweep = Sweep(run_dir, mode, session, shared.prompts, shared.baselines, sweep_common)
        results = sweep.results(configs)
    lm_eval = None
    if s.lm_eval_tasks:
        from dsg.stages.evaluate import lm_eval_run

        with tracker.timed("lm-eval"):
            lm_eval = lm_eval_run.section(session, selections, configs)
    with tracker.timed("report"):
        inputs = {**sweep_common, "selections": selection_paths(selections, run_dir.root)}
        data = build_report(session, eval_sets, shared, results, inputs, lm_eval)
    return finish_report(session, tracker, data)


def build_report(
    session: Session,
    eval_sets: list[EvalSet],
    shared: ModelLevel,
    results: list[ConfigResult],
    inputs: dict[str, Any],
    lm_eval: tuple[dict[str, Any], list[dict[str, float | None] | None]] | None = None,
) -> dict[str, Any]:
    """The report's data. ``inputs``: the sweep's common inputs and the selections' folders;
    ``lm_eval``: lm-eval's accuracies, when run."""
    from dsg.stages.evaluate import heldout, report

    baselines = {name: b.predicted for name, b in shared.baselines.items()}
    baseline_counts = {
        p.name: Count(int((baselines[p.name] == p.gold).sum()), len(p.items))
        for p in shared.prompts
    }
    norm_counts = {
        p.name: Count(int((norm == p.gold).sum()), len(p.items))
        for p in shared.prompts
        if (norm := shared.baselines[p.name].predicted_norm) is not None
    }
    seed = session.settings.heldout_seed
    split = heldout.split_sets(shared.prompts, baselines, seed)
    set_names = [e.name for e in eval_sets]
    data = report.build(
        session=session,
        set_names=set_names,
        question_totals={e.name: len(e.questions) for e in eval_sets},
        subjects={e.name: e.subject for e in eval_sets},
        baseline=baseline_counts,
        results=results,
        heldout=heldout.section(split, results, set_names, seed),
        inputs={
            "model_fingerprint": inputs["model"],
            "sae_fingerprint": inputs["sae"],
            "hook": inputs["hook"],
            "prompt_format": inputs["format"],
            "selections": inputs["selections"],
            "backend": inputs["backend"],
        },
        warnings=shared.warnings,
        lm_eval=lm_eval,
        baseline_norm=norm_counts or None,
    )
    return data


def finish_report(session: Session, tracker: Tracker, data: dict[str, Any]) -> Path:
    """Write the run's ``report.json`` (with the stage timings) and its plot and make them the
    latest, print the table and the wall times."""
    from dsg.stages.evaluate import report

    data["timings"] = tracker.seconds
    report_path = report.write(data, session.run_dir.root)
    report.print_table(data, session.console, session.strategies)
    tracker.summary()
    return report_path
