"""The paper's cases end to end through the CLI, on offline hub mirrors in the real schemas, a
tiny Gemma-2 model directory (the ``local`` loader) and a sae_lens SAE directory (``local-sae``).

The tiny model is untrained, so the accuracies mean nothing; what is checked is the data path:
which sets are read, how many questions each has, which configurations are swept, and that the
reported numbers are the ones the per-set counts imply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from mirrors import (
    BIO_MMLU,
    CYBER_MMLU,
    mcq_rows,
    text_rows,
    write_bio_forget_corpus,
    write_case_mirror,
    write_hub_dataset,
)
from tiny_gemma import write_tiny_gemma
from typer.testing import CliRunner

from dsg.api.data import read_text_corpus
from dsg.cli.app import app
from dsg.core.artifacts import fingerprint_texts
from dsg.stages.corpus import filter_docs

HOOK = "blocks.1.hook_resid_post"
D_SAE = 48
N_FEATURES = (2, 4)
STRATEGIES = ("dynamic", "static")
MULTIPLIERS = (50.0,)
CONFIG = f"""
seq_len = 32
dataset_size = 64
batch_size = 4
ratio_percentiles = [50]
forget_percentile = 0
n_features = {list(N_FEATURES)}
multipliers = {list(MULTIPLIERS)}
strategies = {list(STRATEGIES)}
questions = "all"
"""

# Question rows per set in the mirror, all different, so a count names the set it came from.
WMDP_ROWS = {"wmdp-bio": 4, "wmdp-cyber": 5, "wmdp-chem": 2}
MMLU_ROWS = {
    "high_school_us_history": 3,
    "college_computer_science": 2,
    "high_school_geography": 4,
    "human_aging": 1,
    "college_biology": 6,
}


def mmlu_name(subject: str) -> str:
    return "mmlu-" + subject.replace("_", "-")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gemma(tmp_path_factory.mktemp("e2e-gemma") / "tiny-gemma-2")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JumpReLU SAE on the layer-1 residual stream whose features fire on about half the
    positions: unit-norm encoder columns, zero bias and a small threshold."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name="tiny-gemma-2")
    metadata.hook_name = HOOK
    torch.manual_seed(1)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=D_SAE, metadata=metadata))
    with torch.no_grad():
        w_enc = torch.randn(32, D_SAE)
        sae.W_enc.copy_(w_enc / w_enc.norm(dim=0, keepdim=True))
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.05)
    path = tmp_path_factory.mktemp("e2e-sae") / "sae"
    sae.save_model(path)
    return path


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-mirror")
    for case in ("bio", "news"):
        write_case_mirror(root, case)
    # Same schemas as write_wmdp / write_mmlu, with a distinct number of rows per set.
    write_hub_dataset(
        root, "cais/wmdp", {(name, "test"): mcq_rows(name, n) for name, n in WMDP_ROWS.items()}
    )
    mmlu: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for subject, n in MMLU_ROWS.items():
        mmlu[(subject, "test")] = mcq_rows(subject, n, subject=subject)
        mmlu[(subject, "dev")] = mcq_rows(subject, 1, subject=subject)
    write_hub_dataset(root, "cais/mmlu", mmlu)
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e-config") / "dsg.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)


def invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def texts(rows: list[dict[str, Any]]) -> list[str]:
    return [row["text"] for row in rows]


def check_corpora(out: Path, forget: list[str], retain: list[str], seq_len: int) -> None:
    """The sparsity stage read exactly these documents (after the 50-character filter)."""
    (meta_path,) = out.glob("sparsity/*/meta.json")
    meta = json.loads(meta_path.read_text())
    inputs = meta["inputs"]
    assert inputs["forget_texts"] == fingerprint_texts(filter_docs(forget, 50))
    assert inputs["retain_texts"] == fingerprint_texts(filter_docs(retain, 50))
    assert inputs["seq_len"] == meta["seq_len"] == seq_len and meta["d_sae"] == D_SAE
    assert meta["n_rows"] > 0


def run_evaluate(case: str, out: Path, extra: list[str], paths: dict[str, Path]) -> dict:
    args = ["evaluate", "--case", case, "--data-dir", str(paths["mirror"])]
    args += ["--model", str(paths["model"]), "--sae", str(paths["sae"])]
    args += ["--out", str(out), "--config", str(paths["config"]), *extra]
    result = invoke(args)
    printed = Path(result.stdout.strip().splitlines()[-1])  # the run's own report
    assert printed.name == "report.json" and printed.parent.parent == out / "reports"
    assert printed.read_text() == (out / "report.json").read_text()  # the copy at the top
    return json.loads(printed.read_text())


def check_report(report: dict, case: str, target: str, subjects: tuple[str, ...]) -> None:
    side_effects = [mmlu_name(s) for s in subjects]
    assert report["target"] == target
    assert report["side_effects"] == side_effects
    assert report["question_subset"] == "all"
    # Every row of the mirror's test split, under questions = "all".
    expected = {target: WMDP_ROWS[target], **{mmlu_name(s): MMLU_ROWS[s] for s in subjects}}
    assert {name: (v["questions"], v["evaluated"]) for name, v in report["sets"].items()} == {
        name: (n, n) for name, n in expected.items()
    }
    assert report["sets"][target]["role"] == "target"
    assert {report["sets"][name]["role"] for name in side_effects} == {"side_effect"}
    assert set(report["baseline"]) == set(expected)
    # The pooled baseline side-effect accuracy is over exactly this case's four MMLU sets.
    side_total = sum(MMLU_ROWS[s] for s in subjects)
    baseline_correct = {n: round(report["baseline"][n] * expected[n]) for n in side_effects}
    assert report["baseline_side_effect_accuracy"] == pytest.approx(
        sum(baseline_correct.values()) / side_total
    )

    settings = report["settings"]
    assert settings["case"] == case and settings["seq_len"] == 32
    assert report["inputs"]["hook"] == HOOK

    configs = report["configs"]
    assert sorted((c["n_features"], c["strategy"], c["multiplier"]) for c in configs) == sorted(
        (n, strategy, m) for n in N_FEATURES for strategy in STRATEGIES for m in MULTIPLIERS
    )
    for c in configs:
        assert c["ratio_percentile"] == 50.0
        assert len(c["features"]) == c["n_features"]
        assert all(0 <= j < D_SAE for j in c["features"])
        assert (c["threshold"] is None) == (c["strategy"] == "static")
        assert {name: count["total"] for name, count in c["counts"].items()} == expected
        assert set(c["per_set"]) == set(c["fired"]) == set(expected)
        # The pooled side-effect accuracy is over exactly this case's four MMLU sets.
        pooled = [c["counts"][name] for name in side_effects]
        correct, total = sum(p["correct"] for p in pooled), sum(p["total"] for p in pooled)
        assert total == side_total
        assert c["side_effect_accuracy"] == pytest.approx(correct / total)
        target_count = c["counts"][target]
        assert c["target_accuracy"] == pytest.approx(target_count["correct"] / expected[target])
        for name, count in c["counts"].items():
            assert c["per_set"][name] == pytest.approx(count["correct"] / count["total"])
    # The static clamp fires wherever the features are active at all: the SAE is not inert.
    static = [c for c in configs if c["strategy"] == "static"]
    assert any(rate > 0 for c in static for rate in c["fired"].values())
    # Same features for the same n, whatever the strategy.
    by_n = {(c["n_features"], c["strategy"]): c["features"] for c in configs}
    for n in N_FEATURES:
        assert by_n[(n, "dynamic")] == by_n[(n, "static")]
    assert by_n[(N_FEATURES[0], "dynamic")] == by_n[(N_FEATURES[1], "dynamic")][: N_FEATURES[0]]


def test_evaluate_bio_end_to_end(
    mirror: Path, gemma_dir: Path, sae_dir: Path, config_file: Path, tmp_path: Path
) -> None:
    corpus = write_bio_forget_corpus(tmp_path / "bio-forget-corpus.jsonl")
    paths = {"mirror": mirror, "model": gemma_dir, "sae": sae_dir, "config": config_file}
    report = run_evaluate("bio", tmp_path / "bio", ["--forget-corpus", str(corpus)], paths)
    check_report(report, "bio", "wmdp-bio", BIO_MMLU)
    assert report["side_effects"] == [
        "mmlu-high-school-us-history",
        "mmlu-college-computer-science",
        "mmlu-high-school-geography",
        "mmlu-human-aging",
    ]
    assert report["sets"]["wmdp-bio"]["subject"] == "biology"
    assert report["settings"]["forget_corpus"] == str(corpus)
    wikitext = texts(text_rows("wikitext", 5))  # the wikitext-2-raw-v1 test split
    check_corpora(tmp_path / "bio", read_text_corpus(corpus), wikitext, 32)


def test_evaluate_cyber_end_to_end(
    mirror: Path, gemma_dir: Path, sae_dir: Path, config_file: Path, tmp_path: Path
) -> None:
    paths = {"mirror": mirror, "model": gemma_dir, "sae": sae_dir, "config": config_file}
    report = run_evaluate("cyber", tmp_path / "cyber", [], paths)
    check_report(report, "cyber", "wmdp-cyber", CYBER_MMLU)
    assert report["side_effects"] == [
        "mmlu-high-school-us-history",
        "mmlu-college-biology",
        "mmlu-high-school-geography",
        "mmlu-human-aging",
    ]
    assert "mmlu-college-computer-science" not in report["sets"]
    assert report["sets"]["wmdp-cyber"]["subject"] == "cyber security"
    assert report["settings"]["forget_corpus"] is None
    # cais/wmdp-corpora cyber-forget-corpus (JSONL), wikitext-2-raw-v1 test
    forget, retain = texts(text_rows("cyber-forget", 3)), texts(text_rows("wikitext", 5))
    check_corpora(tmp_path / "cyber", forget, retain, 32)
    # college_biology (6 rows) is in the pool: without it the pool would hold 10 questions.
    assert sum(report["configs"][0]["counts"][mmlu_name(s)]["total"] for s in CYBER_MMLU) == 14


def test_select_news_end_to_end(
    mirror: Path, gemma_dir: Path, sae_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "news.toml"
    config.write_text("seq_len = 16\ndataset_size = 64\nforget_percentile = 0\n", encoding="utf-8")
    out = tmp_path / "news"
    args = ["select", "--case", "news", "--model", str(gemma_dir), "--sae", str(sae_dir)]
    args += ["--data-dir", str(mirror), "--out", str(out), "--config", str(config)]
    args += ["--ratio-percentile", "50", "--n-features", "1", "--n-features", "3"]
    args += ["--n-features", "6"]
    result = invoke(args)
    (line,) = result.stdout.strip().splitlines()
    path = Path(line)
    assert path.is_file() and out in path.parents
    selection = json.loads(path.read_text())
    features = selection["features"]
    assert len(features) >= 6 and len(set(features)) == len(features)
    assert all(0 <= j < D_SAE for j in features)
    thresholds = {int(n): float(t) for n, t in selection["thresholds"].items()}
    assert sorted(thresholds) == [1, 3, 6]
    values = [thresholds[n] for n in sorted(thresholds)]
    assert values == sorted(values) and all(0.0 <= t <= 1.0 for t in values)
    assert values[-1] > 0.0  # six features of a firing SAE are hit somewhere in the retain rows
    # MUSE-News raw: forget and retain1 (not retain2 or holdout)
    forget, retain = texts(text_rows("News forget", 2)), texts(text_rows("News retain", 3))
    check_corpora(out, forget, retain, 16)


def test_two_mirrors_of_one_dataset_do_not_share_a_cache(tmp_path: Path) -> None:
    """datasets caches a local folder by name and README only; dsg must read each mirror's rows."""
    from dsg.api.data import DataSource

    def rows_read(root: Path, n: int) -> int:
        write_hub_dataset(root, "cais/wmdp", {("wmdp-bio", "test"): mcq_rows("biology", n)})
        return len(DataSource(data_dir=root).load_dataset("cais/wmdp", "wmdp-bio", split="test"))

    assert rows_read(tmp_path / "a", 2) == 2
    assert rows_read(tmp_path / "b", 5) == 5  # another mirror, same hub id and README
    assert rows_read(tmp_path / "a", 7) == 7  # the first mirror, fetched again
