"""Import every task module so its implementations register themselves."""

from robustbench_mm.tasks import generative, zero_shot  # noqa: F401
