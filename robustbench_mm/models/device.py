"""Which torch device a run uses: the one asked for, validated, or CUDA when present.

It sits with the models (below the runner) because loading weights is the first thing that needs
a device; the resolver checks ``--device`` with it before anything loads.
"""

from __future__ import annotations

import torch

from robustbench_mm.errors import ConfigError


def pick_device(requested: str | None) -> torch.device:
    """``None``/``auto``: cuda if available, else cpu; ``cpu``, ``cuda`` or ``cuda:N`` as given.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for on a machine without it.
    """
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda") and not str(requested).startswith("cuda:"):
        raise ConfigError(f"--device {requested!r} must be cpu or cuda")
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available; use --device cpu")
    return torch.device(str(requested))
