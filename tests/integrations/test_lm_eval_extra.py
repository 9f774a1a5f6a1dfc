"""The lm-eval extras keep an lm-eval installed from source (its head carries a development
version, 0.4.13.dev0, that a plain ``>=0.4.13`` would reject, and pip would replace it). The
runtime's admits open-unlearning's lm-eval 0.4.8; dsg's, whose organism tasks need a later
lm-eval, starts at 0.4.13."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from paths import REPO


def _extra(pyproject: Path, name: str) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["optional-dependencies"][name]]


def _admits(requirement: Requirement, *versions: str) -> dict[str, bool]:
    return {v: requirement.specifier.contains(v) for v in versions}


def test_the_runtime_extra_admits_open_unlearnings_lm_eval_and_lm_eval_from_source() -> None:
    (lm_eval,) = _extra(REPO / "runtime" / "pyproject.toml", "lm-eval")
    assert lm_eval.name == "lm-eval"
    assert all(_admits(lm_eval, "0.4.8", "0.4.13.dev0", "0.4.13", "0.4.14").values())
    assert not lm_eval.specifier.contains("0.4.7", prereleases=True)


def test_dsg_s_extra_is_the_runtime_s_from_0_4_13() -> None:
    runtime, lm_eval = _extra(REPO / "pyproject.toml", "lm-eval")
    assert (runtime.name, runtime.extras) == ("dsg-runtime", {"lm-eval"})
    assert lm_eval.name == "lm-eval"
    assert _admits(lm_eval, "0.4.8", "0.4.13.dev0", "0.4.13") == {
        "0.4.8": False,
        "0.4.13.dev0": True,
        "0.4.13": True,
    }
