"""Values checked where they enter: one error line, exit code 2, no traceback, nothing written.

Integers must fit in int64, numbers in float32 where the guardrail uses them (a multiplier at most
``MAX_MULTIPLIER``), strings, patterns and paths must not be empty, and a config key has one
spelling. The largest values allowed still run and keep the logits finite.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from bundles import edit_config, loaded, random_sae
from commands import one_error, run
from hf_world import HOOK, load_hf, topic_sae
from tiny import TinyWorld, UseWorld
from tiny_gemma import write_tiny_gemma

from dsg.api.interfaces import LoadedSAE
from dsg.bundle import CONFIG_FILE, TENSORS_FILE, Bundle, from_sae
from dsg.config.resolve import resolve, validate_config
from dsg.config.settings import MAX_MULTIPLIER, MAX_STAT_DECIMALS
from dsg.config.values import CaseDefaults
from dsg.core.artifacts import file_sha256, read_tensors, write_tensors
from dsg.core.errors import UserError
from dsg.hf import attach
from dsg_runtime.binding import record_binding

HUGE = "99999999999999999999999"  # beyond int64


def nothing_written(before: set[Path]) -> None:
    """The working directory holds what it held before the command: no run folder, no file."""
    assert set(Path().iterdir()) == before


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "fragment"),
    [
        ("select", ["--seed", HUGE], f"seed {HUGE} does not fit in a 64-bit integer"),
        ("select", ["--seed", "-1"], "seed must be at least 0, got -1"),
        ("select", ["--n-features", HUGE], "n features 9999"),
        ("select", ["--batch-size", HUGE], "batch size 9999"),
        ("select", ["--stat-decimals", "100000"], "stat decimals must be within [-inf, 1074]"),
        ("select", ["--min-chars", "-1"], "min chars must be at least 0"),
        ("evaluate", ["--multiplier", "1e39"], "multiplier must be within [0, 1e+06], got 1e+39"),
        ("evaluate", ["--multiplier", "1000001"], "multiplier must be within [0, 1e+06]"),
        ("evaluate", ["--multiplier", "-500"], "multiplier must be within [0, 1e+06]"),
        ("evaluate", ["--multiplier", "nan"], "multiplier must be a finite number"),
        ("evaluate", ["--dtype", "float16", "--multiplier", "1e5"], "100000 overflows float16"),
        ("evaluate", ["--multiplier", "inf"], "multiplier must be a finite number"),
        ("select", ["--ratio-percentile", "nan"], "ratio percentile must be a finite number"),
        ("select", ["--sae-id-pattern", ""], "sae id pattern must not be empty"),
        ("select", ["--sae-release-pattern", ""], "sae release pattern must not be empty"),
        ("select", ["--case", ""], "case must not be empty"),
        ("select", ["--model", ""], "model must not be empty"),
        ("select", ["--sae", ""], "sae must not be empty"),
        ("select", ["--device", ""], "device must not be empty"),
        ("select", ["--ray-address", ""], "ray address must not be empty"),
        ("evaluate", ["--strategy", ""], "strategy must not be empty"),
        ("evaluate", ["--lm-eval-tasks", ""], "lm eval tasks must not be empty"),
        ("evaluate", ["--lm-eval-tasks", ",,,"], "lm-eval tasks ',,,' names no task"),
        ("evaluate", ["--lm-eval-tasks", ","], "lm-eval tasks ',' names no task"),
        ("evaluate", ["--lm-eval-tasks", "mmlu", "--lm-eval-tasks", " , "], "' , ' names no"),
        ("select", ["--config", "/dev/null"], "/dev/null is not a regular file"),
        ("select", ["--out", ""], "--out must not be empty"),
        ("select", ["--data-dir", ""], "--data-dir must not be empty"),
        ("select", ["--forget-corpus", ""], "--forget-corpus must not be empty"),
        ("select", ["--config", ""], "--config must not be empty"),
        ("generate", ["--model", ""], "model must not be empty"),
    ],
)
def test_bad_option_value(
    world: TinyWorld, use_world: UseWorld, command: str, args: list[str], fragment: str
) -> None:
    use_world(world)
    before = set(Path().iterdir())
    base = ["--out", "runs"] if "--out" not in args else []
    if command == "generate":
        one_error(run(command, *args, "a prompt"), fragment)
    else:
        one_error(
            run(command, *(["--case", "tiny"] if "--case" not in args else []), *base, *args),
            fragment,
        )
    nothing_written(before)


@pytest.mark.parametrize("args", [["--sae-id-pattern", ""], ["--sae-release-pattern", ""], [""]])
def test_saes_refuses_empty_patterns(args: list[str]) -> None:
    """An empty pattern would list every SAE of every release."""
    one_error(run("saes", *args), "must not be empty")


# --- the config file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (f"seed = {HUGE}\n", ["dsg.toml: seed", "does not fit in a 64-bit integer"]),
        ("multipliers = [500, 1e39]\n", ["dsg.toml: multiplier must be within [0, 1e+06]"]),
        ("n-features = [100]\nn_features = [150]\n", ["'n-features' and 'n_features'"]),
        ('out = ""\n', ["dsg.toml: out must not be empty"]),
        ('case = ""\n', ["dsg.toml: case must not be empty"]),
        ('sae_id_pattern = ""\n', ["dsg.toml: sae id pattern must not be empty"]),
        ('strategies = ["dynamic", ""]\n', ["dsg.toml: strategy must not be empty"]),
        ("n_features = " + "[" * 5000 + "1" + "]" * 5000 + "\n", ["nests arrays or tables"]),
        ("[a]\n" + "x = " + "{ y = " * 5000 + "1" + " }" * 5000 + "\n", ["nests arrays or"]),
    ],
)
def test_bad_config_value(
    world: TinyWorld, use_world: UseWorld, content: str, fragments: list[str]
) -> None:
    use_world(world)
    Path("dsg.toml").write_text(content)
    before = set(Path().iterdir())
    one_error(run("select", "--case", "tiny", "--out", "runs"), *fragments)
    nothing_written(before)


LONG = "a" * 10_000_000  # a 10 MB string


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("seed = " + "1" * 5000 + "\n", ["dsg.toml holds an integer too long", "64-bit integer"]),
        (
            "seed = " + "1" * 4000 + "\n",
            ["dsg.toml: seed <an integer of about 4,000 digits> does not fit in a 64-bit"],
        ),
        (
            "seed = [" + ",".join(map(str, range(20_000))) + "]\n",
            ["seed must be a int, not [0, 1, 2,", "… (20,000 items)"],
        ),
        (f'dtype = "{LONG}"\n', ["unknown dtype 'aaa", "(10,000,000 characters)", "float32"]),
        ("k" * 100_000 + " = 1\n", ["unknown key 'kkk", "(100,000 characters)", "known keys:"]),
        (f'model = "{LONG}"\n', ["no model loader accepts 'aaa", "File name too long", "local"]),
        (f'sae = "{LONG[:300]}"\n', ["no SAE loader accepts 'aaa", "(300 characters)"]),
    ],
)
def test_an_error_quotes_an_excerpt_of_a_long_value(
    world: TinyWorld, use_world: UseWorld, content: str, fragments: list[str]
) -> None:
    """A 5,000-digit integer (more than Python reads from text), a 20,000-element array, a
    10 MB string or a key or model name too long for a path: one line that quotes the start
    of the value and its size, never the value whole, and no traceback."""
    use_world(world)
    Path("dsg.toml").write_text(content)
    before = set(Path().iterdir())
    line = one_error(run("select", "--case", "tiny", "--out", "runs"), *fragments)
    assert len(line) < 1000
    nothing_written(before)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--dtype", LONG], "unknown dtype 'aaa"),
        (["--case", LONG], "unknown case 'aaa"),
        (["--model", LONG], "no model loader accepts 'aaa"),
        (["--strategy", LONG], "unknown strategy 'aaa"),
    ],
)
def test_an_option_error_quotes_an_excerpt_of_a_long_value(
    world: TinyWorld, use_world: UseWorld, args: list[str], fragment: str
) -> None:
    use_world(world)
    before = set(Path().iterdir())
    case = ["--case", "tiny"] if "--case" not in args else []
    line = one_error(run("evaluate", *case, "--out", "runs", *args), fragment)
    assert len(line) < 1000 and "(10,000,000 characters)" in line
    nothing_written(before)


def test_a_long_error_line_keeps_its_start_and_its_end() -> None:
    from dsg.core.errors import excerpt, shortened

    message = "unknown thing " + "x" * 5000 + "; pass another"
    short = shortened(message)
    assert len(short) <= 1003 and short.startswith("unknown thing xxx")
    assert short.endswith("; pass another") and " … " in short
    assert shortened("fine") == "fine"
    assert excerpt("abc") == "'abc'" and excerpt([1, 2]) == "[1, 2]"
    assert excerpt(10**5000) == "<an integer of about 5,001 digits>"
    assert excerpt(list(range(100))).endswith("… (100 items)")


def test_edges_still_run(world: TinyWorld, use_world: UseWorld) -> None:
    """The largest seed and decimals allowed run; a dash and an underscore key apart still
    read as before."""
    use_world(world)
    Path("dsg.toml").write_text(f"stat-decimals = {MAX_STAT_DECIMALS}\nseed = {2**63 - 1}\n")
    done = run("select", "--case", "tiny", "--out", "runs")
    assert done.exit_code == 0, done.output


# --- the largest multiplier, end to end ------------------------------------------------------


def test_the_largest_multiplier_keeps_logits_finite(tmp_path: Path) -> None:
    """A guardrail at MAX_MULTIPLIER on a transformers model: the prompt fires, the clamp
    changes the logits, and they stay finite (1e39 became -inf in float32 and NaN logits)."""
    model, tokenizer = load_hf(write_tiny_gemma(tmp_path / "gemma"))
    sae = topic_sae(model, tokenizer)
    loaded = LoadedSAE(sae, "topic", HOOK, 1)
    bundle = from_sae(
        loaded,
        [0, 1, 2],
        threshold=0.0,
        multiplier=MAX_MULTIPLIER,
        binding=record_binding(model, HOOK),
    )
    enc = tokenizer(["vex zyx quazz pox vexx zyq"], return_tensors="pt")
    with torch.no_grad():
        plain = model(**enc).logits
        with attach(model, bundle) as handle:
            guarded = model(**enc).logits
    assert bool(handle.fired.all())
    assert torch.isfinite(guarded).all()
    assert not torch.allclose(guarded, plain)


# --- bundles: the digest recomputed, every value still checked --------------------------------


def resign(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit bundle.json and recompute its digest, as anyone can: sha256 of the canonical JSON
    of every other field."""
    edit_config(directory, edit, resign=True)


