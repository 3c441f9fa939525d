"""The ``mmrobust`` command line, one module per command group.

Thin: parse, build specs, call ``api``; heavy imports stay inside the commands so
``mmrobust --help`` starts fast.

``app.py`` holds the Typer app and the entry point; the ``*_commands`` modules hold the commands,
one group each, as plain functions. They are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

from robustbench_mm.cli import inspect_commands, results_commands, run_commands, training_commands
from robustbench_mm.cli.app import STATE, app, main, store_app

app.command()(run_commands.run)
app.command()(results_commands.benchmark)
app.command()(run_commands.grid)
app.command()(run_commands.merge)
app.command("list")(inspect_commands.list_cmd)
app.command()(results_commands.show)
app.command()(training_commands.train)
app.command()(inspect_commands.sanity)
app.command()(inspect_commands.validate)
store_app.command("check")(inspect_commands.store_check)
store_app.command("repair")(inspect_commands.store_repair)
app.command()(results_commands.leaderboard)
app.command()(results_commands.compare)
app.command()(training_commands.reproduce)

__all__ = ["STATE", "app", "main"]
