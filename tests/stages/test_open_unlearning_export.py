"""The folder `dsg muse-export` writes for open-unlearning: model configs that load the guarded
and the plain model through open-unlearning's entry, and, for the model organism, its MUSE data
and target where open-unlearning's MUSE experiment reads them, and its retain model and that
model's log where ``retain_logs_path`` names it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from dsg_organism import (
    MODEL_DIR,
    MUSE_DIR,
    MUSE_TEMPLATE,
    RETAIN_LOGS,
    RETAIN_MODEL_DIR,
    OrganismCase,
)
from paths import REPO

from dsg.bundle import Bundle
from dsg.stages.open_unlearning_export import BASE_TEMPLATE, export
from dsg_runtime.open_unlearning import GuardedModel

FIXTURE_BUNDLE = REPO / "runtime" / "tests" / "organism_reference" / "bundle"


def _bundle(tmp_path: Path, hf: str | None) -> Path:
    """The organism's reference bundle, naming ``hf`` as its model."""
    loaded = Bundle.load(FIXTURE_BUNDLE)
    path = tmp_path / "bundles" / "organism-p95-n100-m500-dynamic-test"
    dataclasses.replace(loaded, base_model={**loaded.base_model, "hf": hf}).save(path)
    return path


def _session(tmp_path: Path, case: Any, name: str) -> Any:
    return SimpleNamespace(
        case=case,
        settings=SimpleNamespace(case=name),
        run_dir=SimpleNamespace(root=tmp_path / "run"),
        registry=SimpleNamespace(entries={"strategies": {}}),
    )


def _load(folder: Path, config: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The model as open-unlearning's get_model builds it, from open-unlearning's root."""
    monkeypatch.chdir(folder)
    cfg = yaml.safe_load((folder / "configs" / "model" / f"{config}.yaml").read_text())
    args = dict(cfg["model_args"])
    path = args.pop("pretrained_model_name_or_path")
    dtype = getattr(torch, args.pop("torch_dtype"))
    if cfg["model_handler"] == "GuardedModel":
        return cfg, GuardedModel.from_pretrained(
            pretrained_model_name_or_path=path, torch_dtype=dtype, **args
        )
    from transformers import AutoModelForCausalLM

    return cfg, AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **args)


def test_the_organism_folder_is_open_unlearnings_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path, str(MODEL_DIR))
    folder = export(_session(tmp_path, OrganismCase(), "organism"), [bundle])
    assert folder == tmp_path / "run" / "open-unlearning"
    data = folder / "muse-bench" / "MUSE-Organism"
    shipped = sorted(p.relative_to(MUSE_DIR) for p in MUSE_DIR.rglob("*") if p.is_file())
    assert sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file()) == shipped
    target = folder / "muse-bench" / "MUSE-Organism_target"
    assert (target / "model.safetensors").read_bytes() == (
        MODEL_DIR / "model.safetensors"
    ).read_bytes()
    retrain = folder / "muse-bench" / "MUSE-Organism_retrain"
    assert (retrain / "model.safetensors").read_bytes() == (
        RETAIN_MODEL_DIR / "model.safetensors"
    ).read_bytes()
    logs = folder / "saves" / "eval" / "MUSE-Organism_retrain" / "MUSE_EVAL.json"
    assert logs.read_bytes() == RETAIN_LOGS.read_bytes()
    assert 0 < json.loads(logs.read_text())["mia_min_k"]["agg_value"] < 1  # what privleak reads

    cfg, guarded = _load(folder, bundle.name, monkeypatch)
    assert cfg["template_args"] == {"apply_chat_template": False, **MUSE_TEMPLATE}
    assert cfg["model_args"]["dsg_bundle"] == f"dsg_bundles/{bundle.name}"
    assert cfg["tokenizer_args"]["pretrained_model_name_or_path"] == str(target.relative_to(folder))
    assert (
        Bundle.load(folder / "dsg_bundles" / bundle.name).features == Bundle.load(bundle).features
    )
    plain_cfg, plain = _load(folder, "organism-unguarded", monkeypatch)
    assert plain_cfg["model_handler"] == "AutoModelForCausalLM"
    assert not hasattr(plain, "dsg_guardrail")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg["tokenizer_args"]["pretrained_model_name_or_path"])
    questions = [
        json.loads(line)["question"] for line in (data / "knowmem" / "forget_qa.jsonl").open()
    ]
    enc = tok(f"Q: {questions[0]} A:", return_tensors="pt")
    with torch.no_grad():
        guarded(**enc)
    assert guarded.dsg_guardrail.fired.tolist() == [True]


class _OrganismWithoutRetainModel(OrganismCase):
    def muse_data(self) -> Any:
        return dataclasses.replace(super().muse_data(), retain_model=None, retain_logs=None)


def test_a_case_without_a_retain_model_ships_no_reference(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, str(MODEL_DIR))
    folder = export(_session(tmp_path, _OrganismWithoutRetainModel(), "organism"), [bundle])
    assert (folder / "muse-bench" / "MUSE-Organism_target").is_dir()
    assert not (folder / "muse-bench" / "MUSE-Organism_retrain").exists()
    assert not (folder / "saves").exists()


def test_the_data_reads_as_open_unlearning_reads_it(tmp_path: Path) -> None:
    """``datasets.load_dataset(path, name=config, split=split)``, open-unlearning's call."""
    import datasets

    counts = {
        ("knowmem", "forget_qa"): 80,
        ("knowmem", "retain_qa"): 144,
        ("knowmem", "forget_qa_icl"): 3,
        ("knowmem", "retain_qa_icl"): 3,
        ("verbmem", "forget"): 48,
        ("privleak", "forget"): 100,
        ("privleak", "holdout"): 100,
    }
    for (config, split), n in counts.items():
        rows = datasets.load_dataset(
            str(MUSE_DIR), name=config, split=split, cache_dir=str(tmp_path)
        )
        assert len(rows) == n, (config, split)
    assert set(rows.column_names) == {"text"}


def test_a_case_without_muse_data_gets_configs_for_its_own_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = SimpleNamespace(name="plain")  # no muse_data: not a MuseCase
    bundle = _bundle(tmp_path, str(MODEL_DIR))
    folder = export(_session(tmp_path, case, "plain"), [bundle])
    assert not (folder / "muse-bench").exists()
    cfg, guarded = _load(folder, bundle.name, monkeypatch)
    assert cfg["model_args"]["pretrained_model_name_or_path"] == str(MODEL_DIR)
    assert cfg["template_args"] == {"apply_chat_template": False, **BASE_TEMPLATE}
    assert hasattr(guarded, "dsg_guardrail")


def test_bundles_without_a_model_to_load_get_no_folder_and_a_warning(tmp_path: Path) -> None:
    from rich.console import Console

    bundle = _bundle(tmp_path, None)
    session = _session(tmp_path, OrganismCase(), "organism")
    session.console = Console(record=True, width=200)
    assert export(session, [bundle]) is None
    assert "no open-unlearning model configs" in session.console.export_text()
    assert not (tmp_path / "run" / "open-unlearning").exists()


def test_the_open_unlearning_session_uses_the_organisms_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``nox -s open_unlearning`` runs without dsg, so it names the template itself."""
    import importlib

    folder = REPO / "runtime" / "tests_open_unlearning"
    monkeypatch.syspath_prepend(str(folder))
    session_test = importlib.import_module("test_muse_organism")
    assert dataclasses.asdict(session_test.TEMPLATE) == MUSE_TEMPLATE
