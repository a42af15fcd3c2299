#!/usr/bin/env bash
# The recipes' GPU batch: eight training runs at once on one or two GPUs, then their evaluation, in about
# 8 minutes of wall-clock time on two H200s. Writes under $OUT (6 files): results.json, table.md, logs.txt, the
# generated FSDD digits of both models as two WAVs (8 clips each), classifiers.tar (the two trained FSDD
# classifiers, for `audiomamba evaluate --classifier` elsewhere). Prints a table last.
#
#   GPU 0: fsdd_classification_causal, fsdd_classification_bidirectional, selective_copying_mamba, _s4d
#   GPU 1: fsdd_generation_mamba, fsdd_generation_s4d, music_mamba, music_s4d   (GPU 0 too if there is one GPU)
#
# Each run gets TRAIN_BUDGET seconds (default 270) all included; it fits its step count to that budget after
# measuring its own speed, and the two runs of a Mamba-vs-S4D pair agree on the same number of steps.
#
# Data: GPU_DATA (default .gpu_data/) holds fsdd/ and bach_piano/{train,val,test}/, made by
#   bash recipes/gpu_batch/prepare_data.sh FSDD_DIR BACH_PIANO_DIR
# Run from the repository root:   bash recipes/gpu_batch/run.sh
# A CPU smoke test of the whole pipeline (tiny models, a few steps):  SMOKE=1 bash recipes/gpu_batch/run.sh
# A subset of the runs (their evaluations follow; parts whose runs are missing report so and are skipped):
#   ONLY="fsdd_classification_causal fsdd_generation_mamba" bash recipes/gpu_batch/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
OUT=${OUT:-outputs/gpu_batch}
RUNS=${RUNS:-/tmp/audiomamba_runs}
DATA=${GPU_DATA:-.gpu_data}
BUDGET=${TRAIN_BUDGET:-270}
LIMIT=${BATCH_LIMIT:-570}   # seconds: evaluation is cut off so that the whole script ends by then
SMOKE=${SMOKE:-0}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "$SMOKE" = 1 ]; then
  PY=${PY:-.venv/bin/python}
  GPU0=""; GPU1=""
  BUDGET=${TRAIN_BUDGET:-150}
else
  PY=python3
  GPU0=0; GPU1=1
  [ "$(nvidia-smi -L | wc -l)" -ge 2 ] || GPU1=0   # one GPU: all runs share it
  # without an installed package: the source tree as pyproject.toml lays it out (kernels/ -> audiomamba.kernels,
  # configs/ -> audiomamba.configs); omegaconf, soundfile and librosa must be importable
  if ! $PY -c "import audiomamba.kernels" 2>/dev/null; then
    rm -rf /tmp/am && mkdir -p /tmp/am && cp -r audiomamba /tmp/am/ && cp -r kernels /tmp/am/audiomamba/kernels \
      && cp -r configs /tmp/am/audiomamba/configs || exit 1
    export PYTHONPATH=/tmp/am:${PYTHONPATH:-}
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
echo "[batch] setup done at +$(( $(date +%s) - T0 )) s"

# Triton kernels compile once here (cached for the runs); if they fail, every run uses the PyTorch reference.
if [ "$SMOKE" != 1 ]; then
  # (from /tmp: a script read from stdin puts the current folder first on sys.path, and ./audiomamba lacks
  # audiomamba.kernels, which lives in kernels/)
  if ! (cd /tmp && CUDA_VISIBLE_DEVICES=0 $PY -) <<'EOF'
import torch
from audiomamba.models import build_model
m = build_model("sc09_small", **{"backbone.n_blocks": [1]}).cuda()
with torch.autocast("cuda", dtype=torch.bfloat16):
    y, _ = m(torch.randint(0, 256, (2, 4096), device="cuda"))
y.float().mean().backward()
torch.cuda.synchronize()
print("[batch] triton kernels ok")
EOF
  then
    echo "[batch] triton path failed: falling back to AUDIOMAMBA_BACKEND=reference"
    export AUDIOMAMBA_BACKEND=reference
  fi
fi
echo "[batch] preflight done at +$(( $(date +%s) - T0 )) s"

TINY_CLS=(); TINY_LM=(); TINY_SC=(); TINY_MUSIC=()
if [ "$SMOKE" = 1 ]; then
  TINY_CLS=(model.backbone.d_model=8 "model.backbone.n_blocks=[0,1,1]" data.batch_size=4 data.num_workers=0
            trainer.val_every_n_steps=4 trainer.limit_val_batches=0.03 trainer.limit_test_batches=0.03
            trainer.accelerator=cpu trainer.precision=32-true)
  TINY_LM=(model.backbone.d_model=8 "model.backbone.n_blocks=[1]" model.backbone.mixer_options.mamba1.d_state=4
           model.backbone.mixer_options.s4d.d_state=4 data.batch_size=2 data.length=512 data.num_workers=0
           trainer.val_every_n_steps=4 trainer.limit_val_batches=0.03 trainer.limit_test_batches=0.03
           trainer.accelerator=cpu trainer.precision=32-true)
  TINY_SC=(model.backbone.d_model=8 data.selective_copying.context_length=16 data.selective_copying.n_tokens=4
           data.batch_size=4 data.selective_copying.val_size=8 data.selective_copying.test_size=8
           trainer.val_every_n_steps=4 trainer.accelerator=cpu trainer.precision=32-true)
  TINY_MUSIC=("${TINY_LM[@]}" trainer.limit_val_batches=1.0 trainer.limit_test_batches=1.0)
  PROBE=(--warm 1 --probe 2)
  GRACE=900
