"""Bad plugins and options that tell the user what to do.

Plugins: one that ends the process at import, an entry point or object with the name of one of
dsg's own, a command with a name no one can type, a command that crashes: each is contained and
reported in one line, and dsg goes on without it. Scale-out and hub options: ``--ray-address``
without Ray, an unreachable or authenticating Ray address, a hub model that is not cached.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from commands import one_error, run
from entry_points import run_dsg, use_entry_points
from typer.testing import CliRunner

import dsg.cli.app
import dsg.engine.session  # imported now, so it binds the real registry, not a test's stand-in
from dsg import hookimpl
from dsg.api import plugins
from dsg.core.errors import UserError

# --- plugins ---------------------------------------------------------------------------------


def fake_distribution(site: Path, name: str, entry_points: dict[str, str], module: str) -> None:
    """An installed distribution as importlib.metadata finds it: ``name``'s dist-info with its
    entry points in the ``dsg`` group, and the module ``{name}_mod`` with ``module``'s code."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dsg]\n{lines}")
    (site / f"{name.replace('-', '_')}_mod.py").write_text(textwrap.dedent(module))


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln and not ln.startswith(("warning:", "[dsg] "))]


RAISES_AT_IMPORT = {
    "exit0": "raise SystemExit(0)",
    "exit3": "raise SystemExit(3)",
    "interrupt": "raise KeyboardInterrupt",
    "generator": "raise GeneratorExit('bye')",
    "own-base": "class Stop(BaseException):\n    pass\nraise Stop('stop here')",
}


