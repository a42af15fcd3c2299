"""Timing of the fused Mamba-1 stage step (``python benchmarks/block_step.py [--quick|--split|--mini|--warm]``, CUDA
only).

For each stage of ``sc09_small`` (D = 64, 128, 256; E = 2D; N = 64; W = 4; 8 blocks) and batch 1 and 64: one CUDA
graph of one stage launch (8 blocks, up-pool add and stage residual), replayed; µs per block for a few launch
settings (``StageLaunch``: rows per program, tile, warps). Then ``bench_generate`` (float32, and bfloat16 at fewer
steps) and a summary table. ``--quick``: only the default settings per stage. ``--split``: the wide stages' split
step (``block_step_split``) against the one-program kernel over a sweep of its launch settings (``SplitLaunch``),
and generation with several of them (``FusedLaunch``). ``--mini``: only generation at batch 1 and 64 (float32), the
step graphs' times and a correctness check of the fused generation path. ``--warm``: only compile every kernel the
benchmark launches, in parallel processes (Triton's cache then serves the timed run).
``--json DIR``: the rows are also written as JSON to ``DIR/block_step_bench.json`` (``--split``:
``DIR/block_step_split_bench.json``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields

import torch
from audiomamba.kernels import block_step, block_step_split
from audiomamba.kernels.block_step import DEFAULT_LAUNCH, StageLaunch
from audiomamba.kernels.block_step_split import DEFAULT_SPLIT_LAUNCH, SplitLaunch
from torch.profiler import ProfilerActivity, profile

from audiomamba.bench import bench_generate
from audiomamba.fused_step import FusedLaunch
from audiomamba.generation import _Stepper
from audiomamba.layers.mamba1 import Mamba1StepWeights
from audiomamba.models import build_model
from audiomamba.sampling import Sampler

STAGES = [(64, 4), (128, 8), (256, 16)]  # (D, R) of sc09_small's three stages
# (batch, launch settings) per sweep point
SWEEP = [
    (1, DEFAULT_LAUNCH), (1, StageLaunch(tile=4096)),
    (64, DEFAULT_LAUNCH), (64, StageLaunch(rows=4)), (64, StageLaunch(tile=4096)),
]


def _label(launch) -> str:
    """The settings of a launch dataclass that differ from its defaults, as JSON ("{}": the defaults)."""
    default = type(launch)()
    return json.dumps({f.name: getattr(launch, f.name) for f in fields(launch)
                       if getattr(launch, f.name) != getattr(default, f.name)})


def _stage(d_model: int, rank: int, batch: int, dtype: torch.dtype, blocks: int = 8):
    """Random stacked weights and states of a stage, an input row and an up-pool row."""
    gen = torch.Generator().manual_seed(d_model)
    e, n, w = 2 * d_model, 64, 4

    def g(*shape, scale=1.0, shift=0.0):
        return (torch.randn(blocks, *shape, generator=gen) * scale + shift).cuda()

    weights = {
        "norm_weight": g(d_model, scale=0.1, shift=1.0), "norm_bias": g(d_model, scale=0.1),
        "in_proj_weight": g(2 * e, d_model, scale=d_model**-0.5), "in_proj_bias": None,
        "conv_weight": g(e, w, scale=0.5), "conv_bias": g(e, scale=0.1),
        "x_proj_weight": g(rank + 2 * n, e, scale=e**-0.5), "dt_proj_weight": g(e, rank, scale=rank**-0.5),
        "dt_proj_bias": g(e, scale=1.0, shift=-4.0), "A_log": g(e, n, scale=0.5, shift=1.0), "D": g(e),
        "out_proj_weight": g(d_model, e, scale=e**-0.5), "out_proj_bias": None,
    }
    weights = Mamba1StepWeights(**{k: None if v is None else v.to(torch.float32 if k == "A_log" else dtype)
                                   for k, v in weights.items()})
    conv = torch.randn(blocks, batch, e, w - 1, device="cuda").to(dtype)
    ssm = torch.randn(blocks, batch, e, n, device="cuda")
    x = torch.randn(batch, d_model, device="cuda").to(dtype)
    up = torch.randn(batch, d_model, device="cuda").to(dtype)
    return weights, conv, ssm, x, up


def _time_graph(fn, reps: int = 300) -> float:
    """Mean µs of one replay of a graph of ``fn`` (after a side-stream warm-up)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


