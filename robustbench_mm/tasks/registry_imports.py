"""Import every task module so its implementations register themselves."""

from robustbench_mm.tasks import generative, zero_shot  # noqa: F401
from robustbench_mm.tasks import crmt_task  # noqa: F401  (bundled multimodal CRMT task, issue 7)
from robustbench_mm.tasks import retrieval  # noqa: F401  (image-text retrieval, issue 32)
from robustbench_mm.tasks import attribute_retrieval  # noqa: F401  (retrieval with per-image attribute captions)
