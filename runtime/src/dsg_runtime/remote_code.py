"""No code of a model's own: a model folder or hub repository whose ``config.json`` or
``tokenizer_config.json`` has an ``auto_map`` names Python files that transformers would import
(after asking "run the custom code? [y/N]" on stdin). Running them would run a stranger's code on
the user's machine, and a forward pass of foreign code can route around the guardrail's hook. So
every guarded load passes ``trust_remote_code=False`` and first calls :func:`refuse_custom_code`,
which names the problem in one line before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsg_runtime.errors import UserError

# the files in which transformers looks for an auto_map (the model's, the tokenizer's)
CODE_NAMING_FILES = ("config.json", "tokenizer_config.json")


def _model_file(reference: str | Path, name: str) -> Path | None:
    """``name`` in a model folder, or in the local hub cache of a hub id; None when absent (an
    uncached hub id is then loaded with ``trust_remote_code=False``, which imports no code)."""
    folder = Path(reference)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(str(reference), name)
    except ValueError:  # not a valid repo id either; the loader reports it
        return None
    return Path(cached) if isinstance(cached, str) else None


def refuse_custom_code(reference: str | Path) -> None:
    """A :class:`UserError` when the model or tokenizer at ``reference`` (a folder or hub id)
    names Python code of its own (``auto_map``); dsg never runs it."""
    for name in CODE_NAMING_FILES:
        path = _model_file(reference, name)
        if path is None:
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # a damaged file: the loader that reads it reports it as one line
        if isinstance(content, dict) and "auto_map" in content:
            raise UserError(
                f"model {str(reference)!r} ships Python code of its own (auto_map in its "
                f"{name}); dsg never runs a model's own code. Use a model whose architecture "
                "transformers implements (if it does, delete auto_map from a copy of the folder)"
            )


def refuse_trusting_code(options: dict[str, Any]) -> None:
    """A UserError when a harness's model arguments ask to run the model's own code
    (``trust_remote_code`` true); the guarded model types load transformers' own classes only."""
    if options.get("trust_remote_code") not in (None, False):
        raise UserError(
            "a guarded model never runs the model's own code: drop trust_remote_code from the "
            "model arguments and use a model whose architecture transformers implements"
        )
