"""Development sweep for the selective-scan kernels (run on a GPU: ``python -m audiomamba.kernels.tune_scan``).

Checks correctness at real sizes first, then times forward and backward launch configurations on the issue's
shapes in both physical layouts, and prints a short table last. Details go to $OUT/tune_scan.json if set.
``--final``: short sweep + the benchmark table; ``--lean``: the "lean" backward against "seq" (correctness at
real sizes, a short sweep, a compact table; $OUT/tune_lean.json); ``--v6``: the "lean" backward's launch options
(NOTES.md v6): kernels compiled and checked at real sizes in parallel worker processes, then backward-only sweeps
and end-to-end rows ($OUT/tune_v6.json); ``--once`` runs the ONCE launches (for ``ncu``) and ``--ncu-summary FILE``
prints the main metrics of an ``ncu --page raw --csv`` file.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import torch
import triton.testing
from audiomamba.kernels.bench import (
    SCAN_SHAPES,
    _scan_inputs,
    measure_copy_bandwidth,
    measure_exp_rate,
    scan_floor_ms,
)
from audiomamba.kernels.reference import selective_scan_chunked_ref

S = importlib.import_module("audiomamba.kernels.mamba1_scan")

KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DEVICE = os.environ.get("TUNE_DEVICE", "cuda")
# mamba_ssm's forward+backward (ms) on the bench shapes, measured on the H200 (issue 3's targets)
TARGET_FWD_BWD = dict(zip(SCAN_SHAPES, (2.196, 3.447, 13.73)))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(shape, dtype, channel_last, cfg_kw, tol):
    batch, channels, length, n = shape
    inp = _scan_inputs(batch, channels, length, n, dtype, channel_last, requires_grad=True, seed=1, device=DEVICE)
    h0 = torch.randn(batch, channels, n, device=DEVICE, requires_grad=True)
    ref_in = {k: v.detach().float().requires_grad_(True) for k, v in inp.items()}
    h0r = h0.detach().clone().requires_grad_(True)
    S._CONFIG_OVERRIDES.clear()
    S._CONFIG_OVERRIDES.update(cfg_kw)
    y, hT = S.selective_scan_triton(*[inp[k] for k in KEYS], True, h0, True)
    S._CONFIG_OVERRIDES.clear()
    yr, hTr = selective_scan_chunked_ref(*[ref_in[k] for k in KEYS], True, h0r, True)
    gy = torch.randn_like(yr)
    gh = torch.randn_like(hTr)
    ((y.float() * gy).sum() + (hT * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    errs = {"y": rel(y, yr), "hT": rel(hT, hTr), "dh0": rel(h0.grad, h0r.grad)}
    for k in KEYS:
        errs["d" + k] = rel(inp[k].grad, ref_in[k].grad)
    worst = max(errs.values())
    ok = worst <= tol and all(v == v for v in errs.values())
    return ok, worst, errs


def bench_cfg(shape, channel_last, cfg_kw, do_bwd=True, fwd=True, reps=True):
    """Median ms of the forward (with checkpoints) and of the backward launch alone; ``reps=False`` runs each
    once (compiles the kernels) and returns no times."""
    batch, channels, length, n = shape
    inp = _scan_inputs(batch, channels, length, n, torch.bfloat16, channel_last, requires_grad=False)
    args = [inp[k] for k in KEYS]
    cfg = S._config(batch, channels, 1, length, n, **cfg_kw)

    def bench(fn):
        if not reps:
            fn()
            torch.cuda.synchronize()
            return None
        return triton.testing.do_bench(fn, return_mode="median")

    t_f = bench(lambda: S._selective_scan_fwd(*args, True, None, store_checkpoints=True, config=cfg)) if fwd \
        else None
    t_b = None
    if do_bwd:
        y, hT, ck, _ = S._selective_scan_fwd(*args, True, None, store_checkpoints=True, config=cfg)
        dy = torch.randn_like(y)
        t_b = bench(lambda: S._selective_scan_bwd(dy, None, *args, True, ck, False, cfg))
    return t_f, t_b, cfg


def final(budget_s=150.0):
    """Short sweep of the launch settings, then the benchmark table with the best ones per shape and layout."""
    from audiomamba.kernels.bench import HEADER, _row_text, bench_scan

    t0 = time.time()
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    fwd_cfgs = [dict(fwd_block=32, fwd_chunk=4, fwd_target=tg) for tg in (1, 2048, 8192)]
    bwd_cfgs = [dict(bwd_block=be, bwd_chunk=2, bwd_target=tg) for be, tg in ((16, 1), (16, 4096), (32, 4096))]
    best = {}
    for shape in SCAN_SHAPES:
        for cl in (False, True):
            bf = bb = None
            for kw in fwd_cfgs:
                t_f, _, cfg = bench_cfg(shape, cl, kw, do_bwd=False)
                print(f"fwd {shape} cl={int(cl)} {kw} nseg={cfg['fwd_nseg']} {t_f:.3f} ms", flush=True)
                bf = (t_f, kw) if bf is None or t_f < bf[0] else bf
            for kw in bwd_cfgs:
                if time.time() - t0 > budget_s:
                    break
                _, t_b, cfg = bench_cfg(shape, cl, kw)
                print(f"bwd {shape} cl={int(cl)} {kw} nseg={cfg['bwd_nseg']} {t_b:.3f} ms", flush=True)
                bb = (t_b, kw) if bb is None or t_b < bb[0] else bb
            best[(shape, cl)] = {**bf[1], **(bb[1] if bb else {})}
            torch.cuda.empty_cache()
    rows = []
    print(f"copy {copy_bw / 1e12:.2f} TB/s, exp2 {exp_rate / 1e12:.2f} T/s")
    print(HEADER)
    for shape in SCAN_SHAPES:
        for cl in (False, True):
            rows += bench_scan([shape], layouts=("channel-last" if cl else "channel-first",),
                               reference=shape == SCAN_SHAPES[0], config=best[(shape, cl)], copy_bw=copy_bw,
                               exp_rate=exp_rate)
    print("FINAL TABLE (bf16, z, D, delta_bias, softplus; median ms; floor = max(bytes/copy, exps/exp rate))")
    print(HEADER)
    for r in rows:
        print(_row_text(r))
    for key, cfg in best.items():
        print("best config", key, json.dumps(cfg))
    return rows


def _end_to_end(r, copy_bw, exp_rate, **tags):
    """A sweep result r (shape, cfg, bwd_ms) with its launch timed end to end through autograd, as the
    benchmark table times it: dict with the tags, fwd_ms, fwd_bwd_ms and peak_mb added."""
    from audiomamba.kernels.bench import bench_scan

    row = bench_scan([r["shape"]], layouts=("channel-first",), reference=False, mamba=False, config=r["cfg"],
                     copy_bw=copy_bw, exp_rate=exp_rate, print_fn=lambda *a: None)[0]
    return dict(shape=r["shape"], **tags, cfg=r["cfg"], bwd_ms=r["bwd_ms"], fwd_ms=row["fwd_ms"],
                fwd_bwd_ms=row["fwd_bwd_ms"], peak_mb=row["peak_mb"])


def lean(budget_s=150.0):
    """The "lean" backward (NOTES.md v5) against "seq": correctness of both at real sizes, then per shape
    (channel-first) forward and backward medians over a short launch sweep, the best of each variant timed end
    to end through autograd (as the benchmark table does), and a compact table last. Returns 0 if all checks
    pass."""
    out = os.environ.get("OUT")
    t0 = time.time()
    results = {"checks": [], "sweep": [], "table": []}
    all_ok = True
    checks = [
        ((2, 192, 777, 16), torch.float32, False, {}, 1e-4),
        ((2, 192, 777, 16), torch.float32, True, {"fwd_target": 1, "bwd_target": 1}, 1e-4),
        ((4, 768, 2048, 16), torch.bfloat16, True, {}, 1e-2),
        ((2, 64, 4096, 16), torch.bfloat16, False, {"fwd_target": 8192, "bwd_target": 8192}, 1e-2),
    ]
    for variant in ("seq", "lean"):
        for shape, dtype, cl, kw, tol in checks:
            kw = {**kw, "bwd_variant": variant}
            try:
                ok, worst, errs = check(shape, dtype, cl, kw, tol)
            except Exception as e:  # noqa: BLE001 - report it and go on to the timings
                ok, worst, errs = False, float("nan"), {"error": repr(e)[:300]}
            all_ok &= ok
            results["checks"].append(dict(shape=shape, dtype=str(dtype), cl=cl, cfg=kw, ok=ok, errs=errs))
            print(f"check {variant:<4} {shape} {dtype} cl={int(cl)} {kw}: {'OK' if ok else 'FAIL'} "
                  f"worst={worst:.2e}", flush=True)
            if not ok:
                print("   ", {k: v if isinstance(v, str) else f"{v:.2e}" for k, v in errs.items()}, flush=True)
    torch.cuda.empty_cache()
    print(f"checks {'ALL OK' if all_ok else 'FAILED'} ({time.time() - t0:.0f}s)", flush=True)
    sweeps = {
        "seq": [dict(bwd_variant="seq")],
        # most informative first (the budget may cut the tail): default; a register cap for more warps per SM;
        # checkpoints every 16 steps (halves the per-program scratch, 32 -> 16 KB, so that it stays in L1);
        # more segments; 32 channels per warp (fewer shuffles per element, 254 registers); fewer segments
        "lean": [dict(bwd_variant="lean"), dict(bwd_variant="lean", bwd_maxnreg=168),
                 dict(bwd_variant="lean", bwd_maxnreg=168, ck=16), dict(bwd_variant="lean", ck=16),
                 dict(bwd_variant="lean", bwd_target=8192), dict(bwd_variant="lean", bwd_block=32),
                 dict(bwd_variant="lean", bwd_maxnreg=168, bwd_target=8192),
                 dict(bwd_variant="lean", bwd_maxnreg=128, ck=16), dict(bwd_variant="lean", bwd_target=2048)],
    }
    # 32 channels per program in one time segment: only where that still gives >= 384 programs (shape 1)
    one_seg_wide = dict(bwd_variant="lean", bwd_block=32, bwd_target=1)
    best = {}
    t_sweep = time.time()
    for i, shape in enumerate(SCAN_SHAPES):
        # each shape gets an equal share of what the checks left of the budget (at least one launch per variant)
        deadline = t_sweep + (i + 1) * max(budget_s - (t_sweep - t0), 0.0) / len(SCAN_SHAPES)
        wide = shape[0] * shape[1] // 32 >= 384
        for variant, cfgs in sweeps.items():
            for kw in cfgs + ([one_seg_wide] if variant == "lean" and wide else []):
                if time.time() > deadline and (shape, variant) in best:
                    break
                try:
                    t_f, t_b, cfg = bench_cfg(shape, False, kw)
                except Exception as e:  # noqa: BLE001 - a failing config is a result too
                    print("config failed", shape, kw, repr(e)[:300], flush=True)
                    continue
                r = dict(shape=shape, cfg=kw, fwd_ms=t_f, bwd_ms=t_b, nseg=cfg["bwd_nseg"], BE=cfg["bwd_BE"])
                results["sweep"].append(r)
                print(f"{variant:<4} {shape} {json.dumps(kw)} BE={cfg['bwd_BE']} nseg={cfg['bwd_nseg']}: "
                      f"fwd {t_f:.3f} bwd {t_b:.3f} ms", flush=True)
                if (shape, variant) not in best or t_b < best[(shape, variant)]["bwd_ms"]:
                    best[(shape, variant)] = r
            torch.cuda.empty_cache()
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    for (_, variant), r in best.items():
        results["table"].append(_end_to_end(r, copy_bw, exp_rate, variant=variant))
    if out:
        with open(os.path.join(out, "tune_lean.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(f"LEAN vs SEQ (H200, bf16, channel-first, z, D, delta_bias, softplus; median ms; bwd = backward launch "
          f"alone, f+b = autograd end to end; checks {'ALL OK' if all_ok else 'FAILED'}; "
          f"{time.time() - t0:.0f}s)")
    print(f"{'shape':<22} {'variant':<5} {'fwd':>6} {'bwd':>7} {'f+b':>7} {'target f+b':>10} {'peak MB':>8}  "
          "best launch")
    def ms(x, width):
        return f"{'-' if x is None else f'{x:.3f}':>{width}}"

    for r in results["table"]:
        print(f"{str(r['shape']):<22} {r['variant']:<5} {ms(r['fwd_ms'], 6)} {ms(r['bwd_ms'], 7)} "
              f"{ms(r['fwd_bwd_ms'], 7)} {TARGET_FWD_BWD[r['shape']]:>10.3f} {r['peak_mb'] or 0:>8.0f}  "
              f"{json.dumps(r['cfg'])}")
    return 0 if all_ok else 1


V6_CHECKS = [
    ((2, 192, 777, 16), torch.float32, False, {"bwd_target": 1}, 1e-4),
    ((2, 192, 777, 16), torch.float32, True, {"fwd_target": 1, "bwd_target": 10**6}, 1e-4),
    ((4, 768, 2048, 16), torch.bfloat16, False, {}, 1e-2),
]


def v6_sweeps():
    """Per bench shape, the backward launches to time (the first is the default, the baseline): a 168-register
    cap (12 warps/SM, spills), checkpoints every 8 steps (half the scratch per warp; the forward stores twice the
    checkpoints), and for shape 1 two time segments (1536 warps), with or without the cap. The NOTES.md v6
    sweeps also timed the options since made the only behaviour (pairs, 4-step sub-chunks)."""
    base = dict(bwd_variant="lean")
    common = [base, {**base, "bwd_maxnreg": 168}, {**base, "ck": 8}]
    wide = [{**base, "bwd_target": 1536}, {**base, "bwd_maxnreg": 168, "bwd_target": 1536}]
    return {shape: common + (wide if shape == SCAN_SHAPES[0] else []) for shape in SCAN_SHAPES}


def _v6_worker(job):
    """Compile (and for checks, check) one job in a worker process, so that compilation runs in parallel."""
    kind, args = job
    try:
        if kind == "check":
            shape, dtype, cl, kw, tol = args
            ok, worst, errs = check(shape, dtype, cl, kw, tol)
            return dict(kind=kind, shape=shape, dtype=str(dtype), cl=cl, cfg=kw, ok=ok, worst=worst, errs=errs)
        shape, kw = args
        bench_cfg(shape, False, kw, reps=False)
        return dict(kind=kind, shape=shape, cfg=kw, ok=True)
    except Exception as e:  # noqa: BLE001 - reported by the parent
        return dict(kind=kind, args=repr(args)[:200], ok=False, error=repr(e)[:400])


def v6(budget_s=300.0):
    """Staged "lean" backward (NOTES.md v6): parallel compile + checks, backward sweeps, end-to-end rows for
    the first launch of each sweep (tag "base") and the fastest ("best")."""
    import multiprocessing as mp

    out = os.environ.get("OUT")
    t0 = time.time()
    sweeps = v6_sweeps()
    jobs = [("check", (shape, dtype, cl, {**kw, "bwd_variant": "lean", **extra}, tol))
            for extra in ({}, {"ck": 8}) for shape, dtype, cl, kw, tol in V6_CHECKS]
    jobs += [("compile", (shape, kw)) for shape, cfgs in sweeps.items() for kw in cfgs]
    with mp.get_context("spawn").Pool(int(os.environ.get("TUNE_WORKERS", "12"))) as pool:
        done = pool.map(_v6_worker, jobs, chunksize=1)
    all_ok = all(r["ok"] for r in done)
    for r in done:
        if r["kind"] == "check" or not r["ok"]:
            print({k: v for k, v in r.items() if k != "errs"}, flush=True)
            if not r["ok"] and "errs" in r:
                print("   ", {k: f"{v:.2e}" for k, v in r["errs"].items()}, flush=True)
    print(f"compile+checks {'ALL OK' if all_ok else 'FAILED'} ({time.time() - t0:.0f}s)", flush=True)
    results = {"jobs": done, "sweep": [], "table": []}
    best = {}
    for shape, cfgs in sweeps.items():
        for kw in cfgs:
            if time.time() - t0 > budget_s and shape in best:
                break
            try:
                _, t_b, cfg = bench_cfg(shape, False, kw, fwd=False)
            except Exception as e:  # noqa: BLE001 - a failing config is a result too
                print("config failed", shape, kw, repr(e)[:300], flush=True)
                continue
            r = dict(shape=shape, cfg=kw, bwd_ms=t_b, nseg=cfg["bwd_nseg"])
            results["sweep"].append(r)
            print(f"{shape} {json.dumps(kw)} nseg={cfg['bwd_nseg']}: bwd {t_b:.3f} ms", flush=True)
            if shape not in best or t_b < best[shape]["bwd_ms"]:
                best[shape] = r
        torch.cuda.empty_cache()
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    for shape, cfgs in sweeps.items():
        base = next((r for r in results["sweep"] if r["shape"] == shape and r["cfg"] == cfgs[0]), None)
        for tag, r in (("base", base), ("best", best.get(shape))):
            if r is not None:
                results["table"].append(_end_to_end(r, copy_bw, exp_rate, tag=tag))
    if out:
        with open(os.path.join(out, "tune_v6.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(f"V6 (H200, bf16, channel-first, z, D, delta_bias, softplus; median ms; bwd = backward launch alone, "
          f"f+b = autograd end to end; checks {'ALL OK' if all_ok else 'FAILED'}; {time.time() - t0:.0f}s)")
    print(f"{'shape':<22} {'tag':<4} {'fwd':>6} {'bwd':>7} {'f+b':>7} {'target':>7} {'peak MB':>8}  launch")
    for r in results["table"]:
        print(f"{str(r['shape']):<22} {r['tag']:<4} {r['fwd_ms'] or 0:>6.3f} {r['bwd_ms']:>7.3f} "
              f"{r['fwd_bwd_ms'] or 0:>7.3f} {TARGET_FWD_BWD[r['shape']]:>7.3f} {r['peak_mb'] or 0:>8.0f}  "
              f"{json.dumps(r['cfg'])}")
    return 0 if all_ok else 1


# launches profiled by ``--once`` (under ncu): (shape, config) of the lean backward
ONCE = [(SCAN_SHAPES[0], dict(bwd_variant="lean")), (SCAN_SHAPES[0], dict(bwd_variant="lean", bwd_target=1536)),
        (SCAN_SHAPES[2], dict(bwd_variant="lean"))]
NCU_KEYS = ("gpu__time_duration.sum", "launch__grid_size", "sm__warps_active.avg.pct_of_peak_sustained_active",
            "smsp__issue_active.avg.pct_of_peak_sustained_active", "smsp__inst_executed.sum",
            "l1tex__t_sector_hit_rate.pct", "lts__t_sector_hit_rate.pct", "lts__t_sectors_op_read.sum",
            "lts__t_sectors_op_write.sum", "lts__t_sectors_op_red.sum", "lts__throughput.avg.pct_of_peak_sustained",
            "l1tex__throughput.avg.pct_of_peak_sustained", "dram__bytes_read.sum", "dram__bytes_write.sum",
            "smsp__average_warps_issue_stalled_", "launch__registers_per_thread", "launch__occupancy_limit")


def once():
    """One backward launch of each ONCE entry (kernels compiled first, untimed): the program ncu profiles."""
    for shape, kw in ONCE:
        bench_cfg(shape, False, kw, fwd=False, reps=False)


def ncu_summary(path):
    """Compact view of an ``ncu --page raw --csv`` file: the NCU_KEYS metrics per profiled launch (stall reasons
    only where >= 0.2 cycles per issued instruction)."""
    import csv

    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        print("ncu: no rows in", path)
        return
    head, body = rows[0], rows[2:]  # second row: units
    for i, r in enumerate(body):
        grid = r[head.index("launch__grid_size")] if "launch__grid_size" in head else "?"
        print(f"ncu launch {i} (grid size {grid}; ONCE order, segmented shapes launch a local pass first)")
        for j, name in enumerate(head):
            if any(name.startswith(k) for k in NCU_KEYS):
                v = r[j]
                if name.startswith("smsp__average_warps_issue_stalled_"):
                    try:
                        if float(v.replace(",", "")) < 0.2:
                            continue
                    except ValueError:
                        continue
                    name = name.replace("smsp__average_warps_issue_stalled_", "stall_").replace(
                        "_per_issue_active.ratio", "")
                print(f"   {name} = {v}")


def main():
    out = os.environ.get("OUT")
    t_start = time.time()
    results = {"checks": [], "sweep": []}
    # 1. correctness at real sizes (float32 vs the reference in float32; bf16 against float32 reference)
    checks = [
        ((2, 192, 777, 16), torch.float32, False, {}, 1e-4),
        ((2, 192, 777, 16), torch.float32, True, {"fwd_target": 1, "bwd_target": 1}, 1e-4),
        ((2, 192, 777, 16), torch.float32, True, {"bwd_chunk": 1, "bwd_block": 64, "bwd_target": 100000}, 1e-4),
        ((4, 768, 2048, 16), torch.bfloat16, True, {}, 1e-2),
        ((2, 64, 4096, 16), torch.bfloat16, True, {"fwd_target": 8192, "bwd_target": 8192}, 1e-2),
    ]
    all_ok = True
    for shape, dtype, cl, kw, tol in checks:
        ok, worst, errs = check(shape, dtype, cl, kw, tol)
        all_ok &= ok
        results["checks"].append(dict(shape=shape, dtype=str(dtype), cl=cl, cfg=kw, ok=ok, errs=errs))
        print(f"check {shape} {dtype} cl={cl} {kw}: {'OK' if ok else 'FAIL'} worst={worst:.2e}", flush=True)
        if not ok:
            print("   ", {k: f"{v:.2e}" for k, v in errs.items()}, flush=True)
    torch.cuda.empty_cache()
    # 2. sweep
    copy_bw, exp_rate = measure_copy_bandwidth(), measure_exp_rate()
    print(f"copy {copy_bw / 1e12:.2f} TB/s, exp2 {exp_rate / 1e12:.2f} T/s", flush=True)
    fwd_cfgs = [dict(fwd_variant="seq", fwd_block=be, fwd_chunk=T, fwd_target=tg)
                for be, T, tg in ((32, 4, 1), (32, 4, 2048), (32, 4, 8192), (64, 4, 8192), (32, 2, 8192))]
    bwd_cfgs = [dict(bwd_variant="seq", bwd_block=be, bwd_chunk=T, bwd_target=tg)
                for be, T, tg in ((32, 2, 1), (32, 1, 1), (16, 2, 1), (64, 1, 1), (32, 2, 4096), (16, 2, 8192),
                                  (64, 1, 4096))]
    budget = float(os.environ.get("TUNE_BUDGET_S", "330"))
    rows = []
    for shape in SCAN_SHAPES:
        floor = scan_floor_ms(*shape, 2, copy_bw, exp_rate)
        for cl in ((False, True) if shape == SCAN_SHAPES[0] else (False,)):
            for kw in fwd_cfgs:
                if time.time() - t_start > budget:
                    break
                try:
                    t_f, _, cfg = bench_cfg(shape, cl, kw, do_bwd=False)
                except Exception as e:  # noqa: BLE001 - a failing config is a result too
                    print("fwd config failed", shape, cl, kw, repr(e)[:200], flush=True)
                    continue
                rows.append(dict(kind="fwd", shape=shape, cl=cl, cfg=kw, ms=t_f, x_floor=t_f / floor,
                                 nseg=cfg["fwd_nseg"]))
            for kw in bwd_cfgs:
                if time.time() - t_start > budget:
                    break
                try:
                    _, t_b, cfg = bench_cfg(shape, cl, kw)
                except Exception as e:  # noqa: BLE001
                    print("bwd config failed", shape, cl, kw, repr(e)[:200], flush=True)
                    continue
                rows.append(dict(kind="bwd", shape=shape, cl=cl, cfg=kw, ms=t_b, nseg=cfg["bwd_nseg"]))
            torch.cuda.empty_cache()
    results["sweep"] = rows
    if out:
        with open(os.path.join(out, "tune_scan.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    for r in rows:
        print(f"{r['kind']} {str(r['shape']):<22} cl={int(r['cl'])} {json.dumps(r['cfg']):<70} nseg={r['nseg']:<4} "
              f"{r['ms']:.3f} ms" + (f"  x{r['x_floor']:.2f}" if 'x_floor' in r else ""))
    best = {}
    for r in rows:
        key = (r["kind"], r["shape"], r["cl"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    print("BEST")
    for key, r in best.items():
        print(f"{key[0]} {str(key[1]):<22} cl={int(key[2])} {r['ms']:.3f} ms {json.dumps(r['cfg'])} nseg={r['nseg']}")
    print("checks", "ALL OK" if all_ok else "FAILED", f"elapsed {time.time() - t_start:.0f}s")
    return 0 if all_ok else 1


if __name__ == "__main__":
    if "--once" in sys.argv:
        once()
        sys.exit(0)
    if "--ncu-summary" in sys.argv:
        ncu_summary(sys.argv[sys.argv.index("--ncu-summary") + 1])
        sys.exit(0)
    if "--v6" in sys.argv:
        sys.exit(v6(float(os.environ.get("TUNE_BUDGET_S", "300"))))
    if "--lean" in sys.argv:
        sys.exit(lean(float(os.environ.get("TUNE_BUDGET_S", "150"))))
    if "--final" in sys.argv:
        final(float(os.environ.get("TUNE_BUDGET_S", "150")))
        sys.exit(0)
    sys.exit(main())