@pytest.mark.parametrize("kind", list(RAISES_AT_IMPORT))
def test_a_plugin_that_ends_the_process_at_import_is_skipped(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = f"dsg_test_raising_{kind.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(RAISES_AT_IMPORT[kind] + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from dsg_strategies import DynamicStrategy

    good = types.ModuleType("dsg_test_good")
    good.register_strategies = hookimpl(  # type: ignore[attr-defined]
        lambda register: register(DynamicStrategy())
    )
    monkeypatch.setitem(sys.modules, "dsg_test_good", good)
    use_entry_points(monkeypatch, raising=module, good="dsg_test_good")
    reg = plugins.build_registry()
    (failed,) = reg.failures
    assert failed.name == "raising" and "\n" not in (failed.error or "")
    expected = {
        "exit0": "SystemExit: 0",
        "exit3": "SystemExit: 3",
        "interrupt": "KeyboardInterrupt",
        "generator": "GeneratorExit: bye",
        "own-base": "Stop: stop here",
    }[kind]
    assert failed.error == expected
    assert reg.names("strategies") == ["dynamic"]  # the others still load


@pytest.fixture
def terminal_sigint() -> Iterator[None]:
    """Ctrl-C handled as Python does from a terminal, also when the test run was started with
    SIGINT ignored (as a shell's background job is)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("terminal_sigint")
def test_the_users_ctrl_c_while_plugins_load_still_stops_dsg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real SIGINT during a plugin's import is the user's, not the plugin's failure."""
    (tmp_path / "dsg_test_slow.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    use_entry_points(monkeypatch, slow="dsg_test_slow")
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        plugins.build_registry()
    assert time.perf_counter() - start < 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_the_users_ctrl_c_while_the_cli_loads_plugins_is_exit_130(tmp_path: Path) -> None:
    site = tmp_path / "site"
    code = "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n"
    fake_distribution(site, "slow-plugin", {"slow": "slow_plugin_mod"}, code)
    ran = run_dsg(site, tmp_path, "plugins")
    assert ran.returncode == 130
    assert ran.stderr == "interrupted while loading plugins\n" and ran.stdout == ""


@pytest.fixture(scope="module")
def exiting_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("exiting")
    fake_distribution(
        site, "exits-at-import", {"exits": "exits_at_import_mod"}, "raise SystemExit(3)"
    )
    return site


def test_dsg_plugins_lists_a_plugin_that_exits_at_import(
    exiting_site: Path, tmp_path: Path
) -> None:
    listed = run_dsg(exiting_site, tmp_path, "plugins")
    assert listed.returncode == 0, listed.stderr
    row = next(ln for ln in listed.stdout.splitlines() if "exits-at-import" in ln)
    assert "skipped: SystemExit: 3" in row
    assert "dynamic" in listed.stdout  # dsg's own plugins were loaded after it


def test_a_command_that_needs_the_exiting_plugin_stops_in_one_line(
    exiting_site: Path, tmp_path: Path
) -> None:
    ran = run_dsg(exiting_site, tmp_path, "evaluate", "--case", "exits-case", "--out", "runs")
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    assert "warning: plugin 'exits' skipped: SystemExit: 3" in ran.stderr
    (line,) = error_lines(ran.stderr)
    assert line.startswith("error: unknown case 'exits-case'; choose one of: ")
    assert "(skipped plugins, see `dsg plugins`: 'exits')" in line
    assert not (tmp_path / "runs").exists()


SHADOW = """
from dsg import hookimpl
from dsg_strategies import DynamicStrategy


class Evil(DynamicStrategy):
    name = "evil"


@hookimpl
def register_strategies(register):
    register(Evil())
"""


@pytest.fixture(scope="module")
def shadow_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("shadow")
    fake_distribution(site, "evil-strats", {"strategies": "evil_strats_mod"}, SHADOW)
    return site


def test_an_entry_point_named_like_one_of_dsgs_own_is_refused(
    shadow_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(shadow_site))  # found before dsg's own, as PYTHONPATH is
    reg = plugins.build_registry()
    assert "dynamic" in reg.names("strategies") and "evil" not in reg.names("strategies")
    assert reg.owners["strategies"]["dynamic"] == "strategies"
    (refused,) = reg.failures
    assert (refused.name, refused.distribution) == ("strategies", "evil-strats")
    assert refused.error == (
        "refused: its entry point 'strategies' has the name of dsg's own plugin and would "
        "replace it; rename the entry point in 'evil-strats'"
    )
    assert "evil_strats_mod" not in sys.modules  # never imported
    own = [p for p in reg.plugins if p.name == "strategies" and p.error is None]
    assert [p.first_party for p in own] == [True]


def test_dsg_plugins_shows_the_refused_entry_point(shadow_site: Path, tmp_path: Path) -> None:
    listed = run_dsg(shadow_site, tmp_path, "plugins")
    assert listed.returncode == 0, listed.stderr
    row = next(ln for ln in listed.stdout.splitlines() if "evil-strats" in ln)
    assert "skipped: refused: its entry point 'strategies' has the name of dsg's own" in row
    assert "dynamic" in listed.stdout


def test_two_third_party_entry_points_with_one_name_keep_the_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("first-dist", "second-dist"):
        fake_distribution(tmp_path / name, name, {"same": f"{name.replace('-', '_')}_mod"}, "")
    monkeypatch.syspath_prepend(str(tmp_path / "second-dist"))
    monkeypatch.syspath_prepend(str(tmp_path / "first-dist"))
    reg = plugins.build_registry()
    (refused,) = reg.failures
    assert refused.distribution == "second-dist"
    assert "has the name of 'first-dist''s plugin" in (refused.error or "")


def test_a_third_party_object_named_like_one_of_dsgs_own_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even registered first (``tryfirst``), a plugin's ``dynamic`` strategy does not replace
    dsg's, and it does not take dsg down as a conflict would."""
    from dsg_strategies import DynamicStrategy

    class Impostor(DynamicStrategy):
        pass

    plugin = types.SimpleNamespace(
        register_strategies=hookimpl(tryfirst=True)(lambda register: register(Impostor()))
    )
    reg = plugins.build_registry([("impostor", plugin)])
    assert type(reg.get("strategies", "dynamic")) is DynamicStrategy
    (refused,) = reg.failures
    assert refused.name == "impostor"
    assert refused.error == "refused: its strategy 'dynamic' is one of dsg's own; rename it"


def lambda_command() -> Any:
    return lambda: None


def _private() -> None:
    """Hidden."""


def Shout() -> None:  # noqa: N802 - the name is the bad input
    """Loud."""


@pytest.mark.parametrize(
    ("command", "name"), [(lambda_command(), "<lambda>"), (_private, "-private"), (Shout, "Shout")]
)
def test_a_command_name_no_one_can_type_is_refused(
    command: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_entry_points(monkeypatch)
    plugin = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(command)))
    reg = plugins.build_registry([("odd", plugin)])
    assert reg.names("commands") == []
    (failed,) = reg.failures
    assert f"plugin 'odd' registered a command named {name!r}; a command is named" in (
        failed.error or ""
    )


def crash(kind: str = "value") -> None:
    """Fail as a buggy plugin would."""
    if kind == "user":
        raise UserError("nothing to crash; pass --kind value")
    if kind == "usage":
        raise typer.BadParameter("not a kind")
    raise ValueError("bad [red]thing[/]\nsecond line")


@pytest.fixture
def crash_cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """A CLI with dsg's ``select`` and the command ``crash`` of the plugin ``crasher``."""
    use_entry_points(monkeypatch)
    plugin = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(crash)))
    reg = plugins.build_registry([("crasher", plugin)])
    monkeypatch.setattr(plugins, "registry", lambda: reg)
    cli = typer.Typer()
    monkeypatch.setattr(dsg.cli.app, "app", cli)
    cli.command("select")(dsg.cli.app.select)
    dsg.cli.app._add_plugin_commands()
    return cli


