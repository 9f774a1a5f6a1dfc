"""The ``dsg`` command line. Each command is a thin shell over one stage module.

Heavy libraries (torch, transformer_lens, sae_lens, datasets) are imported inside the commands,
so ``dsg --help`` stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dsg.cli.options import FLAG, MODEL_AND_SAE, Given, setting_options
from dsg.core.errors import UserError, shortened
from dsg_runtime.strategies import DEFAULT_STRATEGY

if TYPE_CHECKING:
    from dsg.api.plugins import Registry
    from dsg.bundle import Bundle


def _loaded_registry() -> Registry | None:
    """The plugins, whose settings and commands the command line offers; None when the registry
    cannot be built, which the command that needs it then reports as one line."""
    from dsg.api.plugins import registry

    try:
        return registry()
    except UserError:
        return None
    except KeyboardInterrupt:  # the user's Ctrl-C while plugins load (a plugin's own is contained)
        from dsg.engine.session import stderr

        stderr.print("interrupted while loading plugins")
        raise SystemExit(130) from None


PLUGIN_SETTINGS = getattr(_loaded_registry(), "settings", [])
"""The settings the installed plugins declare, offered as options beside dsg's own."""

app = typer.Typer(
    help="Dynamic SAE Guardrails: unlearn with sparse-autoencoder features at inference time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a UserError into one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            from rich.markup import escape

            from dsg.engine.session import stderr

            # escaped: a message quoting "[tool.dsg]" or a regex must not be read as markup
            line = escape(shortened(str(exc)))
            stderr.print(f"[red]error:[/] {line}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            from dsg.engine.session import stderr

            stderr.print("interrupted; finished artifacts are kept, partial ones were discarded")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _each_sae(given: Given, stage: str) -> None:
    """Run ``stage`` once per SAE, on the executor the settings name.

    One SAE: the paths it wrote, one per line. SAE patterns: each matching SAE in its own run
    directory, then ``summary.json`` and, on stdout, one line per path of each finished SAE:
    ``spec<TAB>[score<TAB>]path``. A failed job does not stop the others; the command then
    exits 1, naming each failed SAE with its error."""
    from dsg.engine.session import stderr
    from dsg.runs.executors import run_jobs
    from dsg.runs.jobs import stage_action
    from dsg.runs.sae_sweep import plan as make_plan
    from dsg.runs.sweep_summary import summarise

    plan = make_plan(stage, given.settings, config_file=given.config)
    plan.session.refuse_unread_options(given.settings)
    if not plan.swept and plan.session.settings.executor == "local":
        for path in stage_action(stage)(plan.session):
            typer.echo(str(path))
        return
    results = run_jobs(plan)
    if plan.swept:
        summarise(stage, results, plan.session.settings.out, plan.session.console)
    for result in results:
        for path in result.paths if result.ok else []:
            score = [_unlearning_score(path)] if stage == "evaluate" and plan.swept else []
            typer.echo("\t".join([result.name, *score, str(path)]) if plan.swept else str(path))
    failed = [r for r in results if not r.ok]
    for result in failed:
        stderr.print(f"[red]failed:[/] {result.name}: {result.error}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _unlearning_score(report_path: Path) -> str:
    from dsg.core.artifacts import read_json

    score = read_json(report_path)["unlearning_score"]
    return "-" if score is None else f"{score:.4f}"


@app.command()
@user_errors
def plugins() -> None:
    """List every plugin, its distribution and version, and the names it registers with what
    each one is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dsg.api.plugins import KINDS, registry

    reg = registry()
    table = Table(title="dsg plugins")
    for column in ("plugin", "distribution", "version", "registers", "status"):
        table.add_column(column)
    for info in sorted(reg.plugins, key=lambda p: p.name):
        registers = "\n".join(
            f"{KINDS[kind].label}: {', '.join(names)}" for kind, names in info.registered.items()
        )
        status = f"[red]skipped: {escape(info.error)}[/]" if info.error else "ok"
        table.add_row(info.name, info.distribution, info.version, registers, status)
    names = Table(title="registered names")
    for column in ("kind", "name", "plugin", "description"):
        names.add_column(column)
    for kind, spec in KINDS.items():
        for name in reg.names(kind):
            description = escape(reg.description(kind, name))
            names.add_row(spec.label, name, reg.owners[kind][name], description)
    console = Console()
    console.print(table)
    console.print(names)


@app.command()
@user_errors
@setting_options("sparsity", PLUGIN_SETTINGS)
def sparsity(given: Given) -> None:
    """Per-feature mean activations on the forget and retain corpora, and calibration data."""
    _each_sae(given, "sparsity")


@app.command()
@user_errors
@setting_options("select", PLUGIN_SETTINGS)
def select(given: Given) -> None:
    """Select features and calibrate per-n thresholds (runs `sparsity` if needed)."""
    _each_sae(given, "select")


@app.command()
@user_errors
@setting_options("evaluate", PLUGIN_SETTINGS)
def evaluate(given: Given) -> None:
    """Sweep every configuration on the case's MCQ sets; write report.json and tradeoff.png."""
    _each_sae(given, "evaluate")


@app.command()
@user_errors
@setting_options("attack", PLUGIN_SETTINGS)
def attack(
    name: Annotated[str, typer.Argument(metavar="ATTACK", help="The attack (`dsg plugins`).")],
    given: Given,
) -> None:
    """Run an attack on every configuration and the unguarded model; write attack.json and
    attack.png (runs `select` if needed)."""
    from dsg.engine.session import Session
    from dsg.stages.attack import attack as attacks

    session = Session.open(given.settings, config_file=given.config)
    session.refuse_unread_options(given.settings, attack=name)
    if session.settings.sae_release_pattern or session.settings.sae_id_pattern:
        raise UserError(
            "attack runs on one SAE, but the config selects SAEs by pattern; pass --sae"
        )
    typer.echo(str(attacks.run(session, name)))


data_app = typer.Typer(help="Offline copies of the hub datasets cases read.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("mirror")
@user_errors
def data_mirror(
    dest: Annotated[Path, typer.Argument(help="Mirror folder; pass it later as --data-dir.")],
    case: Annotated[
        list[str], typer.Option("--case", help="Case whose datasets to fetch (repeatable).")
    ],
) -> None:
    """Download the hub datasets of the given cases into DEST/owner/name (needs internet)."""
    from dsg.api.mirror import case_datasets, mirror
    from dsg.api.plugins import registry
    from dsg.core.artifacts import check_writable

    reg = registry()
    datasets = [d for name in case for d in case_datasets(reg.get("cases", name))]
    check_writable(dest, "pass a destination folder you can write")
    for folder in mirror(list(dict.fromkeys(datasets)), dest):
        typer.echo(str(folder))


@app.command("muse-export")
@user_errors
@setting_options("muse-export", PLUGIN_SETTINGS)
def muse_export(given: Given) -> None:
    """Write one guardrail bundle per (ratio percentile, n, multiplier, strategy) for
    transformers-based harnesses."""
    _each_sae(given, "muse-export")


@app.command("train-sae")
@user_errors
@setting_options("train-sae", PLUGIN_SETTINGS)
def train_sae(given: Given) -> None:
    """Train a sparse autoencoder on the model's residual stream at --sae-hook (only the blocks
    before it run) and write a sae_lens folder with held-out metrics (docs/train-sae.md)."""
    from dsg.engine.session import Session
    from dsg.stages.train_sae.stage import run

    session = Session.open(given.settings, config_file=given.config)
    typer.echo(str(run(session)))


GENERATION = "Generation"
GenBundle = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        help="Guardrail bundle directory (from muse-export).",
        rich_help_panel=MODEL_AND_SAE,
    ),
]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens to generate.", rich_help_panel=GENERATION)]
Compare = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Also show the unguarded completion.",
        rich_help_panel=GENERATION,
        metavar=FLAG,
    ),
]
Chat = Annotated[
    bool,
    typer.Option(
        "--chat/--raw",
        help="Wrap the prompt in the tokenizer's chat template.",
        rich_help_panel=GENERATION,
        metavar=FLAG,
    ),
]


