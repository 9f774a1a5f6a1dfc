"""The sparse autoencoders ``dsg train-sae`` trains, as plain tensors: TopK and JumpReLU.

Both encode ``pre = (x - b_dec) @ W_enc + b_enc`` and decode ``a @ W_dec + b_dec``, as sae_lens's
``TopKSAE`` and ``JumpReLUSAE`` do, so the trained weights load there unchanged. TopK keeps the
``k`` largest pre-activations (ReLU'd); JumpReLU keeps ``pre`` where it exceeds a per-latent
threshold, trained with straight-through estimators of the threshold's gradient through a
rectangle kernel (Rajamanoharan et al., 2024) and an L0 penalty.

Training runs on activations scaled so their mean squared norm is ``d_in``; :func:`unscaled`
folds that scale into the weights, so the saved SAE reads the model's raw residual stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BANDWIDTH = 0.001
"""The rectangle kernel's width for the threshold's pseudo-gradient (sae_lens's default)."""
INITIAL_THRESHOLD = 0.001


def init_params(d_in: int, width: int, architecture: str, mean: torch.Tensor, seed: int) -> dict:
    """Unit-norm decoder rows, the encoder their transpose, ``b_dec`` the data's mean."""
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, d_in, generator=generator)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": w_dec.T.clone(),
        "b_enc": torch.zeros(width),
        "W_dec": w_dec,
        "b_dec": mean.float().clone(),
    }
    if architecture == "jumprelu":
        params["log_threshold"] = torch.full((width,), math.log(INITIAL_THRESHOLD))
    return params


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _jump_functions() -> tuple[Any, Any]:
    import torch

    class JumpReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x, threshold)
            return x * (x > threshold)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, threshold = ctx.saved_tensors
            d_threshold = -(threshold / BANDWIDTH) * _rectangle((x - threshold) / BANDWIDTH)
            return (x > threshold) * grad, (d_threshold * grad).sum(0)

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x, threshold)
            return (x > threshold).to(x.dtype)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
            x, threshold = ctx.saved_tensors
            d_threshold = -(1.0 / BANDWIDTH) * _rectangle((x - threshold) / BANDWIDTH)
            return None, (d_threshold * grad).sum(0)

    return JumpReLU.apply, Step.apply


def encode(
    params: dict, x: torch.Tensor, architecture: str, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent activations ``[N, width]`` and each row's L0 (differentiable for JumpReLU)."""
    import torch

    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if architecture == "topk":
        values, indices = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        return acts, (acts > 0).sum(-1).to(x.dtype)
    jump, step = _jump_functions()
    threshold = params["log_threshold"].exp()
    return jump(pre, threshold), step(pre, threshold).sum(-1)


def decode(params: dict, acts: torch.Tensor) -> torch.Tensor:
    return acts @ params["W_dec"] + params["b_dec"]


def loss(
    params: dict, x: torch.Tensor, architecture: str, k: int, sparsity: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared error (summed over the model's dimensions, averaged over rows), plus, for
    JumpReLU, ``sparsity`` times the mean L0; and the batch's fraction of variance unexplained
    and L0, for the training curve."""
    acts, l0 = encode(params, x, architecture, k)
    error = (decode(params, acts) - x).pow(2).sum(-1)
    total = error.mean() + (sparsity * l0.mean() if architecture == "jumprelu" else 0.0)
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    return total, {
        "fvu": float(error.mean().detach() / variance),
        "l0": float(l0.float().mean().detach()),
    }


def normalize_decoder(params: dict) -> None:
    """Unit-norm decoder rows (in place, after each step): the scale lives in the encoder."""
    import torch

    with torch.no_grad():
        params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)


def unscaled(params: dict, scale: float) -> dict:
    """Weights for raw activations ``x`` from weights trained on ``scale * x``: the latents are
    the same, the reconstruction is divided by ``scale``. ``log_threshold`` becomes
    sae_lens's ``threshold``."""
    out = {
        "W_enc": params["W_enc"] * scale,
        "b_enc": params["b_enc"].clone(),
        "W_dec": params["W_dec"] / scale,
        "b_dec": params["b_dec"] / scale,
    }
    if "log_threshold" in params:
        out["threshold"] = params["log_threshold"].exp()
    return {name: value.detach().contiguous() for name, value in out.items()}
