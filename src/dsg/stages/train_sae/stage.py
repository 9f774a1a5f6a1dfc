"""``dsg train-sae``: activations at the hook, training that checkpoints and resumes, and the
finished sae_lens folder with its held-out metrics.

Only the blocks before the hook run while activations are collected (the model is loaded with
those blocks alone); they are kept in chunks of ``CHUNK_ROWS`` rows in a work folder beside the
artifact, each written atomically, so a stopped run collects only the chunks it lacks. Training
samples each step's tokens with a generator seeded by the seed and the step, and checkpoints
(weights, Adam's state, the step, the curve) in one file written atomically, so a run stopped at
any point, kill -9 included, resumes from its last checkpoint and ends with the same weights as
one that never stopped. The work folder goes once the artifact is committed.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.api.data import read_text_corpus
from dsg.core import artifacts
from dsg.core.errors import UserError
from dsg.core.progress import Tracker
from dsg.engine.backends.base import split_layer
from dsg.stages.corpus import filter_docs, load_documents, tokenize_and_concat
from dsg.stages.train_sae import export, measure, sae_math
from dsg_runtime.hook_names import resid_hook

if TYPE_CHECKING:
    import torch

    from dsg.engine.session import Session

STAGE = "train-sae"
VERSION = 1
CHUNK_ROWS = 64
"""Rows of activations per work file: what a stopped collection loses at most."""
CURVE_POINTS = 100
"""Points of the training curve (one every steps / CURVE_POINTS steps)."""
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.json"
PLOT = "training.png"


def run(session: Session) -> Path:
    """The SAE folder for the session's settings: found when already trained, else trained."""
    s = session.settings
    if not s.sae_hook:
        raise UserError(
            "train-sae needs the hook to train on: pass --sae-hook blocks.N.hook_resid_post"
        )
    if resid_hook(s.sae_hook) is None:
        raise UserError(
            f"train-sae trains on the residual stream, not {s.sae_hook!r}: pass --sae-hook "
            "blocks.N.hook_resid_pre or blocks.N.hook_resid_post"
        )
    split = split_layer(s.sae_hook)
    if s.seq_len < 2:
        raise UserError("train-sae needs rows of at least 2 tokens (the BOS is not trained on)")
    run_dir = session.run_dir
    run_dir.ensure_writable()
    model = session.model(n_layers=max(split, 1))
    cfg = model.model.cfg
    if split > cfg.n_layers:
        raise UserError(
            f"hook {s.sae_hook!r} is beyond model {model.spec!r}, which has {cfg.n_layers} layers"
        )
    if s.seq_len > cfg.n_ctx:
        raise UserError(f"seq_len {s.seq_len} is longer than the model's context ({cfg.n_ctx})")
    texts = _texts(session)
    eval_rows, train_rows = _rows(session, model.tokenizer, texts)
    inputs = {
        "model": {"spec": model.spec, "fingerprint": model.fingerprint},
        "hook": s.sae_hook,
        "texts": artifacts.fingerprint_texts(texts),
        **{name: getattr(s, name) for name in ("seq_len", "seed", "dtype", "sae_architecture")},
        **{name: getattr(s, name) for name in ("sae_width", "sae_tokens", "sae_batch", "sae_lr")},
        "sae_eval_tokens": s.sae_eval_tokens,
        "sparsity": s.sae_k if s.sae_architecture == "topk" else s.sae_sparsity,
    }
    key = artifacts.artifact_key(STAGE, VERSION, inputs)
    found = run_dir.find(STAGE, VERSION, key, force=s.force)
    if found is not None:
        return found
    work = run_dir.folder(STAGE, f"{key}.work")
    if s.force:
        shutil.rmtree(work, ignore_errors=True)
    tracker = Tracker(session.console)
    acts = _activations(model.model, train_rows, split, s.batch_size, work, tracker)
    started = time.perf_counter()
    weights, curve, trained_now = _train(session, acts, work, tracker)
    train_seconds = time.perf_counter() - started
    sae = export.sae_lens_sae(
        weights, s.sae_architecture, s.sae_k, s.sae_hook, model.spec, s.seq_len
    )
    with tracker.timed("train-sae held-out metrics"):
        held_out = _resid(model.model, eval_rows, split, s.batch_size).float()  # on the CPU
        metrics = measure.reconstruction(weights, held_out, s.sae_architecture, s.sae_k)
        full = session.model()
        metrics |= measure.spliced_loss(
            full.model, sae.to(full.model.cfg.device), eval_rows, s.sae_hook, s.batch_size
        )
    record = {
        "model": model.spec,
        "hook": s.sae_hook,
        "architecture": s.sae_architecture,
        "width": s.sae_width,
        "k": s.sae_k if s.sae_architecture == "topk" else None,
        "training_tokens": curve[-1]["tokens"],
        "distinct_training_tokens": int(acts.shape[0]),
        "held_out": metrics,
        "training_tokens_per_second": trained_now / max(train_seconds, 1e-9),  # this process
        "curve": curve,
    }
    with run_dir.building(STAGE, key) as folder:
        export.save(sae.to("cpu"), folder)
        artifacts.write_json(folder / METRICS, record)
        title = f"{model.spec} {s.sae_hook} {s.sae_architecture} {s.sae_width} latents"
        measure.plot_curve(curve, title, folder / PLOT)
        run_dir.commit(STAGE, VERSION, key, inputs, {"held_out": metrics})
    shutil.rmtree(work, ignore_errors=True)
    tracker.summary()
    return folder


