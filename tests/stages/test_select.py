"""The selection stage against hand computations (docs/reference-algorithm.md:
Selection, Calibration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from toy_stats import write_stats

from dsg.config.settings import Settings
from dsg.core import artifacts
from dsg.core.artifacts import RunDir
from dsg.core.errors import UserError
from dsg.stages import select, sparsity

# a toy vector whose selection is worked out by hand
F = [0.5, 0.4, 0.3, 0.0, 0.2, 0.1, 0.0, 0.05]
R = [0.0, 0.0, 0.1, 0.2, 0.0, 0.3, 0.0, 0.0]


def hits(counts: dict[int, int]) -> list[tuple[int, int]]:
    """A row where feature j fires at ``counts[j]`` distinct positions, from position 1 on."""
    row, t = [], 1
    for j, count in counts.items():
        row += [(t + i, j) for i in range(count)]
        t += count
    return row


@pytest.fixture
def toy(tmp_path: Path) -> sparsity.SparsityStats:
    # Feature 0 (first in the p=50 order) fires on 2,1,4,1,2,1 positions: rho = .2,.1,.4,.1,.2,.1
    # (invariant 9, B=1 -> alpha 0.35). Feature 1 adds hits; feature 4 fires where 0 does.
    rows = [
        hits({0: 2, 1: 1}),
        hits({0: 1}),
        hits({0: 4, 4: 0}) + [(1, 4)],
        hits({0: 1, 1: 2}),
        hits({0: 2}),
        hits({0: 1, 7: 3}),
    ]
    return write_stats(tmp_path / "stats", F, R, rows)


def session(tmp_path: Path, **settings: Any) -> SimpleNamespace:
    s = Settings(case="toy", model="m", sae="s", out=tmp_path / "run", **settings)
    return SimpleNamespace(settings=s, run_dir=RunDir(s.out))


def test_rates_for_every_prefix(toy: sparsity.SparsityStats) -> None:
    rates = toy.retain_rates(torch.tensor([0, 1, 4, 7]), [1, 2, 3, 4])
    assert rates[1].tolist() == [0.2, 0.1, 0.4, 0.1, 0.2, 0.1]
    assert rates[2].tolist() == [0.3, 0.1, 0.4, 0.3, 0.2, 0.1]
    assert rates[3].tolist() == [0.3, 0.1, 0.4, 0.3, 0.2, 0.1]
    assert rates[4].tolist() == [0.3, 0.1, 0.4, 0.3, 0.2, 0.4]
    assert rates[1].dtype == torch.float64


def test_toy_vector_selection_and_thresholds(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    sess = session(tmp_path, ratio_percentiles=(50.0, 95.0), n_features=(1,))
    half, top = select.ensure(sess)
    assert half.features.tolist() == [0, 1, 4, 7]
    assert top.features.tolist() == [0]
    assert half.thresholds == {1: pytest.approx(0.35, abs=1e-15)}
    assert top.thresholds == half.thresholds
    assert top.top(1).tolist() == [0]
    with pytest.raises(UserError, match="2 features requested but 1 were selected"):
        top.top(2)


def test_thresholds_grow_with_n(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    (sel,) = select.ensure(session(tmp_path, ratio_percentiles=(50.0,), n_features=(4, 1, 2)))
    assert list(sel.thresholds) == [1, 2, 4]
    # 95th percentiles (linear) of the rates in test_rates_for_every_prefix
    assert sel.thresholds[1] == pytest.approx(0.35)
    assert sel.thresholds[2] == pytest.approx(0.375)
    assert sel.thresholds[4] == pytest.approx(0.4)
    values = [sel.thresholds[n] for n in sorted(sel.thresholds)]
    assert values == sorted(values)


def test_selection_is_written_and_reloaded(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    sess = session(tmp_path, ratio_percentiles=(50.0,), n_features=(2,))
    (made,) = select.ensure(sess)
    data = artifacts.read_json(made.path)
    assert data["features"] == [0, 1, 4, 7] and data["thresholds"] == {"2": made.thresholds[2]}
    assert data["inputs"]["sparsity"] == "toystats"
    assert (made.path.parent / "meta.json").exists()

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("selected again although the artifact exists")

    with monkeypatch.context() as m:
        m.setattr("dsg_runtime.guardrail.select_features", boom)
        (loaded,) = select.ensure(sess)
    assert loaded.path == made.path
    assert torch.equal(loaded.features, made.features) and loaded.thresholds == made.thresholds
    (other,) = select.ensure(session(tmp_path, ratio_percentiles=(50.0,), n_features=(3,)))
    assert other.path != made.path


def test_the_artifact_is_keyed_by_every_input_and_force_remakes_it(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    settings = {"ratio_percentiles": (50.0,), "n_features": (2, 1, 2), "stat_decimals": 4}
    (made,) = select.ensure(session(tmp_path, **settings))
    inputs = {
        "sparsity": "toystats",
        "ratio_percentile": 50.0,
        "forget_percentile": 5.0,
        "calibration_percentile": 95.0,
        "stat_decimals": 4,
        "n_features": [1, 2],
    }
    assert artifacts.read_json(made.path)["inputs"] == inputs
    assert artifacts.read_json(made.path.parent / "meta.json")["inputs"] == inputs
    assert made.path.parent.name == artifacts.artifact_key("select", 1, inputs)
    assert made.path.parent.parent.name == "select"
    import dsg_runtime.guardrail

    calls: list[int] = []
    original = dsg_runtime.guardrail.select_features

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dsg_runtime.guardrail, "select_features", counted)
    select.ensure(session(tmp_path, **settings))
    assert calls == []  # found
    (again,) = select.ensure(session(tmp_path, **settings, force=True))
    assert calls == [1] and again.path == made.path  # made again, in the same place


def test_a_corrupted_selection_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "selection.json"
    good = {"ratio_percentile": 50, "features": [3, 1], "thresholds": {"2": 0.25}}
    artifacts.write_json(path, good)
    loaded = select.load(path)
    assert (loaded.ratio_percentile, loaded.features.tolist(), loaded.thresholds) == (
        50.0,
        [3, 1],
        {2: 0.25},
    )
    assert loaded.features.dtype == torch.long
    for bad in ({**good, "features": None}, {**good, "thresholds": {"x": 0.1}}, {"features": []}):
        artifacts.write_json(path, bad)
        with pytest.raises(UserError, match=r"selection.json is corrupted; delete its folder"):
            select.load(path)


def test_top_takes_one_to_all_of_the_selected_features(tmp_path: Path) -> None:
    sel = select.Selection(tmp_path, 50.0, torch.tensor([4, 2, 9]), {})
    assert sel.top(3).tolist() == [4, 2, 9] and sel.top(1).tolist() == [4]
    for n in (0, 4):
        with pytest.raises(UserError, match=f"n = {n} features requested but 3 were selected"):
            sel.top(n)


def test_a_found_selection_does_not_stop_the_others(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[Any] = []

    def ensure(session: Any) -> sparsity.SparsityStats:
        sessions.append(session)
        return toy

    monkeypatch.setattr(select.sparsity, "ensure", ensure)
    first = session(tmp_path, ratio_percentiles=(50.0,), n_features=(1,))
    (half,) = select.ensure(first)
    assert sessions == [first]  # the statistics of this session, not another's
    both = select.ensure(session(tmp_path, ratio_percentiles=(50.0, 95.0), n_features=(1,)))
    assert [s.ratio_percentile for s in both] == [50.0, 95.0]  # found, then made
    assert both[0].path == half.path and both[1].features.tolist() == [0]


def test_the_calibration_percentile_is_the_one_set(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    sess = session(tmp_path, ratio_percentiles=(50.0,), n_features=(1,), calibration_percentile=50)
    (sel,) = select.ensure(sess)
    # the median (linear) of feature 0's rates .2 .1 .4 .1 .2 .1: (.1 + .2) / 2
    assert sel.thresholds == {1: pytest.approx(0.15, abs=1e-15)}


def test_every_n_up_to_the_selection_fits() -> None:
    select.check_counts((1, 4), 4, 50.0)  # n equal to the selection is allowed
    with pytest.raises(UserError) as caught:
        select.check_counts((5, 2, 7), 4, 50.0)
    assert str(caught.value) == (
        "n features 5, 7 exceeds the 4 features selected at ratio percentile 50; use n <= 4 "
        "or a lower ratio percentile"
    )


def test_n_beyond_the_selection_is_an_error(
    toy: sparsity.SparsityStats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: toy)
    with pytest.raises(UserError, match=r"n features 5 exceeds the 4 features selected"):
        select.ensure(session(tmp_path, ratio_percentiles=(50.0,), n_features=(2, 5)))


def test_rounding_follows_percent_f() -> None:
    values = torch.tensor([0.0078125, 4.9e-7, 5.1e-7, 0.1234565, 1.0000004999], dtype=torch.float64)
    rounded = select.round_stats(values, 6).tolist()
    assert rounded == [0.007812, 0.0, 1e-06, float(f"{0.1234565:f}"), 1.0]
    assert torch.equal(select.round_stats(values, -1), values)
    assert select.round_stats(values, 0).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert select.round_stats(values.float(), -1).dtype == torch.float64


def test_rounding_changes_the_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Feature 1's retain mean 4e-7 rounds to 0, so its ratio jumps above feature 0's.
    stats = write_stats(tmp_path / "stats", [0.5, 0.01, 0.1], [1e-5, 4e-7, 0.5], [[(1, 0)]])
    monkeypatch.setattr(select.sparsity, "ensure", lambda session: stats)
    common: dict[str, Any] = {
        "ratio_percentiles": (60.0,),
        "n_features": (1,),
        "forget_percentile": 0.0,
    }
    (rounded,) = select.ensure(session(tmp_path, **common))
    (raw,) = select.ensure(session(tmp_path, stat_decimals=-1, **common))
    assert rounded.features.tolist() == [1]
    assert raw.features.tolist() == [0]
