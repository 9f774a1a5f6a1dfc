"""The statistics stage: per-feature mean activations and the retain calibration data.

For each corpus the model runs only up to the SAE's hook, the SAE encodes the residual and the
mean activation of every feature over the valid tokens (not pad, EOS or BOS; see
docs/reference-algorithm.md, "The statistic") is accumulated in float64, row by row, so the
batch size cannot change it.

Instead of the reference's dense activation dumps (64 MiB per 1024-token row at d_sae 16384),
the calibration data of each corpus is the sparse set of firing (position, feature) pairs at
positions >= 1, stored as flat ``position * d_sae + feature`` indices in safetensors chunks.
That is all a threshold needs to find a row's hit positions for any ordered feature prefix
exactly, at 4 bytes per firing pair (about 0.6 MB per row at L0 ~ 142). The dynamic threshold
reads the retain rows; a strategy that calibrates its own gate (``windowed``) also reads the
forget rows, through :mod:`dsg.stages.gate_parameters`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsg.core import artifacts
from dsg.core.errors import UserError
from dsg.stages.corpus import Documents, build_rows, load_documents

if TYPE_CHECKING:
    import torch

    from dsg.api.interfaces import LoadedModel, LoadedSAE
    from dsg.engine.backends import ModelBackend
    from dsg.engine.session import Session

STAGE = "sparsity"
VERSION = 2
STATS_FILE = "stats.safetensors"
CHUNK_PATTERN = "calibration-{:05d}.safetensors"
FORGET_CHUNK_PATTERN = "forget-calibration-{:05d}.safetensors"
CHUNK_ENTRIES = 1 << 22
"""Firing pairs buffered before a calibration chunk is written (16 MiB of int32)."""


@dataclass(frozen=True)
class SparsityStats:
    """Per-feature means on both corpora and the calibration data of one artifact."""

    folder: Path
    key: str
    forget_mean: torch.Tensor
    retain_mean: torch.Tensor
    n_rows: int
    seq_len: int
    chunks: tuple[str, ...]
    forget_chunks: tuple[str, ...] = ()

    @property
    def d_sae(self) -> int:
        return int(self.forget_mean.numel())

    def retain_rates(
        self, features_ordered: torch.Tensor, ns: list[int]
    ) -> dict[int, torch.Tensor]:
        """Per retain row, the fraction of its ``seq_len`` positions where one of the first ``n``
        features fires, for each ``n`` in ``ns`` (float64 ``[n_rows]``; docs/reference-algorithm.md,
        "Calibration").

        Position 0 never counts but stays in the denominator; mid-row BOS/EOS can count, as in
        the reference with batch size 1.
        """
        import torch

        features = features_ordered.to(torch.long).flatten()
        if any(n > features.numel() or n <= 0 for n in ns):
            raise ValueError(f"every n must be within 1..{features.numel()}, got {ns}")
        hits: dict[int, list[torch.Tensor]] = {n: [] for n in ns}
        for first in self._first_ranks(self.chunks, features):
            for n in ns:
                hits[n].append((first < n).sum(dim=1))
        return {
            n: torch.cat(parts).to(torch.float64) / self.seq_len if parts else torch.empty(0)
            for n, parts in hits.items()
        }

    def token_hits(self, features: torch.Tensor, corpus: str) -> torch.Tensor:
        """Bool ``[rows, seq_len]``: where one of ``features`` fires in each row of the
        ``corpus`` (``"retain"`` or ``"forget"``); position 0 is never a hit."""
        import torch

        if corpus not in ("retain", "forget"):
            raise ValueError(f"corpus must be retain or forget, got {corpus!r}")
        chunks = self.chunks if corpus == "retain" else self.forget_chunks
        features = features.to(torch.long).flatten()
        parts = [first < features.numel() for first in self._first_ranks(chunks, features)]
        if not parts:
            return torch.zeros((0, self.seq_len), dtype=torch.bool)
        return torch.cat(parts)

    def _first_ranks(
        self, chunks: tuple[str, ...], features: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        """Per chunk, ``[rows, seq_len]``: the rank in ``features`` of the first of them that
        fires at each position (``len(features)`` where none does)."""
        import torch

        never = features.numel()
        rank = torch.full((self.d_sae,), never, dtype=torch.long)
        rank[features] = torch.arange(features.numel())
        for chunk in chunks:
            tensors = artifacts.read_tensors(self.folder / chunk)
            flat, row_ptr = _chunk_tensors(tensors, self.folder / chunk)
            n_rows = row_ptr.numel() - 1
            flat = flat.to(torch.long)
            row = torch.repeat_interleave(torch.arange(n_rows), row_ptr.diff())
            slot = row * self.seq_len + flat // self.d_sae
            first = torch.full((n_rows * self.seq_len,), never, dtype=torch.long)
            first.scatter_reduce_(0, slot, rank[flat % self.d_sae], reduce="amin")
            yield first.view(n_rows, self.seq_len)


def _chunk_tensors(tensors: dict[str, Any], path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if set(tensors) != {"flat", "row_ptr"}:
        raise UserError(f"{path} is not a dsg calibration chunk; delete its folder and run again")
    return tensors["flat"], tensors["row_ptr"]


def artifact_inputs(
    session: Session, model: LoadedModel, sae: LoadedSAE, docs: Documents
) -> dict[str, Any]:
    """Everything that changes the statistics or the calibration data."""
    s = session.settings
    return {
        "model": {"spec": model.spec, "fingerprint": model.fingerprint},
        "sae": {"spec": sae.spec, "fingerprint": sae.fingerprint, "hook": sae.hook_name},
        "case": s.case,
        "forget_texts": docs.forget_fingerprint,
        "retain_texts": docs.retain_fingerprint,
        "seed": s.seed,
        "dtype": s.dtype,
        "backend": session.backend_name,
        "seq_len": s.seq_len,
        "dataset_size": s.dataset_size,
        "dataset_fraction": s.dataset_fraction,
        "min_chars": s.min_chars,
    }


def ensure(session: Session) -> SparsityStats:
    """The statistics for the session's inputs: loaded if already computed, else computed."""
    run_dir = session.run_dir
    run_dir.ensure_writable()
    docs = load_documents(session)
    sae = session.sae()
    model, sae = session.checked_pair(n_layers=sae.hook_layer + 1)
    if sae.hook_layer >= model.model.cfg.n_layers:
        raise UserError(
            f"SAE hook {sae.hook_name!r} is beyond model {model.spec!r}, which has "
            f"{model.model.cfg.n_layers} layers; choose an SAE for an earlier layer"
        )
    inputs = artifact_inputs(session, model, sae, docs)
    key = artifacts.artifact_key(STAGE, VERSION, inputs)
    folder = run_dir.find(STAGE, VERSION, key, force=session.settings.force)
    if folder is not None:
        return load(folder, key)
    return compute(session, model, sae, docs, inputs, key)