def _texts(session: Session) -> list[str]:
    s = session.settings
    if s.sae_corpus is not None:
        texts = filter_docs(read_text_corpus(s.sae_corpus), s.min_chars)
        if not texts:
            raise UserError(f"{s.sae_corpus} has no document longer than {s.min_chars} characters")
        return texts
    docs = load_documents(session)
    return [*docs.retain, *docs.forget]


def _rows(session: Session, tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out rows and training rows (seeded shuffle; no more than the tokens need)."""
    import torch

    s = session.settings
    rows = tokenize_and_concat(tokenizer, texts, s.seq_len)
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(s.seed))]
    per_row = s.seq_len - 1
    n_eval = math.ceil(s.sae_eval_tokens / per_row)
    n_train = min(math.ceil(s.sae_tokens / per_row), rows.shape[0] - n_eval)
    if n_train < 1:
        raise UserError(
            f"the corpus makes {rows.shape[0]} rows of {s.seq_len} tokens, and the held-out "
            f"tokens take {n_eval}; pass more text with --sae-corpus or fewer --sae-eval-tokens"
        )
    return rows[:n_eval], rows[n_eval : n_eval + n_train]


def _resid(model: Any, rows: torch.Tensor, split: int, batch_size: int) -> torch.Tensor:
    """The residual at the input of block ``split`` at every position but the BOS, flattened."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            batch = rows[start : start + batch_size].to(model.cfg.device)
            resid = model(batch, stop_at_layer=split)[:, 1:]
            out.append(resid.reshape(-1, resid.shape[-1]).cpu())
    return torch.cat(out)


def _activations(
    model: Any, rows: torch.Tensor, split: int, batch_size: int, work: Path, tracker: Tracker
) -> torch.Tensor:
    """Training activations ``[tokens, d_model]`` in bfloat16, reusing the chunks a stopped run
    finished."""
    import torch

    chunks = []
    expected_width = model.cfg.d_model
    with tracker.counting("train-sae activations", total=rows.shape[0]) as advance:
        for index, start in enumerate(range(0, rows.shape[0], CHUNK_ROWS)):
            part = rows[start : start + CHUNK_ROWS]
            path = work / f"acts-{index:05d}.safetensors"
            shape = (part.shape[0] * (part.shape[1] - 1), expected_width)
            acts = artifacts.read_tensors(path).get("acts") if path.is_file() else None
            if acts is None or tuple(acts.shape) != shape:
                acts = _resid(model, part, split, batch_size).to(torch.bfloat16)
                artifacts.write_tensors(path, {"acts": acts})
            chunks.append(acts)
            advance(part.shape[0])
    return torch.cat(chunks)


def _batch(seed: int, step: int, n: int, size: int) -> torch.Tensor:
    """Step ``step``'s token indices: a function of the seed and the step alone."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(n, (size,), generator=generator)


def _scale(acts: torch.Tensor) -> float:
    """The factor that gives the activations a mean squared norm of ``d_model``."""
    total = 0.0
    for start in range(0, acts.shape[0], 65536):
        total += float(acts[start : start + 65536].double().pow(2).sum())
    return math.sqrt(acts.shape[1] * acts.shape[0] / total)


def _train(
    session: Session, acts: torch.Tensor, work: Path, tracker: Tracker
) -> tuple[dict, list, int]:
    """The trained weights (at the raw activations' scale), the training curve and the tokens
    trained on in this process (fewer than the total after a resume)."""
    import torch

    s = session.settings
    scale = _scale(acts)
    mean = acts[:65536].double().mean(0).float() * scale
    device = torch.device(session.device)
    params = sae_math.init_params(acts.shape[1], s.sae_width, s.sae_architecture, mean, s.seed)
    params = {name: value.to(device).requires_grad_(True) for name, value in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=s.sae_lr)
    steps = math.ceil(s.sae_tokens / s.sae_batch)
    first, curve = _resume(work / CHECKPOINT, params, optimizer)
    every = max(1, steps // CURVE_POINTS)
    last_save = time.monotonic()
    with tracker.counting("train-sae training", total=steps, unit="steps") as advance:
        advance(first)
        for step in range(first, steps):
            for group in optimizer.param_groups:
                group["lr"] = s.sae_lr * min(1.0, (steps - step) / max(1.0, 0.2 * steps))
            ramp = min(1.0, step / max(1.0, 0.1 * steps))
            x = acts[_batch(s.seed, step, acts.shape[0], s.sae_batch)].to(device).float() * scale
            loss, stats = sae_math.loss(
                params, x, s.sae_architecture, s.sae_k, s.sae_sparsity * ramp
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sae_math.normalize_decoder(params)
            if step % every == 0 or step == steps - 1:
                curve.append({"step": step, "tokens": (step + 1) * s.sae_batch, **stats})
            advance(1)
            if step + 1 < steps and time.monotonic() - last_save >= s.sae_checkpoint_seconds:
                _checkpoint(work / CHECKPOINT, params, optimizer, step + 1, curve)
                last_save = time.monotonic()
    weights = sae_math.unscaled(params, scale)
    trained_now = (steps - first) * s.sae_batch
    return {name: value.cpu() for name, value in weights.items()}, curve, trained_now


CURVE_FIELDS = ("step", "tokens", "fvu", "l0")


def _checkpoint(path: Path, params: dict, optimizer: Any, next_step: int, curve: list) -> None:
    """Weights, Adam's moments and step counts, the next step and the curve, in one file."""
    import torch

    tensors = {f"param.{name}": value.detach().cpu() for name, value in params.items()}
    for name, value in params.items():
        state = optimizer.state[value]
        for moment in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{name}.{moment}"] = torch.as_tensor(state[moment]).reshape(-1).cpu()
    tensors["next_step"] = torch.tensor([next_step])
    table = [[float(point[field]) for field in CURVE_FIELDS] for point in curve]
    tensors["curve"] = torch.tensor(table, dtype=torch.float64).reshape(-1, len(CURVE_FIELDS))
    artifacts.write_tensors(path, tensors)


def _resume(path: Path, params: dict, optimizer: Any) -> tuple[int, list]:
    """The step to start from and the curve so far: 0 and none without a checkpoint."""
    import torch

    if not path.is_file():
        return 0, []
    saved = artifacts.read_tensors(path)
    try:
        with torch.no_grad():
            for name, value in params.items():
                value.copy_(saved[f"param.{name}"])
                moments = {
                    moment: saved[f"adam.{name}.{moment}"].reshape(value.shape).to(value.device)
                    for moment in ("exp_avg", "exp_avg_sq")
                }  # Adam keeps its step count on the CPU
                optimizer.state[value] = {**moments, "step": saved[f"adam.{name}.step"][0].clone()}
        first = int(saved["next_step"][0])
        table = saved["curve"].tolist()
    except (KeyError, RuntimeError):
        raise UserError(
            f"{path} is not a checkpoint of this training (another dsg version?); delete it "
            "and run again"
        ) from None
    return first, [
        {
            field: (int(v) if field in ("step", "tokens") else v)
            for field, v in zip(CURVE_FIELDS, row, strict=True)
        }
        for row in table
    ]
