"""mmrobust: adversarial robustness benchmark for multimodal models (CLIP, LLaVA, BLIP-2)."""

__version__ = "0.1.0"


def benchmark(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Robust accuracy under the standard protocol (see ``robustbench_mm.benchmarking.benchmark``)."""
    from robustbench_mm.benchmarking import benchmark as _benchmark

    return _benchmark(*args, **kwargs)


def certify(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Randomized-smoothing certificates for an ``nn.Module`` (see ``robustbench_mm.defenses.rs_api.certify``)."""
    from robustbench_mm.defenses.rs_api import certify as _certify

    return _certify(*args, **kwargs)
