"""Import every defense module so its implementations register themselves."""

from robustbench_mm.defenses import none  # noqa: F401
from robustbench_mm.defenses.fs_psm import defense as _fs_psm  # noqa: F401,E402
from robustbench_mm.defenses import rs  # noqa: F401,E402  (after fs: it builds on FeatureSmoothing)
from robustbench_mm.defenses import crmt, mmcoa, topk_softmax  # noqa: F401  (training defenses, issue 7)
from robustbench_mm.defenses import fare  # noqa: F401,E402  (FARE, Sim-CLIP: issue 33)