def load(folder: Path, key: str) -> SparsityStats:
    """A finished artifact; missing or malformed pieces are a UserError."""
    meta = artifacts.read_json(folder / artifacts.META_FILE)
    tensors = artifacts.read_tensors(folder / STATS_FILE)
    try:
        chunks = tuple(str(c) for c in meta["chunks"])
        forget_chunks = tuple(str(c) for c in meta["forget_chunks"])
        forget, retain = tensors["forget_mean"], tensors["retain_mean"]
        stats = SparsityStats(
            folder,
            key,
            forget,
            retain,
            int(meta["n_rows"]),
            int(meta["seq_len"]),
            chunks,
            forget_chunks,
        )
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{folder} is missing parts of its statistics; delete that folder and run again"
        ) from None
    if forget.shape != retain.shape or forget.dim() != 1:
        raise UserError(f"{folder / STATS_FILE} is corrupted; delete that folder and run again")
    return stats


def _batches(rows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, rows.shape[0], batch_size):
        yield rows[start : start + batch_size]


def _encode(backend: ModelBackend, sae: LoadedSAE, tokens: torch.Tensor) -> torch.Tensor:
    """SAE activations ``[B, L, d_sae]`` at the hook, running only the blocks before it."""
    import torch

    with torch.inference_mode():
        resid = backend.hook_activations(tokens, sae.hook_name)
        weight = next(sae.sae.parameters())
        return sae.sae.encode(resid.to(device=weight.device, dtype=weight.dtype))


class _ChunkWriter:
    """Streams one corpus's firing pairs into safetensors chunks of whole rows."""

    def __init__(
        self, folder: Path, index_dtype: torch.dtype, pattern: str = CHUNK_PATTERN
    ) -> None:
        self.folder = folder
        self.pattern = pattern
        self.index_dtype = index_dtype
        self.parts: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.buffered = 0
        self.names: list[str] = []

    def add_row(self, flat: torch.Tensor) -> None:
        self.parts.append(flat.to(self.index_dtype))
        self.counts.append(flat.numel())
        self.buffered += flat.numel()
        if self.buffered >= CHUNK_ENTRIES:
            self.flush()

    def flush(self) -> None:
        import torch

        if not self.counts:
            return
        name = self.pattern.format(len(self.names))
        row_ptr = torch.zeros(len(self.counts) + 1, dtype=torch.long)
        row_ptr[1:] = torch.tensor(self.counts, dtype=torch.long).cumsum(0)
        flat = torch.cat(self.parts) if self.parts else torch.empty(0, dtype=self.index_dtype)
        artifacts.write_tensors(self.folder / name, {"flat": flat, "row_ptr": row_ptr})
        self.names.append(name)
        self.parts, self.counts, self.buffered = [], [], 0


