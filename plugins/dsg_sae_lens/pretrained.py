"""SAEs from sae_lens's bundled directory of pretrained releases (Gemma Scope and the rest).

A spec is ``release/sae_id``; release names may themselves contain ``/``, so the release is the
longest prefix that names one. The directory ships with sae_lens, so lookups work offline; only
the weights come from the hub (or its local cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsg.api import LoadedSAE, UserError, hub_lookups, one_line_reason
from dsg_sae_lens.local_dir import dtype_name, ready_sae

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PretrainedEntry:
    """One SAE of a release, as the directory describes it."""

    release: str
    sae_id: str
    model: str
    hook_name: str | None


def directory() -> dict[str, Any]:
    """sae_lens's release directory (release -> PretrainedSAELookup)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def split_spec(spec: str) -> tuple[str, str] | None:
    """``(release, sae_id)`` for a known release and one of its ids, else None."""
    releases = directory()
    parts = spec.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        release = "/".join(parts[:cut])
        if release in releases:
            sae_id = "/".join(parts[cut:])
            return (release, sae_id) if sae_id in releases[release].saes_map else None
    return None


def known_hook(release: str, sae_id: str) -> str | None:
    """The hook an SAE reads, when it is knowable without downloading its config."""
    lookup = directory()[release]
    overrides = lookup.config_overrides or {}
    if isinstance(overrides.get("hook_name"), str):
        return str(overrides["hook_name"])
    if lookup.conversion_func == "gemma_2":
        from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

        try:
            cfg = get_gemma_2_config_from_hf(lookup.repo_id, lookup.saes_map[sae_id], "cpu")
        except ValueError:
            return None
        return str(cfg["hook_name"])
    return None


def releases() -> list[tuple[str, int, str]]:
    """``(release, number of SAEs, model)`` for every release, in directory order."""
    return [(name, len(lookup.saes_map), lookup.model) for name, lookup in directory().items()]


def matches(release_pattern: str = ".*", id_pattern: str = ".*") -> list[tuple[str, str]]:
    """Every ``(release, sae_id)`` whose names fully match both regexes, in directory order."""
    try:
        rel_re, id_re = re.compile(release_pattern), re.compile(id_pattern)
    except re.error as exc:
        raise UserError(f"bad SAE pattern: {exc}") from None
    return [
        (release, sae_id)
        for release, lookup in directory().items()
        if rel_re.fullmatch(release)
        for sae_id in lookup.saes_map
        if id_re.fullmatch(sae_id)
    ]


def entries(release_pattern: str = ".*", id_pattern: str = ".*") -> list[PretrainedEntry]:
    """:func:`matches`, with each SAE's model and (when knowable offline) hook."""
    releases = directory()
    return [
        PretrainedEntry(release, sae_id, releases[release].model, known_hook(release, sae_id))
        for release, sae_id in matches(release_pattern, id_pattern)
    ]


def load_pretrained(spec: str, *, device: str, dtype: torch.dtype) -> LoadedSAE:
    """``SAE.from_pretrained``; a download that cannot happen (offline, gated) is a UserError."""
    from huggingface_hub.errors import HfHubHTTPError
    from sae_lens import SAE

    parsed = split_spec(spec)
    if parsed is None:
        raise UserError(
            f"{spec!r} is not RELEASE/SAE_ID of a sae_lens pretrained release; list them with "
            "`dsg saes` and the ids of one with `dsg saes RELEASE`"
        )
    release, sae_id = parsed
    try:
        with hub_lookups():  # the hub unreachable: the cache only, no retries
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype_name(dtype))
    except (OSError, HfHubHTTPError, ValueError) as exc:
        raise UserError(
            f"could not fetch SAE {sae_id} of {release}: {one_line_reason(exc)}. It must be in the "
            "Hugging Face cache when offline: run once with internet (log in with "
            "`hf auth login` if gated), or pass a folder written by SAE.save_model as --sae"
        ) from None
    model_name = sae.cfg.metadata.model_name or directory()[release].model
    no_hook = f"SAE {spec} does not say which hook it reads; it cannot be used"
    fingerprint, l0 = f"{release}/{sae_id}", expected_l0(release, sae_id)
    return ready_sae(sae, spec, model_name, fingerprint, no_hook, l0)


def expected_l0(release: str, sae_id: str) -> float | None:
    """The L0 the release directory lists for an SAE; None when absent or listed as 0 (the
    directory's placeholder for "not measured")."""
    found = (directory()[release].expected_l0 or {}).get(sae_id)
    return float(found) if found else None
