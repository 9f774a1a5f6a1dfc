"""Run-directory artifacts: keys change with every input, writes are atomic and readable."""

import os
import stat
from pathlib import Path

import pytest
import torch

from dsg.core.artifacts import (
    RunDir,
    artifact_key,
    fingerprint_texts,
    read_tensors,
    write_json,
    write_tensors,
)
from dsg.core.errors import UserError


def test_key_is_stable_and_covers_every_input() -> None:
    inputs = {"model": "m", "seed": 0, "n": [20, 50]}
    key = artifact_key("select", 1, inputs)
    assert key == artifact_key("select", 1, dict(reversed(list(inputs.items()))))
    assert key != artifact_key("select", 1, {**inputs, "seed": 1})
    assert key != artifact_key("select", 2, inputs)
    assert key != artifact_key("sparsity", 1, inputs)


def test_corpus_fingerprint_sees_document_boundaries() -> None:
    assert fingerprint_texts(["ab", "c"]) != fingerprint_texts(["a", "bc"])
    assert fingerprint_texts(["ab", "c"]) == fingerprint_texts(["ab", "c"])


def test_writes_leave_no_temporary_files_and_plain_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_tensors(tmp_path / "t.safetensors", {"w": torch.arange(3)})
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.safetensors"]
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert torch.equal(read_tensors(tmp_path / "t.safetensors")["w"], torch.arange(3))


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(TypeError):
        write_json(target, {1j: 2})  # a complex key cannot be written as JSON
    assert target.read_text() == '{\n  "x": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize(
    "message",
    [
        "Error while serializing: I/O error: No space left on device (os error 28)",
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
        'left on device" })',  # safetensors 0.4
    ],
)
def test_a_full_disk_under_safetensors_is_one_line_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    target = tmp_path / "t.safetensors"
    write_tensors(target, {"w": torch.arange(3)})

    def full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\0" * 8)
        raise SafetensorError(message)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match=r"\(No space left on device\); free some space"):
        write_tensors(target, {"w": torch.arange(4)})
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
    assert torch.equal(read_tensors(target)["w"], torch.arange(3))


def test_commit_then_find_and_reject_foreign_meta(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.find("select", 1, "abc") is None
    folder = run.commit("select", 1, "abc", {"seed": 0})
    assert run.find("select", 1, "abc") == folder
    with pytest.raises(UserError, match="does not match"):
        run.find("select", 2, "abc")
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted"):
        run.find("select", 1, "abc")
