"""Feature-space smoothing (FS) with FCSB certificates and the PSM plug-in (methods.md Section 2)."""
