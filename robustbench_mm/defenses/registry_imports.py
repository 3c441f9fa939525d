"""Import every defense module so its implementations register themselves."""

from robustbench_mm.defenses import none  # noqa: F401
