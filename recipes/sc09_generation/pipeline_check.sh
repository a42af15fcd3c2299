#!/usr/bin/env bash
# End-to-end check of the SC09 / Speech Commands recipes' commands without Speech Commands: builds a miniature
# folder of the same shape (<word>/<speaker>_nohash_<n>.wav + validation_list.txt + testing_list.txt) from FSDD
# clips (digit words; 8 kHz clips resampled to 16 kHz by the loader), prepares the splits with the recipe's
# script, trains tiny models for a few steps on the CPU and evaluates them (classifier-based scores included).
# The numbers it prints mean nothing (tiny models, a few steps); it checks that the commands run.
# Usage: bash recipes/sc09_generation/pipeline_check.sh [FSDD_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
FSDD=${1:-../shared/data/fsdd}
WORK=${2:-/tmp/sc_pipeline_check}
AM=${AM:-.venv/bin/audiomamba}
rm -rf "$WORK"; mkdir -p "$WORK/raw"
words=(zero one two three four five six seven eight nine)
: > "$WORK/raw/validation_list.txt"; : > "$WORK/raw/testing_list.txt"
for d in 0 1 2 3 4 5 6 7 8 9; do
  w=${words[$d]}; mkdir -p "$WORK/raw/$w"
  for spk in george jackson lucas nicolas theo; do
    for i in 5 6 7 8; do cp "$FSDD/${d}_${spk}_${i}.wav" "$WORK/raw/$w/${spk}_nohash_${i}.wav"; done
  done
  echo "$w/theo_nohash_5.wav" >> "$WORK/raw/validation_list.txt"
  echo "$w/lucas_nohash_5.wav" >> "$WORK/raw/testing_list.txt"; echo "$w/lucas_nohash_6.wav" >> "$WORK/raw/testing_list.txt"
done
PY=${PY:-.venv/bin/python}
$PY recipes/speech_commands_classification/prepare_split.py "$WORK/raw" "$WORK/sc09" --digits
CPU=(trainer.accelerator=cpu trainer.precision=32-true trainer.max_steps=4 trainer.val_every_n_steps=4
     trainer.output_dir="$WORK/outputs" data.num_workers=0 trainer.progress_bar=false)
$AM train speech_commands_classification data.root="$WORK/sc09" model.n_classes=10 name=sc09_classifier \
  model.backbone.d_model=8 "model.backbone.n_blocks=[0,1,1]" data.batch_size=8 "${CPU[@]}"
$AM train sc09_generation data.root="$WORK/sc09" model.backbone.d_model=8 "model.backbone.n_blocks=[1]" \
  model.backbone.mixer_options.mamba1.d_state=4 data.length=1024 data.batch_size=4 trainer.sample_length=512 "${CPU[@]}"
$AM evaluate "$WORK/outputs/sc09_classifier"
$AM evaluate "$WORK/outputs/sc09_generation" --classifier "$WORK/outputs/sc09_classifier" --n-samples 8 \
  --out "$WORK/samples"
ls "$WORK/samples"
