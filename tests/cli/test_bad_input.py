"""Bad input and tampered artifacts: one error line, exit code 2, no traceback, nothing written.

Each case is a file or option a user can hand in (a device, a corpus, a config, model and SAE
folders, a bundle, a mirror destination) or a run artifact edited after dsg wrote it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from commands import nothing_written, one_error, run
from mirrors import mcq_rows, write_case_mirror, write_hub_dataset
from tiny import TinyWorld, UseWorld, build_sae, tiny_registry
from tiny_gemma import tiny_gemma_config

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, from_sae

Setup = Callable[[Path], list[str]]


# --- devices ---------------------------------------------------------------------------------

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        pytest.param("cuda", "torch sees no CUDA GPU", marks=NO_CUDA),
        pytest.param("cuda:0", "torch sees no CUDA GPU", marks=NO_CUDA),
        ("cuda:999", "cuda:999"),
        ("gpu0", "unknown device 'gpu0'"),
        ("cpu:x", "unknown device 'cpu:x'"),
        ("meta", "device 'meta' is not supported"),
        pytest.param(
            "mps",
            "not available on this machine",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="mps present"),
        ),
    ],
)
def test_unusable_device(world: TinyWorld, use_world: UseWorld, device: str, fragment: str) -> None:
    use_world(world)
    one_error(run("sparsity", "--case", "tiny", "--out", "runs", "--device", device), fragment)
    nothing_written()


def test_seq_len_longer_than_the_model_context(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    line = one_error(run("evaluate", "--case", "tiny", "--out", "runs", "--seq-len", "513"))
    assert "seq_len 513 is longer than the context of model 'tiny-model' (512 tokens)" in line
    assert "--seq-len 512 or less" in line
    nothing_written()


def test_unusable_device_in_the_config_file(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    Path("dsg.toml").write_text('device = "gpu0"\n')
    one_error(run("evaluate", "--case", "tiny", "--out", "runs"), "unknown device 'gpu0'")
    nothing_written()


# --- the config file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"seq_len = 1000\n", ["seq_len 1000 is longer than the context", "512 tokens"]),
        (b'n_features = ["a"]\n', ["n_features must be a int"]),
        (b"out = 5\n", ["out must be a str"]),
        (b"seq_len = 16\nseq_len = 17\n", ["not valid TOML"]),
        (b"[broken\n", ["not valid TOML"]),
        ('case = "caf\u00e9"\n'.encode("latin-1"), ["is not UTF-8 text"]),
        (bytes(range(256)), ["is not UTF-8 text"]),
    ],
)
def test_bad_config_file(
    world: TinyWorld, use_world: UseWorld, content: bytes, fragments: list[str]
) -> None:
    use_world(world)
    Path("dsg.toml").write_bytes(content)
    one_error(run("select", "--case", "tiny", "--out", "runs"), *fragments)
    nothing_written()


def test_config_option_naming_a_directory(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    Path("conf").mkdir()
    one_error(run("select", "--case", "tiny", "--config", "conf"), "conf is a directory")


# --- corpora ---------------------------------------------------------------------------------


def binary(tmp: Path) -> Path:
    (tmp / "corpus.txt").write_bytes(bytes(range(256)) * 4)
    return tmp / "corpus.txt"


def latin1(tmp: Path) -> Path:
    (tmp / "corpus.txt").write_bytes(
        "Le caf\u00e9 de la gare ouvre \u00e0 six heures.\n".encode("latin-1")
    )
    return tmp / "corpus.txt"


def latin1_jsonl(tmp: Path) -> Path:
    (tmp / "corpus.jsonl").write_bytes('{"text": "na\u00efve"}\n'.encode("latin-1"))
    return tmp / "corpus.jsonl"


def directory(tmp: Path) -> Path:
    (tmp / "corpus.jsonl").mkdir()
    return tmp / "corpus.jsonl"


def missing(tmp: Path) -> Path:
    return tmp / "nope.jsonl"


def jsonl(*lines: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        (tmp / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        return tmp / "corpus.jsonl"

    return write


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (binary, "is not UTF-8 text (byte 128"),
        (latin1, "is not UTF-8 text (byte 6"),
        (latin1_jsonl, "is not UTF-8 text"),
        (directory, "is a directory, not a regular file; pass a .jsonl or plain text file"),
        (missing, "does not exist"),
        (jsonl('{"text": "fine"}', '{"text": null}'), "corpus.jsonl:2 is not a JSON object"),
        (jsonl('{"text": 5}'), "corpus.jsonl:1 is not a JSON object with a string 'text'"),
        (jsonl('["text"]'), "corpus.jsonl:1 is not a JSON object"),
        (jsonl('{"body": "x"}'), "corpus.jsonl:1 is not a JSON object"),
        (jsonl('{"text": "half'), "corpus.jsonl:1 is not a JSON object"),
    ],
)
def test_bad_corpus(
    tmp_path: Path, use_world: UseWorld, make: Callable[[Path], Path], fragment: str
) -> None:
    corpus = make(tmp_path)
    for option in ("--forget-corpus", "--retain-corpus"):
        one_error(
            run("sparsity", "--case", "organism", "--out", "runs", option, str(corpus)), fragment
        )
        nothing_written()


# --- model and SAE folders -------------------------------------------------------------------


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:24] = b"\xff" * 16
    path.write_bytes(bytes(raw))


MODEL_DAMAGE = [
    (lambda d: truncate(d / "model.safetensors"), "could not read model directory"),
    (lambda d: garble_header(d / "model.safetensors"), "could not read model directory"),
    (lambda d: (d / "model.safetensors").unlink(), "could not read model directory"),
    (lambda d: truncate(d / "config.json"), "config.json is not a valid model config"),
    (lambda d: (d / "config.json").write_text("{}"), "holds a ?; the local loader supports"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe"), "not a valid model config"),
    (lambda d: edit_json(d / "config.json", hidden_size="x"), "not a valid model config"),
    (lambda d: edit_json(d / "config.json", num_hidden_layers=-1), "not a valid model config"),
    (lambda d: edit_json(d / "config.json", head_dim=2.5), "not a valid model config"),
]
SAE_DAMAGE = [
    (lambda d: truncate(d / "sae_weights.safetensors"), "could not load the SAE"),
    (lambda d: garble_header(d / "sae_weights.safetensors"), "could not load the SAE"),
    (lambda d: truncate(d / "cfg.json"), "could not load the SAE"),
    (lambda d: (d / "cfg.json").write_text("[1, 2]"), "could not load the SAE"),
    (lambda d: (d / "cfg.json").write_bytes(b"\xff\xfe"), "could not load the SAE"),
    (lambda d: (d / "sae_weights.safetensors").unlink(), "has no sae_weights.safetensors"),
    (lambda d: edit_json(d / "cfg.json", d_sae="x"), "a value of the wrong type"),
    (lambda d: edit_json(d / "cfg.json", d_in=-3), "do not fit its cfg.json"),
    (lambda d: edit_json(d / "cfg.json", architecture="nope"), "could not load the SAE"),
]


@pytest.mark.parametrize(
    ("kind", "damage", "fragment"),
    [("model", *case) for case in MODEL_DAMAGE] + [("sae", *case) for case in SAE_DAMAGE],
)
def test_damaged_model_or_sae_directory(
    gemma_dir: Path,
    sae_dir: Path,
    tmp_path: Path,
    use_world: UseWorld,
    kind: str,
    damage: Callable[[Path], None],
    fragment: str,
) -> None:
    """A damaged local model directory (used with a good SAE), or a damaged SAE directory (used
    with the organism's model)."""
    damaged = shutil.copytree(gemma_dir if kind == "model" else sae_dir, tmp_path / kind)
    damage(damaged)
    args = ["--case", "organism", "--out", "runs"]
    args += (
        ["--model", str(damaged), "--sae", str(sae_dir)]
        if kind == "model"
        else ["--sae", str(damaged)]
    )
    one_error(run("sparsity", *args), fragment)
    nothing_written()


# --- bundles and dsg generate ----------------------------------------------------------------


@pytest.fixture
def bundle(world: TinyWorld, tmp_path: Path) -> Path:
    loaded = LoadedSAE(world.sae, "tiny-sae", world.hook_name, world.hook_layer)
    return from_sae(loaded, [3, 1, 2], threshold=0.2, multiplier=5.0).save(tmp_path / "bundle")


def edit_bundle(path: Path, **changes: object) -> None:
    config = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    "changes",
    [
        {"hook": {"name": "blocks.1.hook_resid_post", "layer": 1, "point": "hook_resid_post"}},
        {"features": [1, 2, 3]},
        {"threshold": 0.0},
        {"multiplier": 0.0},
        {"strategy": "static"},
    ],
)
def test_generate_refuses_an_edited_bundle(
    bundle: Path, use_world: UseWorld, changes: dict[str, object]
) -> None:
    edit_bundle(bundle, **changes)
    one_error(run("generate", "--bundle", str(bundle), "hello"), "edited after export")


