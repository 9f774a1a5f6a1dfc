"""What open-unlearning needs beside muse-export's bundles, in one folder laid out as its tree.

``{run dir}/open-unlearning/`` is copied over a clone of open-unlearning: ``configs/model/`` gets
one model config per bundle (``model_handler: GuardedModel``) and one unguarded
(``AutoModelForCausalLM``), ``dsg_bundles/`` the bundles. A case that ships MUSE data (the model
organism) also ships its target: ``muse-bench/MUSE-{split}/`` holds the data and
``muse-bench/MUSE-{split}_target/`` the model, the two paths open-unlearning's MUSE experiment
reads for ``data_split={split}``, so it runs with no path on the command line. A case with a
retain model ships it as ``muse-bench/MUSE-{split}_retrain/`` and its log, privleak's reference,
as ``saves/eval/MUSE-{split}_retrain/MUSE_EVAL.json`` (``retain_logs_path``). Paths inside are
relative to open-unlearning's root, where its commands run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api.interfaces import MuseCase
from dsg.bundle import Bundle
from dsg.core.artifacts import check_kind, write_failed

if TYPE_CHECKING:
    from dsg.engine.session import Session

OPEN_UNLEARNING_DIR = "open-unlearning"
BUNDLES = "dsg_bundles"
BASE_TEMPLATE = {
    "user_start_tag": "Question: ",
    "user_end_tag": "\n",
    "asst_start_tag": "Answer: ",
    "asst_end_tag": "\n\n",
}
"""open-unlearning's template for base models (its MUSE targets'), for a case without its own."""
RETAIN_LOGS = "saves/eval/MUSE-{split}_retrain/MUSE_EVAL.json"
"""Where the retain model's log goes: where open-unlearning's own evaluation of it with
``task_name=MUSE-{split}_retrain`` would write it, so ``retain_logs_path`` names either."""


def model_config(model: str, template: dict[str, str], bundle: str | None) -> str:
    """One model config in open-unlearning's format (YAML; strings as JSON, which YAML reads):
    the guardrail's handler with ``bundle``, or the plain model without one."""

    def q(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = [f"model_handler: {'GuardedModel' if bundle else 'AutoModelForCausalLM'}"]
    lines += ["model_args:", f"  pretrained_model_name_or_path: {q(model)}"]
    lines += ["  attn_implementation: eager", "  torch_dtype: float32"]
    if bundle:
        lines.append(f"  dsg_bundle: {q(bundle)}")
    lines += ["tokenizer_args:", f"  pretrained_model_name_or_path: {q(model)}"]
    lines += ["template_args:", "  apply_chat_template: false"]
    lines += [f"  {key}: {q(value)}" for key, value in template.items()]
    return "\n".join(lines) + "\n"


def base_model(bundles: list[Path], strategies: Mapping[str, Any]) -> str | None:
    """The transformers model the bundles were made for (a directory or a hub id), or None when
    they name none or several; ``strategies`` are the plugin strategies a bundle may name."""
    refs = {Bundle.load(path, strategies).base_model.get("hf") for path in bundles}
    return str(refs.pop()) if len(refs) == 1 and None not in refs else None


def _fill(folder: Path, session: Session, bundles: list[Path], model: str) -> None:
    template = BASE_TEMPLATE
    case = session.case
    if isinstance(case, MuseCase):
        muse = case.muse_data()
        data = Path("muse-bench") / f"MUSE-{muse.split}"
        shutil.copytree(muse.folder, folder / data)
        shutil.copytree(model, folder / f"{data}_target")
        if muse.retain_model is not None:
            shutil.copytree(muse.retain_model, folder / f"{data}_retrain")
        if muse.retain_logs is not None:
            logs = folder / RETAIN_LOGS.format(split=muse.split)
            logs.parent.mkdir(parents=True)
            shutil.copyfile(muse.retain_logs, logs)
        model, template = f"{data}_target", muse.template
    configs = folder / "configs" / "model"
    configs.mkdir(parents=True)
    (configs / f"{session.settings.case}-unguarded.yaml").write_text(
        model_config(model, template, None), encoding="utf-8"
    )
    for path in bundles:
        shutil.copytree(path, folder / BUNDLES / path.name)
        (configs / f"{path.name}.yaml").write_text(
            model_config(model, template, f"{BUNDLES}/{path.name}"), encoding="utf-8"
        )


def export(session: Session, bundles: list[Path]) -> Path | None:
    """Write ``{run dir}/open-unlearning/`` for ``bundles``, replacing the last one whole: it is
    built beside and renamed into place, so a failure leaves the old folder or none. Bundles of
    a model transformers cannot load by name get no folder, and a warning says so."""
    root = session.run_dir.root / OPEN_UNLEARNING_DIR
    check_kind(root, folder=True)
    model = base_model(bundles, session.registry.entries["strategies"])
    if model is None:
        session.console.print(
            "[yellow]warning:[/] no open-unlearning model configs: the bundles name no "
            "transformers model to load (export from a model directory or hub id)"
        )
        return None
    building = root.with_name(f".{root.name}.{os.getpid()}.building")
    shutil.rmtree(building, ignore_errors=True)
    try:
        _fill(building, session, bundles, model)
        shutil.rmtree(root, ignore_errors=True)
        building.rename(root)
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise write_failed(root, exc) from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return root
