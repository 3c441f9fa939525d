"""Import every attack module so its implementations register themselves."""

from robustbench_mm.attacks import none, pgd  # noqa: F401
from robustbench_mm.attacks import apgd, ensemble, embedding, eot, text_embed, torchattacks_bridge  # noqa: F401
