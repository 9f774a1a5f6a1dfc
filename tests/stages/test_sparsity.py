"""The statistics stage on the tiny case, checked against a dense recomputation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import TinyWorld, tiny_registry

from dsg.core.errors import UserError
from dsg.engine.session import Session
from dsg.stages import sparsity
from dsg.stages.corpus import build_rows, load_documents


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("world"))


def open_session(world: TinyWorld, out: Path, **cli: Any) -> Session:
    return Session.open({"case": "tiny", "out": out, **cli}, reg=tiny_registry(world))


def dense_reference(session: Session) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Means over valid tokens and the dense retain activations, computed the plain way."""
    s = session.settings
    model, sae = session.checked_pair()
    forget, retain = build_rows(
        model.tokenizer,
        load_documents(session),
        seq_len=s.seq_len,
        dataset_size=s.dataset_size,
        dataset_fraction=s.dataset_fraction,
        seed=s.seed,
    )
    tok = model.tokenizer
    special = torch.tensor([tok.pad_token_id, tok.eos_token_id, tok.bos_token_id])

    def acts(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, cache = model.model.run_with_cache(rows, names_filter=sae.hook_name)
            return sae.sae.encode(cache[sae.hook_name]).double()

    def mean(rows: torch.Tensor) -> torch.Tensor:
        valid = ~torch.isin(rows, special)
        return acts(rows)[valid].sum(0) / valid.sum()

    return mean(forget), mean(retain), acts(retain), retain


def test_means_and_rates_match_a_dense_computation(world: TinyWorld, tmp_path: Path) -> None:
    session = open_session(world, tmp_path)
    stats = sparsity.ensure(session)
    forget_mean, retain_mean, retain_acts, retain_rows = dense_reference(session)
    assert stats.forget_mean.dtype == stats.retain_mean.dtype == torch.float64
    assert stats.n_rows == retain_rows.shape[0] and stats.seq_len == 16
    torch.testing.assert_close(stats.forget_mean, forget_mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats.retain_mean, retain_mean, rtol=1e-5, atol=1e-7)
    order = torch.argsort(stats.forget_mean, descending=True)[:10]
    rates = stats.retain_rates(order, [1, 3, 10])
    for n in (1, 3, 10):
        fired = (retain_acts[:, :, order[:n]] > 0).any(-1)
        fired[:, 0] = False  # position 0 never counts but stays in the denominator
        expected = fired.sum(1).double() / 16
        assert torch.equal(rates[n], expected)
    assert (rates[1] <= rates[3]).all() and (rates[3] <= rates[10]).all()


def test_batch_size_does_not_change_anything(world: TinyWorld, tmp_path: Path) -> None:
    one = sparsity.ensure(open_session(world, tmp_path / "b1", batch_size=1))
    eight = sparsity.ensure(open_session(world, tmp_path / "b8", batch_size=8))
    assert one.key == eight.key
    assert torch.equal(one.forget_mean, eight.forget_mean)
    assert torch.equal(one.retain_mean, eight.retain_mean)
    for a, b in zip(one.chunks, eight.chunks, strict=True):
        assert (one.folder / a).read_bytes() == (eight.folder / b).read_bytes()


def test_second_run_loads_and_inputs_change_the_key(
    world: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sparsity.ensure(open_session(world, tmp_path))

    def no_compute(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("recomputed although the artifact exists")

    with monkeypatch.context() as m:
        m.setattr(sparsity, "compute", no_compute)
        again = sparsity.ensure(open_session(world, tmp_path))
    assert again.folder == first.folder
    assert torch.equal(again.retain_mean, first.retain_mean)
    assert again.chunks == first.chunks
    reseeded = sparsity.ensure(open_session(world, tmp_path, seed=1))
    assert reseeded.key != first.key
    assert (first.folder / "meta.json").exists()


def test_calibration_chunks_split_rows_without_changing_rates(
    world: TinyWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = sparsity.ensure(open_session(world, tmp_path / "whole"))
    monkeypatch.setattr(sparsity, "CHUNK_ENTRIES", 50)
    split = sparsity.ensure(open_session(world, tmp_path / "split"))
    assert len(whole.chunks) == 1 and len(split.chunks) > 1
    order = torch.randperm(whole.d_sae, generator=torch.Generator().manual_seed(0))
    a, b = whole.retain_rates(order, [2, 40]), split.retain_rates(order, [2, 40])
    assert torch.equal(a[2], b[2]) and torch.equal(a[40], b[40])


def test_interrupted_artifact_is_rebuilt(world: TinyWorld, tmp_path: Path) -> None:
    stats = sparsity.ensure(open_session(world, tmp_path))
    (stats.folder / "meta.json").unlink()
    (stats.folder / "calibration-00007.safetensors").write_bytes(b"half written")
    rebuilt = sparsity.ensure(open_session(world, tmp_path))
    assert torch.equal(rebuilt.forget_mean, stats.forget_mean)
    assert not (stats.folder / "calibration-00007.safetensors").exists()


def test_corrupted_statistics_are_a_user_error(world: TinyWorld, tmp_path: Path) -> None:
    stats = sparsity.ensure(open_session(world, tmp_path))
    (stats.folder / sparsity.STATS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="corrupted"):
        sparsity.ensure(open_session(world, tmp_path))


def test_hook_beyond_the_model_is_a_user_error(tmp_path: Path) -> None:
    deep = TinyWorld(tmp_path / "deep", hook_layer=5)
    with pytest.raises(UserError, match=r"blocks\.5\.hook_resid_post.*2 layers"):
        sparsity.ensure(open_session(deep, tmp_path / "out"))
