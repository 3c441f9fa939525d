"""Import every attack module so its implementations register themselves."""

from robustbench_mm.attacks import none, pgd  # noqa: F401
from robustbench_mm.attacks import apgd, ensemble, embedding, eot, fab, square, text_embed, torchattacks_bridge  # noqa: F401
from robustbench_mm.attacks import bert_attack, joint, retrieval_worst_case  # noqa: F401  (retrieval text and joint attacks, issue 32)