def test_generate_checks_the_device_first(bundle: Path, use_world: UseWorld) -> None:
    one_error(run("generate", "--bundle", str(bundle), "--device", "gpu0", "hi"), "unknown device")


# --- dsg data mirror -------------------------------------------------------------------------


def test_mirror_to_an_unwritable_destination_fails_before_downloading(
    use_world: UseWorld,
) -> None:
    Path("a-file").write_text("")
    line = one_error(run("data", "mirror", "a-file/mirror", "--case", "bio"), "is not writable")
    assert "a-file is not a directory" in line and "download" not in line


# --- tampered run artifacts ------------------------------------------------------------------


def select_once(world: TinyWorld, use_world: UseWorld) -> Path:
    """A finished selection under ./runs; returns its folder."""
    use_world(world)
    done = run("select", "--case", "tiny", "--out", "runs")
    assert done.exit_code == 0, done.output
    return Path(done.stdout.strip()).parent


def sparsity_folder() -> Path:
    (folder,) = (Path("runs") / "sparsity").iterdir()
    return folder


def edit_selection(selection: Path) -> str:
    data = json.loads((selection / "selection.json").read_text())
    data["features"] = data["features"][::-1]
    data["thresholds"] = {n: 0.0 for n in data["thresholds"]}
    (selection / "selection.json").write_text(json.dumps(data, indent=2))
    return "selection.json was edited"


