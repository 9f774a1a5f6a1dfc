"""The torch device a run asks for, checked before any model is loaded or any folder is made.

Without this check a typo or a missing GPU surfaces as a traceback from deep inside torch or
safetensors, after the run directory was already created.
"""

from __future__ import annotations

from dsg.core.errors import UserError

SUPPORTED = ("cpu", "cuda", "mps")


def check_device(name: str, *, here: bool = True) -> None:
    """A UserError unless ``name`` is a device torch knows and, with ``here``, this machine has.

    ``here=False`` checks the name only: the jobs of a Ray sweep run on workers whose devices the
    driver cannot see, so each worker checks its own when it opens the job's session.
    """
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type not in SUPPORTED:
        raise UserError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or mps")
    if not here:
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu"
            )
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device {name!r} does not exist: torch sees {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} is not available on this machine; use --device cpu")