@app.command()
@user_errors
@setting_options("generate", PLUGIN_SETTINGS)
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt to complete.")],
    given: Given,
    bundle: GenBundle = None,
    max_new_tokens: MaxNewTokens = 64,
    compare: Compare = False,
    chat: Chat = True,
) -> None:
    """Complete PROMPT greedily with the guardrail on (a bundle, or the case's first config)."""
    from dsg.stages import generate as gen

    if bundle is not None:
        gen.refuse_options_a_bundle_fixes(given.settings, given.config)
        guard, device, dtype = _bundle_guardrail(bundle, given)
        named = given.settings.get("model")
        reference, origin = gen.bundle_model(named and gen.transformers_reference(named), guard)
    else:
        guard, device, dtype = _built_guardrail(given)
        reference = guard.base_model.get("hf")
        origin = f"the transformers checkpoint of {guard.base_model.get('spec')}"
    if not reference:
        raise UserError(
            "no transformers model is known for this guardrail; pass --model with a model "
            "directory or hub id"
        )
    reference = gen.transformers_reference(reference)
    gen.say(f"model: {reference} ({origin})")
    hf_model, tokenizer = gen.load_model(reference, device=device, dtype=dtype)
    if compare:
        typer.echo("--- guarded ---")
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "chat": chat, "stream": True}
    result = gen.completion(hf_model, tokenizer, prompt, bundle=guard, **options)
    if compare:
        typer.echo("--- unguarded ---")
        gen.completion(hf_model, tokenizer, prompt, bundle=None, **options)
    typer.echo(gen.describe(result, guard))


