#!/usr/bin/env bash
# Test NLL against wall-clock time on FSDD generation: the same experiment (fsdd_generation_mamba) with
#   n64     sc09_small (Mamba-1, N = 64)
#   n16     sc09_small_n16 (sc09_small with N = 16)
#   mamba2  sc09_mamba2 (Mamba-2 / SSD blocks, same layout and size)
# each trained for the same wall-clock budget, one after the other so that each has the GPU to itself (the step
# count is fitted to the budget after measuring the run's own speed). Prints a table last; each run's result is
# in $RUNS/NAME/fsdd_generation_mamba/batch_result.json.
#
#   BUDGET=600 FSDD=/path/to/fsdd bash recipes/fsdd_generation/budget_comparison.sh
#   SMOKE=1 bash recipes/fsdd_generation/budget_comparison.sh    # tiny models on the CPU (a few minutes)
set -uo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${BUDGET:-600}   # seconds per run, all included (its final test too)
FSDD=${FSDD:-../shared/data/fsdd}
RUNS=${RUNS:-outputs/budget_comparison}
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ "$PY" = python3 ] && PY=.venv/bin/python
EXTRA=(trainer.val_every_n_steps=100)  # the step count is rounded down to a multiple of it
PROBE=()
M2=()
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=${SMOKE_BUDGET:-100}
  EXTRA=(model.backbone.d_model=8 "model.backbone.n_blocks=[1]" data.batch_size=2 data.length=512 data.num_workers=0
         trainer.val_every_n_steps=4 trainer.limit_val_batches=0.03 trainer.limit_test_batches=0.03
         trainer.accelerator=cpu trainer.precision=32-true)
  PROBE=(--warm 1 --probe 2)
  M2=(model.backbone.mixer_options.mamba2.headdim=8)  # the tiny width (16) takes no 64-wide heads
fi
mkdir -p "$RUNS"
run() {  # run NAME [overrides...]
  local name=$1; shift
  echo "[budget] $name: $BUDGET s"
  $PY recipes/gpu_batch/driver.py train --runs "$RUNS/$name" --budget "$BUDGET" "${PROBE[@]}" \
    fsdd_generation_mamba data.root="$FSDD" "${EXTRA[@]}" "$@" > "$RUNS/$name.log" 2>&1 \
    || { echo "[budget] $name failed, see $RUNS/$name.log"; tail -n 5 "$RUNS/$name.log"; }
}
run n64 defaults.model=sc09_small
run n16 defaults.model=sc09_small_n16
run mamba2 defaults.model=sc09_mamba2 "${M2[@]}"
"$PY" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
print("| run | device | steps | ms/step | wall s | " + " | ".join(("test/bits", "test/loss")) + " |")
print("|---|---|---|---|---|---|---|")
for name in ("n64", "n16", "mamba2"):
    path = runs / name / "fsdd_generation_mamba" / "batch_result.json"
    if not path.exists():
        print(f"| {name} | (no result) | | | | | |")
        continue
    r = json.loads(path.read_text())
    m = r.get("metrics", {})
    cells = [f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in ("test/bits", "test/loss")]
    ms = r.get("ms_per_step")
    print(f"| {name} | {r.get('device')} | {r.get('planned_steps')} | {'-' if ms is None else f'{ms:.1f}'} | "
          f"{r.get('wall_s', 0):.0f} | " + " | ".join(cells) + " |")
print("\nvalidation NLL (bits) against wall-clock seconds since the run started (at the end of each validation):")
for name in ("n64", "n16", "mamba2"):
    path = runs / name / "fsdd_generation_mamba" / "batch_result.json"
    if path.exists():
        curve = [p for p in json.loads(path.read_text()).get("curve", []) if "val/bits" in p]
        keep = sorted({round(i * (len(curve) - 1) / 11) for i in range(12)}) if len(curve) > 12 else range(len(curve))
        print(f"{name:7s} " + "  ".join(f"{curve[i]['seconds']:.0f}s:{curve[i]['val/bits']:.3f}" for i in keep))
EOF
