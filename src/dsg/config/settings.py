"""Every setting of a run, declared once.

Each field of :class:`Settings` is one setting: its type (the annotation), its default, and in
:func:`setting` its help, bounds, docs section and the commands that take it. The config-file
keys and their validation (:mod:`dsg.config.resolve`, :mod:`dsg.config.values`), the
command-line options (:mod:`dsg.cli.options`), what a case may set
(:class:`dsg.config.values.CaseDefaults`) and the tables of docs/config.md (:mod:`dsg.config.docs`)
are all derived from these fields. Adding a setting is adding a field.

A plugin's own settings (an attack's budgets, a strategy's window lengths) are declared by the
plugin (:mod:`dsg.config.plugin_settings`) as the same :class:`Declared` and derived alike;
:func:`with_plugins` lists both, and a run holds the plugins' values in ``plugin_values``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from dsg_runtime.checks import MAX_MULTIPLIER
from dsg_runtime.strategies import DEFAULT_STRATEGY, Static

QUESTION_SUBSETS = ("correct", "correct-iff-question", "correct-no-tricks", "all")
SCORINGS = ("letter", "loglikelihood")
EXECUTORS = ("local", "ray")
DTYPES = ("float32", "float64", "float16", "bfloat16")
BACKENDS = ("auto", "transformer_lens", "transformers")
# Settings that choose where or how a run goes, not what it computes: no artifact key holds them.
NOT_KEYED = ("executor", "ray_address", "force", "sae_checkpoint_seconds")

# Which commands take a setting, in pipeline order; `generate` builds one guardrail, `attack`
# runs the evaluate engine on one SAE under an attack.
STAGES = ("sparsity", "select", "evaluate", "muse-export")
ATTACK = "attack"
EVERY_COMMAND = (*STAGES, "generate", ATTACK)
TRAIN_SAE = "train-sae"
# The settings of every command that train-sae also takes (the model, its corpus, the run dir).
WITH_TRAINING = (*EVERY_COMMAND, TRAIN_SAE)
SAE_ARCHITECTURES = ("topk", "jumprelu")
SELECTING = ("select", "evaluate", "muse-export", "generate", ATTACK)
CLAMPING = ("evaluate", "muse-export", "generate", ATTACK)

# Sections of docs/config.md, in order.
RUN, DATA, SELECTION = "What to run", "Data", "Selection and threshold"
EVALUATION, ATTACKS, SCALE_OUT = "Evaluation", "Attacks", "Scale-out"
SAE_TRAINING = "SAE training"
GROUPS = (RUN, DATA, SELECTION, EVALUATION, ATTACKS, SCALE_OUT, SAE_TRAINING)


@dataclass(frozen=True)
class Bounds:
    """The range of a number; ``above_minimum`` excludes the minimum itself."""

    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False


POSITIVE = Bounds(0, None, above_minimum=True)
PERCENTILE = Bounds(0, 100)
NON_NEGATIVE = Bounds(0, None)
PERCENTAGE = Bounds(0, 100, above_minimum=True)

MAX_STAT_DECIMALS = 1074
"""Decimals that write every float64 exactly (the smallest subnormal is 2**-1074); more change
nothing and cost memory."""


@dataclass(frozen=True)
class Setting:
    """What is declared about one setting, besides its name, type and default."""

    help: str
    group: str
    commands: tuple[str, ...]
    option: str | None = None  # the CLI option when it is not --name-with-dashes
    bounds: Bounds | None = None
    choices: tuple[str, ...] = ()
    regex: bool = False
    case_may_set: bool = False
    docs_default: str | None = None  # the docs table's default column, when not the default
    within_context: bool = False  # a token count that must fit in the model's context
    plugin: str = ""  # the plugin that declared it; "" for dsg's own
    used_by: tuple[str, ...] = ()  # the attacks or strategies that read it; () for every run
    after: str | None = None  # the setting it is listed after in its group (default: the end)
    check: Callable[[Any], None] | None = dataclasses.field(default=None, compare=False)
    """A plugin's check of the resolved settings (the value against others), run with dsg's."""


def setting(default: Any, help: str, group: str, commands: tuple[str, ...], **more: Any) -> Any:
    """A :class:`Settings` field: its default (``dataclasses.MISSING`` for none) and its
    :class:`Setting` declaration."""
    declared = Setting(help, group, commands, **more)
    return dataclasses.field(default=default, metadata={"setting": declared})


NONE = dataclasses.MISSING
CASES = "the case's"


@dataclass(frozen=True)
class Settings:
    """Every knob of a run, fully resolved. One field per setting; see the module docstring."""

    case: str = setting(
        NONE, "Case to run (see `dsg plugins`).", RUN, WITH_TRAINING,
        docs_default="the one case whose default model is --model, else the one marked default",
    )  # fmt: skip
    model: str = setting(
        NONE, "Model spec, e.g. gemma-2-2b-it or a model directory; LOADER:spec picks a loader "
        "(default: the case's).", RUN, WITH_TRAINING, case_may_set=True, docs_default=CASES,
    )  # fmt: skip
    sae: str = setting(
        NONE, "SAE spec, e.g. gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142 or an SAE "
        "directory (default: the case's).", RUN, EVERY_COMMAND, case_may_set=True,
        docs_default=CASES,
    )  # fmt: skip
    sae_release_pattern: str | None = setting(
        None, "Run every SAE whose release fully matches this regex, each in {out}/{spec} (see "
        "`dsg saes`); not with --sae.", RUN, STAGES, regex=True,
    )  # fmt: skip
    sae_id_pattern: str | None = setting(
        None, "Run every SAE whose id fully matches this regex, with the release pattern or "
        "alone; not with --sae.", RUN, STAGES, regex=True,
    )  # fmt: skip
    device: str = setting(
        "cpu", "Torch device: cpu, cuda, cuda:N or mps; checked against this machine first.",
        RUN, WITH_TRAINING,
    )  # fmt: skip
    dtype: str = setting(
        "float32", "Model and SAE dtype; the statistics are accumulated in float64 regardless.",
        RUN, WITH_TRAINING, choices=DTYPES, case_may_set=True,
    )  # fmt: skip
    backend: str = setting(
        "auto", "What runs the forward passes of sparsity and the MCQ engine; auto is "
        "transformer_lens on cpu, transformers on any other device (docs/evaluate.md#backends).",
        RUN, (*STAGES, ATTACK), choices=BACKENDS, case_may_set=True,
    )  # fmt: skip
    batch_size: int = setting(
        8, "Rows or prompts per forward pass; changes speed and memory, never results.", RUN,
        WITH_TRAINING, bounds=POSITIVE, case_may_set=True,
    )  # fmt: skip
    seed: int = setting(
        0, "Seeds the forget-document sample and the row shuffles.", RUN, WITH_TRAINING,
        bounds=NON_NEGATIVE,
    )  # fmt: skip
    out: Path = setting(Path("dsg-runs"), "The run directory.", RUN, WITH_TRAINING)
    force: bool = setting(
        False, "Recompute artifacts even when they exist for the same inputs.", RUN,
        (*STAGES, ATTACK, TRAIN_SAE),
    )  # fmt: skip
    data_dir: Path | None = setting(
        None, "An offline mirror of the hub datasets, made by `dsg data mirror`.", DATA,
        WITH_TRAINING,
    )  # fmt: skip
    forget_corpus: Path | None = setting(
        None, "Replaces the case's forget corpus: JSONL/JSON with a 'text' field per line, or "
        "plain text with one document per line.", DATA, WITH_TRAINING,
    )  # fmt: skip
    retain_corpus: Path | None = setting(
        None, "Replaces the case's retain corpus, same formats.", DATA, WITH_TRAINING
    )
    min_chars: int = setting(
        50, "Documents are kept only if longer than this many characters.", DATA, WITH_TRAINING,
        bounds=NON_NEGATIVE, case_may_set=True,
    )  # fmt: skip
    seq_len: int = setting(
        1024, "Tokens per row.", DATA, WITH_TRAINING, bounds=POSITIVE, case_may_set=True,
        within_context=True,
    )  # fmt: skip
    dataset_size: int = setting(
        1024, "Forget documents sampled, and upper bound on rows per corpus.", DATA,
        EVERY_COMMAND, bounds=POSITIVE, case_may_set=True,
    )  # fmt: skip
    dataset_fraction: float = setting(
        100.0, "Percentage of rows kept.", DATA, EVERY_COMMAND, bounds=PERCENTAGE,
        case_may_set=True,
    )  # fmt: skip
    relearn_holdout: float = setting(
        0.0, "Percentage of the forget documents, chosen by a seeded hash of their text, kept "
        "out of the statistics (so out of selection and calibration) for dsg attack relearn to "
        "fine-tune on (docs/robustness.md#relearning).", DATA, EVERY_COMMAND,
        bounds=Bounds(0, 100), case_may_set=True,
    )  # fmt: skip
    ratio_percentiles: tuple[float, ...] = setting(
        (95.0,), "p_ratio: keep features whose forget²/retain² ratio is at or above this "
        "percentile; one selection per value.", SELECTION, SELECTING,
        option="--ratio-percentile", bounds=PERCENTILE, case_may_set=True,
    )  # fmt: skip
    forget_percentile: float = setting(
        5.0, "Also require forget² at or above this percentile.", SELECTION, SELECTING,
        bounds=PERCENTILE, case_may_set=True,
    )  # fmt: skip
    n_features: tuple[int, ...] = setting(
        (20, 50, 100, 200), "Guardrail sizes: the first n selected features; each n must not "
        "exceed the number selected.", SELECTION, SELECTING, bounds=POSITIVE, case_may_set=True,
    )  # fmt: skip
    calibration_percentile: float = setting(
        95.0, "The threshold for n is this percentile of the retain rows' hit rates.",
        SELECTION, SELECTING, bounds=PERCENTILE, case_may_set=True,
    )  # fmt: skip
    stat_decimals: int = setting(
        6, "Round the per-feature means to this many decimals before selecting, as the "
        "reference's text files do; a negative value selects on the exact means.", SELECTION,
        SELECTING, bounds=Bounds(None, MAX_STAT_DECIMALS),
    )  # fmt: skip
    multipliers: tuple[float, ...] = setting(
        (500.0,), "Clamp strength m: selected features are set to -m at hit positions.",
        EVALUATION, CLAMPING, option="--multiplier", bounds=Bounds(0, MAX_MULTIPLIER),
        case_may_set=True,
    )  # fmt: skip
    strategies: tuple[str, ...] = setting(
        (DEFAULT_STRATEGY, Static.name), "Intervention strategies to sweep (`dsg plugins` lists "
        "them); muse-export writes a bundle of each.", EVALUATION,
        ("evaluate", "muse-export", ATTACK),
        option="--strategy", case_may_set=True,
    )  # fmt: skip
    questions: str = setting(
        "correct", "Question subset.", EVALUATION, ("evaluate", ATTACK), choices=QUESTION_SUBSETS
    )
    scoring: str = setting(
        "letter", "How a question is answered: letter (P(A..D) after the lettered choices) or "
        "loglikelihood (each choice's log-likelihood after the question, as lm-eval's "
        "multiple_choice tasks; docs/evaluate.md). The attacks score the same way.", EVALUATION,
        ("evaluate", ATTACK), choices=SCORINGS, case_may_set=True,
    )  # fmt: skip
    heldout_seed: int = setting(
        0, "Seeds the hash that splits each question set into the part the held-out score "
        "chooses its configuration on and the part it reports (docs/evaluate.md).", EVALUATION,
        ("evaluate",),
    )  # fmt: skip
    lm_eval_tasks: tuple[str, ...] = setting(
        (), "lm-evaluation-harness tasks or groups to run on the baseline and on every "
        "configuration's bundle, e.g. wmdp_bio,mmlu (comma-separated or repeated; needs dsg's "
        "lm-eval extra). See docs/lm-eval.md.", EVALUATION, ("evaluate",), docs_default="none",
    )  # fmt: skip
    lm_eval_limit: int | None = setting(
        None, "Score only the first N documents of each lm-eval task (for trials).", EVALUATION,
        ("evaluate",), bounds=POSITIVE,
    )  # fmt: skip
    lm_eval_include_path: Path | None = setting(
        None, "A folder of extra lm-eval task YAMLs (lm-eval's --include_path).", EVALUATION,
        ("evaluate",),
    )  # fmt: skip
    executor: str = setting(
        "local", "Where the SAE jobs run: local (one after another in this process) or ray (one "
        "Ray task per SAE, one GPU each on CUDA; needs dsg's ray extra). See docs/scale-out.md.",
        SCALE_OUT, STAGES, choices=EXECUTORS,
    )  # fmt: skip
    ray_address: str | None = setting(
        None, "The Ray cluster the ray executor joins: auto (the running one), HOST:PORT or "
        "ray://HOST:PORT; none starts a Ray instance on this machine.", SCALE_OUT, STAGES,
    )  # fmt: skip
    sae_hook: str | None = setting(
        None, "train-sae: the residual-stream hook the SAE reads, blocks.N.hook_resid_pre or "
        "blocks.N.hook_resid_post; only the blocks before it run.", SAE_TRAINING, (TRAIN_SAE,),
        docs_default="none (required)",
    )  # fmt: skip
    sae_architecture: str = setting(
        "topk", "train-sae: topk (the k largest latents per token) or jumprelu (a learned "
        "threshold per latent and an L0 penalty).", SAE_TRAINING, (TRAIN_SAE,),
        choices=SAE_ARCHITECTURES,
    )  # fmt: skip
    sae_width: int = setting(
        4096, "train-sae: latents of the SAE.", SAE_TRAINING, (TRAIN_SAE,), bounds=POSITIVE
    )
    sae_k: int = setting(
        32, "train-sae, topk: latents kept per token.", SAE_TRAINING, (TRAIN_SAE,),
        bounds=POSITIVE,
    )  # fmt: skip
    sae_sparsity: float = setting(
        1.0, "train-sae, jumprelu: the weight of the L0 penalty (on activations scaled to a "
        "mean squared norm of d_model), ramped up over the first tenth of the steps.",
        SAE_TRAINING, (TRAIN_SAE,), bounds=NON_NEGATIVE,
    )  # fmt: skip
    sae_tokens: int = setting(
        2_000_000, "train-sae: training tokens (steps times the batch); a corpus with fewer "
        "tokens is gone over again.", SAE_TRAINING, (TRAIN_SAE,), bounds=POSITIVE,
    )  # fmt: skip
    sae_batch: int = setting(
        4096, "train-sae: tokens per optimizer step.", SAE_TRAINING, (TRAIN_SAE,),
        bounds=POSITIVE,
    )  # fmt: skip
    sae_lr: float = setting(
        1e-3, "train-sae: Adam's learning rate, decayed linearly to 0 over the last fifth of "
        "the steps.", SAE_TRAINING, (TRAIN_SAE,), bounds=POSITIVE,
    )  # fmt: skip
    sae_eval_tokens: int = setting(
        8192, "train-sae: held-out tokens (rows kept out of training) the metrics are measured "
        "on.", SAE_TRAINING, (TRAIN_SAE,), bounds=POSITIVE,
    )  # fmt: skip
    sae_corpus: Path | None = setting(
        None, "train-sae: the text to train on, same formats as --retain-corpus (default: the "
        "case's retain and forget corpora).", SAE_TRAINING, (TRAIN_SAE,),
    )  # fmt: skip
    sae_checkpoint_seconds: float = setting(
        60.0, "train-sae: seconds between two checkpoints; a run that was stopped (even by kill "
        "-9) resumes from the last one with the same result.", SAE_TRAINING, (TRAIN_SAE,),
        bounds=NON_NEGATIVE,
    )  # fmt: skip
    plugin_values: tuple[tuple[Declared, Any], ...] = ()
    """The settings plugins declare (:mod:`dsg.config.plugin_settings`), each with its value;
    read one as an attribute, ``settings.budgets``, like dsg's own."""

    def __getattr__(self, name: str) -> Any:
        for setting, value in self.__dict__.get(PLUGIN_VALUES, ()):
            if setting.name == name:
                return value
        raise AttributeError(name)


