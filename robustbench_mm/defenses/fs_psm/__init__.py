"""Feature-space smoothing (FS) with FCSB certificates and the PSM plug-in (docs/methods.md)."""
