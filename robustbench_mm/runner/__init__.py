"""Cells, grids, executors and the parquet store."""