def drop_chunk(selection: Path) -> str:
    (sparsity_folder() / "calibration-00000.safetensors").unlink()
    return "calibration-00000.safetensors is missing"


def swap_stats(selection: Path) -> str:
    other = run("sparsity", "--case", "tiny", "--out", "runs", "--seed", "1")
    assert other.exit_code == 0, other.output
    theirs = Path(other.stdout.strip()) / "stats.safetensors"
    ours = next(f for f in (Path("runs") / "sparsity").iterdir() if f != theirs.parent)
    shutil.copyfile(theirs, ours / "stats.safetensors")
    return "stats.safetensors was edited, truncated or replaced"


def edit_meta(selection: Path) -> str:
    meta = sparsity_folder() / "meta.json"
    data = json.loads(meta.read_text())
    data["n_rows"] -= 1
    meta.write_text(json.dumps(data))
    return "meta.json was edited"


def unhashed_meta(selection: Path) -> str:
    meta = selection / "meta.json"
    data = json.loads(meta.read_text())
    del data["files"], data["sha256"]
    meta.write_text(json.dumps(data))
    return "no content hashes"


@pytest.mark.parametrize(
    "tamper", [edit_selection, drop_chunk, swap_stats, edit_meta, unhashed_meta]
)
def test_tampered_artifact_is_refused_until_forced(
    world: TinyWorld, use_world: UseWorld, tamper: Callable[[Path], str]
) -> None:
    selection = select_once(world, use_world)
    original = json.loads((selection / "selection.json").read_text())
    fragment = tamper(selection)
    line = one_error(run("select", "--case", "tiny", "--out", "runs"), fragment)
    assert "--force" in line and "delete that folder" in line
    forced = run("select", "--case", "tiny", "--out", "runs", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((selection / "selection.json").read_text()) == original
    again = run("select", "--case", "tiny", "--out", "runs")
    assert again.exit_code == 0, again.output


def test_evaluate_refuses_an_edited_selection(world: TinyWorld, use_world: UseWorld) -> None:
    selection = select_once(world, use_world)
    edit_selection(selection)
    one_error(run("evaluate", "--case", "tiny", "--out", "runs"), "selection.json was edited")


def test_evaluate_refuses_an_edited_cached_result(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    first = run("evaluate", "--case", "tiny", "--out", "runs", "--questions", "all")
    assert first.exit_code == 0, first.output
    metas = sorted((Path("runs") / "evaluate").glob("*/meta.json"))
    assert metas
    data = json.loads(metas[0].read_text())
    first_per_set = json.loads(json.dumps(data["per_set"]))
    for result in data["per_set"].values():
        result["correct"] = result["total"] + 1  # a change whatever the first run scored
    metas[0].write_text(json.dumps(data))
    line = one_error(
        run("evaluate", "--case", "tiny", "--out", "runs", "--questions", "all"),
        "meta.json was edited",
    )
    assert str(metas[0].parent) in line
    forced = run("evaluate", "--case", "tiny", "--out", "runs", "--questions", "all", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(metas[0].read_text())["per_set"] == first_per_set


def test_pyproject_tool_dsg_that_is_not_a_table(world: TinyWorld, use_world: UseWorld) -> None:
    use_world(world)
    Path("pyproject.toml").write_text("[tool]\ndsg = 5\n")
    one_error(run("select", "--case", "tiny", "--out", "runs"), "[tool.dsg] must be a table")
    nothing_written()


@pytest.mark.parametrize("damage", [truncate, lambda f: f.write_bytes(b"")])
def test_damaged_dataset_mirror(
    tmp_path: Path, use_world: UseWorld, damage: Callable[[Path], None]
) -> None:
    mirror = write_case_mirror(tmp_path / "mirror", "news")
    (forget,) = mirror.rglob("forget-*.parquet")
    damage(forget)
    result = run("sparsity", "--case", "news", "--data-dir", str(mirror), "--out", "runs")
    one_error(result, "could not read dataset muse-bench/MUSE-News (raw, forget) from the mirror")
    assert "dsg data mirror --case CASE" in result.stderr
    nothing_written()


def test_error_lines_keep_square_brackets(world: TinyWorld, use_world: UseWorld) -> None:
    """A message quoting a regex or a TOML table is printed as is, not read as console markup."""
    use_world(world)
    one_error(
        run("select", "--case", "tiny", "--sae-id-pattern", "[bold]("),
        "bad SAE pattern '[bold](' (sae_id_pattern)",
    )


def test_weights_that_do_not_fit_the_config(
    gemma_dir: Path, sae_dir: Path, tmp_path: Path, use_world: UseWorld
) -> None:
    """A weight file swapped in from another model or SAE (valid files, wrong shapes)."""
    from transformers import Gemma2ForCausalLM

    Gemma2ForCausalLM(tiny_gemma_config(1, hidden_size=16)).save_pretrained(tmp_path / "narrow")
    model = shutil.copytree(gemma_dir, tmp_path / "model")
    shutil.copyfile(tmp_path / "narrow" / "model.safetensors", model / "model.safetensors")
    args = ["--case", "organism", "--model", str(model), "--sae", str(sae_dir), "--out", "runs"]
    one_error(run("sparsity", *args), "do not fit its config.json")
    sae = shutil.copytree(sae_dir, tmp_path / "sae")
    build_sae(32, 24, hook_name="blocks.0.hook_resid_post").save_model(str(tmp_path / "other"))
    shutil.copyfile(tmp_path / "other" / "sae_weights.safetensors", sae / "sae_weights.safetensors")
    one_error(
        run("sparsity", "--case", "organism", "--sae", str(sae), "--out", "runs"),
        "do not fit its cfg.json",
    )
    nothing_written()


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"answer": 7}, "answer 7"),
        ({"answer": None}, "answer None"),
        ({"choices": ["a", "b", "c"]}, "choices ['a', 'b', 'c']"),
        ({"choices": None}, "choices None"),
    ],
)
def test_malformed_question_rows(tmp_path: Path, bad: dict[str, object], fragment: str) -> None:
    from dsg_wmdp.mcq import questions_of, wmdp_dataset

    from dsg.api.data import DataSource
    from dsg.core.errors import UserError

    rows = mcq_rows("biology", 3)
    rows[1] = {**rows[1], **bad}
    write_hub_dataset(tmp_path, "cais/wmdp", {("wmdp-bio", "test"): rows}, fmt="jsonl")
    with pytest.raises(UserError, match=r"cais/wmdp \(wmdp-bio, test\), row 1: expected") as err:
        questions_of(wmdp_dataset("wmdp-bio"), DataSource(data_dir=tmp_path))
    assert fragment in str(err.value)


