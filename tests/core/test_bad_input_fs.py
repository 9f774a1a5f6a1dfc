"""File system faults and malformed JSON: one error line, exit code 2, no traceback, and nothing
half-written (no temporary file, no artifact folder without the file that marks it complete).

Also: temporary files of killed writers are removed by the next run and a live writer's are
not, and two evaluate runs with different settings on one run directory keep both reports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from commands import one_error, run
from tiny import TinyWorld, UseWorld

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, from_sae

RUN = ["--case", "tiny", "--out", "runs"]
DEEP = "[" * 5000 + "]" * 5000


def leftovers(out: Path) -> list[Path]:
    """Temporary files, and artifact folders without their ``meta.json`` (a bundle's
    ``bundle.json``, a run's ``report.json``): what a failed run must not leave behind."""
    if not out.is_dir():
        return []
    found = list(out.rglob("*.tmp"))
    for stage in (p for p in out.iterdir() if p.is_dir()):
        marker = {"bundles": CONFIG_FILE, "reports": "report.json"}.get(stage.name, "meta.json")
        found += [f for f in stage.iterdir() if f.is_dir() and not (f / marker).is_file()]
    return found


def before_any_work(stderr: str) -> None:
    assert "sparsity" not in stderr and not Path("runs", "sparsity").exists()


# --- where --out points ----------------------------------------------------------------------


def symlink_loop() -> str:
    os.symlink("loop-b", "loop-a")
    os.symlink("loop-a", "loop-b")
    return "loop-a"


def dangling_link() -> str:
    os.symlink("nowhere", "runs")
    return "runs"


def inside_a_dangling_link() -> str:
    os.symlink("nowhere", "link")
    return "link/runs"


@pytest.mark.parametrize(
    ("make_out", "fragment"),
    [
        (lambda: "r" * 300, "File name too long"),
        (lambda: "/".join(["p" * 200] * 25), "File name too long"),
        (symlink_loop, "is a symbolic link to nothing"),
        (dangling_link, "is a symbolic link to nothing"),
        (inside_a_dangling_link, "link is a symbolic link to nothing"),
    ],
)
@pytest.mark.parametrize("command", ["select", "evaluate", "muse-export"])
def test_unusable_out_is_refused_before_any_work(
    world: TinyWorld,
    use_world: UseWorld,
    command: str,
    make_out: Callable[[], str],
    fragment: str,
) -> None:
    use_world(world)
    out = make_out()
    result = run(command, "--case", "tiny", "--out", out)
    one_error(result, "is not writable", fragment, "pass a writable --out")
    before_any_work(result.stderr)
    assert not Path("nowhere").exists()


# --- artifact paths of the wrong kind --------------------------------------------------------


def select_key_folder() -> Path:
    done = run("select", *RUN)
    assert done.exit_code == 0, done.output
    return Path(done.stdout.strip()).parent


def file_for_select_key() -> tuple[Path, list[str]]:
    folder = select_key_folder()
    shutil.rmtree(folder)
    folder.write_text("")
    return folder, ["select", "--force"]


def file_for_sparsity() -> tuple[Path, list[str]]:
    Path("runs").mkdir()
    Path("runs/sparsity").write_text("")
    return Path("runs/sparsity"), ["select"]


def link_for_sparsity() -> tuple[Path, list[str]]:
    Path("runs").mkdir()
    os.symlink("nowhere", "runs/sparsity")
    return Path("runs/sparsity"), ["select"]


def folder_for(name: str, command: str) -> Callable[[], tuple[Path, list[str]]]:
    def make() -> tuple[Path, list[str]]:
        Path("runs", name).mkdir(parents=True)
        return Path("runs", name), [command]

    return make


def file_for(name: str, command: str) -> Callable[[], tuple[Path, list[str]]]:
    def make() -> tuple[Path, list[str]]:
        Path("runs").mkdir()
        Path("runs", name).write_text("")
        return Path("runs", name), [command]

    return make


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (file_for_select_key, "a folder"),
        (file_for_sparsity, "a folder"),
        (link_for_sparsity, "a folder"),
        (folder_for("report.json", "evaluate"), "a file"),
        (folder_for("tradeoff.png", "evaluate"), "a file"),
        (file_for("reports", "evaluate"), "a folder"),
        (file_for("bundles", "muse-export"), "a folder"),
    ],
)
def test_artifact_path_of_the_wrong_kind(
    world: TinyWorld,
    use_world: UseWorld,
    make: Callable[[], tuple[Path, list[str]]],
    kind: str,
) -> None:
    use_world(world)
    in_the_way, command = make()
    result = run(*command, *RUN)
    one_error(result, f"{in_the_way} is in the way: dsg keeps {kind} there", "move it away")
    assert leftovers(Path("runs")) == []
    if in_the_way.name != "select" and in_the_way.parent.name != "select":
        assert "[dsg] sparsity" not in result.stderr  # refused before computing anything


