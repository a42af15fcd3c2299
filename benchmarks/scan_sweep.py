"""Launch sweep of the Mamba-1 selective scan on one CUDA GPU, at the anchor shapes or at a preset's stages.

Run from a clone with the project's virtual environment: ``.venv/bin/python benchmarks/scan_sweep.py``.

1. Every launch in ``LAUNCHES`` (keywords of ``scan_config``; the first is the default) is checked in bf16 against
   the float32 chunked reference at (2, 128, 2000, N) for each N swept (output, final state, every gradient,
   initial state included; 1e-2 relative). A launch that fails is not timed.
2. Forward and forward+backward median ms through autograd, peak memory, and the forward against its
   exponential floor, for every launch on every shape: the N = 16 anchor shapes in both physical layouts, or with
   ``--preset NAME`` that preset's Mamba-1 stages at batch 16 × 16,000 samples in the models' channel-last layout.
3. Per shape and layout, the launches ranked by forward+backward time.
``--ncu-summary FILE`` prints the main metrics of an ``ncu --page raw --csv`` export instead. Exit status 1 when a
check fails. For the N = 64 design sweeps see ``scan_n64.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

import torch
from audiomamba.kernels.mamba1_scan import scan_config, selective_scan_triton
from audiomamba.kernels.reference import selective_scan_chunked_ref

from audiomamba.bench.kernels import SCAN_SHAPES, preset_stage_shapes, scan_floor_ms, scan_inputs, time_op

KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
LAUNCHES = [
    {},
    {"fwd_target": 1, "bwd_target": 1},  # one time segment
    {"fwd_target": 8192, "bwd_target": 4096},  # segments up to 8192 / 4096 warps
    {"fwd_kernel": "tile"}, {"fwd_kernel": "step"},  # either forward kernel at any N
    {"fwd_block": 16}, {"fwd_block": 64},
    {"fwd_chunk": 2}, {"fwd_chunk": 8},
    {"bwd_block": 8}, {"bwd_block": 32},
    {"bwd_maxnreg": 168},
    {"ck": 16}, {"ck_save": 64}, {"ck_save": 256},
]
NCU_KEYS = ("gpu__time_duration.sum", "launch__grid_size", "launch__registers_per_thread",
            "launch__occupancy_limit", "sm__warps_active.avg.pct_of_peak_sustained_active",
            "smsp__issue_active.avg.pct_of_peak_sustained_active", "smsp__inst_executed.sum",
            "l1tex__t_sector_hit_rate.pct", "lts__t_sector_hit_rate.pct", "dram__bytes_read.sum",
            "dram__bytes_write.sum", "smsp__average_warps_issue_stalled_")


def rel(a: torch.Tensor, r: torch.Tensor) -> float:
    return ((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30)).item()


def _config(shape, channel_last: bool, launch: dict) -> dict:
    batch, channels, length, n = shape
    return scan_config(batch, channels, 1, length, n, channel_first=not channel_last, **launch)


def check(launch: dict, n: int, size=(2, 128, 2000), dtype=torch.bfloat16, device="cuda") -> tuple[bool, float]:
    """Worst relative error of a call at (*size, n) in ``dtype`` (channel-last) against the float32 reference,
    and whether it is <= 1e-2."""
    shape = (*size, n)
    inputs = scan_inputs(*shape, dtype, channel_last=True, requires_grad=False, seed=7, device=device)
    h0 = torch.randn(shape[0], shape[1], n, device=device)
    ours = {k: v.clone().requires_grad_(True) for k, v in {**inputs, "h0": h0}.items()}
    ref = {k: v.detach().float().clone().requires_grad_(True) for k, v in ours.items()}
    y, hT = selective_scan_triton(*[ours[k] for k in KEYS], True, ours["h0"], True,
                                  config=_config(shape, True, launch))
    yr, hTr = selective_scan_chunked_ref(*[ref[k] for k in KEYS], True, ref["h0"], True)
    gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
    ((y.float() * gy).sum() + (hT * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    errs = [rel(y, yr), rel(hT, hTr)] + [rel(ours[k].grad, ref[k].grad) for k in ours]
    worst = max(errs)
    return worst <= 1e-2 and all(e == e for e in errs), worst


def jobs_for(preset: str | None) -> list[tuple[tuple, bool]]:
    """(shape, channel_last) pairs to time."""
    if preset is None:
        return [(shape, cl) for shape in SCAN_SHAPES for cl in (False, True)]
    return [(s.shape, True) for s in preset_stage_shapes([preset]) if s.op == "scan"]


def sweep(launches: list[dict], preset: str | None) -> bool:
    jobs = jobs_for(preset)
    if not jobs:
        raise SystemExit(f"--preset {preset}: no Mamba-1 stage")
    good, all_ok = [], True
    for launch in launches:
        oks = []
        for n in sorted({shape[3] for shape, _ in jobs}):
            try:
                ok, worst = check(launch, n)
            except Exception as e:  # noqa: BLE001 - a launch that does not run is a result too
                ok, worst = False, float("nan")
                print(f"check {json.dumps(launch)} N={n}: ERROR {type(e).__name__}: {e}")
            oks.append(ok)
            print(f"check {json.dumps(launch):<44} N={n:<3} {'ok' if ok else 'FAIL'} worst {worst:.1e}", flush=True)
        all_ok &= all(oks)
        if all(oks):
            good.append(launch)
    results = []
    for shape, cl in jobs:
        layout = "channel-last" if cl else "channel-first"
        floor = scan_floor_ms(*shape)
        for launch in good:
            cfg = _config(shape, cl, launch)

            def call(i, cfg=cfg):
                return selective_scan_triton(*[i[k] for k in KEYS], True, config=cfg)

            r = time_op(call, scan_inputs(*shape, torch.bfloat16, channel_last=cl))
            results.append(dict(shape=shape, layout=layout, launch=launch, floor_ms=floor, **r))
            fx = "-" if r["fwd_ms"] is None else f"x{r['fwd_ms'] / floor:.2f}"
            print(f"{shape} {layout:<13} {json.dumps(launch):<44} fwd {r['fwd_ms'] or float('nan'):8.3f} "
                  f"f+b {r['fwd_bwd_ms'] or float('nan'):8.3f} ms  floor {fx}  peak {r['peak_mb'] or 0:.0f} MB",
                  flush=True)
            torch.cuda.empty_cache()
    print("\nranked by forward+backward (median ms, bf16, z, D, delta_bias, softplus):")
    for shape, cl in jobs:
        layout = "channel-last" if cl else "channel-first"
        rows = [r for r in results if r["shape"] == shape and r["layout"] == layout and r["fwd_bwd_ms"]]
        for rank, r in enumerate(sorted(rows, key=lambda r: r["fwd_bwd_ms"])[:5]):
            print(f"{str(shape) if rank == 0 else '':<24} {layout if rank == 0 else '':<13} "
                  f"fwd {r['fwd_ms']:8.3f} (x{r['fwd_ms'] / r['floor_ms']:.2f} floor) f+b {r['fwd_bwd_ms']:8.3f}  "
                  f"{json.dumps(r['launch'])}")
    return all_ok


def ncu_summary(path: str) -> None:
    """The NCU_KEYS metrics of each launch in an ``ncu --page raw --csv`` export (stall reasons >= 0.2 cycles
    per issued instruction only)."""
    with open(path) as f:
        rows = list(csv.reader(line for line in f if line.startswith('"')))
    if len(rows) < 3:
        print(f"ncu: no rows in {path}")
        return
    head, body = rows[0], rows[2:]  # the second row holds units
    for i, r in enumerate(body):
        print(f"ncu launch {i}")
        for name, value in zip(head, r):
            if not any(name.startswith(k) for k in NCU_KEYS):
                continue
            if name.startswith("smsp__average_warps_issue_stalled_"):
                try:
                    if float(value.replace(",", "")) < 0.2:
                        continue
                except ValueError:
                    continue
                name = name.replace("smsp__average_warps_issue_stalled_", "stall_")
            print(f"   {name} = {value}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help="sweep this preset's Mamba-1 stage shapes")
    parser.add_argument("--default", action="store_true", help="only the default launch")
    parser.add_argument("--ncu-summary", metavar="FILE", default=None, help="summarize an ncu CSV export")
    args = parser.parse_args(argv)
    if args.ncu_summary:
        ncu_summary(args.ncu_summary)
        return 0
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    return 0 if sweep(LAUNCHES[:1] if args.default else LAUNCHES, args.preset) else 1


if __name__ == "__main__":
    sys.exit(main())