def test_damaged_packaged_organism_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_world: UseWorld
) -> None:
    """A damaged install (a cut-off question file, a truncated SAE) is named, not a traceback."""
    import dsg_organism

    data = shutil.copytree(dsg_organism.DATA, tmp_path / "data")
    eval_file = next((data / "world" / "eval").glob("*.jsonl"))
    truncate(eval_file)
    truncate(data / "sae" / "sae_weights.safetensors")
    monkeypatch.setattr(dsg_organism, "WORLD", data / "world")
    monkeypatch.setattr(dsg_organism, "SAE_DIR", data / "sae")
    from dsg.api.data import DataSource
    from dsg.core.errors import UserError

    with pytest.raises(UserError, match="packaged questions .* are damaged"):
        dsg_organism.OrganismCase().eval_sets(DataSource())
    one_error(run("sparsity", "--case", "organism", "--out", "runs"), "packaged SAE", "reinstall")
    nothing_written()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("nan", "must be a finite number, got nan"),
        ("inf", "must be a finite number, got inf"),
        ("-5", "must be within [0, 1e+06], got -5"),
    ],
)
def test_multiplier_that_is_not_a_clamp_strength(
    world: TinyWorld, use_world: UseWorld, value: str, fragment: str
) -> None:
    use_world(world)
    args = ["evaluate", "--case", "tiny", "--out", "runs", "--multiplier", value]
    one_error(run(*args), "multiplier", fragment)
    nothing_written()