# --- a full disk -----------------------------------------------------------------------------


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_space(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Writing the file called ``name`` fails half-way with ENOSPC, as on a full disk: through
    safetensors, matplotlib or a text write, whichever writes it."""
    import matplotlib.figure
    import safetensors.torch
    from safetensors import SafetensorError

    def ours(target: object) -> bool:
        return Path(str(target)).name.startswith(f".{name}.")

    save_file, savefig, write_text = (
        safetensors.torch.save_file,
        matplotlib.figure.Figure.savefig,
        Path.write_text,
    )

    def full_save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        if ours(filename):
            Path(filename).write_bytes(b"\0" * 8)
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        save_file(tensors, filename, metadata=metadata)

    def full_savefig(self: matplotlib.figure.Figure, fname: Any, **kwargs: Any) -> None:
        if ours(fname):
            Path(str(fname)).write_bytes(b"\x89PNG")
            raise ENOSPC
        savefig(self, fname, **kwargs)

    def full_write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if ours(self):
            write_text(self, data[: len(data) // 2])
            raise ENOSPC
        return write_text(self, data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safetensors.torch, "save_file", full_save_file)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_savefig)
    monkeypatch.setattr(Path, "write_text", full_write_text)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("select", "calibration-00000.safetensors"),
        ("select", "stats.safetensors"),
        ("select", "meta.json"),
        ("select", "selection.json"),
        ("muse-export", "guardrail.safetensors"),
        ("muse-export", "bundle.json"),
        ("evaluate", "tradeoff.png"),
        ("evaluate", "report.json"),
    ],
)
def test_full_disk_is_one_line_and_leaves_nothing_half_written(
    world: TinyWorld,
    use_world: UseWorld,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    name: str,
) -> None:
    use_world(world)
    with monkeypatch.context() as patch:
        no_space(patch, name)
        line = one_error(run(command, *RUN), "No space left on device", "free some space")
    assert f"{name} (" in line and "cannot write runs/" in line
    assert leftovers(Path("runs")) == []
    again = run(command, *RUN)  # with space again, the rerun completes
    assert again.exit_code == 0, again.output
    assert leftovers(Path("runs")) == []


@contextlib.contextmanager
def tiny_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0, reason="needs root on Linux"
)
@pytest.mark.parametrize("command", ["select", "muse-export"])
def test_a_real_full_disk(
    world: TinyWorld, use_world: UseWorld, tmp_path: Path, command: str
) -> None:
    use_world(world)
    with tiny_tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "filler").write_bytes(b"\0" * (56 * 1024))
        out = disk / "runs"
        line = one_error(run(command, "--case", "tiny", "--out", str(out)), "No space left")
        assert "cannot write" in line and str(out) in line
        assert leftovers(out) == []


# --- temporary files of killed and live writers ----------------------------------------------


def start_writer(target: Path) -> subprocess.Popen[bytes]:
    """Another process in the middle of an atomic write of ``target``; returns once its
    temporary file exists."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom dsg.core.artifacts import atomic_write\n"
        "def slow(p):\n    p.write_text('partial')\n    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
        f"atomic_write(Path({str(target)!r}), slow)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
    return writer


def temporaries(target: Path) -> set[Path]:
    return set(target.parent.glob(f".{target.name}.*.tmp"))


def test_next_run_removes_a_killed_writers_temporary_file_but_not_a_live_ones(
    world: TinyWorld, use_world: UseWorld
) -> None:
    use_world(world)
    target = Path("runs/tradeoff.png").absolute()
    killed = start_writer(target)
    killed.kill()
    killed.wait()
    stale = temporaries(target)
    assert len(stale) == 1  # kill -9 leaves the temporary file behind
    live = start_writer(target)
    try:
        alive = temporaries(target) - stale
        foreign_old = target.parent / ".tradeoff.png.12345@another-host.abcdefgh.tmp"
        foreign_new = target.parent / ".tradeoff.png.12345@another-host.ijklmnop.tmp"
        for path in (foreign_old, foreign_new):
            path.write_text("partial")
        day_and_a_bit = time.time() - 25 * 3600
        os.utime(foreign_old, (day_and_a_bit, day_and_a_bit))
        done = run("evaluate", *RUN)
        assert done.exit_code == 0, done.output
        assert temporaries(target) == alive | {foreign_new}
    finally:
        live.kill()
        live.wait()


# --- two evaluate runs on one --out ----------------------------------------------------------


def test_two_evaluate_runs_with_different_settings_keep_both_reports(
    world: TinyWorld, use_world: UseWorld
) -> None:
    use_world(world)
    paths = []
    for multiplier in ("5", "50"):
        done = run("evaluate", *RUN, "--multiplier", multiplier)
        assert done.exit_code == 0, done.output
        paths.append(Path(done.stdout.strip()))
    first, second = paths
    assert first != second
    assert first.parent.parent == second.parent.parent == Path("runs/reports")
    for path, value in zip(paths, (5.0, 50.0), strict=True):
        report = json.loads(path.read_text())
        assert report["settings"]["multipliers"] == [value]
        assert {c["multiplier"] for c in report["configs"]} == {value}
        assert (path.parent / "tradeoff.png").is_file()
    latest = Path("runs/report.json")
    assert latest.read_bytes() == second.read_bytes()
    assert Path("runs/tradeoff.png").read_bytes() == (second.parent / "tradeoff.png").read_bytes()
    rerun = run("evaluate", *RUN, "--multiplier", "5")  # same settings: same file, made latest
    assert rerun.exit_code == 0, rerun.output
    assert Path(rerun.stdout.strip()) == first
    assert json.loads(latest.read_text())["settings"]["multipliers"] == [5.0]


# --- malformed JSON --------------------------------------------------------------------------


def corpus_line(line: str) -> Callable[..., list[str]]:
    def make(tmp: Path, **_: object) -> list[str]:
        (tmp / "corpus.jsonl").write_text('{"text": "a fine first document"}\n' + line + "\n")
        corpus = str(tmp / "corpus.jsonl")
        return ["sparsity", "--case", "organism", "--out", "runs", "--forget-corpus", corpus]

    return make


def deep_bundle(tmp: Path, world: TinyWorld, **_: object) -> list[str]:
    loaded = LoadedSAE(world.sae, "tiny-sae", world.hook_name, world.hook_layer)
    bundle = from_sae(loaded, [3, 1, 2], threshold=0.2, multiplier=5.0).save(tmp / "bundle")
    (bundle / CONFIG_FILE).write_text(DEEP)
    return ["generate", "--bundle", str(bundle), "hello"]


def surrogate_in_bundle(tmp: Path, world: TinyWorld, **_: object) -> list[str]:
    loaded = LoadedSAE(world.sae, "tiny-sae", world.hook_name, world.hook_layer)
    bundle = from_sae(loaded, [3, 1, 2], threshold=0.2, multiplier=5.0).save(tmp / "bundle")
    config = json.loads((bundle / CONFIG_FILE).read_text())
    config["provenance"] = {"case": "\ud800"}
    (bundle / CONFIG_FILE).write_text(json.dumps(config))  # ASCII: the surrogate as \ud800
    return ["generate", "--bundle", str(bundle), "hello"]


def deep_sparsity_meta(tmp: Path, **_: object) -> list[str]:
    done = run("sparsity", *RUN)
    assert done.exit_code == 0, done.output
    (Path(done.stdout.strip()) / "meta.json").write_text(DEEP)
    return ["select", *RUN]


def deep_model_config(tmp: Path, gemma_dir: Path, sae_dir: Path, **_: object) -> list[str]:
    model = shutil.copytree(gemma_dir, tmp / "model")
    (model / "config.json").write_text(DEEP)
    return ["sparsity", "--case", "organism", "--out", "runs", "--model", str(model)] + [
        "--sae",
        str(sae_dir),
    ]


def deep_sae_config(tmp: Path, sae_dir: Path, **_: object) -> list[str]:
    sae = shutil.copytree(sae_dir, tmp / "sae")
    (sae / "cfg.json").write_text('{"d_in": ' + DEEP + "}")
    return ["sparsity", "--case", "organism", "--out", "runs", "--sae", str(sae)]


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (corpus_line('{"text": "a lone \\ud800 surrogate"}'), ["corpus.jsonl:2", "\\ud800"]),
        (corpus_line('{"text": "x", "\\udfff": 1}'), ["corpus.jsonl:2", "lone surrogate"]),
        (corpus_line('{"text": "deep", "n": ' + DEEP + "}"), ["corpus.jsonl:2", "deeper"]),
        (deep_bundle, [CONFIG_FILE, "nested deeper than 100 levels"]),
        (surrogate_in_bundle, [CONFIG_FILE, "lone surrogate"]),
        (deep_sparsity_meta, ["meta.json", "nested deeper than 100 levels"]),
        (deep_model_config, ["config.json", "nested deeper"]),
        (deep_sae_config, ["could not load the SAE", "nested deeper"]),
    ],
)
def test_malformed_json_is_one_line_naming_the_file(
    world: TinyWorld,
    use_world: UseWorld,
    gemma_dir: Path,
    sae_dir: Path,
    tmp_path: Path,
    make: Callable[..., list[str]],
    fragments: list[str],
) -> None:
    use_world(world)
    args = make(tmp_path, world=world, gemma_dir=gemma_dir, sae_dir=sae_dir)
    one_error(run(*args), *fragments)
    assert leftovers(Path("runs")) == []


