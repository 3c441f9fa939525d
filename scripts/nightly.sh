#!/usr/bin/env bash
# Nightly benchmark: run the standard protocol (`mmrobust benchmark`) on the grid NIGHTLY_GRID (default
# `nightly`: real models, GPUs) into a resumable store, rebuild the leaderboard from it and compare each
# entry with the latest release (results/leaderboard/v1/entries.parquet).
# Exit 1 when an entry's robust accuracy leaves the release's 95% interval.
#
#   NIGHTLY_GRID=smoke make nightly          # CPU, bundled zoo
#
# Environment: NIGHTLY_GRID (preset name or YAML path), NIGHTLY_OUT (leaderboard folder, default
# results/nightly), NIGHTLY_RUNS (store, default results/runs/nightly-<grid>), NIGHTLY_DEVICE,
# NIGHTLY_BASELINE (a release's entries.parquet), MMROBUST (the CLI), PYTHON.
# The release in git is never overwritten: a new release is a deliberate `make leaderboard`.
set -euo pipefail
cd "$(dirname "$0")/.."

GRID="${NIGHTLY_GRID:-nightly}"
OUT="${NIGHTLY_OUT:-results/nightly}"
RUNS="${NIGHTLY_RUNS:-results/runs/nightly-$(basename "$GRID" .yaml)}"
BASELINE="${NIGHTLY_BASELINE:-results/leaderboard/v1/entries.parquet}"
MMROBUST="${MMROBUST:-.venv/bin/mmrobust}"
PYTHON="${PYTHON:-$(dirname "$MMROBUST")/python}"

grid_args=(grid "$GRID" --stores "$RUNS" --run)
if [ -n "${NIGHTLY_DEVICE:-}" ]; then grid_args+=(--device "$NIGHTLY_DEVICE"); fi
echo "nightly: protocol on grid $GRID -> $RUNS" >&2
MMROBUST="$MMROBUST" "$PYTHON" -m robustbench_mm.report.manifest "${grid_args[@]}"

lb_args=(leaderboard "$RUNS" --out "$OUT")
if [ -f "$BASELINE" ]; then
  lb_args+=(--baseline "$BASELINE")
else
  echo "nightly: no release at $BASELINE; nothing to compare" >&2
fi
"$MMROBUST" "${lb_args[@]}"
echo "nightly: ok; leaderboard in $OUT" >&2
