"""The dsg guardrail inside vLLM (a ``vllm.general_plugins`` entry point).

With ``DSG_BUNDLE`` set to a bundle directory, every process vLLM starts guards the served
model with that bundle: the front end decides each request on its whole prompt, exactly as
``dsg.hf`` decides it, and seals the decision; the engine core refuses requests whose seal does
not verify, and the worker clamps the firing requests' tokens inside the forward pass. Without
``DSG_BUNDLE`` the plugin does nothing in that process, and a front end whose engine processes
run without it refuses to serve. With ``DSG_DECIDE_IN=engine`` the worker decides instead, in
the step that prefills the prompt (:mod:`dsg_runtime.vllm.in_engine`). See docs/serving.md.
"""

from __future__ import annotations

from dsg_runtime.vllm.checks import GuardrailRefused, check_version
from dsg_runtime.vllm.engine import BUNDLE_ENV, bundle_path

__all__ = ["register", "GuardrailRefused", "BUNDLE_ENV"]


def register() -> None:
    """Patch vLLM's front end, engine core and worker when a bundle is configured; vLLM calls
    this in every process it starts, possibly more than once (the patches are idempotent)."""
    if bundle_path() is None:
        return
    import os

    import vllm

    # A compiled model cached by an unguarded (or differently guarded) run has no hook in it;
    # vLLM's cache key does not see the hook, so the guarded engine always compiles afresh.
    os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"

    from dsg_runtime.vllm.engine import patch_engine_core, patch_front_end, patch_worker
    from dsg_runtime.vllm.seal import ensure_key

    check_version(vllm.__version__)
    ensure_key()  # before vLLM starts its engine processes, which inherit it
    patch_front_end()
    patch_engine_core()
    patch_worker()
