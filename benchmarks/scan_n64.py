"""Selective scan at the presets' shapes (N = 64): correctness at real sizes, launch sweeps, end-to-end table.

Run on a CUDA machine from the repository root: ``python benchmarks/scan_n64.py``. It imports the kernels as a
top-level package (``kernels``), so it needs only torch and triton. What it does, in one process:

1. Forward sweep at the sc09_small stage-0 shape (16, 128, 16000, 64), bf16, channel-last memory (the models'
   layout): channel block, chunk, warps, segments. Backward sweep at the same shape: channel block, warps, register
   cap, recomputation interval, saved-state spacing, segments.
2. Every swept launch is checked in bf16 against the float32 chunked reference at (2, 128, 2000, 64) (output, final
   state, every gradient, initial state included; 1e-2 relative); the chosen launch also in float32 (1e-4).
3. End to end with the best launches and with the defaults: the three sc09_small stage shapes, forward and
   forward+backward through autograd, the exponential floor, peak memory and the bytes kept for the backward; the
   N = 16 anchor shapes with the defaults. With a copy of earlier kernels in ./.scan_old (``mamba1_scan.py`` and
   ``activations.py`` of an older commit, e.g. ``git show REV:kernels/mamba1_scan.py``), the same rows for them
   ("before"), so that before and after come from one run on one card.

Details go to $OUT/scan_n64.json (or ./scan_n64.json); a short table is printed last. SCAN_BUDGET_S bounds the
sweeps (default 240 s).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernels import mamba1_scan as S  # noqa: E402
from kernels.reference import selective_scan_chunked_ref  # noqa: E402

EXP_RATE = 4.2e12  # MUFU exponentials per second, H100/H200 (132 SMs x 16 per clock x ~1.98 GHz)
STAGES = [(16, 128, 16000, 64), (16, 256, 4000, 64), (16, 512, 1000, 64)]
ANCHORS = [(8, 1536, 2048, 16), (16, 128, 16384, 16), (8, 256, 65536, 16)]
KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")
BUDGET = float(os.environ.get("SCAN_BUDGET_S", "240"))
T0 = time.time()
OLD = None  # the earlier kernels, loaded by main() when ./.scan_old exists
RESULT: dict = {"fwd_sweep": [], "bwd_sweep": [], "checks": [], "rows": [], "errors": []}


def dump():
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "scan_n64.json"), "w") as f:
        json.dump(RESULT, f, indent=1, default=str)


def floor_ms(shape):
    b, e, length, n = shape
    return b * e * length * n / EXP_RATE * 1e3


def inputs(shape, dtype, channel_last=True, grad=False, seed=0):
    b, e, length, n = shape
    g = torch.Generator(device="cuda").manual_seed(seed)

    def act(scale=1.0, shift=0.0):
        t = torch.randn(b, length, e, device="cuda", generator=g).transpose(1, 2) if channel_last else \
            torch.randn(b, e, length, device="cuda", generator=g)
        return (t * scale + shift).to(dtype)

    def bc():
        t = torch.randn(b, length, n, device="cuda", generator=g).transpose(1, 2) if channel_last else \
            torch.randn(b, n, length, device="cuda", generator=g)
        return t.to(dtype)

    d = {"u": act(), "delta": act(0.5), "A": -torch.exp(torch.randn(e, n, device="cuda", generator=g) * 0.5),
         "B": bc(), "C": bc(), "D": torch.randn(e, device="cuda", generator=g), "z": act(),
         "delta_bias": torch.randn(e, device="cuda", generator=g) * 0.5 - 2.0,
         "h0": torch.randn(b, e, n, device="cuda", generator=g)}
    if grad:
        d = {k: v.requires_grad_(True) for k, v in d.items()}
    return d


def call(d, cfg, fn=None):
    if fn is not None:
        return fn(*[d[k] for k in KEYS[:8]], True, d["h0"], True)
    if cfg == "old":
        return OLD.selective_scan_triton(*[d[k] for k in KEYS[:8]], True, d["h0"], True)
    return S.selective_scan_triton(*[d[k] for k in KEYS[:8]], True, d["h0"], True, config=cfg)


def bench(fn):
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def cfg_for(shape, channel_last=True, **kw):
    b, e, length, n = shape
    return S.scan_config(b, e, 1, length, n, channel_first=not channel_last, **kw)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def check(kw, dtype=torch.bfloat16, shape=(2, 128, 2000, 64), channel_last=True):
    """Max relative error over y, final state and every gradient against the float32 chunked reference."""
    d = inputs(shape, dtype, channel_last, seed=7)
    ours = {k: v.clone().requires_grad_(True) for k, v in d.items()}
    ref = {k: v.detach().float().clone().requires_grad_(True) for k, v in d.items()}
    y, hT = call(ours, cfg_for(shape, channel_last, **kw))
    yr, hTr = call(ref, None, selective_scan_chunked_ref)
    gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
    ((y.float() * gy).sum() + (hT * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    errs = {"y": rel(y, yr), "hT": rel(hT, hTr)}
    errs.update({"d" + k: rel(ours[k].grad, ref[k].grad) for k in KEYS})
    worst = max(errs.values())
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    ok = worst <= tol and all(v == v for v in errs.values())
    RESULT["checks"].append(dict(kw=kw, dtype=str(dtype), shape=shape, errs=errs, ok=ok))
    return ok, worst


def time_fwd(shape, kw, channel_last=True):
    d = inputs(shape, torch.bfloat16, channel_last)
    cfg = cfg_for(shape, channel_last, **kw)
    with torch.no_grad():
        return bench(lambda: call(d, cfg))


def time_bwd(shape, kw, channel_last=True, reps=True):
    """Backward launch alone (checkpoints from one forward); reps=False: run it once."""
    d = inputs(shape, torch.bfloat16, channel_last)
    cfg = cfg_for(shape, channel_last, **kw)
    y, hT, ck, cfg = S._selective_scan_fwd(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                           d["delta_bias"], True, d["h0"], store_checkpoints=True, config=cfg)
    dy = torch.randn_like(y)
    dhT = torch.randn_like(hT)
    def run():
        return S._selective_scan_bwd(dy, dhT, d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                     d["delta_bias"], True, ck, True, cfg)

    return bench(run) if reps else run()


def end_to_end(shape, kw, channel_last=True, label=""):
    d = inputs(shape, torch.bfloat16, channel_last, grad=True)
    cfg = "old" if kw == "old" else cfg_for(shape, channel_last, **kw)
    with torch.no_grad():
        t_f = bench(lambda: call(d, cfg))
    dy = torch.randn(shape[:3], device="cuda", dtype=torch.bfloat16)

    def fb():
        for v in d.values():
            v.grad = None
        y, hT = call(d, cfg)
        y.backward(dy)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fb()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    t_fb = bench(fb)
    b, e, length, n = shape
    saved = b * e * triton.cdiv(length, 8 if cfg == "old" else cfg["CKS"]) * n * 4 / 2**20
    row = dict(label=label, shape=shape, kw=kw, fwd_ms=t_f, fwd_bwd_ms=t_fb, floor_ms=floor_ms(shape),
               x_floor=t_f / floor_ms(shape), fb_over_f=t_fb / t_f, peak_mb=peak, saved_mb=saved,
               layout="channel-last" if channel_last else "channel-first")
    RESULT["rows"].append(row)
    dump()
    print(f"  {label:10s} {str(shape):22s} fwd {t_f:8.3f} f+b {t_fb:8.3f} floor {floor_ms(shape):6.3f} "
          f"x{t_f / floor_ms(shape):5.2f} f+b/f {t_fb / t_f:5.2f} peak {peak:8.0f} MB saved {saved:6.0f} MB",
          flush=True)
    torch.cuda.empty_cache()
    return row


FWD = [dict(), dict(fwd_chunk=16), dict(fwd_block=4), dict(fwd_block=4, fwd_chunk=16),
       dict(fwd_block=4, fwd_chunk=16, fwd_target=1), dict(fwd_block=2, fwd_chunk=16, fwd_target=1),
       dict(fwd_chunk=16, fwd_target=1)]
BWD = [dict(), dict(bwd_warps=2), dict(bwd_block=32), dict(bwd_block=8), dict(bwd_lanes_n=16),
       dict(bwd_block=32, bwd_warps=4), dict(bwd_target=1), dict(bwd_kernel="lanes")]


def load_old():
    """The kernels as they were before this work (./.scan_old, a copy of the earlier mamba1_scan.py and
    activations.py), for before/after rows in one run; None when absent."""
    import importlib
    import importlib.util

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".scan_old")
    if not os.path.isdir(root):
        return None
    spec = importlib.util.spec_from_file_location("scan_old", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["scan_old"] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module("scan_old.mamba1_scan")


def _warm(job):
    """Worker: compile (into Triton's cache) and check one launch; returns (kind, kw, ok, worst, error). Kind
    "old": one forward+backward of the earlier kernels at the shape kw (compiles them for the end-to-end rows)."""
    kind, kw = job
    if kind == "old":
        global OLD
        OLD = load_old()
        try:
            shape, channel_last = kw
            d = inputs(shape, torch.bfloat16, channel_last, grad=True)
            y, _ = call(d, "old")
            y.backward(torch.ones_like(y))
            torch.cuda.synchronize()
            return kind, kw, True, 0.0, None
        except Exception as exc:  # noqa: BLE001 - reported by the parent
            return kind, kw, False, float("nan"), repr(exc)
    try:
        ok, worst = check(kw)
        if kind == "fwd":
            d = inputs(STAGES[0], torch.bfloat16)
            with torch.no_grad():
                call(d, cfg_for(STAGES[0], **kw))
        else:
            time_bwd(STAGES[0], kw, reps=False)
        torch.cuda.synchronize()
        return kind, kw, ok, worst, None
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        return kind, kw, False, float("nan"), repr(exc)


def sweep(kind, configs, timer, warm):
    out = RESULT[kind + "_sweep"]
    for kw in configs:
        ok, worst, err = warm[(kind, json.dumps(kw, sort_keys=True))]
        if err:
            RESULT["errors"].append(f"{kind} {kw}: {err}")
            print(f"  {kind} {json.dumps(kw):60s} ERROR {err}", flush=True)
            continue
        if time.time() - T0 > BUDGET:
            print(f"  {kind} sweep: budget reached", flush=True)
            break
        try:
            ms = timer(STAGES[0], kw)
            out.append(dict(kw=kw, ms=ms, ok=ok, worst=worst))
            dump()
            print(f"  {kind} {json.dumps(kw):60s} {ms:8.3f} ms  check {'ok' if ok else 'FAIL'} {worst:.1e}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - record and go on with the next launch
            RESULT["errors"].append(f"{kind} {kw}: {exc!r}")
            print(f"  {kind} {kw}: ERROR {exc!r}", flush=True)
        torch.cuda.empty_cache()


def best(kind):
    good = [r for r in RESULT[kind + "_sweep"] if r["ok"]]
    return min(good, key=lambda r: r["ms"])["kw"] if good else {}


def main():
    global OLD
    OLD = load_old()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    RESULT["device"] = torch.cuda.get_device_name()
    import multiprocessing as mp

    jobs = [("fwd", kw) for kw in FWD] + [("bwd", kw) for kw in BWD]
    if OLD is not None:
        jobs += [("old", (shape, True)) for shape in STAGES] + [("old", (shape, False)) for shape in ANCHORS]
    with mp.get_context("spawn").Pool(min(len(jobs), 14)) as pool:
        warm = {(k, json.dumps(kw, sort_keys=True)): (ok, worst, err) for k, kw, ok, worst, err in
                pool.imap_unordered(_warm, jobs)}
    print(f"compiled and checked {len(jobs)} launches in {time.time() - T0:.0f} s", flush=True)
    for (k, kw), (ok, worst, err) in warm.items():
        if k == "old":
            if err:
                RESULT["errors"].append(f"old kernels {kw}: {err}")
            continue
        RESULT["checks"].append(dict(kind=k, kw=kw, ok=ok, worst=worst, err=err))
    sweep("fwd", FWD, time_fwd, warm)
    sweep("bwd", BWD, time_bwd, warm)
    bf, bb = best("fwd"), best("bwd")
    fwd_keys = {"fwd_block", "fwd_chunk", "fwd_warps", "fwd_target"}
    chosen = {**{k: v for k, v in bf.items() if k in fwd_keys}, **{k: v for k, v in bb.items() if k not in fwd_keys}}
    RESULT["chosen"] = chosen
    print("chosen:", chosen, flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        for n in (64, 16):
            try:
                ok, worst = check(chosen, dtype, shape=(2, 128, 2000, n))
                print(f"  check chosen {dtype} N={n}: {'ok' if ok else 'FAIL'} {worst:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001
                RESULT["errors"].append(f"check chosen {dtype} {n}: {exc!r}")
    print("end to end (bf16, median ms):", flush=True)
    for shape in STAGES:
        for label, kw in (("default", {}), ("chosen", chosen)):
            try:
                end_to_end(shape, kw, label=label)
            except Exception as exc:  # noqa: BLE001
                RESULT["errors"].append(f"e2e {label} {shape}: {exc!r}")
    if OLD is not None:
        for shape in STAGES:
            try:
                end_to_end(shape, "old", label="before")
            except Exception as exc:  # noqa: BLE001
                RESULT["errors"].append(f"e2e before {shape}: {exc!r}")
    for shape in ANCHORS:
        for label, kw in (("N16 now", {}), ("N16 before", "old")):
            if kw == "old" and OLD is None:
                continue
            try:
                end_to_end(shape, kw, channel_last=False, label=label)
            except Exception as exc:  # noqa: BLE001
                RESULT["errors"].append(f"e2e anchor {label} {shape}: {exc!r}")
    dump()
    print("\n| label | shape | fwd ms | f+b ms | floor | fwd/floor | f+b/fwd | peak MB | saved MB |")
    for r in RESULT["rows"]:
        print(f"| {r['label']} | {r['shape']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {r['floor_ms']:.3f} | "
              f"{r['x_floor']:.2f} | {r['fb_over_f']:.2f} | {r['peak_mb']:.0f} | {r['saved_mb']:.0f} |")
    bad = [c for c in RESULT["checks"] if not c["ok"]]
    print(f"checks: {len(RESULT['checks']) - len(bad)} ok, {len(bad)} failed; errors: {len(RESULT['errors'])}; "
          f"{time.time() - T0:.0f} s")


if __name__ == "__main__":
    main()