else
  PROBE=()
  GRACE=60
fi

job() {  # job GPU NAME PAIR PARTNER [overrides...]: one training run in the background, logged under $RUNS
  local gpu=$1 name=$2 pair=$3 partner=$4; shift 4
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="name ...": a subset
  CUDA_VISIBLE_DEVICES=$gpu timeout $(( BUDGET + GRACE )) $PY recipes/gpu_batch/driver.py train --runs "$RUNS" \
    --budget "$BUDGET" "${PROBE[@]}" \
    ${pair:+--pair "$pair" --partner "$partner"} "$name" "$@" > "$RUNS/$name.log" 2>&1 &
}
SC_GPU=(trainer.accelerator=gpu trainer.precision=bf16-mixed data.num_workers=2)
LM_GPU=(trainer.val_every_n_steps=200)  # a validation (and best checkpoint) early, even on a slow run
[ "$SMOKE" = 1 ] && SC_GPU=() && LM_GPU=()
job "$GPU0" fsdd_classification_causal "" "" data.root=$DATA/fsdd "${TINY_CLS[@]}"
job "$GPU0" fsdd_classification_bidirectional "" "" data.root=$DATA/fsdd "${TINY_CLS[@]}"
job "$GPU0" selective_copying_mamba copy selective_copying_s4d "${SC_GPU[@]}" "${TINY_SC[@]}"
job "$GPU0" selective_copying_s4d copy selective_copying_mamba "${SC_GPU[@]}" "${TINY_SC[@]}"
job "$GPU1" fsdd_generation_mamba fsddgen fsdd_generation_s4d data.root=$DATA/fsdd "${LM_GPU[@]}" "${TINY_LM[@]}"
job "$GPU1" fsdd_generation_s4d fsddgen fsdd_generation_mamba data.root=$DATA/fsdd "${LM_GPU[@]}" "${TINY_LM[@]}"
job "$GPU1" music_mamba music music_s4d data.root=$DATA/bach_piano "${LM_GPU[@]}" "${TINY_MUSIC[@]}"
job "$GPU1" music_s4d music music_mamba data.root=$DATA/bach_piano "${LM_GPU[@]}" "${TINY_MUSIC[@]}"
wait
echo "[batch] training done at +$(( $(date +%s) - T0 )) s"
$PY recipes/gpu_batch/driver.py table --runs "$RUNS" --out "$OUT" > /dev/null 2>&1   # training results, in case
echo "[batch] evaluation until +$(( LIMIT - 20 )) s at the latest"

ev() {  # ev GPU LOGNAME PART [args...]: one evaluation, cut off at the batch's deadline
  local gpu=$1 log=$2; shift 2
  local left=$(( LIMIT - 20 - ($(date +%s) - T0) ))
  [ "$SMOKE" = 1 ] && left=3600
  [ "$left" -gt 5 ] || { echo "[batch] no time left for eval $log"; return; }
  CUDA_VISIBLE_DEVICES=$gpu timeout "$left" $PY recipes/gpu_batch/driver.py eval "$@" --runs "$RUNS" --out "$OUT" \
    > "$RUNS/eval_$log.log" 2>&1
}
NS=256; NC=2048; SEG=(); [ "$SMOKE" = 1 ] && NS=16 && NC=32 && SEG=(--max-segments 16 --max-reference 64)
( ev "$GPU0" classify classify; ev "$GPU0" copy copy --n-copy $NC
  ev "$GPU0" gen_mamba fsdd_gen --models fsdd_generation_mamba --n-samples $NS "${SEG[@]}" ) &
( ev "$GPU1" music music "${SEG[@]}"
  ev "$GPU1" gen_s4d fsdd_gen --models fsdd_generation_s4d --n-samples $NS "${SEG[@]}" ) &
wait
echo "[batch] evaluation done at +$(( $(date +%s) - T0 )) s"

for f in "$RUNS"/*.log; do echo "===== $(basename "$f")"; grep -v "Warning\|warnings.warn\|^ *$" "$f" | tail -n 25; done \
  > "$OUT/logs.txt" 2>&1
for name in fsdd_classification_causal fsdd_classification_bidirectional; do
  [ -d "$RUNS/$name/model" ] && tar -C "$RUNS" -rf "$OUT/classifiers.tar" "$name/model" "$name/config.yaml"
done
$PY recipes/gpu_batch/driver.py table --runs "$RUNS" --out "$OUT"
echo "[batch] all done at +$(( $(date +%s) - T0 )) s"