@torch.no_grad()
def bench_stage_step(sweep=SWEEP, dtypes=("float32", "bfloat16")) -> list[dict]:
    """µs per block of one stage launch (8 blocks) per stage, batch, dtype and launch settings (bfloat16: the
    default settings only)."""
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        points = sweep if dtype_name == "float32" else [p for p in sweep if p[1] == DEFAULT_LAUNCH]
        for d_model, rank in STAGES:
            for batch, launch in points:
                weights, conv, ssm, x, up = _stage(d_model, rank, batch, dtype)
                try:
                    args = (x, conv, ssm, weights)
                    us = _time_graph(lambda a=args, u=up, lc=launch: block_step.mamba1_stage_step_triton(
                        *a, up=u, launch=lc)) / 8
                except Exception as err:  # report it and keep going
                    print(f"  {dtype_name} D={d_model} B={batch} {_label(launch)}: {type(err).__name__}: "
                          f"{str(err)[:300]}")
                    us = float("nan")
                rows.append({"dtype": dtype_name, "D": d_model, "B": batch, "config": _label(launch),
                             "us_per_block": us})
    print(f"{'dtype':>9} {'D':>4} {'B':>3} {'config':>24} {'us/block':>9}")
    for r in rows:
        print(f"{r['dtype']:>9} {r['D']:>4} {r['B']:>3} {r['config']:>24} {r['us_per_block']:>9.2f}")
    return rows


def _warm(job: tuple) -> str:
    """Compile (by running once) one stage configuration or one generation set-up; in a worker process."""
    try:
        _run_once(job)
    except Exception as err:  # reported; the timed run will report it again
        return f"{job}: {type(err).__name__}: {str(err)[:300]}"
    return str(job)


def _run_once(job: tuple) -> None:
    """("stage", D, R, batch, dtype, StageLaunch), ("split", D, R, batch, SplitLaunch) or ("gen", dtype, batch,
    FusedLaunch or None)."""
    if job[0] == "stage":
        _, d_model, rank, batch, dtype_name, launch = job
        weights, conv, ssm, x, up = _stage(d_model, rank, batch, getattr(torch, dtype_name))
        block_step.mamba1_stage_step_triton(x, conv, ssm, weights, up=up, launch=launch)
    elif job[0] == "split":
        _, d_model, rank, batch, launch = job
        weights, conv, ssm, x, up = _stage(d_model, rank, batch, torch.float32)
        block_step_split.mamba1_stage_step_split_triton(x, conv, ssm, weights, up=up, launch=launch)
    else:
        _, dtype_name, batch, launch = job
        model = build_model("sc09_small").cuda().to(getattr(torch, dtype_name)).eval()
        model.generate(batch, 64, seed=0, progress=False, launch=launch)
    torch.cuda.synchronize()