def test_plugin_texts_with_square_brackets_are_shown_as_is(
    world: TinyWorld, monkeypatch: pytest.MonkeyPatch, use_world: UseWorld
) -> None:
    """A plugin error quoting "[/x]" would otherwise be a markup error: a crash of the listing."""
    import dsg.api.plugins
    import dsg.engine.session
    from dsg.api.plugins import PluginInfo

    reg = tiny_registry(world)
    reg.plugins.append(PluginInfo("broken", "broken_mod", "(test)", "", error="bad [/x] [red]"))
    monkeypatch.setattr(dsg.api.plugins, "registry", lambda: reg)
    monkeypatch.setattr(dsg.engine.session, "registry", lambda: reg)
    monkeypatch.setenv("COLUMNS", "200")
    listed = run("plugins")
    assert listed.exit_code == 0, listed.output
    assert "skipped: bad [/x] [red]" in listed.output
    failing = run("select", "--case", "tiny", "--out", "runs", "--n-features", "1000")
    assert "warning: plugin 'broken' skipped: bad [/x] [red]" in failing.stderr
    assert failing.exit_code == 2


def test_config_file_with_a_byte_order_mark(world: TinyWorld, use_world: UseWorld) -> None:
    """Editors on Windows save UTF-8 with a BOM; the file is still a valid config."""
    use_world(world)
    Path("dsg.toml").write_text("seq_len = 513\n", encoding="utf-8-sig")
    one_error(run("select", "--case", "tiny", "--out", "runs"), "seq_len 513 is longer")


@NO_CUDA
def test_ray_sweeps_leave_the_device_to_each_worker(world: TinyWorld) -> None:
    """Ray workers may have GPUs the driver lacks: the driver checks the name, a worker the rest."""
    from dsg.core.devices import check_device
    from dsg.core.errors import UserError
    from dsg.engine.session import Session

    reg = tiny_registry(world)
    opened = Session.open({"case": "tiny", "device": "cuda", "executor": "ray"}, reg=reg)
    assert opened.settings.device == "cuda"
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        Session.open({"case": "tiny", "device": "gpu0", "executor": "ray"}, reg=reg)
    with pytest.raises(UserError, match="torch sees no CUDA GPU"):
        check_device("cuda")  # what each worker runs when it opens its job
    check_device("cuda", here=False)
