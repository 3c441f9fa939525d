"""Import every attack module so its implementations register themselves."""

from robustbench_mm.attacks import none, pgd  # noqa: F401