def test_json_nested_up_to_the_limit_still_reads() -> None:
    from dsg_runtime.safe_json import MAX_DEPTH, loads

    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(ValueError, match="deeper"):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert loads('{"text": "caf\\u00e9 \\ud83d\\ude00"}') == {"text": "caf\u00e9 \U0001f600"}


def test_a_failed_commit_leaves_no_empty_attack_set_folder(
    world: TinyWorld, use_world: UseWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An artifact whose only file is meta.json (an attack's answers for one set) that cannot be
    written leaves no folder behind; with space again, the rerun completes."""
    use_world(world)
    common = ["--questions", "all", "--strategy", "dynamic", *RUN]
    done = run("evaluate", *common)  # the baseline and sweep are cached: attack-set writes first
    assert done.exit_code == 0, done.output
    attack = ["attack", "format", "--format", "as-evaluated", *common]
    with monkeypatch.context() as patch:
        no_space(patch, "meta.json")
        line = one_error(run(*attack), "No space left on device")
    assert "cannot write runs/attack-set/" in line
    assert not Path("runs", "attack-set").exists() or not list(Path("runs", "attack-set").iterdir())
    assert leftovers(Path("runs")) == []
    again = run(*attack)
    assert again.exit_code == 0, again.output
    written = list(Path("runs", "attack-set").iterdir())
    assert written and all((folder / "meta.json").is_file() for folder in written)