def test_a_plugin_command_that_crashes_is_one_line_naming_the_plugin(
    crash_cli: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DSG_TRACEBACK", raising=False)
    result = CliRunner().invoke(crash_cli, ["crash"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        "error: plugin 'crasher' failed in its command 'crash': ValueError: bad [red]thing[/] "
        "(a bug in the plugin; DSG_TRACEBACK=1 shows the traceback)"
    ]
    monkeypatch.setenv("DSG_TRACEBACK", "1")
    shown = CliRunner().invoke(crash_cli, ["crash"])
    assert shown.exit_code == 1
    assert "Traceback" in shown.stderr and 'raise ValueError("bad' in shown.stderr


def test_a_plugin_commands_user_error_and_usage_error_keep_exit_2(
    crash_cli: typer.Typer,
) -> None:
    one_error(
        CliRunner().invoke(crash_cli, ["crash", "--kind", "user"]),
        "error: nothing to crash; pass --kind value",
    )
    usage = CliRunner().invoke(crash_cli, ["crash", "--kind", "usage"])
    assert usage.exit_code == 2 and "not a kind" in usage.output
    assert "failed in its command" not in usage.output


# --- Ray -------------------------------------------------------------------------------------


def test_a_ray_address_without_the_ray_executor_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    args = ("sparsity", "--case", "organism", "--out", "runs")
    line = one_error(run(*args, "--ray-address", "1.2.3.4:1"))
    assert "ray address '1.2.3.4:1' is used only by the ray executor; add --executor ray" in line
    Path("dsg.toml").write_text('executor = "local"\nray_address = "auto"\n')
    one_error(run(*args), "ray address 'auto' is used only by the ray executor")
    assert not Path("runs").exists()


def test_executor_local_on_the_command_line_overrides_a_configured_ray_address() -> None:
    from dsg.config.settings import Settings
    from dsg.runs.ray_connect import check_ray_address

    local = Settings(case="tiny", model="m", sae="s", ray_address="auto")
    check_ray_address(local, {"executor": "local"})  # the config's Ray set-up is overridden
    with pytest.raises(UserError, match="used only by the ray executor"):
        check_ray_address(local, {"executor": "local", "ray_address": "auto"})
    with pytest.raises(UserError, match="used only by the ray executor"):
        check_ray_address(local, {})
    check_ray_address(Settings(case="tiny", model="m", sae="s", executor="ray"), {})


CONNECT = """
import sys, time
from dsg.core.errors import UserError
from dsg.runs.ray_connect import connect, import_ray

ray = import_ray()
start = time.perf_counter()
try:
    connect(ray, sys.argv[1])
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    print(round(time.perf_counter() - start, 1))
    sys.exit(2)
print("connected", round(time.perf_counter() - start, 1))
"""


def ray_client(home: Path, address: str, **env: str) -> subprocess.CompletedProcess[str]:
    """dsg's connection to ``address`` in a fresh process with its own home (no token of the
    user's) and no Ray variables but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [sys.executable, "-c", CONNECT, address],
        env={**clean, "HOME": str(home), "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_an_address_where_nothing_listens_fails_at_once_in_one_line(tmp_path: Path) -> None:
    ran = ray_client(tmp_path, "127.0.0.1:1")
    assert ran.returncode == 2, ran.stderr
    (line,) = ran.stderr.splitlines()  # none of Ray's retry lines
    assert line == (
        "error: no Ray cluster answers at '127.0.0.1:1' (Connection refused); start one with "
        "`ray start --head` and pass the address it prints, or pass --ray-address auto on a node "
        "of a running cluster"
    )
    assert float(ran.stdout) < 5


def test_an_address_that_is_not_a_ray_cluster_fails_within_30_s(tmp_path: Path) -> None:
    """A port that accepts connections but does not speak Ray (a dashboard's, say). ``ray.init``
    dials a loopback address at this machine's own address, so the listener is bound there."""
    import socket

    from ray.util import get_node_ip_address

    with socket.socket() as listener:
        listener.bind((get_node_ip_address(), 0))
        listener.listen(8)
        ran = ray_client(tmp_path, f"127.0.0.1:{listener.getsockname()[1]}")
    assert ran.returncode == 2, ran.stderr
    (line,) = ran.stderr.splitlines()
    assert "accepts connections at '127.0.0.1:" in line
    assert "does not answer as a Ray cluster (pass the port of the cluster's GCS" in line
    assert float(ran.stdout) < 30


TOKEN = "0123456789abcdef0123456789abcdef"

HEAD = """
import sys
import ray

context = ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
                   _temp_dir=sys.argv[1], log_to_driver=False)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A one-CPU Ray instance on this machine that wants the token ``TOKEN``; its address."""
    home = tmp_path_factory.mktemp("home")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = {**clean, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD, str(tmp_path_factory.mktemp("ray"))],
        env={**env, "OMP_NUM_THREADS": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert head.stdout is not None and head.stdin is not None
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray instance did not start"
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "Authentication token is missing or incorrect"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 32}, "token is missing or incorrect"),
        ({"RAY_AUTH_MODE": "token"}, "no authentication token was found"),
    ],
    ids=["no-token-mode", "wrong-token", "no-token"],
)
def test_a_cluster_that_wants_a_token_names_the_cause_and_the_fix(
    token_cluster: str, tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    ran = ray_client(tmp_path, token_cluster, **env)
    assert ran.returncode == 2, ran.stderr
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"error: the Ray cluster at '{token_cluster}' refused dsg: ")
    assert reason in line
    assert "set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN" in line
    assert float(ran.stdout) < 30