def set_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update({name: value})


def set_hook(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config["hook"].update(changes)


def drop_field(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.pop(name)


def retensor(name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Rewrite one tensor, record the file's new hash and recompute the digest."""

    def tamper(directory: Path) -> None:
        tensors = read_tensors(directory / TENSORS_FILE)
        tensors[name] = change(tensors[name])
        write_tensors(
            directory / TENSORS_FILE, tensors, metadata={"format": "dsg-guardrail-bundle"}
        )
        digest = file_sha256(directory / TENSORS_FILE)
        resign(directory, lambda config: config["tensors"].update(sha256=digest))

    return tamper


def with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


BUNDLE_FIELDS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (set_field("multiplier", float("nan")), "multiplier must be a finite number"),
    (set_field("multiplier", -500), r"multiplier must be within \[0, 1e\+06\], got -500"),
    (set_field("multiplier", 1e39), r"multiplier must be within \[0, 1e\+06\]"),
    (set_field("multiplier", "500"), "multiplier must be a number"),
    (set_field("multiplier", True), "multiplier must be a number"),
    (set_field("threshold", float("inf")), r"threshold must be within \[0, 1\], got inf"),
    (set_field("threshold", 2.0), r"threshold must be within \[0, 1\], got 2.0"),
    (set_field("threshold", -0.1), r"threshold must be within \[0, 1\]"),
    (set_field("threshold", float("nan")), "threshold is NaN"),
    (set_field("threshold", None), "needs a threshold"),
    (set_field("features", [1.0, 2]), "features must be integer indices, got 1.0"),
    (set_field("features", [True, 2]), "features must be integer indices, got True"),
    (set_field("features", [float("inf"), 2]), "features must be integer indices, got inf"),
    (set_field("features", [1, 1]), "feature indices contain duplicates"),
    (set_field("features", [1, 48]), r"feature indices must lie in \[0, 48\)"),
    (set_field("features", [1, 10**30]), r"feature indices must lie in \[0, 48\)"),
    (set_field("features", [-1, 2]), r"feature indices must lie in \[0, 48\)"),
    (set_field("features", []), "n features must be positive"),
    (set_hook(layer=0), "hook.layer 0 contradicts hook.name 'blocks.1.hook_resid_post'"),
    (set_hook(layer=True), "hook.layer True contradicts hook.name"),
    (set_hook(point="hook_resid_pre"), "hook.point 'hook_resid_pre' contradicts hook.name"),
    (set_hook(extra=1), "hook must have exactly name, layer and point"),
    (set_hook(name="blocks.1.attn.hook_z"), "cannot be exported"),
    (set_field("extra", 1), "unknown field 'extra'"),
    (drop_field("provenance"), "no field 'provenance'"),
    (set_field("d_model", 99), "d_model 99 contradicts the tensors' width"),
    (set_field("dtype", "float16"), "dtype 'float16' contradicts the format"),
    (lambda c: c["tensors"].update(file="../../x"), "tensors.file '../../x' contradicts"),
    (lambda c: c["tensors"].update(extra=1), "tensors must have exactly file and sha256"),
    (set_field("apply_b_dec_to_input", "false"), "apply_b_dec_to_input must be true or false"),
    (set_field("d_sae", "48"), "d_sae must be an integer"),
    (set_field("d_sae", 10**30), "d_sae 1000000000000000000000000000000 does not fit"),
    (set_field("strategy", ""), "strategy '' is not installed"),
    (set_field("strategy_params", {"window": 4}), "takes no strategy_params, got"),
    (set_field("strategy_params", []), "strategy_params must be an object"),
    (set_field("activation", "gelu"), "activation 'gelu' is none of relu, jumprelu, topk"),
    (set_field("base_model", {"hf": 5}), "base_model.hf must be a string or null"),
    (set_field("base_model", {"weights": "x"}), "base_model has unknown field 'weights'"),
    (set_field("base_model", "/models/x"), "base_model must be an object"),
    (set_field("sae", {"spec": ["x"]}), "sae.spec must be a string or null"),
    (set_field("provenance", None), "provenance must be an object"),
]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    sae = random_sae("jumprelu")
    bundle = from_sae(loaded(sae), [1, 2], threshold=0.1, multiplier=5.0, base_model={"hf": "m"})
    return bundle.save(tmp_path / "b")


@pytest.mark.parametrize(("edit", "message"), BUNDLE_FIELDS)
def test_bundle_values_are_checked_on_every_load(
    bundle_dir: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    resign(bundle_dir, edit)
    with pytest.raises(UserError, match=message) as refused:
        Bundle.load(bundle_dir)
    assert str(refused.value).startswith(str(bundle_dir / CONFIG_FILE))


def static_with_threshold(directory: Path) -> None:
    resign(directory, lambda c: c.update(strategy="static"))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (retensor("W_enc", lambda t: t.half()), "tensor W_enc is float16; a bundle's tensors"),
        (retensor("b_enc", lambda t: t.long()), "tensor b_enc is int64"),
        (retensor("W_dec", lambda t: t.double()), "tensor W_dec is float64"),
        (retensor("W_dec", with_nan), "tensor W_dec holds NaN or infinite values"),
        (static_with_threshold, "threshold 0.1 contradicts strategy 'static'"),
    ],
)
def test_bundle_tensors_and_strategy_are_checked(
    bundle_dir: Path, tamper: Callable[[Path], None], message: str
) -> None:
    tamper(bundle_dir)
    with pytest.raises(UserError, match=message):
        Bundle.load(bundle_dir)


def test_bundle_edges_still_load(bundle_dir: Path) -> None:
    """The largest multiplier and the ends of the rate range are values a bundle may hold."""
    for threshold in (0, 1.0):
        resign(bundle_dir, set_field("threshold", threshold))
        resign(bundle_dir, set_field("multiplier", MAX_MULTIPLIER))
        back = Bundle.load(bundle_dir)
        assert (back.multiplier, back.threshold) == (MAX_MULTIPLIER, float(threshold))
    resign(bundle_dir, lambda c: c.update(multiplier=0))
    assert Bundle.load(bundle_dir).multiplier == 0.0


def test_the_clamp_must_be_finite_in_the_run_dtype(bundle_dir: Path, use_world: UseWorld) -> None:
    """float16 ends at 65504: that multiplier runs in float16, a larger one only in a wider
    dtype, and a bundle's multiplier meets the same rule under generate's --dtype."""
    defaults = CaseDefaults(model="m", sae="s")
    largest = {"multipliers": [65504.0], "dtype": "float16"}
    assert resolve(defaults, "c", validate_config(largest, Path("c")), {}).multipliers == (65504.0,)
    wider = {"multipliers": [1e5], "dtype": "bfloat16"}
    assert resolve(defaults, "c", validate_config(wider, Path("c")), {}).multipliers == (1e5,)
    resign(bundle_dir, set_field("multiplier", 1e5))
    one_error(
        run("generate", "--bundle", str(bundle_dir), "--dtype", "float16", "hello"),
        "multiplier 100000 overflows float16",
    )


def test_generate_refuses_a_resigned_bundle(bundle_dir: Path, use_world: UseWorld) -> None:
    resign(bundle_dir, set_field("multiplier", -500))
    one_error(
        run("generate", "--bundle", str(bundle_dir), "hello"),
        "multiplier must be within [0, 1e+06], got -500",
        "export the bundle again",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"multipliers": (1e7,)}, r"case default: multiplier must be within \[0, 1e\+06\]"),
        ({"batch_size": 2**70}, "case default: batch size 1180591620717411303424 does not fit"),
        ({"model": ""}, "case default: model must not be empty"),
    ],
)
def test_case_defaults_meet_the_same_rules(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        CaseDefaults(**{"model": "m", "sae": "s", **values})