def _pool(jobs: list, workers: int = 8) -> None:
    """Run ``_warm`` over the jobs in ``workers`` spawned processes (Triton's on-disk cache keeps the kernels)."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        for done in ex.map(_warm, jobs):
            print("warm:", done, flush=True)


def warm(sweep=SWEEP, dtypes=("float32", "bfloat16"), workers: int = 8) -> None:
    """Compile every kernel of the benchmark in ``workers`` parallel processes (Triton's on-disk cache)."""
    jobs = [("gen", d, b, None) for d in dtypes for b in (1, 64)]
    for dtype_name in dtypes:
        for d_model, rank in STAGES:
            for batch, launch in (sweep if dtype_name == "float32" else [p for p in sweep if p[1] == DEFAULT_LAUNCH]):
                jobs.append(("stage", d_model, rank, batch, dtype_name, launch))
    _pool(jobs, workers)


def _stepper(batch: int, dtype_name: str = "float32", launch: FusedLaunch | None = None):
    """A captured generation stepper of ``sc09_small`` (untrained) with 4096 rows of noise and the fused step's
    launch settings ``launch``."""
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = build_model("sc09_small").cuda().to(dtype).eval()
    bb = model.backbone
    period = [bb.step_depth(i) for i in range(bb.pool_product)]
    token = torch.full((batch, 1, 1), model.config.first_token, dtype=torch.long, device="cuda")
    gen = torch.Generator(device="cuda")
    gen.manual_seed(0)
    stepper = _Stepper(model, model.init_state(batch, "cuda", dtype), token, 4096, Sampler(1.0), gen, False,
                       False, period, launch)  # 4096 rows of noise: the replays below stay inside them
    stepper.refill_noise()
    stepper.capture(sorted(set(period)))
    return stepper


@torch.no_grad()
def step_graph_times(batch: int, dtype_name: str = "float32", reps: int = 200,
                     launch: FusedLaunch | None = None) -> dict:
    """µs per replay of generation's step graphs (one per depth, and the period of 16 steps) for ``sc09_small``:
    the depth-0 graph is stage 0's launch alone on the fused path; deeper ones add the stages that run."""
    stepper = _stepper(batch, dtype_name, launch)
    times = {"fused": stepper.fused is not None}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for key, graph in stepper.graphs.items():
        n = reps if key != "period" else reps // 4
        stepper.pos.zero_()
        stepper.row_pos.zero_()
        graph.replay()
        start.record()
        for _ in range(n):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times[str(key)] = start.elapsed_time(end) * 1e3 / n
    return times


@torch.no_grad()
def profile_step_graphs(batch: int = 1, reps: int = 20, top: int = 8, launch: FusedLaunch | None = None) -> dict:
    """Per depth-1 and depth-2 step graph: the kernels (µs and launches per replay, from torch.profiler) and the
    span of one replay; printed, and returned as {depth: {"span_us", "kernels": [(name, us, calls)]}}."""
    stepper = _stepper(batch, launch=launch)
    out = {}
    for key in (1, 2):
        graph = stepper.graphs[key]
        stepper.pos.zero_()
        stepper.row_pos.zero_()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                graph.replay()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        per = {}
        for e in kernels:
            us, calls = per.get(e.name, (0.0, 0))
            per[e.name] = (us + e.device_time_total / reps, calls + 1 / reps) if hasattr(e, "device_time_total") \
                else (us + e.cuda_time_total / reps, calls + 1 / reps)
        ranked = sorted(per.items(), key=lambda kv: -kv[1][0])
        busy = sum(v[0] for v in per.values())
        launches = sum(v[1] for v in per.values())
        print(f"== depth {key}, batch {batch}: {launches:.0f} kernels per replay, {busy:.1f} µs busy")
        for name, (us, calls) in ranked[:top]:
            print(f"   {us:8.1f} µs {calls:5.1f}x  {name[:90]}")
        out[key] = {"busy_us": busy, "launches": launches, "kernels": [(n, v[0], v[1]) for n, v in ranked]}
    return out


@torch.no_grad()
def check_generation(batch: int = 2, steps: int = 48, dtype_name: str = "float32",
                     launch: FusedLaunch | None = None) -> float:
    """max relative error of the logits that generation sampled from against the teacher-forced forward with the
    reference ops (generation runs the fused path with the launch settings ``launch``)."""
    torch.manual_seed(0)
    model = build_model("sc09_small").cuda().to(getattr(torch, dtype_name)).eval()
    out = model.generate(batch, steps, seed=0, progress=False, return_logits=True, launch=launch)
    inputs = torch.cat([torch.full((batch, 1), model.config.first_token, device="cuda"), out.tokens[:, :-1]], 1)
    previous = os.environ.get("AUDIOMAMBA_BACKEND")
    os.environ["AUDIOMAMBA_BACKEND"] = "reference"
    try:
        forced, _ = model(inputs)
    finally:
        if previous is None:
            del os.environ["AUDIOMAMBA_BACKEND"]
        else:
            os.environ["AUDIOMAMBA_BACKEND"] = previous
    return ((out.logits - forced).abs().max() / forced.abs().max()).item()


def mini() -> None:
    """The short run: generation at batch 1 and 64 (float32), the step graphs' times, a correctness check."""
    gen = bench_generate(dtype="float32", num_steps=4000)
    graphs = {b: step_graph_times(b) for b in (1, 64)}
    err = check_generation()
    print("\n== step graphs (µs per replay; depth 0 = one stage-0 launch on the fused path)")
    for b, t in graphs.items():
        print(f"B={b:<3} " + "  ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in t.items()))
    print(f"== check: logits vs teacher-forced forward (reference ops), max rel err {err:.2e}")
    print("== generate sc09_small float32, steady samples/s: "
          + "   ".join(f"B={r['batch']}: {r['steady_samples_per_s']:,.0f}" for r in gen))


# split stage step (``block_step_split``): (batch, launch settings) swept per wide stage (the defaults follow the
# batch), and generation variants (name: the fused step's launch settings)
SPLIT_SWEEP = [
    (1, DEFAULT_SPLIT_LAUNCH), (64, DEFAULT_SPLIT_LAUNCH), (64, SplitLaunch(rows=1, once=False)),
    (64, SplitLaunch(rows=1, once=True)), (64, SplitLaunch(rows=2, once=True)), (64, SplitLaunch(rows=8, once=True)),
    (64, SplitLaunch(rows=4, once=False)), (64, SplitLaunch(rows=4, once=True, num_warps=4)),
    (64, SplitLaunch(rows=4, once=True, tile=2048)), (64, SplitLaunch(rows=8, once=True, tile=8192, num_warps=4)),
]
GEN_VARIANTS = {"split": FusedLaunch(), "split, 1 row per program": FusedLaunch(split=SplitLaunch(rows=1, once=False)),
                "split, 2 rows, once": FusedLaunch(split=SplitLaunch(rows=2, once=True))}


def warm_split(workers: int = 12) -> None:
    """Compile every kernel of ``split_main`` in parallel processes."""
    jobs = [("split", d, r, b, lc) for d, r in STAGES[1:] for b, lc in SPLIT_SWEEP]
    gen = [("gen", "float32", b, lc) for b in (1, 64) for lc in GEN_VARIANTS.values()]
    _pool(jobs + gen + [("gen", "bfloat16", b, None) for b in (1, 64)], workers)


def _split_error(x, conv, ssm, weights, up, ws, launch: SplitLaunch) -> float:
    """Max relative error of one split stage step (output and SSM states) against the one-program kernel, both from
    copies of the same states."""
    conv_a, ssm_a, conv_b, ssm_b = conv.clone(), ssm.clone(), conv.clone(), ssm.clone()
    want = block_step.mamba1_stage_step_triton(x, conv_a, ssm_a, weights, up=up)
    got = block_step_split.mamba1_stage_step_split_triton(x, conv_b, ssm_b, weights, up=up, workspace=ws,
                                                          launch=launch)
    if ws["count"].any():
        return float("inf")  # the arrival counters must come back to zero
    return max(((g - w).abs().max() / w.abs().max()).item() for g, w in ((got, want), (ssm_b, ssm_a), (conv_b, conv_a)))


@torch.no_grad()
def bench_split_stage(sweep=SPLIT_SWEEP) -> list[dict]:
    """µs per stage launch(es) (8 blocks, up-pool add, residual) of the wide stages, float32, per batch of
    ``sweep`` ((batch, SplitLaunch) points): the one-program-per-row kernel and the split kernels; each split point
    first checked against the one-program kernel (max relative error of the output and the SSM states after one
    step from the same states)."""
    rows = []
    for d_model, rank in STAGES[1:]:
        for batch in sorted({b for b, _ in sweep}):
            weights, conv, ssm, x, up = _stage(d_model, rank, batch, torch.float32)
            args = (x, conv, ssm, weights)
            us = _time_graph(lambda a=args, u=up: block_step.mamba1_stage_step_triton(*a, up=u))
            rows.append({"D": d_model, "B": batch, "kernel": "one program per row", "config": "{}", "us": us})
            for launch in [lc for b, lc in sweep if b == batch]:
                slices = block_step_split.split_config(d_model, 2 * d_model, 64, rank, 4, batch, launch)["S"]
                err_out = float("nan")
                try:
                    ws = block_step_split.split_workspace(batch, d_model, 2 * d_model, 64, rank, 4, "cuda",
                                                          torch.float32, launch)
                    err_out = _split_error(x, conv, ssm, weights, up, ws, launch)
                    us = _time_graph(lambda a=args, u=up, w=ws, lc=launch:
                                     block_step_split.mamba1_stage_step_split_triton(*a, up=u, workspace=w, launch=lc))
                except Exception as err:  # report it and keep going
                    print(f"  split D={d_model} B={batch} {_label(launch)}: {type(err).__name__}: {str(err)[:300]}")
                    us = float("nan")
                rows.append({"D": d_model, "B": batch, "kernel": f"split S={slices}", "config": _label(launch),
                             "us": us, "err": err_out})
    return rows


def split_main(warm_first: bool = True) -> None:
    """``--split``: compile in parallel (unless ``--no-warm``), then the wide-stage sweep, generation per variant
    (step graphs, samples/s, logits vs teacher forcing), the kernels of the deeper step graphs; a summary last."""
    if warm_first:
        warm_split()
    stage_rows = bench_split_stage()
    gen = {}
    for name, launch in GEN_VARIANTS.items():
        try:
            gen[name] = {
                "graphs": {b: step_graph_times(b, launch=launch) for b in (1, 64)},
                "generate": bench_generate(dtype="float32", num_steps=4000, launch=launch),
                "check": max(check_generation(launch=launch), check_generation(batch=64, launch=launch)),
            }
            if name == "split":
                gen[name]["profile"] = profile_step_graphs(64, launch=launch)
        except Exception as err:
            print(f"generation {name} failed: {type(err).__name__}: {str(err)[:300]}")
    try:
        gen["split, bfloat16"] = {"graphs": {}, "generate": bench_generate(dtype="bfloat16", num_steps=4000),
                                  "check": check_generation(batch=64, dtype_name="bfloat16")}
    except Exception as err:
        print(f"generation bfloat16 failed: {type(err).__name__}: {str(err)[:300]}")
    out = _json_dir()
    if out:
        with open(os.path.join(out, "block_step_split_bench.json"), "w") as f:
            json.dump({"stage": stage_rows, "generate": gen}, f, indent=1, default=str)
    print("\n== wide stage step, float32, µs per stage (8 blocks)")
    for r in stage_rows:
        err = f"  err {r['err']:.1e}" if "err" in r else ""
        print(f"D={r['D']:<4} B={r['B']:<3} {r['kernel']:>20} {r['config']:>56} {r['us']:8.1f}{err}")
    print("== generation sc09_small float32 (targets B=1: 16,000; B=64: 1,000,000 samples/s)")
    for name, res in gen.items():
        for b, t in res["graphs"].items():
            print(f"{name:>26} B={b:<3} graphs µs: " + "  ".join(
                f"{k}: {v:.1f}" for k, v in t.items() if isinstance(v, float)))
        print(f"{name:>26} samples/s: " + "   ".join(
            f"B={r['batch']}: {r['steady_samples_per_s']:,.0f}" for r in res["generate"])
            + f"   logits vs teacher forcing: {res['check']:.1e}")


def _json_dir() -> str | None:
    """The folder given with ``--json DIR``, or None."""
    if "--json" not in sys.argv:
        return None
    return sys.argv[sys.argv.index("--json") + 1]


def main() -> None:
    if "--mini" in sys.argv:
        mini()
        return
    if "--split" in sys.argv:
        split_main(warm_first="--no-warm" not in sys.argv)
        return
    sweep = [p for p in SWEEP if p[1] == DEFAULT_LAUNCH] if "--quick" in sys.argv else SWEEP
    if "--warm" in sys.argv:
        warm(sweep)
        return
    kernel_rows = bench_stage_step(sweep)
    gen = {}
    for dtype in ("float32", "bfloat16"):
        try:
            gen[dtype] = bench_generate(dtype=dtype, num_steps=None if dtype == "float32" else 4000)
        except Exception as err:
            print(f"bench_generate {dtype} failed: {type(err).__name__}: {err}")
    out = _json_dir()
    if out:
        with open(os.path.join(out, "block_step_bench.json"), "w") as f:
            json.dump({"stage": kernel_rows, "generate": gen}, f, indent=1)
    print("\n== summary: stage launch, µs per block (8 blocks per launch)")
    for r in kernel_rows:
        print(f"{r['dtype']:>9} D={r['D']:<4} B={r['B']:<3} {r['config']:>24} {r['us_per_block']:7.2f}")
    print("== summary: generate sc09_small, steady samples/s (target B=1: 16,000; B=64: 1,000,000)")
    for name, rows in gen.items():
        print(f"{name:>9}: " + "   ".join(f"B={r['batch']}: {r['steady_samples_per_s']:,.0f}" for r in rows))


if __name__ == "__main__":
    main()