def test_the_right_token_connects(token_cluster: str, tmp_path: Path) -> None:
    ran = ray_client(tmp_path, token_cluster, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("connected") and ran.stderr == ""


# --- hub models that are not cached ----------------------------------------------------------


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's host does not resolve, as on a machine without network; offline mode off."""
    import socket

    from huggingface_hub import constants

    def unresolvable(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unresolvable)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_uncached_hub_model_offline_is_one_line_at_once(
    empty_hub_cache: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSG_CONFIG", raising=False)
    args = ("sparsity", "--case", "organism", "--model", "pythia-14m", "--out", "runs")
    line = one_error(run(*args))
    assert line == (
        "error: model EleutherAI/pythia-14m is not in the Hugging Face cache and offline mode is "
        "on (HF_HUB_OFFLINE); download it where the hub can be reached (`hf download "
        "EleutherAI/pythia-14m`, after `hf auth login` if it is gated), or pass --model with a "
        "local model directory"
    )


def test_an_uncached_hub_model_without_network_is_one_line_at_once(
    empty_hub_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsg_transformer_lens import NamedModelLoader

    no_network(monkeypatch)
    with pytest.raises(UserError) as raised:
        NamedModelLoader().load("pythia-14m", device="cpu", dtype=None)  # type: ignore[arg-type]
    assert str(raised.value).startswith(
        "model EleutherAI/pythia-14m is not in the Hugging Face cache and the hub cannot be "
        "reached: Name or service not known; download it"
    )


def test_a_cached_hub_model_without_network_is_read_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No retries against an unreachable hub: the load runs in offline mode, restored after."""
    import dsg_transformer_lens.named as named
    import transformer_lens
    from huggingface_hub import constants

    no_network(monkeypatch)
    monkeypatch.setattr(named, "cached_config", lambda official: "/cache/config.json")
    seen: list[bool] = []
    # the config is only pretended to be cached: skip the remote-code check that would read it
    monkeypatch.setattr(named, "refuse_trusted_code", lambda official, **kwargs: None)

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        seen.append(constants.is_offline_mode())
        raise OSError("a weights file is not in the cache")

    monkeypatch.setattr(
        transformer_lens.HookedTransformer, "from_pretrained_no_processing", from_pretrained
    )
    with pytest.raises(UserError, match="could not load the weights of EleutherAI/pythia-14m"):
        named.load_named_model("pythia-14m", device="cpu", dtype=None)  # type: ignore[arg-type]
    assert seen == [True]
    assert constants.is_offline_mode() is False


@pytest.mark.parametrize("loader", ["generate", "transformers backend"])
def test_transformers_loads_of_a_hub_id_run_offline_without_network(
    empty_hub_cache: None, monkeypatch: pytest.MonkeyPatch, loader: str
) -> None:
    """dsg generate's loader and the transformers backend's: no retries against an unreachable
    hub; the load runs in offline mode (restored after) and fails in one line."""
    import transformers
    from huggingface_hub import constants

    from dsg.engine.loader import load_causal_lm
    from dsg.stages.generate import load_model

    no_network(monkeypatch)
    seen: list[bool] = []

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        seen.append(constants.is_offline_mode())
        raise OSError("not in the cache")

    for name in ("AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", from_pretrained)
    with pytest.raises(UserError, match="someone/uncached"):
        if loader == "generate":
            load_model("someone/uncached", device="cpu", dtype="float32")
        else:
            load_causal_lm("someone/uncached", device="cpu", dtype=torch.float32)
    assert seen == [True]
    assert constants.is_offline_mode() is False


# --- third-party noise -----------------------------------------------------------------------

GIT_LOOKUP = """
import sys
import lm_eval.evaluator
from dsg.stages.evaluate.lm_eval_run import no_git_lookup

if sys.argv[1] == "quiet":
    with no_git_lookup():
        print(lm_eval.evaluator.get_git_commit_hash())
else:
    print(lm_eval.evaluator.get_git_commit_hash())
"""


def test_lm_evals_git_lookup_prints_nothing_outside_a_repository(tmp_path: Path) -> None:
    def lookup(mode: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
        return subprocess.run(
            [sys.executable, "-c", GIT_LOOKUP, mode],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    if shutil.which("git") is not None:  # lm-eval alone: git's complaint on stderr
        assert "not a git repository" in lookup("plain").stderr
    quiet = lookup("quiet")
    assert quiet.returncode == 0 and quiet.stdout == "None\n"
    assert "git" not in quiet.stderr
