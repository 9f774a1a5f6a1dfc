"""What a plugin provides. Each registry holds objects that satisfy one of these Protocols.

The core names no model, SAE or dataset: all of them arrive through these interfaces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dsg_runtime.protocols import BundleStrategy

if TYPE_CHECKING:
    import torch

    from dsg.api.data import DataSource
    from dsg.config.values import CaseDefaults


@dataclass(frozen=True)
class MCQuestion:
    """One four-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class EvalSet:
    """A multiple-choice evaluation set.

    ``name`` keys the report (``wmdp-bio``, ``mmlu-high-school-us-history``); ``subject`` fills
    the pre-question line "... multiple choice questions (with answers) about {subject}."
    """

    name: str
    subject: str
    questions: tuple[MCQuestion, ...]


@runtime_checkable
class PromptFormat(Protocol):
    """Turns one multiple-choice item into the exact prompt string the model sees.

    ``question`` is None for the "choices only" variant used to build the
    ``correct-iff-question`` subset.
    """

    name: str

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> str: ...


@runtime_checkable
class ClozeFormat(Protocol):
    """Turns one multiple-choice item into a context and one continuation per choice, for
    log-likelihood scoring (``--scoring loglikelihood``): each choice is scored by the summed
    log-probability of its continuation's tokens after the context.

    ``question`` is None for the "no question" variant used to build the
    ``correct-iff-question`` subset.
    """

    name: str

    def render(
        self, tokenizer: Any, eval_set: EvalSet, question: str | None, choices: Sequence[str]
    ) -> tuple[str, list[str]]: ...


@runtime_checkable
class Case(Protocol):
    """An unlearning problem: what to forget, what to keep, and how to measure both."""

    name: str
    description: str
    defaults: CaseDefaults

    def forget_texts(self, data: DataSource) -> list[str]:
        """Documents of the forget corpus, in a fixed order (before any filtering)."""
        ...

    def retain_texts(self, data: DataSource) -> list[str]:
        """Documents of the retain corpus, in a fixed order (before any filtering)."""
        ...

    def eval_sets(self, data: DataSource) -> list[EvalSet]:
        """The target set first, then the side-effect sets; empty for selection-only cases."""
        ...

    def prompt_format(self) -> PromptFormat | None:
        """The MCQ prompt format, or None for dsg's default (the tokenizer's chat template)."""
        ...


@runtime_checkable
class ClozeCase(Case, Protocol):
    """A case with its own log-likelihood prompt format (optional: without ``cloze_format``
    dsg's default is used, as for a ``cloze_format`` that returns None)."""

    def cloze_format(self) -> ClozeFormat | None:
        """The cloze format, or None for dsg's default (the tokenizer's chat template)."""
        ...


@dataclass(frozen=True)
class MuseData:
    """A case's own MUSE-format evaluation data, which ``dsg muse-export`` ships to
    open-unlearning beside the bundles (docs/open-unlearning.md)."""

    split: str
    """open-unlearning's ``data_split``: the data is read from ``muse-bench/MUSE-{split}``."""
    folder: Path
    """A folder ``datasets.load_dataset`` reads by config and split: ``knowmem`` (``forget_qa``,
    ``retain_qa`` and their ``_icl`` few-shot splits), ``verbmem`` (``forget``) and
    ``privleak`` (``forget``, ``holdout``)."""
    template: dict[str, str]
    """open-unlearning's ``template_args`` for the case's model (user and assistant tags)."""
    retain_model: Path | None = None
    """The case's model trained by the same recipe without the forget data, the reference of
    MUSE's privacy leakage; None when the case has none."""
    retain_logs: Path | None = None
    """That model's evaluation log as open-unlearning's ``retain_logs_path`` reads it (its
    ``mia_min_k`` entry); None when the case has none."""


@runtime_checkable
class MuseCase(Case, Protocol):
    """A case that ships MUSE-format data for its model (optional: the model organism does)."""

    def muse_data(self) -> MuseData:
        """The case's MUSE data and the prompt template its model answers in."""
        ...


@dataclass
class LoadedSAE:
    """A sae_lens SAE ready to use, with the facts dsg needs about it."""

    sae: Any
    spec: str
    hook_name: str
    hook_layer: int
    model_name: str | None = None
    fingerprint: str = ""
    l0: float | None = None
    """Mean active features per token, when the loader knows it (for sweep summaries)."""


