"""Model adapters (CLIP, LLaVA, BLIP-2) and the model registry (real ids + bundled zoo)."""
