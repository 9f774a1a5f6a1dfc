"""The wings of src/dsg stay layered: the import-linter contracts in pyproject.toml hold.

A new import from a lower wing to a higher one (type-checking imports included), an import
circle, a plugin importing another plugin, or a first-party plugin importing dsg's internals
instead of ``dsg.api`` fails this test with import-linter's report.
"""

import logging
import sys
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # lint_imports prepends the cwd
    # lint_imports configures logging and disables the loggers that exist; later tests that
    # read dsg's warnings (caplog) need them back
    loggers = [x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)]
    for logger in loggers:
        monkeypatch.setattr(logger, "disabled", logger.disabled)
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0
