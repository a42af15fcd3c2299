#!/usr/bin/env bash
# End-to-end check of the codec LM recipe on a CPU: encode N FSDD clips with the EnCodec adapter using RANDOM
# (untrained) codec weights (no pretrained weights on this machine; nothing is downloaded), train a small codec
# LM over the 8-codebook delay-pattern streams for a few steps, evaluate it. The tokens carry no meaning, so the
# NLL only shows that the pipeline runs.
# Usage: bash recipes/codec_lm/pipeline_check.sh [AUDIO_DIR] [N_FILES] [STEPS] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${1:-../shared/data/fsdd}
N=${2:-200}
STEPS=${3:-60}
WORK=${4:-/tmp/codec_pipeline_check}
PY=${PY:-.venv/bin/python}
AM=${AM:-.venv/bin/audiomamba}
rm -rf "$WORK"
time $PY recipes/codec_lm/encode_folder.py "$SRC" "$WORK/tokens" --limit "$N" --seconds 1.0 --random-weights \
  --device cpu
time $AM train codec_lm data.root="$WORK/tokens" data.length=75 data.batch_size=8 model.backbone.d_model=32 \
  trainer.accelerator=cpu trainer.precision=32-true trainer.max_steps="$STEPS" trainer.val_every_n_steps=20 \
  trainer.output_dir="$WORK/outputs" trainer.progress_bar=false data.num_workers=0
$AM evaluate "$WORK/outputs/codec_lm"
