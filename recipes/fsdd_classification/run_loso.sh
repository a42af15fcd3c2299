#!/usr/bin/env bash
# Leave-one-speaker-out comparison on one GPU in about 9 minutes: the causal and bidirectional Mamba classifiers
# and the log-mel CNN baseline, each without and with the training-clip augmentation (data/fsdd_augmented.yaml),
# each on the five held-out speakers and on the conventional split: 36 training runs through
# recipes/fsdd_classification/loso.py, PARALLEL of them at once on the GPU, each fitted to a wall-clock budget
# after measuring its own speed (the steps it reached are in the table). Prints the Markdown table last and
# writes it, with every fold's result, under OUT.
#
# Data: GPU_DATA/fsdd (default .gpu_data/fsdd; see recipes/gpu_batch/prepare_data.sh) or FSDD=/path/to/wavs.
# Run from the repository root:   bash recipes/fsdd_classification/run_loso.sh
# Knobs (environment):
#   LIMIT=540       seconds for the whole script; each run's budget follows from it and the number of waves
#   PARALLEL=36     runs at once on the GPU (lower it on a GPU with less memory: more waves, shorter budgets)
#   MODELS="causal bidirectional logmel_cnn"   AUGS="plain aug"   FOLDS="george ... theo conventional"
#   BUDGET=...      seconds per run (overrides the one computed from LIMIT)
#   RUNS=...        where the runs go; folds that already hold a result are skipped (--reuse), so that several
#                   calls with a subset each (e.g. MODELS=causal BUDGET=1200) can build a longer comparison
#   OVERRIDES="..." config overrides for every run, e.g. one augmentation's effect on the LOSO score:
#                   AUGS=aug OVERRIDES="data.augment.pitch.p=0" RUNS=outputs/loso_no_pitch bash ...
#   SMOKE=1         a CPU check of the whole script: tiny models, a few steps, two folds
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
OUT=${OUT:-outputs/loso}
RUNS=${RUNS:-$OUT/runs}
FSDD=${FSDD:-${GPU_DATA:-.gpu_data}/fsdd}
LIMIT=${LIMIT:-540}
PARALLEL=${PARALLEL:-36}
MODELS=${MODELS:-causal bidirectional logmel_cnn}
AUGS=${AUGS:-plain aug}
FOLDS=${FOLDS:-george jackson lucas nicolas theo conventional}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

read -r -a USER_OVERRIDES <<< "${OVERRIDES:-}"
EXTRA=(data.num_workers=2)
if [ "$SMOKE" = 1 ]; then
  PY=${PY:-.venv/bin/python}
  FOLDS=${SMOKE_FOLDS:-theo conventional}
  EXTRA=(trainer.accelerator=cpu trainer.precision=32-true data.num_workers=0 data.batch_size=4
         trainer.max_steps=4 trainer.val_every_n_steps=2 trainer.limit_val_batches=0.02
         trainer.limit_test_batches=0.02 model.backbone.d_model=8 "model.logmel_cnn.channels=[4,8]")
  LIMIT=${LIMIT_SMOKE:-3600}
else
  PY=python3
  # without an installed package: the source tree as pyproject.toml lays it out (as recipes/gpu_batch/run.sh)
  if ! $PY -c "import audiomamba.kernels" 2>/dev/null; then
    rm -rf /tmp/am && mkdir -p /tmp/am && cp -r audiomamba /tmp/am/ && cp -r kernels /tmp/am/audiomamba/kernels \
      && cp -r configs /tmp/am/audiomamba/configs || exit 1
    export PYTHONPATH=/tmp/am:${PYTHONPATH:-}
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  # the Triton kernels compile once here (cached for the runs); if they fail, every run uses the reference
  if ! (cd /tmp && $PY -c "
import torch
from audiomamba.models import build_model
m = build_model('classifier_bidirectional').cuda()
with torch.autocast('cuda', dtype=torch.bfloat16):
    y = m.classify(torch.randn(2, 8000, device='cuda'))
y.float().mean().backward(); torch.cuda.synchronize(); print('[loso] triton kernels ok')"); then
    echo "[loso] triton path failed: falling back to AUDIOMAMBA_BACKEND=reference"
    export AUDIOMAMBA_BACKEND=reference
  fi
fi
EXTRA+=("${USER_OVERRIDES[@]}")
[ -d "$FSDD" ] || { echo "[loso] no FSDD folder at $FSDD (set FSDD=...)"; exit 1; }

JOBS=()
for model in $MODELS; do for aug in $AUGS; do for fold in $FOLDS; do JOBS+=("$model $aug $fold"); done; done; done
N=${#JOBS[@]}
WAVES=$(( (N + PARALLEL - 1) / PARALLEL ))
SETUP=$(( $(date +%s) - T0 ))
BUDGET=${BUDGET:-$(( (LIMIT - SETUP - 25) / WAVES ))}
[ "$SMOKE" = 1 ] && BUDGET=0
echo "[loso] $N runs, $PARALLEL at once ($WAVES wave(s)), ${BUDGET} s each (setup took ${SETUP} s)"

i=0
for job in "${JOBS[@]}"; do
  read -r model aug fold <<< "$job"
  flags=(--root "$FSDD" --runs "$RUNS" --speaker "$fold" --reuse)
  [ "$aug" = aug ] && flags+=(--augment)
  [ "$BUDGET" -gt 0 ] && flags+=(--budget "$BUDGET")
  log="$RUNS/log_${model}_${aug}_${fold}.txt"
  if [ "$SMOKE" = 1 ]; then
    $PY recipes/fsdd_classification/loso.py fold "fsdd_classification_$model" "${flags[@]}" "${EXTRA[@]}" \
      > "$log" 2>&1 || echo "[loso] $job failed: see $log"
  else
    # a run that overruns its budget by a minute is stopped, so that the table still comes
    timeout $(( BUDGET + 60 )) $PY recipes/fsdd_classification/loso.py fold "fsdd_classification_$model" \
      "${flags[@]}" "${EXTRA[@]}" > "$log" 2>&1 &
    i=$(( i + 1 ))
    if [ $(( i % PARALLEL )) = 0 ]; then wait; echo "[loso] wave done at +$(( $(date +%s) - T0 )) s"; fi
  fi
done
wait
echo "[loso] training done at +$(( $(date +%s) - T0 )) s"
for f in "$RUNS"/log_*.txt; do
  grep -q '"test_acc"' "$f" || { echo "===== $(basename "$f") (no result)"; grep -v -i "warn" "$f" | tail -n 8; }
done
$PY recipes/fsdd_classification/loso.py table --runs "$RUNS" --out "$OUT/loso.md" > /dev/null
(cd "$RUNS" && find . -name loso.json | sort | while read -r f; do echo "$f: $(cat "$f" | tr -d '\n ')"; done) \
  > "$OUT/folds.txt"
echo "[loso] device: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu), $(date -u +%F)"
echo "[loso] all done at +$(( $(date +%s) - T0 )) s"
cat "$OUT/loso.md"
