#!/usr/bin/env bash
# Copy the development data into .gpu_data/ (ignored by git through .git/info/exclude) so that it can travel to
# the GPU machine with `carry=[".gpu_data", ".whl"]`: FSDD as is (23 MB) and bach_piano arranged into
# train/ val/ test/ by its README's split (test/ = the validation files; 29 MB). Run from the repo root:
#   bash recipes/prepare_gpu_data.sh [SHARED_DATA_DIR]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data}
PY=${PY:-.venv/bin/python}
grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
rm -rf .gpu_data
mkdir -p .gpu_data
cp -r "$SRC/fsdd" .gpu_data/fsdd
$PY recipes/music/prepare_split.py "$SRC/bach_piano" .gpu_data/bach_piano --every 5 --copy
du -sh .gpu_data/* .whl 2>/dev/null
du -shc .gpu_data .whl 2>/dev/null | tail -1