def _bundle_guardrail(path: Path, given: Given) -> tuple[Bundle, str, str]:
    """A saved bundle, the device and dtype to run it with."""
    from dsg.api.plugins import registry
    from dsg.bundle import Bundle
    from dsg.core.devices import check_device
    from dsg_runtime.checks import check_clamp_dtype

    options = given.settings
    device = options.get("device") or "cpu"
    check_device(device)
    guard = Bundle.load(path, registry().entries["strategies"])
    dtype = options.get("dtype") or "float32"
    check_clamp_dtype(guard.multiplier, dtype)
    return guard, device, dtype


def _built_guardrail(given: Given) -> tuple[Bundle, str, str]:
    """The case's first configuration as a bundle of the default strategy (running the stages it
    needs), device and dtype."""
    from dsg.engine.session import Session
    from dsg.stages.muse_export import bundles_for
    from dsg.stages.select import ensure

    session = Session.open(given.settings, config_file=given.config)
    session.refuse_unread_options(given.settings)
    if session.settings.sae_release_pattern or session.settings.sae_id_pattern:
        raise UserError(
            "generate runs one guardrail, but the config selects SAEs by pattern; "
            "pass --sae or --bundle"
        )
    default = session.registry.get("strategies", DEFAULT_STRATEGY)
    guard = bundles_for(session, ensure(session)[0], [default])[0]
    return guard, session.device, session.settings.dtype


def _add_plugin_commands() -> None:
    """Give each command a plugin registers its place beside dsg's own. A registry that cannot
    be built is left to fail, as one line, in the command that needs it."""
    reg = _loaded_registry()
    if reg is None:
        return
    own = {
        info.name or getattr(info.callback, "__name__", "").replace("_", "-")
        for info in app.registered_commands
    } | {group.name for group in app.registered_groups}
    for name in reg.names("commands"):
        if name in own:
            reg.reject("commands", name, f"its command {name!r} is one of dsg's own; rename it")
            continue
        command = reg.entries["commands"][name]
        app.command(name)(user_errors(plugin_failures(reg.owners["commands"][name], command)))


TRACEBACK_VARIABLE = "DSG_TRACEBACK"
"""Set to 1 to see the traceback of a plugin command that failed."""


def plugin_failures(plugin: str, command: F) -> F:
    """A plugin command whose unexpected exception is one line naming the plugin, exit code 1
    (the plugin's own failure, not the user's); its UserError stays exit 2, and Typer's own
    exits and usage errors pass through. The traceback is printed only when
    ``DSG_TRACEBACK=1``."""
    import click

    # typer's exits and usage errors, and click's (typer 0.29 and later carry their own click)
    usage = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    exits = (typer.Exit, typer.Abort, click.exceptions.Exit, click.Abort)
    passing: tuple[type[BaseException], ...] = (UserError, usage, click.ClickException, *exits)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except passing:
            raise
        except Exception as exc:
            import os
            import traceback

            from rich.markup import escape

            from dsg.core.errors import one_line
            from dsg.engine.session import stderr

            if os.environ.get(TRACEBACK_VARIABLE) == "1":
                traceback.print_exc()
            stderr.print(
                f"[red]error:[/] plugin {plugin!r} failed in its command "
                f"{command.__name__.replace('_', '-')!r}: {escape(one_line(exc))} "
                f"(a bug in the plugin; {TRACEBACK_VARIABLE}=1 shows the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


_add_plugin_commands()

if __name__ == "__main__":
    app()
