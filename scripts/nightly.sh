#!/usr/bin/env bash
# Nightly benchmark: run the grid NIGHTLY_GRID (default `nightly`: real models, GPUs) into a resumable
# store, rebuild the leaderboard and compare it with the committed snapshot (results/leaderboard.parquet).
# Exit 1 when a cell's ASR leaves the snapshot's 95% interval or an ok cell now fails.
#
#   NIGHTLY_GRID=smoke make nightly          # CPU, bundled zoo, minutes
#
# Environment: NIGHTLY_GRID (preset name or YAML path), NIGHTLY_OUT (leaderboard folder, default results),
# NIGHTLY_RUNS (store, default $NIGHTLY_OUT/runs/<grid>), NIGHTLY_EXECUTOR (local|ray), NIGHTLY_ADDRESS
# (Ray address, e.g. auto), NIGHTLY_DEVICE, NIGHTLY_BASELINE (snapshot parquet), MMROBUST (the CLI).
# On a regression the new leaderboard stays in $NIGHTLY_OUT for inspection; the snapshot is in git.
set -euo pipefail
cd "$(dirname "$0")/.."

GRID="${NIGHTLY_GRID:-nightly}"
OUT="${NIGHTLY_OUT:-results}"
RUNS="${NIGHTLY_RUNS:-$OUT/runs/$(basename "$GRID" .yaml)}"
EXECUTOR="${NIGHTLY_EXECUTOR:-local}"
BASELINE="${NIGHTLY_BASELINE:-$OUT/leaderboard.parquet}"
MMROBUST="${MMROBUST:-.venv/bin/mmrobust}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
snapshot=""
if [ -f "$BASELINE" ]; then
  snapshot="$tmp/snapshot.parquet"
  cp "$BASELINE" "$snapshot"   # read before the leaderboard overwrites it
fi

grid_args=(grid --preset "$GRID" --out "$RUNS" --executor "$EXECUTOR")
if [ -n "${NIGHTLY_ADDRESS:-}" ]; then grid_args+=(--address "$NIGHTLY_ADDRESS"); fi
if [ -n "${NIGHTLY_DEVICE:-}" ]; then grid_args+=(--device "$NIGHTLY_DEVICE"); fi
echo "nightly: grid $GRID -> $RUNS ($EXECUTOR)" >&2
"$MMROBUST" "${grid_args[@]}"

lb_args=(leaderboard "$RUNS" --out "$OUT")
if [ -n "$snapshot" ]; then
  lb_args+=(--baseline "$snapshot")
else
  echo "nightly: no snapshot at $BASELINE; this run becomes the first one" >&2
fi
"$MMROBUST" "${lb_args[@]}"
echo "nightly: ok; leaderboard in $OUT" >&2
