"""The evaluate stage: question subsets, baselines, the configuration sweep and the report.

It runs whatever of sparsity and selection is missing, then evaluates every configuration
(ratio percentile x n features x multiplier x strategy) on the case's eval sets: the first is
the target, the rest are side effects. Each result is a small JSON keyed by every input that
affects it (threshold and features included), so an interrupted sweep resumes where it stopped
and a changed input is never answered from a stale file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg import select, subsets
from dsg.artifacts import META_FILE, RunDir, artifact_key, read_json
from dsg.errors import UserError
from dsg.interfaces import EvalSet, Intervention, PromptFormat
from dsg.mcq import Scorer
from dsg.prompts import choose_format, format_fingerprint, render_question
from dsg.score import Count

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from dsg.session import Session

BASELINE_STAGE = "baseline"
CONFIG_STAGE = "evaluate"
SET_STAGE = "evaluate-set"
VERSION = 1


@dataclass(frozen=True)
class Config:
    """One point of the sweep; ``threshold`` is None for strategies that ignore it."""

    strategy: str
    ratio_percentile: float
    n_features: int
    multiplier: float
    threshold: float | None
    features: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "ratio_percentile": self.ratio_percentile,
            "n_features": self.n_features,
            "multiplier": self.multiplier,
            "threshold": self.threshold,
            "features": list(self.features),
        }


@dataclass(frozen=True)
class SetPrompts:
    """The questions of one set chosen by the subset, as token ids with their gold answers."""

    eval_set: EvalSet
    question_ids: list[int]
    tokens: list[list[int]]
    gold: torch.Tensor

    @property
    def name(self) -> str:
        return self.eval_set.name


@dataclass(frozen=True)
class ConfigResult:
    """Per set: right answers, questions, and prompts on which the guardrail fired."""

    config: Config
    counts: dict[str, Count]
    fired: dict[str, int]


class Stages:
    """Wall time per stage and, on a terminal, a live count of the prompts scored so far."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, scorer: Scorer | None = None) -> Iterator[None]:
        """Time a stage; with a scorer, show how many prompts it has scored. Stages without
        one show nothing: they may run their own progress display (only one can be live)."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn(name), TextColumn("{task.completed} prompts"))
        show = scorer is not None and self.console.is_terminal
        bar = Progress(
            *columns, TimeElapsedColumn(), console=self.console, transient=True, disable=not show
        )
        start = time.perf_counter()
        try:
            with bar:
                task = bar.add_task(name, total=None)
                if scorer is not None:
                    scorer.on_rows = lambda n: bar.advance(task, n)
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if scorer is not None:
                scorer.on_rows = None


def expand(selections: list[select.Selection], session: Session) -> list[Config]:
    """Every configuration, in sweep order: ratio percentile, n, multiplier, strategy."""
    s = session.settings
    configs = []
    for selection in selections:
        for n in s.n_features:
            features = tuple(int(j) for j in selection.top(n).tolist())
            for m in s.multipliers:
                for name in s.strategies:
                    strategy = session.registry.get("strategies", name)
                    threshold = selection.thresholds[n] if strategy.uses_threshold else None
                    configs.append(
                        Config(name, selection.ratio_percentile, n, m, threshold, features)
                    )
    return configs


def build_prompts(
    scorer: Scorer, fmt: PromptFormat, eval_set: EvalSet, question_ids: list[int]
) -> SetPrompts:
    """Identity-order prompts for the chosen questions of one set."""
    import torch

    rendered = [
        render_question(fmt, scorer.tokenizer, eval_set, eval_set.questions[i])
        for i in question_ids
    ]
    tokens = scorer.encode([text for text, _ in rendered])
    gold = torch.tensor([g for _, g in rendered], dtype=torch.long)
    return SetPrompts(eval_set, question_ids, tokens, gold)


def _cached(run_dir: RunDir, stage: str, key: str, force: bool) -> dict[str, Any] | None:
    folder = run_dir.find(stage, VERSION, key, force=force)
    if folder is None:
        return None
    return read_json(folder / META_FILE)


def ensure_baseline(
    run_dir: RunDir, scorer: Scorer, prompts: SetPrompts, common: dict[str, Any], force: bool
) -> torch.Tensor:
    """The clean model's answers on one set's prompts (cached)."""
    import torch

    inputs = {**common, "set": prompts.name}
    key = artifact_key(BASELINE_STAGE, VERSION, inputs)
    meta = _cached(run_dir, BASELINE_STAGE, key, force)
    if meta is not None:
        return torch.tensor(meta["predicted"], dtype=torch.long)
    predicted = (
        scorer.predict(prompts.tokens) if prompts.tokens else torch.empty(0, dtype=torch.long)
    )
    run_dir.commit(BASELINE_STAGE, VERSION, key, inputs, extra={"predicted": predicted.tolist()})
    return predicted


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
    )


def sweep(
    run_dir: RunDir,
    scorer: Scorer,
    session: Session,
    configs: list[Config],
    prompts: list[SetPrompts],
    baselines: dict[str, torch.Tensor],
    common: dict[str, Any],
) -> list[ConfigResult]:
    """Results of every configuration: loaded when already evaluated, else computed.

    Each set's prompts are run up to the hook once for all the configurations still missing
    that set; a (configuration, set) result is written as soon as it is known, and the
    configuration's own file once all its sets are.
    """
    force = session.settings.force
    sae = session.sae().sae
    results: dict[Config, ConfigResult] = {}
    pending: list[Config] = []
    for config in dict.fromkeys(configs):
        meta = _cached(run_dir, CONFIG_STAGE, config_key(config, common)[0], force)
        if meta is None:
            pending.append(config)
        else:
            results[config] = load_result(config, meta)
    if not pending:
        return [results[c] for c in configs]

    interventions = {c: build_intervention(session, sae, c) for c in pending}
    per_set: dict[Config, dict[str, dict[str, int]]] = {c: {} for c in pending}
    for p in prompts:
        todo = []
        for config in pending:
            meta = _cached(run_dir, SET_STAGE, set_key(config, p.name, common)[0], force)
            if meta is None:
                todo.append(config)
            else:
                per_set[config][p.name] = meta["result"]
        if not todo:
            continue
        outcomes = (
            scorer.sweep(p.tokens, [interventions[c] for c in todo], baselines[p.name])[1]
            if p.tokens
            else []
        )
        for k, config in enumerate(todo):
            result = {"correct": 0, "total": 0, "fired": 0}
            if outcomes:
                result = {
                    "correct": int((outcomes[k].predicted == p.gold).sum()),
                    "total": len(p.tokens),
                    "fired": int(outcomes[k].fired.sum()),
                }
            key, inputs = set_key(config, p.name, common)
            run_dir.commit(SET_STAGE, VERSION, key, inputs, extra={"result": result})
            per_set[config][p.name] = result
    for config in pending:
        key, inputs = config_key(config, common)
        run_dir.commit(CONFIG_STAGE, VERSION, key, inputs, extra={"per_set": per_set[config]})
        results[config] = load_result(config, {"per_set": per_set[config]})
    return [results[c] for c in configs]


def build_intervention(session: Session, sae: Any, config: Config) -> Intervention:
    import torch

    strategy = session.registry.get("strategies", config.strategy)
    features = torch.tensor(config.features, dtype=torch.long)
    threshold = config.threshold if config.threshold is not None else 0.0
    return strategy.build(sae, features, threshold, config.multiplier)


def choose_questions(
    session: Session,
    scorer: Scorer,
    fmt: PromptFormat,
    fmt_key: str,
    model_key: dict[str, Any],
    eval_set: EvalSet,
) -> list[int]:
    """The ids of the set's questions in the chosen subset (cached subsets, or all)."""
    s = session.settings
    if s.questions == "all":
        return list(range(len(eval_set.questions)))
    found = subsets.ensure(
        session.shared_run_dir,
        model_key,
        lambda texts: scorer.predict(scorer.encode(texts)).tolist(),
        fmt_key,
        fmt,
        scorer.tokenizer,
        eval_set,
        force=session.force_shared,
    )
    return found[s.questions]


