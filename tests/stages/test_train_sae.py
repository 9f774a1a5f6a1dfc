"""dsg train-sae on the organism: a short run gives a folder sae_lens and dsg load, with
metrics that an independent computation reproduces; a run stopped after a checkpoint resumes
to the very weights of a run that never stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dsg.core.artifacts import read_json, read_tensors
from dsg.core.errors import UserError
from dsg.engine.session import Session
from dsg.stages.train_sae import stage

HOOK = "blocks.1.hook_resid_post"
SHORT = {
    "case": "organism",
    "sae_hook": HOOK,
    "sae_width": 128,
    "sae_k": 8,
    "sae_tokens": 3072,
    "sae_batch": 256,
    "sae_eval_tokens": 512,
    "batch_size": 16,
}


def open_session(out: Path, **more: Any) -> Session:
    return Session.open({**SHORT, "out": out, **more})


@pytest.fixture(scope="module")
def topk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, Path]:
    session = open_session(tmp_path_factory.mktemp("train-sae"))
    return session, stage.run(session)


def test_a_short_run_writes_a_sae_lens_folder_with_its_metrics(
    topk: tuple[Session, Path],
) -> None:
    from sae_lens import SAE, TopKSAE

    from dsg.api.plugins import registry

    session, folder = topk
    sae = SAE.load_from_disk(str(folder))
    assert isinstance(sae, TopKSAE) and sae.cfg.k == 8 and sae.cfg.d_sae == 128
    loaded = (
        registry()
        .get("sae_loaders", "local-sae")
        .load(str(folder), device="cpu", dtype=torch.float32)
    )
    assert (loaded.hook_name, loaded.hook_layer) == (HOOK, 1)
    assert (folder / stage.PLOT).stat().st_size > 0
    record = read_json(folder / stage.METRICS)
    assert record["training_tokens"] == 12 * 256  # ceil(3072 / 256) steps
    held = record["held_out"]
    # the held-out rows again, through sae_lens's own encode and decode
    model = session.model(n_layers=2)
    eval_rows, _ = stage._rows(session, model.tokenizer, stage._texts(session))
    acts = stage._resid(model.model, eval_rows, 2, 16)
    with torch.no_grad():
        latents = sae.encode(acts)
        error = (sae.decode(latents) - acts).pow(2).sum()
    assert held["tokens"] == acts.shape[0] == eval_rows.shape[0] * 127
    assert held["fvu"] == pytest.approx(float(error / (acts - acts.mean(0)).pow(2).sum()), rel=1e-4)
    assert held["l0"] == pytest.approx(float((latents > 0).sum(-1).float().mean()), rel=1e-6)
    assert held["dead_latents"] == int(((latents > 0).sum(0) == 0).sum())
    assert 0 < held["fvu"] < 1
    assert held["loss_with_sae"] > held["loss"] > 0
    # a curve of every step that went down
    assert record["curve"][-1]["fvu"] < record["curve"][0]["fvu"]
    # the same settings find the artifact instead of training again
    assert stage.run(open_session(session.settings.out)) == folder


def test_a_stopped_run_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jump = {"sae_architecture": "jumprelu", "sae_sparsity": 0.01}
    whole = stage.run(open_session(tmp_path / "whole", **jump))

    saved = stage._checkpoint

    def stop_after_the_fifth(path: Path, params: dict, opt: Any, step: int, curve: list) -> None:
        saved(path, params, opt, step, curve)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_checkpoint", stop_after_the_fifth)
    stopped = open_session(tmp_path / "stopped", sae_checkpoint_seconds=0, **jump)
    with pytest.raises(KeyboardInterrupt):
        stage.run(stopped)
    monkeypatch.setattr(stage, "_checkpoint", saved)
    (checkpoint,) = (tmp_path / "stopped").glob(f"train-sae/*.work/{stage.CHECKPOINT}")
    assert int(read_tensors(checkpoint)["next_step"][0]) == 5
    resumed = stage.run(stopped)
    assert not checkpoint.parent.exists()  # the work folder goes with the finished artifact
    a = read_tensors(whole / "sae_weights.safetensors")
    b = read_tensors(resumed / "sae_weights.safetensors")
    assert set(a) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert read_json(whole / stage.METRICS)["curve"] == read_json(resumed / stage.METRICS)["curve"]


def test_a_hook_beyond_the_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="beyond model"):
        stage.run(open_session(tmp_path, sae_hook="blocks.9.hook_resid_post"))
    with pytest.raises(UserError, match="--sae-hook"):
        stage.run(open_session(tmp_path, sae_hook=None))
    with pytest.raises(UserError, match="residual stream, not 'blocks.1.hook_attn_out'"):
        stage.run(open_session(tmp_path, sae_hook="blocks.1.hook_attn_out"))
