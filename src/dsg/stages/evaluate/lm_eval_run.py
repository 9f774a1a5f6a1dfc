"""Full-benchmark accuracies for an evaluate run, from lm-evaluation-harness.

``dsg evaluate --lm-eval-tasks wmdp_bio,mmlu`` exports each configuration as a bundle (as
``muse-export`` does), runs lm-eval's tasks on the transformers model unguarded and under each
bundle, and puts the accuracies into the report next to the subset numbers. lm-eval scores
every question of a task, in the task's own prompt format; dsg's own numbers use the chosen
subset and dsg's prompt (docs/lm-eval.md says why they differ). Each (bundle, tasks) result is
an artifact keyed by the bundle, the model, the tasks, the limit and lm-eval's version.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.bundle import CONFIG_FILE, Bundle
from dsg.core.artifacts import META_FILE, artifact_key, read_json
from dsg.core.errors import UserError

if TYPE_CHECKING:
    from dsg.engine.session import Session
    from dsg.stages.evaluate.results import Config
    from dsg.stages.select import Selection
    from dsg_runtime.lm_eval_model import GuardedLM

STAGE = "lm-eval"
VERSION = 1
METRIC = "acc,none"


def task_names(tasks: tuple[str, ...]) -> list[str]:
    """The task names, from repeated values and comma-separated lists alike."""
    return [name.strip() for item in tasks for name in item.split(",") if name.strip()]


def lm_eval_version() -> str:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "--lm-eval-tasks needs lm-evaluation-harness; install it: pip install 'dsg[lm-eval]'"
        ) from None


def config_bundles(
    session: Session, selections: list[Selection], configs: list[Config]
) -> dict[Config, Path | None]:
    """Each configuration's bundle, written under ``{run dir}/bundles/`` as muse-export names
    it; None for strategies whose plugin does not say how they travel in a bundle."""
    from dsg.api.interfaces import ExportableStrategy
    from dsg.stages.muse_export import BUNDLES_DIR, bundle_name, bundles_for, save_bundle

    strategies = [
        strategy
        for name in dict.fromkeys(c.strategy for c in configs)
        if isinstance(strategy := session.strategies[name], ExportableStrategy)
    ]
    by_key: dict[tuple[float, int, float, str], Path] = {}
    for selection in selections:
        for bundle in bundles_for(session, selection, strategies) if strategies else []:
            name = bundle_name(session.settings.case, selection, bundle)
            key = (selection.ratio_percentile, bundle.k, bundle.multiplier, bundle.strategy)
            by_key[key] = save_bundle(bundle, session.run_dir.root / BUNDLES_DIR / name)
    return {
        c: by_key.get((c.ratio_percentile, c.n_features, c.multiplier, c.strategy)) for c in configs
    }


class Harness:
    """lm-eval on one transformers model; the model is loaded on the first uncached run."""

    def __init__(
        self, session: Session, reference: str, fingerprint: str, tasks: list[str]
    ) -> None:
        self.session = session
        self.reference = reference
        self.tasks = tasks
        s = session.settings
        self.common = {
            "model": fingerprint,
            "hf": reference,
            "dtype": s.dtype,
            "tasks": tasks,
            "limit": s.lm_eval_limit,
            "include_path": str(s.lm_eval_include_path) if s.lm_eval_include_path else None,
            "lm_eval": lm_eval_version(),
        }
        self._lm: GuardedLM | None = None
        self._manager: Any = None  # lm-eval's task index, built once (it reads every task YAML)

    def accuracies(self, bundle: Path | None) -> dict[str, float | None]:
        """Accuracy per task under the bundle in this folder (None: unguarded), cached in the
        run directory; the bundle's ``bundle.json`` (with its tensors' hash) is in the key."""
        described = None if bundle is None else read_json(bundle / CONFIG_FILE)
        inputs = {**self.common, "bundle": described}
        key = artifact_key(STAGE, VERSION, inputs)
        run_dir = self.session.run_dir
        folder = run_dir.find(STAGE, VERSION, key, force=self.session.settings.force)
        if folder is not None:
            found: dict[str, float | None] = read_json(folder / META_FILE)["accuracy"]
            return found
        strategies = self.session.registry.entries["strategies"]
        accuracy = self._evaluate(None if bundle is None else Bundle.load(bundle, strategies))
        run_dir.commit(STAGE, VERSION, key, inputs, extra={"accuracy": accuracy})
        return accuracy

    def _evaluate(self, bundle: Bundle | None) -> dict[str, float | None]:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        s = self.session.settings
        if self._manager is None:
            include = str(s.lm_eval_include_path) if s.lm_eval_include_path else None
            self._manager = TaskManager(include_path=include)
        manager = self._manager
        unknown = [t for t in self.tasks if t not in manager.all_tasks]
        if unknown:
            raise UserError(
                f"lm-eval knows no task {', '.join(unknown)}; list them with `lm-eval ls tasks`"
                " (or pass --lm-eval-include-path for a folder of task YAMLs)"
            )
        if self._lm is None:
            from dsg_runtime.lm_eval_model import GuardedLM

            self._lm = GuardedLM(
                pretrained=self.reference,
                device=self.session.device,
                dtype=s.dtype,
                batch_size=s.batch_size,
            )
        self._lm.use_bundle(bundle)
        with no_git_lookup():
            results = simple_evaluate(
                model=self._lm,
                tasks=self.tasks,
                task_manager=manager,
                limit=s.lm_eval_limit,
                verbosity="ERROR",
            )
        if results is None:  # only on non-zero ranks of a distributed run
            raise UserError("lm-eval returned no results; run dsg evaluate in a single process")
        found = results["results"]
        return {t: found.get(t, {}).get(METRIC) for t in self.tasks}


@contextmanager
def no_git_lookup() -> Iterator[None]:
    """lm-eval without its lookup of the working directory's git commit (``git describe``, whose
    "fatal: not a git repository" would land in dsg's output outside a repository). dsg reads
    only the accuracies, not the ``git_hash`` lm-eval records."""
    import lm_eval.evaluator

    lookup = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = lookup


def section(
    session: Session, selections: list[Selection], configs: list[Config]
) -> tuple[dict[str, Any], list[dict[str, float | None] | None]]:
    """The report's ``lm_eval`` section and each configuration's accuracies (None when its
    strategy cannot be exported as a bundle)."""
    tasks = task_names(session.settings.lm_eval_tasks)
    bundles = config_bundles(session, selections, configs)
    reference, fingerprint = _reference(session)
    harness = Harness(session, reference, fingerprint, tasks)
    baseline = harness.accuracies(None)
    per_config = [None if bundles[c] is None else harness.accuracies(bundles[c]) for c in configs]
    info = {
        "tasks": tasks,
        "metric": METRIC.split(",")[0],
        "limit": session.settings.lm_eval_limit,
        "model": reference,
        "version": harness.common["lm_eval"],
        "baseline": baseline,
    }
    return info, per_config


def _reference(session: Session) -> tuple[str, str]:
    """The transformers model lm-eval loads, and the fingerprint of the model dsg evaluated."""
    from dsg.api.interfaces import hf_reference

    model = session.model()
    reference = hf_reference(model)
    if not reference:
        raise UserError(
            "lm-eval runs a transformers model, and none is known for this run's model; "
            "pass --model with a model directory or hub id"
        )
    return reference, model.fingerprint or model.spec