@dataclass(frozen=True)
class ModelLevel:
    """What evaluate computes from the model, prompt format and data alone, not the SAE."""

    prompts: list[SetPrompts]
    baselines: dict[str, torch.Tensor]
    common: dict[str, Any]
    warnings: list[str]


def model_level(
    session: Session, scorer: Scorer, eval_sets: list[EvalSet], stages: Stages
) -> ModelLevel:
    """Question subsets, prompts and baseline answers, cached in the shared run directory so
    that the SAEs of a sweep compute them once."""
    s = session.settings
    loaded_model, tokenizer = session.model(), scorer.tokenizer
    fmt = choose_format(session.case.prompt_format(), tokenizer)
    fmt_key = format_fingerprint(fmt, tokenizer)
    model_key = {"model": loaded_model.fingerprint or loaded_model.spec, "dtype": s.dtype}
    with stages.stage("subsets", scorer):
        chosen = {
            e.name: choose_questions(session, scorer, fmt, fmt_key, model_key, e) for e in eval_sets
        }
    warnings = [
        f"eval set {name!r} has no questions in subset {s.questions!r}; "
        "its accuracy is reported as null"
        for name, ids in chosen.items()
        if not ids
    ]
    prompts = [build_prompts(scorer, fmt, e, chosen[e.name]) for e in eval_sets]
    common = {
        **model_key,
        "format": fmt_key,
        "questions": s.questions,
        "sets": [
            {
                "name": p.name,
                "fingerprint": subsets.eval_set_fingerprint(p.eval_set),
                "question_ids": p.question_ids,
            }
            for p in prompts
        ],
    }
    shared = session.shared_run_dir
    with stages.stage("baseline", scorer):
        baselines = {
            p.name: ensure_baseline(shared, scorer, p, common, session.force_shared)
            for p in prompts
        }
    return ModelLevel(prompts, baselines, common, warnings)


