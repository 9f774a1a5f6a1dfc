"""What a trained SAE is worth, on held-out rows: the fraction of variance it leaves
unexplained, its L0, its dead latents and the model's next-token loss with the SAE spliced in;
and the training curve as a plot.

Position 0 of every row (the BOS) is neither trained on nor measured nor replaced: dsg's
guardrail never reads it, and its residual is an outlier that would dominate the variance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dsg.stages.train_sae import sae_math


def reconstruction(weights: dict, acts: torch.Tensor, architecture: str, k: int) -> dict:
    """FVU, mean L0 and dead latents of the (raw-scale) weights on held-out activations."""
    params = {**weights}
    if "threshold" in params:
        params["log_threshold"] = params.pop("threshold").clamp_min(1e-30).log()
    with torch.no_grad():
        latents, l0 = sae_math.encode(params, acts, architecture, k)
        error = (sae_math.decode(params, latents) - acts).pow(2).sum()
        variance = (acts - acts.mean(0)).pow(2).sum()
        fired = (latents > 0).any(0)
    return {
        "fvu": float(error / variance),
        "l0": float(l0.float().mean()),
        "dead_latents": int((~fired).sum()),
        "dead_fraction": float((~fired).float().mean()),
        "tokens": int(acts.shape[0]),
    }


def spliced_loss(model: Any, sae: Any, rows: torch.Tensor, hook: str, batch_size: int) -> dict:
    """The model's mean next-token loss on ``rows``, as is and with the SAE's reconstruction in
    place of the residual at ``hook`` (every position but the BOS)."""

    def splice(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        out = resid.clone()
        out[:, 1:] = sae.decode(sae.encode(resid[:, 1:].float())).to(resid.dtype)
        return out

    clean = spliced = 0.0
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            batch = rows[start : start + batch_size].to(model.cfg.device)
            n = batch.shape[0]
            clean += float(model(batch, return_type="loss")) * n
            loss = model.run_with_hooks(batch, return_type="loss", fwd_hooks=[(hook, splice)])
            spliced += float(loss) * n
    clean, spliced = clean / rows.shape[0], spliced / rows.shape[0]
    return {"loss": clean, "loss_with_sae": spliced, "loss_increase": spliced - clean}


def plot_curve(curve: list[dict], title: str, path: Path) -> None:
    """Training FVU and L0 against tokens seen, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [c["tokens"] for c in curve]
    fig, (fvu, l0) = plt.subplots(1, 2, figsize=(9, 3.5))
    fvu.plot(tokens, [c["fvu"] for c in curve])
    fvu.set(xlabel="training tokens", ylabel="fraction of variance unexplained", yscale="log")
    l0.plot(tokens, [c["l0"] for c in curve])
    l0.set(xlabel="training tokens", ylabel="L0 (latents per token)", yscale="log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
