"""Every setting of a run, declared once.

Each field of :class:`Settings` is one setting: its type (the annotation), its default, and in
:func:`setting` its help, bounds, docs section and the commands that take it. The config-file
keys and their validation (:mod:`dsg.config`), the command-line options (:mod:`dsg.cli_options`),
what a case may set (:class:`dsg.interfaces.CaseDefaults`) and the tables of docs/config.md
(:mod:`dsg.config_docs`) are all derived from these fields. Adding a setting is adding a field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

QUESTION_SUBSETS = ("correct", "correct-iff-question", "correct-no-tricks", "all")
EXECUTORS = ("local", "ray")
DTYPES = ("float32", "float64", "float16", "bfloat16")

# Which commands take a setting, in pipeline order; `generate` builds one guardrail.
STAGES = ("sparsity", "select", "evaluate", "muse-export")
EVERY_COMMAND = (*STAGES, "generate")
SELECTING = ("select", "evaluate", "muse-export", "generate")
CLAMPING = ("evaluate", "muse-export", "generate")

# Sections of docs/config.md, in order.
GROUPS = ("What to run", "Data", "Selection and threshold", "Evaluation", "Scale-out")


@dataclass(frozen=True)
class Setting:
    """What is declared about one setting, besides its name, type and default."""

    help: str
    group: str
    commands: tuple[str, ...]
    option: str | None = None  # the CLI option when it is not --name-with-dashes
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is excluded
    choices: tuple[str, ...] = ()
    regex: bool = False
    case_may_set: bool = False
    docs_default: str | None = None  # the docs table's default column, when not the default


def setting(default: Any = dataclasses.MISSING, **declared: Any) -> Any:
    """A :class:`Settings` field: its default and its :class:`Setting` declaration."""
    return dataclasses.field(default=default, metadata={"setting": Setting(**declared)})


@dataclass(frozen=True)
class Settings:
    """Every knob of a run, fully resolved."""

    case: str = setting(
        help="Case to run (see `dsg plugins`).",
        group="What to run",
        commands=EVERY_COMMAND,
        docs_default="the one installed case marked as default",
    )
    model: str = setting(
        help="Model spec, e.g. gemma-2-2b-it or a model directory; LOADER:spec picks a loader "
        "(default: the case's).",
        group="What to run",
        commands=EVERY_COMMAND,
        case_may_set=True,
        docs_default="the case's",
    )
    sae: str = setting(
        help="SAE spec, e.g. gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142 or an SAE "
        "directory (default: the case's).",
        group="What to run",
        commands=EVERY_COMMAND,
        case_may_set=True,
        docs_default="the case's",
    )
    sae_release_pattern: str | None = setting(
        None,
        help="Run every SAE whose release fully matches this regex, each in {out}/{spec} (see "
        "`dsg saes`); not with --sae.",
        group="What to run",
        commands=STAGES,
        regex=True,
    )
    sae_id_pattern: str | None = setting(
        None,
        help="Run every SAE whose id fully matches this regex, with the release pattern or alone; "
        "not with --sae.",
        group="What to run",
        commands=STAGES,
        regex=True,
    )
    device: str = setting(
        "cpu",
        help="Torch device: cpu, cuda, cuda:N or mps; checked against this machine first.",
        group="What to run",
        commands=EVERY_COMMAND,
    )
    dtype: str = setting(
        "float32",
        help="Model and SAE dtype; the statistics are accumulated in float64 regardless.",
        group="What to run",
        commands=EVERY_COMMAND,
        choices=DTYPES,
        case_may_set=True,
    )
    batch_size: int = setting(
        8,
        help="Rows or prompts per forward pass; changes speed and memory, never results.",
        group="What to run",
        commands=EVERY_COMMAND,
        minimum=0,
        above_minimum=True,
        case_may_set=True,
    )
    seed: int = setting(
        0,
        help="Seeds the forget-document sample and the row shuffles.",
        group="What to run",
        commands=EVERY_COMMAND,
    )
    out: Path = setting(
        Path("dsg-runs"), help="The run directory.", group="What to run", commands=EVERY_COMMAND
    )
    force: bool = setting(
        False,
        help="Recompute artifacts even when they exist for the same inputs.",
        group="What to run",
        commands=STAGES,
    )
    data_dir: Path | None = setting(
        None,
        help="An offline mirror of the hub datasets, made by `dsg data mirror`.",
        group="Data",
        commands=EVERY_COMMAND,
    )
    forget_corpus: Path | None = setting(
        None,
        help="Replaces the case's forget corpus: JSONL/JSON with a 'text' field per line, or "
        "plain text with one document per line.",
        group="Data",
        commands=EVERY_COMMAND,
    )
    retain_corpus: Path | None = setting(
        None,
        help="Replaces the case's retain corpus, same formats.",
        group="Data",
        commands=EVERY_COMMAND,
    )
    min_chars: int = setting(
        50,
        help="Documents are kept only if longer than this many characters.",
        group="Data",
        commands=EVERY_COMMAND,
        case_may_set=True,
    )
    seq_len: int = setting(
        1024,
        help="Tokens per row.",
        group="Data",
        commands=EVERY_COMMAND,
        minimum=0,
        above_minimum=True,
        case_may_set=True,
    )
    dataset_size: int = setting(
        1024,
        help="Forget documents sampled, and upper bound on rows per corpus.",
        group="Data",
        commands=EVERY_COMMAND,
        minimum=0,
        above_minimum=True,
        case_may_set=True,
    )
    dataset_fraction: float = setting(
        100.0,
        help="Percentage of rows kept.",
        group="Data",
        commands=EVERY_COMMAND,
        minimum=0,
        maximum=100,
        above_minimum=True,
        case_may_set=True,
    )
    ratio_percentiles: tuple[float, ...] = setting(
        (95.0,),
        help="p_ratio: keep features whose forget²/retain² ratio is at or above this percentile; "
        "one selection per value.",
        group="Selection and threshold",
        commands=SELECTING,
        option="--ratio-percentile",
        minimum=0,
        maximum=100,
        case_may_set=True,
    )
    forget_percentile: float = setting(
        5.0,
        help="Also require forget² at or above this percentile.",
        group="Selection and threshold",
        commands=SELECTING,
        minimum=0,
        maximum=100,
        case_may_set=True,
    )
    n_features: tuple[int, ...] = setting(
        (20, 50, 100, 200),
        help="Guardrail sizes: the first n selected features; each n must not exceed the number "
        "selected.",
        group="Selection and threshold",
        commands=SELECTING,
        minimum=0,
        above_minimum=True,
        case_may_set=True,
    )
    calibration_percentile: float = setting(
        95.0,
        help="The threshold for n is this percentile of the retain rows' hit rates.",
        group="Selection and threshold",
        commands=SELECTING,
        minimum=0,
        maximum=100,
        case_may_set=True,
    )
    stat_decimals: int = setting(
        6,
        help="Round the per-feature means to this many decimals before selecting, as the "
        "reference's text files do; a negative value selects on the exact means.",
        group="Selection and threshold",
        commands=SELECTING,
    )
    multipliers: tuple[float, ...] = setting(
        (500.0,),
        help="Clamp strength m: selected features are set to -m at hit positions.",
        group="Evaluation",
        commands=CLAMPING,
        option="--multiplier",
        minimum=0,
        case_may_set=True,
    )
    strategies: tuple[str, ...] = setting(
        ("dynamic", "static"),
        help="Intervention strategies to sweep (`dsg plugins` lists them); muse-export's "
        "default is dynamic alone.",
        group="Evaluation",
        commands=("evaluate", "muse-export"),
        option="--strategy",
        case_may_set=True,
    )
    questions: str = setting(
        "correct",
        help="Question subset.",
        group="Evaluation",
        commands=("evaluate",),
        choices=QUESTION_SUBSETS,
    )
    executor: str = setting(
        "local",
        help="Where the SAE jobs run: local (one after another in this process) or ray (one Ray "
        "task per SAE, one GPU each on CUDA; needs dsg's ray extra). See docs/scale-out.md.",
        group="Scale-out",
        commands=STAGES,
        choices=EXECUTORS,
    )
    ray_address: str | None = setting(
        None,
        help="The Ray cluster the ray executor joins: auto (the running one), HOST:PORT or "
        "ray://HOST:PORT; none starts a Ray instance on this machine.",
        group="Scale-out",
        commands=STAGES,
    )


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


def _split_type(hint: Any) -> tuple[type, bool, bool]:
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
    """Every setting by name, in declaration order."""
    hints = typing.get_type_hints(Settings)
    table = {}
    for f in dataclasses.fields(Settings):
        kind, repeated, optional = _split_type(hints[f.name])
        table[f.name] = Declared(f.name, kind, repeated, optional, f.default, f.metadata["setting"])
    return table


def for_command(command: str) -> list[Declared]:
    """The settings a command takes as options."""
    return [d for d in declared().values() if command in d.spec.commands]