@runtime_checkable
class SAELoader(Protocol):
    """Turns an ``--sae`` spec into a :class:`LoadedSAE`."""

    name: str
    description: str

    def can_load(self, spec: str) -> bool: ...

    def load(self, spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE: ...


@runtime_checkable
class ExpandingSAELoader(SAELoader, Protocol):
    """An :class:`SAELoader` that can also list its SAEs, for ``--sae-release-pattern`` and
    ``--sae-id-pattern`` (optional: a loader without ``expand`` is simply not asked)."""

    def expand(self, release_pattern: str, id_pattern: str) -> list[str]:
        """Specs this loader accepts whose release and id fully match the two regexes, in a
        fixed order; a bad regex is a :class:`~dsg.core.errors.UserError`."""
        ...


@dataclass
class LoadedModel:
    """A TransformerLens model with its tokenizer; ``extra`` carries loader-specific facts."""

    model: Any
    tokenizer: Any
    spec: str
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def hf_reference(model: LoadedModel) -> str | None:
    """What ``transformers`` loads for a loaded model: the directory or hub id its loader recorded
    (``extra["hf_model"]``, TransformerLens's ``extra["official_name"]``), else the spec when it
    names a model directory."""
    recorded = model.extra.get("hf_model") or model.extra.get("official_name")
    if recorded:
        return str(recorded)
    spec = Path(model.spec)
    return str(spec.resolve()) if (spec / "config.json").is_file() else None


@runtime_checkable
class ModelLoader(Protocol):
    """Turns a ``--model`` spec into a :class:`LoadedModel`."""

    name: str
    description: str

    def can_load(self, spec: str) -> bool: ...

    def load(
        self, spec: str, *, device: str, dtype: torch.dtype, n_layers: int | None = None
    ) -> LoadedModel: ...


@runtime_checkable
class FolderModelLoader(ModelLoader, Protocol):
    """A :class:`ModelLoader` whose models are transformers folders it makes itself (a packaged
    GGUF model converted once), optional: ``dsg generate --model NAME`` and the transformers
    backend load the folder ``transformers_folder`` returns for a spec it accepts."""

    def transformers_folder(self, spec: str) -> str:
        """The transformers model folder for ``spec`` (made on first use)."""
        ...


@runtime_checkable
class Intervention(Protocol):
    """Edits the residual stream at the SAE's hook point.

    Called with ``resid [B, T, D]`` and ``attention_mask [B, T]`` (bool); returns the edited
    residual. ``fired`` holds the per-row decision of the last call (bool ``[B]``).
    """

    fired: torch.Tensor | None

    def __call__(self, resid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class PrefixDecidingIntervention(Intervention, Protocol):
    """An :class:`Intervention` that can decide on a prompt and carry its decision over the
    tokens that follow in the same pass, as it would over generated tokens (optional: needed
    by log-likelihood scoring, which reads the choices' tokens after the question's context).
    The runtime's ``Guardrail`` provides it, so every built-in strategy does."""

    def decide_on_prefix(
        self, resid: torch.Tensor, decide_mask: torch.Tensor, apply_mask: torch.Tensor
    ) -> torch.Tensor:
        """Decide each row on ``decide_mask`` (bool ``[B, T]``, its prompt), set ``fired``,
        and return the residual edited on ``apply_mask`` under that decision."""
        ...


@runtime_checkable
class Strategy(Protocol):
    """Turns a feature selection and its parameters into an :class:`Intervention`."""

    name: str
    description: str
    uses_threshold: bool

    def build(
        self, sae: Any, features: torch.Tensor, threshold: float, multiplier: float
    ) -> Intervention: ...


@dataclass(frozen=True)
class CalibrationData:
    """What a :class:`CalibratedStrategy` calibrates on, from the training corpora only.

    ``retain_hits`` and ``forget_hits`` are bool ``[rows, seq_len]``: per row of each corpus
    (as the sparsity stage built them), the positions where one of the guardrail's features
    fires; position 0 (the row's BOS) is never a hit. ``percentile`` is the calibration
    percentile; ``options`` holds the values of the settings the strategy names in
    ``calibration_settings``.
    """

    retain_hits: torch.Tensor
    forget_hits: torch.Tensor
    percentile: float
    options: dict[str, Any]


@runtime_checkable
class CalibratedStrategy(Strategy, Protocol):
    """A :class:`Strategy` whose gate has parameters beyond the dynamic threshold, calibrated
    from the corpora (optional). dsg calls ``calibrate`` once per feature selection and size n
    (cached as an artifact keyed by everything it reads), then ``build(..., **params)``; a
    bundle stores ``params`` among its ``strategy_params``.
    """

    calibration_settings: tuple[str, ...]
    """Names of the settings ``calibrate`` reads (they key its artifact)."""

    def calibrate(self, data: CalibrationData) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """``(threshold, params, details)``: the gate's threshold, the JSON-serialisable
        keyword arguments ``build`` takes, and a JSON record of how they were chosen."""
        ...


@runtime_checkable
class DescribedParams(Protocol):
    """A :class:`CalibratedStrategy` that says how its ``params`` read in an evaluation table
    (optional: without it the table shows the threshold alone)."""

    def describe_params(self, params: dict[str, Any]) -> str:
        """What the table shows of ``params`` after the threshold (e.g. ``" w16>0.25"``), so a
        reader sees the whole gate of a configuration."""
        ...


@runtime_checkable
class ExportableStrategy(Strategy, BundleStrategy, Protocol):
    """A :class:`Strategy` that travels in guardrail bundles (optional: without ``bundle_params``
    and ``bundle_gate`` ``muse-export`` refuses the strategy).

    A bundle stores the strategy's name, the threshold (when ``uses_threshold``), the multiplier,
    the k feature columns and the JSON object ``bundle_params`` returns; ``bundle_gate`` rebuilds
    the gate from them, and the one :class:`dsg_runtime.guardrail.Guardrail` does the rest. A
    bundle of a plugin's strategy is read with the registry's strategies passed in
    (``Bundle.load(path, strategies)``); the built-in ones need none.
    """


@dataclass(frozen=True)
class AttackPrompt:
    """One prompt an attack hands to dsg: its token ids (special tokens included, as the model
    sees them) and the index of the right answer among its four choices.

    Under letter scoring ``ids`` is the whole prompt and the answer is read at its last token.
    Under log-likelihood scoring (:attr:`AttackTarget.scoring`) ``ids`` is the context, where the
    guardrail decides, and ``continuations`` holds each choice's ids after it, scored by their
    summed log-probability; ``lengths`` holds each choice's length in characters (what
    ``acc_norm`` divides by). :meth:`AttackTarget.cloze_prompt` builds one from strings."""

    ids: tuple[int, ...]
    gold: int
    continuations: tuple[tuple[int, ...], ...] = ()
    lengths: tuple[int, ...] = ()

    @property
    def is_cloze(self) -> bool:
        return bool(self.continuations)


@dataclass(frozen=True)
class SetScores:
    """One set's prompts under one attack condition: the answers of the unguarded model, and
    under each configuration (in :attr:`AttackTarget.configs` order) its answers and whether its
    guardrail fired on each prompt."""

    gold: tuple[int, ...]
    unguarded: tuple[int, ...]
    guarded: tuple[tuple[int, ...], ...]
    fired: tuple[tuple[bool, ...], ...]

    @property
    def total(self) -> int:
        return len(self.gold)

    @property
    def unguarded_correct(self) -> int:
        return sum(p == g for p, g in zip(self.unguarded, self.gold, strict=True))

    def correct(self, config: int) -> int:
        return sum(p == g for p, g in zip(self.guarded[config], self.gold, strict=True))

    def fired_count(self, config: int) -> int:
        return sum(self.fired[config])


@dataclass(frozen=True)
class AttackRow:
    """What an attack measured under one condition. ``condition`` names it with JSON values
    (``{"placement": "before", "budget": 50}``, ``{"format": "lm-eval"}``,
    ``{"learning_rate": 1e-5, "step": 20}``); ``scores`` holds each set's answers;
    ``details`` anything else worth reporting about the condition (JSON values)."""

    condition: dict[str, Any]
    scores: dict[str, SetScores]
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class AttackTarget(Protocol):
    """What dsg hands an attack: the model's tokenizer and context, the case's prompt format and
    questions, the configurations under test, and :meth:`score`, which runs prompts through the
    evaluate engine unguarded and under every configuration at once."""

    settings: Any
    """The run's resolved :class:`dsg.config.settings.Settings`: dsg's settings and the ones
    plugins declare, as attributes (``budgets``, ``formats``, ...)."""
    tokenizer: Any
    n_ctx: int
    prompt_format: PromptFormat
    """The letter format the run's case and tokenizer give, whatever the scoring."""
    eval_sets: list[EvalSet]
    """Target first, then the side-effect sets. In :meth:`Attack.check` every question of each
    set; in :meth:`Attack.run` only the questions of the run's subset (``--questions``)."""
    configs: list[dict[str, Any]]
    """Each configuration's description (strategy, ratio percentile, n, multiplier, ...); empty
    in :meth:`Attack.check`."""

    @property
    def scoring(self) -> str:
        """How the run answers a question (``--scoring``): ``letter`` or ``loglikelihood``; the
        prompts handed to :meth:`score` must be of that kind (:attr:`AttackPrompt.is_cloze`)."""
        ...

    @property
    def cloze_format(self) -> ClozeFormat | None:
        """The cloze format ``dsg evaluate`` renders with under log-likelihood scoring; None
        under letter scoring."""
        ...

    def benign_texts(self) -> list[str]:
        """The benign corpus: ``--benign-corpus``, the questions of ``--benign-questions``'s
        eval set, or the case's retain corpus; non-empty
        documents only; an empty one is a UserError."""
        ...

    def warn(self, message: str) -> None:
        """Print a warning now and keep it in the attack's report."""
        ...

    def held_out_forget(self) -> tuple[int, Any]:
        """The forget documents feature selection never saw, as rows of ``seq_len`` token ids
        (the statistics' rows): their count and a ``[rows, seq_len]`` tensor. A UserError when
        there are none (docs/robustness.md#relearning)."""
        ...

    def trainable_model(self) -> tuple[Any, dict[str, Any]]:
        """A deep copy of the run's TransformerLens model for the attack to change (the run's
        model is never modified), and the key of the weights it was copied from."""
        ...

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts (no special tokens added), as ``dsg evaluate`` encodes
        them; a prompt beyond the model's context is a UserError."""
        ...

    def cloze_prompt(
        self, context: str, continuations: Sequence[str], choices: Sequence[str], gold: int
    ) -> AttackPrompt:
        """A log-likelihood prompt from a rendered context and one continuation per choice,
        split into token ids as ``dsg evaluate`` (and lm-eval) splits them: the context's
        trailing whitespace moves to the continuations. A row beyond the model's context is a
        UserError."""
        ...

    def evaluated_prompts(self) -> dict[str, list[AttackPrompt]]:
        """Each set's questions exactly as ``dsg evaluate`` scores them in the run's mode, by
        the same code (the reference condition: budget 0, the evaluated format, step 0)."""
        ...

    def score(
        self,
        prompts: Mapping[str, Sequence[AttackPrompt]],
        *,
        letters: Sequence[str] = ("A", "B", "C", "D"),
        model: Any = None,
        model_key: dict[str, Any] | None = None,
    ) -> dict[str, SetScores]:
        """Each set's prompts answered unguarded and under every configuration: by the
        probabilities of ``letters`` at the last token under letter scoring, by the choices'
        log-likelihoods under log-likelihood scoring (each guardrail decides on the context and
        carries its decision over the choices, ``letters`` unused). Results are cached in the
        run directory,
        keyed by the prompts and all that made the answers. ``model``: a TransformerLens model to
        score instead of the run's (a fine-tuned copy from :meth:`trainable_model`, same
        tokenizer and hook); ``model_key`` then identifies its weights and is required."""
        ...


@runtime_checkable
class Attack(Protocol):
    """A way to get around a guardrail, measured: ``dsg attack NAME`` runs it on every
    configuration and on the unguarded model, side by side.

    One member is optional (not part of the protocol's check): ``check_settings(settings)``,
    its checks that need no model, run before any model loads. Its own options are settings its
    plugin declares (``register_settings``) with the attack in ``used_by``: given to another
    attack they are refused rather than ignored."""

    name: str
    description: str
    axis: str
    """The condition key plotted on the x axis (``budget``, ``format``, ``step``); the other
    keys of a condition split the plot into panels."""

    def check(self, target: AttackTarget) -> None:
        """Reject settings this attack cannot run with (a UserError), before anything is
        computed or written."""
        ...

    def run(self, target: AttackTarget) -> Iterator[AttackRow]:
        """Every condition, in report order."""
        ...
