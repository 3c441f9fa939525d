"""Import every task module so its implementations register themselves."""

from robustbench_mm.tasks import zero_shot  # noqa: F401