def _run_corpus(
    session: Session,
    model: LoadedModel,
    sae: LoadedSAE,
    rows: torch.Tensor,
    label: str,
    writer: _ChunkWriter,
) -> tuple[torch.Tensor, int]:
    """Mean activation per feature over valid tokens; feeds ``writer`` the firing pairs."""
    import torch

    from dsg.core.progress import Tracker

    tok = model.tokenizer
    special = [i for i in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if i is not None]
    device = session.device
    backend = session.backend(sae.hook_layer + 1)
    total: torch.Tensor | None = None
    n_valid = 0
    tracker = Tracker(session.console)
    with tracker.counting(f"sparsity {label}", total=rows.shape[0]) as advance:
        for batch in _batches(rows, session.settings.batch_size):
            acts = _encode(backend, sae, batch.to(device)).to("cpu")
            valid = ~torch.isin(batch, torch.tensor(special, dtype=batch.dtype))
            n_valid += int(valid.sum())
            for b in range(acts.shape[0]):
                row_acts = acts[b]
                row_sum = row_acts[valid[b]].sum(dim=0, dtype=torch.float64)
                total = row_sum if total is None else total + row_sum
                fired = torch.nonzero(row_acts[1:] > 0)
                writer.add_row((fired[:, 0] + 1) * row_acts.shape[1] + fired[:, 1])
            advance(acts.shape[0])
    if total is None or n_valid == 0:
        raise UserError(f"the {label} rows contain no token other than pad/EOS/BOS; pass more text")
    return total / n_valid, n_valid


def compute(
    session: Session,
    model: LoadedModel,
    sae: LoadedSAE,
    docs: Documents,
    inputs: dict[str, Any],
    key: str,
) -> SparsityStats:
    """Run both corpora, write the chunks and statistics, then ``meta.json`` last; a failure
    leaves no partial folder."""
    s = session.settings
    rows = build_rows(
        model.tokenizer,
        docs,
        seq_len=s.seq_len,
        dataset_size=s.dataset_size,
        dataset_fraction=s.dataset_fraction,
        seed=s.seed,
        case=s.case,
    )  # before the folder: too little text leaves nothing behind
    with session.run_dir.building(STAGE, key) as folder:
        return _compute_into(folder, session, (model, sae), rows, inputs, key)


def _compute_into(
    folder: Path,
    session: Session,
    loaded: tuple[LoadedModel, LoadedSAE],
    rows: tuple[torch.Tensor, torch.Tensor],
    inputs: dict[str, Any],
    key: str,
) -> SparsityStats:
    import torch

    s = session.settings
    model, sae = loaded
    forget_rows, retain_rows = rows
    d_sae = int(sae.sae.cfg.d_sae)
    index_dtype = torch.int32 if s.seq_len * d_sae < 2**31 else torch.int64
    writer = _ChunkWriter(folder, index_dtype)
    forget_writer = _ChunkWriter(folder, index_dtype, FORGET_CHUNK_PATTERN)
    forget_mean, forget_valid = _run_corpus(
        session, model, sae, forget_rows, "forget", forget_writer
    )
    retain_mean, retain_valid = _run_corpus(session, model, sae, retain_rows, "retain", writer)
    forget_writer.flush()
    writer.flush()
    artifacts.write_tensors(
        folder / STATS_FILE, {"forget_mean": forget_mean, "retain_mean": retain_mean}
    )
    n_rows = int(retain_rows.shape[0])
    session.run_dir.commit(
        STAGE,
        VERSION,
        key,
        inputs,
        extra={
            "n_rows": n_rows,
            "seq_len": s.seq_len,
            "d_sae": d_sae,
            "valid_tokens": {"forget": forget_valid, "retain": retain_valid},
            "chunks": writer.names,
            "forget_chunks": forget_writer.names,
        },
    )
    return SparsityStats(
        folder,
        key,
        forget_mean,
        retain_mean,
        n_rows,
        s.seq_len,
        tuple(writer.names),
        tuple(forget_writer.names),
    )
