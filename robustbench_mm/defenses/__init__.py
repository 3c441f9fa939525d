"""Defenses: inference-time wrappers (FS-PSM) and training defenses (MMCoA, top-K softmax, CRMT)."""
