"""The ``mmrobust`` Typer app, its global options and the entry point that turns user mistakes into
one line and exit code 2. Commands register onto ``app`` from the sibling modules."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Adversarial robustness benchmark for "
                  "multimodal models (CLIP, LLaVA, BLIP-2).", context_settings=HELP_OPTIONS)
store_app = typer.Typer(no_args_is_help=True, help="Check or repair a result store.", context_settings=HELP_OPTIONS)
app.add_typer(store_app, name="store")

STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("mmrobust")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        typer.echo(f"mmrobust {version}")
        raise typer.Exit(0)


@app.callback()
@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors (also accepted "
                                                     "after the subcommand).")] = False,
                 version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the installed version and exit.")] = False) -> None:
    STATE["debug"] = debug or STATE["debug"]


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception classes of typer's click (vendored or not)."""
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    usage: list[type] = []
    try:
        from typer._click import exceptions as vendored  # typer >= 0.20 vendors click

        usage.append(vendored.UsageError)
    except ImportError:
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.UsageError)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)


def main() -> None:
    """Console entry point: user mistakes print one line and exit 2; ``--debug`` shows tracebacks."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    debug = "--debug" in sys.argv[1:]
    if debug:  # accepted anywhere on the line, also after the subcommand
        STATE["debug"] = True
        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
    exits, aborts, usage = _click_classes()
    try:
        # without standalone mode click *returns* the code of a ``typer.Exit(n)`` instead of raising
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except exits as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except aborts:
        sys.exit(130)
    except usage as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"mmrobust {ctx.command.name} --help" if ctx is not None and ctx.command else "mmrobust --help"
        typer.echo(f"error: {exc.format_message()} (see `{where}`)", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001
        from robustbench_mm.errors import MMRobustError

        if isinstance(exc, MMRobustError) and not debug:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
        raise
