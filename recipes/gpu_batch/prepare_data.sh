#!/usr/bin/env bash
# Lay out the batch's data under GPU_DATA (default .gpu_data/, git-ignored): FSDD as is, and the Bach piano
# recordings split into train/ val/ test/ (every 5th file held out; test/ = the validation files).
#   bash recipes/gpu_batch/prepare_data.sh FSDD_DIR BACH_PIANO_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 2 ] || { echo "usage: $0 FSDD_DIR BACH_PIANO_DIR" >&2; exit 2; }
FSDD=$1; BACH=$2
DEST=${GPU_DATA:-.gpu_data}
PY=${PY:-.venv/bin/python}
rm -rf "$DEST"
mkdir -p "$DEST"
cp -r "$FSDD" "$DEST/fsdd"
$PY recipes/music/prepare_split.py "$BACH" "$DEST/bach_piano" --every 5 --copy
du -sh "$DEST"/*