PLUGIN_VALUES = "plugin_values"


@dataclass(frozen=True)
class Declared:
    """One setting as the derived views need it."""

    name: str
    kind: type  # str, int, float, bool or Path: the type of the value, or of each list item
    repeated: bool  # a list in the config file, a repeatable option on the command line
    optional: bool  # None is a value ("not set")
    default: Any  # dataclasses.MISSING when the setting has none of its own
    spec: Setting

    @property
    def option(self) -> str:
        return self.spec.option or "--" + self.name.replace("_", "-")

    @property
    def described(self) -> str:
        """The help text, with the choices when there are some."""
        choices = self.spec.choices
        return self.spec.help + (f" One of: {', '.join(choices)}." if choices else "")

    @property
    def label(self) -> str:
        """How messages name one value: ``ratio percentile``, ``batch size``."""
        return self.option.removeprefix("--").replace("-", " ")


def split_type(hint: Any) -> tuple[type, bool, bool]:
    """``tuple[int, ...]`` -> (int, repeated, not optional); ``Path | None`` -> (Path, ...)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return inner, False, True
    if typing.get_origin(hint) is tuple:
        return args[0], True, False
    return hint, False, False


@cache
def declared() -> dict[str, Declared]:
    """dsg's own settings by name, in declaration order."""
    hints = typing.get_type_hints(Settings)
    table = {}
    for f in dataclasses.fields(Settings):
        if f.name == PLUGIN_VALUES:
            continue
        kind, repeated, optional = split_type(hints[f.name])
        table[f.name] = Declared(f.name, kind, repeated, optional, f.default, f.metadata["setting"])
    return table


