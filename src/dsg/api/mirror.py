"""Hub datasets that cases read, and offline mirrors of them.

A case lists the (hub id, config, split) triples it reads as :class:`HubDataset` objects from a
``hub_datasets()`` method. ``dsg data mirror`` downloads exactly those files into
``DIR/owner/name`` (a snapshot of each dataset repository, README with its ``configs:`` block
included), which :class:`dsg.api.data.DataSource` then reads with ``--data-dir DIR``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsg.api.data import DataSource
from dsg.core.errors import UserError, one_line_reason


@dataclass(frozen=True)
class HubDataset:
    """One split of one config of a hub dataset; ``revision`` pins it when set."""

    hub_id: str
    config: str | None
    split: str
    revision: str | None = None

    def load(self, data: DataSource) -> Any:
        return data.load_dataset(self.hub_id, self.config, split=self.split, revision=self.revision)

    def column(self, data: DataSource, name: str) -> list[Any]:
        """One column as a list, or a UserError naming the dataset if it is missing."""
        table = self.load(data)
        if name not in table.column_names:
            raise UserError(
                f"dataset {self}: no column {name!r} (it has {', '.join(table.column_names)}); "
                "is the mirror a snapshot of the right repository?"
            )
        return list(table[name])

    def texts(self, data: DataSource, name: str = "text") -> list[str]:
        return [str(value) for value in self.column(data, name)]

    def __str__(self) -> str:
        return f"{self.hub_id} ({self.config or 'default'}, {self.split})"


def case_datasets(case: Any) -> list[HubDataset]:
    """The hub datasets a case declares, or a UserError if it declares none."""
    declare = getattr(case, "hub_datasets", None)
    if declare is None:
        raise UserError(
            f"case {case.name!r} does not list the hub datasets it reads, so it cannot be mirrored"
        )
    return list(declare())


def allow_patterns(datasets: Iterable[HubDataset]) -> list[str]:
    """Files to fetch: the README (it maps configs to files) and those named after each config."""
    patterns = {"README.md"}
    for dataset in datasets:
        patterns.add(f"*{dataset.config}*" if dataset.config else "*")
    return sorted(patterns)


def mirror(datasets: list[HubDataset], dest: Path) -> list[Path]:
    """Download each dataset's files into ``dest/owner/name`` and check that each split loads."""
    from huggingface_hub import snapshot_download

    by_repo: dict[str, list[HubDataset]] = {}
    for dataset in datasets:
        by_repo.setdefault(dataset.hub_id, []).append(dataset)
    folders = []
    for hub_id, wanted in by_repo.items():
        folder = dest / hub_id
        try:
            snapshot_download(
                hub_id,
                repo_type="dataset",
                local_dir=folder,
                revision=wanted[0].revision,
                allow_patterns=allow_patterns(wanted),
            )
        except OSError as exc:  # offline, gated, missing: huggingface_hub's errors are OSErrors
            raise UserError(
                f"could not download {hub_id}: {one_line_reason(exc)}. Mirroring "
                "needs internet (and `hf auth login` for gated datasets)"
            ) from None
        folders.append(folder)
    local = DataSource(data_dir=dest)
    for dataset in datasets:
        dataset.load(local)
    return folders
