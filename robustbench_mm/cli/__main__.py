"""``python -m robustbench_mm.cli``: the same entry point as the ``mmrobust`` script."""

from robustbench_mm.cli import main

main()