def prepare_shared(session: Session) -> None:
    """Compute the sweep's shared model-level artifacts once, before its SAEs run."""
    session.shared_run_dir.ensure_writable()
    loaded_model, loaded_sae = session.checked_pair()
    scorer = Scorer(
        loaded_model.model,
        loaded_model.tokenizer,
        loaded_sae.hook_name,
        session.settings.batch_size,
    )
    eval_sets = session.case.eval_sets(session.data)
    model_level(session, scorer, eval_sets, Stages(session.console))


def run(session: Session) -> Path:
    """Run the whole evaluation and return the path of ``report.json``."""
    import torch

    from dsg import plot, report

    s = session.settings
    run_dir = session.run_dir
    run_dir.ensure_writable()
    stages = Stages(session.console)
    with stages.stage("load"):  # the full model first, so the sparsity stage reuses it
        loaded_model, loaded_sae = session.checked_pair()
        eval_sets = session.case.eval_sets(session.data)
    if not eval_sets:
        raise UserError(
            f"case {s.case!r} has no multiple-choice eval sets, so there is nothing to evaluate"
        )
    names = [e.name for e in eval_sets]
    if len(set(names)) != len(names):
        raise UserError(f"case {s.case!r} has eval sets with the same name: {names}")
    with stages.stage("select"):
        selections = select.ensure(session)
    tokenizer = loaded_model.tokenizer
    scorer = Scorer(loaded_model.model, tokenizer, loaded_sae.hook_name, s.batch_size)
    shared = model_level(session, scorer, eval_sets, stages)
    prompts, baselines, common = shared.prompts, shared.baselines, shared.common
    baseline_counts = {
        p.name: Count(int((baselines[p.name] == p.gold).sum()), len(p.tokens)) for p in prompts
    }
    configs = expand(selections, session)
    sweep_common = {
        **common,
        "sae": loaded_sae.fingerprint or loaded_sae.spec,
        "hook": loaded_sae.hook_name,
    }
    with stages.stage("sweep", scorer), torch.inference_mode():
        results = sweep(run_dir, scorer, session, configs, prompts, baselines, sweep_common)

    with stages.stage("report"):
        data = report.build(
            session=session,
            set_names=names,
            question_totals={e.name: len(e.questions) for e in eval_sets},
            subjects={e.name: e.subject for e in eval_sets},
            baseline=baseline_counts,
            results=results,
            inputs={
                "model_fingerprint": common["model"],
                "sae_fingerprint": sweep_common["sae"],
                "hook": loaded_sae.hook_name,
                "prompt_format": common["format"],
                "selections": {
                    str(sel.ratio_percentile): str(sel.path.relative_to(run_dir.root))
                    if sel.path.is_relative_to(run_dir.root)
                    else str(sel.path)
                    for sel in selections
                },
            },
            warnings=shared.warnings,
        )
        plot.tradeoff(data, run_dir.root / plot.PLOT_FILE)
    data["timings"] = stages.seconds
    report_path = report.write(data, run_dir.root)
    report.print_table(data, session.console)
    return report_path
