"""mmrobust: adversarial robustness benchmark for multimodal models (CLIP, LLaVA, BLIP-2)."""

__version__ = "0.1.0"
