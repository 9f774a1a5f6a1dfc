"""The paper's cases (bio, cyber, books, news) read their data through offline mirrors laid out
as hub snapshots, and fail with one clear message when data is missing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mirrors import (
    BIO_MMLU,
    CYBER_MMLU,
    write_bio_forget_corpus,
    write_case_mirror,
    write_hub_dataset,
)
from typer.testing import CliRunner

from dsg.api.data import DataSource
from dsg.api.interfaces import Case
from dsg.api.mirror import HubDataset, allow_patterns, case_datasets
from dsg.api.plugins import build_registry
from dsg.cli.app import app
from dsg.core.errors import UserError
from dsg.stages.corpus import case_texts

GEMMA_SCOPE = "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142"


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return build_registry().entries["cases"]


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    for case in ("bio", "books", "news"):
        write_case_mirror(root, case)
    return root


def test_cases_are_registered_with_paper_defaults(cases) -> None:
    for name in ("bio", "cyber", "books", "news"):
        assert isinstance(cases[name], Case)
        assert cases[name].prompt_format() is None
    bio, cyber = cases["bio"].defaults, cases["cyber"].defaults
    assert (bio.model, bio.sae) == ("gemma-2-2b-it", GEMMA_SCOPE)
    assert bio.ratio_percentiles == (95.0,) and bio.n_features == (20, 50, 100, 200)
    assert bio.multipliers == (500.0,) and (bio.seq_len, bio.dataset_size) == (1024, 1024)
    assert cyber.ratio_percentiles == (90.0,) and cyber.n_features == (30,)
    assert cases["books"].defaults.ratio_percentiles == (95.0, 90.0)
    assert cases["news"].defaults.ratio_percentiles == (90.0,)
    for name in ("books", "news"):
        assert cases[name].defaults.n_features == (10, 20, 30)


def test_bio_reads_mirror_and_user_forget_corpus(cases, mirror_dir: Path, tmp_path: Path) -> None:
    bio = cases["bio"]
    data = DataSource(data_dir=mirror_dir)
    with pytest.raises(UserError, match="--forget-corpus"):
        bio.forget_texts(data)
    corpus = write_bio_forget_corpus(tmp_path / "bio-forget-corpus.jsonl")
    with_corpus = DataSource(data_dir=mirror_dir, forget_corpus=corpus)
    forget = case_texts(SimpleNamespace(data=with_corpus, case=bio), "forget")
    assert len(forget) == 3 and forget[0].startswith("Bio forget document 0")
    retain = bio.retain_texts(data)
    assert len(retain) == 7 and "" in retain  # raw documents: the core filters by length

    sets = bio.eval_sets(data)
    mmlu_names = ["mmlu-" + s.replace("_", "-") for s in BIO_MMLU]
    assert [s.name for s in sets] == ["wmdp-bio", *mmlu_names]
    assert sets[0].subject == "biology" and len(sets[0].questions) == 4
    assert sets[1].name == "mmlu-high-school-us-history"
    assert sets[1].subject == "high school us history"
    question = sets[0].questions[1]
    assert len(question.choices) == 4 and question.answer == 1


def test_cyber_reads_hub_forget_corpus_and_swaps_mmlu_subject(cases, mirror_dir: Path) -> None:
    cyber = cases["cyber"]
    data = DataSource(data_dir=mirror_dir)
    forget = cyber.forget_texts(data)
    assert len(forget) == 5 and forget[0].startswith("A long enough cyber-forget document")
    sets = cyber.eval_sets(data)
    assert [s.name for s in sets] == ["wmdp-cyber"] + [
        "mmlu-" + s.replace("_", "-") for s in CYBER_MMLU
    ]
    assert sets[0].subject == "cyber security"


def test_corpus_options_override_every_case(cases, mirror_dir: Path, tmp_path: Path) -> None:
    forget = tmp_path / "forget.txt"
    forget.write_text("my forget line one\n\nmy forget line two\n", encoding="utf-8")
    retain = tmp_path / "retain.jsonl"
    retain.write_text('{"text": "my retain doc"}\n', encoding="utf-8")
    data = DataSource(data_dir=mirror_dir, forget_corpus=forget, retain_corpus=retain)
    for name in ("bio", "cyber", "books", "news"):
        run = SimpleNamespace(data=data, case=cases[name])  # what case_texts reads of a session
        assert case_texts(run, "forget") == ["my forget line one", "my forget line two"]
        assert case_texts(run, "retain") == ["my retain doc"]


@pytest.mark.parametrize("name, corpus", [("books", "Books"), ("news", "News")])
def test_muse_cases_read_raw_forget_and_retain1(cases, mirror_dir: Path, name, corpus) -> None:
    case = cases[name]
    data = DataSource(data_dir=mirror_dir)
    forget, retain = case.forget_texts(data), case.retain_texts(data)
    assert len(forget) == 4 and forget[0].startswith(f"A long enough {corpus} forget")
    assert len(retain) == 5 and retain[0].startswith(f"A long enough {corpus} retain")
    assert case.eval_sets(data) == []


def test_muse_target_placeholder_explains_what_to_pass(cases) -> None:
    loader = build_registry().entries["model_loaders"]["muse-target"]
    spec = cases["books"].defaults.model
    assert loader.can_load(spec) and not loader.can_load("gemma-2-2b-it")
    with pytest.raises(UserError, match="never published.*--model PATH"):
        loader.load(spec, device="cpu", dtype=torch.float32)


def test_missing_mirror_or_column_is_a_user_error(cases, mirror_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dsg data mirror"):
        cases["cyber"].forget_texts(DataSource(data_dir=tmp_path))
    write_hub_dataset(
        tmp_path,
        "cais/wmdp-corpora",
        {("cyber-forget-corpus", "train"): [{"body": "no text column here"}]},
    )
    with pytest.raises(UserError, match="no column 'text'"):
        cases["cyber"].forget_texts(DataSource(data_dir=tmp_path))


def test_cases_declare_what_to_mirror(cases) -> None:
    bio = case_datasets(cases["bio"])
    assert HubDataset("cais/wmdp", "wmdp-bio", "test") in bio
    assert HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "test") in bio
    assert not any(d.hub_id == "cais/wmdp-corpora" for d in bio)  # the bio corpus is gated
    cyber = case_datasets(cases["cyber"])
    assert HubDataset("cais/wmdp-corpora", "cyber-forget-corpus", "train") in cyber
    assert HubDataset("cais/mmlu", "college_biology", "test") in cyber
    assert [d.split for d in case_datasets(cases["news"])] == ["forget", "retain1"]
    assert allow_patterns(bio[:1]) == ["*wikitext-2-raw-v1*", "README.md"]


def test_data_mirror_command_offline_and_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    offline = runner.invoke(app, ["data", "mirror", "--case", "cyber", str(tmp_path / "m")])
    assert offline.exit_code == 2 and "needs internet" in offline.output
    assert runner.invoke(app, ["data", "mirror", str(tmp_path)]).exit_code == 2
    unknown = runner.invoke(app, ["data", "mirror", "--case", "nope", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown case 'nope'" in unknown.output
