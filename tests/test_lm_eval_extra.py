"""The lm-eval extra keeps an lm-eval installed from source: its head carries a development
version (0.4.13.dev0) that a plain ``>=0.4.13`` would reject, and pip would replace it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _extra(pyproject: Path, name: str) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["optional-dependencies"][name]]


def test_the_runtime_extra_admits_lm_eval_from_source_and_releases_only_from_0_4_13() -> None:
    (lm_eval,) = _extra(ROOT / "runtime" / "pyproject.toml", "lm-eval")
    assert lm_eval.name == "lm-eval"
    admits = {v: lm_eval.specifier.contains(v) for v in ("0.4.13.dev0", "0.4.13", "0.4.14")}
    assert admits == {"0.4.13.dev0": True, "0.4.13": True, "0.4.14": True}
    assert not lm_eval.specifier.contains("0.4.12", prereleases=True)


def test_dsg_s_extra_is_the_runtime_s() -> None:
    (runtime,) = _extra(ROOT / "pyproject.toml", "lm-eval")
    assert (runtime.name, runtime.extras) == ("dsg-runtime", {"lm-eval"})