def with_plugins(plugin: Iterable[Declared] = ()) -> dict[str, Declared]:
    """dsg's settings and the plugins' by name: each plugin setting is listed in its group,
    after the one it names in ``after`` or else at the group's end."""
    order = list(declared().values())
    for setting in plugin:
        group = [i for i, s in enumerate(order) if s.spec.group == setting.spec.group]
        named = [i for i, s in enumerate(order) if s.name == setting.spec.after]
        last = named or group[-1:]
        at = last[0] + 1 if last else _group_start(order, setting.spec.group)
        order.insert(at, setting)
    return {s.name: s for s in order}


def _group_start(order: list[Declared], group: str) -> int:
    """Where a group with no setting yet begins: before the first setting of a later group."""
    later = GROUPS[GROUPS.index(group) + 1 :]
    return next((i for i, s in enumerate(order) if s.spec.group in later), len(order))


def for_command(command: str, plugin: Iterable[Declared] = ()) -> list[Declared]:
    """The settings a command takes as options."""
    return [d for d in with_plugins(plugin).values() if command in d.spec.commands]


def values_of(settings: Settings) -> dict[str, Any]:
    """Every setting of a run by name, dsg's and its plugins', in :func:`with_plugins` order."""
    values = {name: getattr(settings, name) for name in declared()}
    values.update((s.name, value) for s, value in settings.plugin_values)
    return {name: values[name] for name in with_plugins(plugin_settings(settings))}


def replaced(settings: Settings, **changes: Any) -> Settings:
    """``dataclasses.replace`` for dsg's settings and the plugins' alike."""
    plugin = tuple((s, changes.pop(s.name, value)) for s, value in settings.plugin_values)
    return dataclasses.replace(settings, **changes, plugin_values=plugin)


def plugin_settings(settings: Settings) -> list[Declared]:
    """The plugins' declarations a run's settings hold."""
    return [s for s, _ in settings.plugin_values]
