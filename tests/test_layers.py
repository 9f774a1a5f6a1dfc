"""The wings of src/dsg stay layered: the import-linter contracts in pyproject.toml hold.

A new import from a lower wing to a higher one (type-checking imports included), an import
circle, a plugin importing another plugin, or a first-party plugin importing dsg's internals
instead of ``dsg.api`` fails this test with import-linter's report.
"""

import sys
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports prepends the cwd
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0
