"""Timing of the fused Mamba-1 block step (``python -m audiomamba.kernels.block_step_bench``, CUDA only).

For each stage of ``sc09_small`` (D = 64, 128, 256; E = 2D; N = 64; W = 4) and batch 1 and 64: one CUDA graph
of 8 consecutive residual blocks (a stage, each with its own weights and state) stepped once, replayed; the time
per block of (a) the fused kernel (``ResidualBlock.step_``) with a small sweep of tile size x warps, (b) the
unfused eager block (``ResidualBlock.forward`` on one sample: ~15 kernels) for comparison. Then
``bench_generate`` with the fused step (float32 and bfloat16) and, for reference, with it switched off.
"""

from __future__ import annotations

import torch
from audiomamba.kernels import block_step

STAGES = [(64, 4), (128, 8), (256, 16)]  # (D, R) of sc09_small's three stages


def _stage(d_model: int, batch: int, dtype: torch.dtype, blocks: int = 8):
    from audiomamba.layers.block import ResidualBlock

    torch.manual_seed(0)
    mods = [ResidualBlock(d_model, "mamba1", {"d_state": 64, "d_conv": 4, "expand": 2}).cuda().to(dtype).eval()
            for _ in range(blocks)]
    states = [m.init_state(batch) for m in mods]
    x = torch.randn(batch, 1, d_model, device="cuda", dtype=dtype)
    return mods, states, x


def _time_graph(fn, reps: int = 200) -> float:
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
    for _ in range(10):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def _fused(mods, states, x):
    h = x
    for m, s in zip(mods, states):
        h = m.step_(h, s)
    return h


def _unfused(mods, states, x):
    h = x
    for m, s in zip(mods, states):
        h, _ = m(h, s)
    return h


@torch.no_grad()
def bench_block_step(batches=(1, 64), dtypes=("float32", "bfloat16"),
                     sweep=((8192, 16), (16384, 16), (4096, 8), (8192, 32))) -> list[dict]:
    """µs per block step of the fused kernel per stage, batch, dtype and (tile, warps); then of the unfused
    block (its graph captures last: a capture that fails there leaves the fused figures standing)."""
    rows = []
    for what in ("fused", "unfused"):
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            configs = (sweep if dtype_name == "float32" else sweep[:1]) if what == "fused" else [("-", "-")]
            for d_model, _ in STAGES:
                for batch in batches:
                    mods, states, x = _stage(d_model, batch, dtype)
                    for tile, warps in configs:
                        if what == "fused":
                            block_step.CONFIG_OVERRIDES.update(tile=tile, num_warps=warps)
                        try:
                            fn = _fused if what == "fused" else _unfused
                            us = _time_graph(lambda fn=fn, m=mods, s=states, x=x: fn(m, s, x)) / len(mods)
                        except Exception as err:  # report it and keep going
                            print(f"  {what} {dtype_name} D={d_model} B={batch} tile={tile} warps={warps}: "
                                  f"{type(err).__name__}: {str(err)[:200]}")
                            us = float("nan")
                        finally:
                            block_step.CONFIG_OVERRIDES.clear()
                        rows.append({"what": what, "dtype": dtype_name, "D": d_model, "B": batch, "tile": tile,
                                     "warps": warps, "us_per_block": us})
    print(f"{'what':>8} {'dtype':>9} {'D':>4} {'B':>3} {'tile':>5} {'warps':>5} {'us/block':>9}")
    for r in rows:
        print(f"{r['what']:>8} {r['dtype']:>9} {r['D']:>4} {r['B']:>3} {r['tile']:>5} {r['warps']:>5} "
              f"{r['us_per_block']:>9.2f}")
    return rows


def main() -> None:
    from audiomamba.bench import bench_generate
    from audiomamba.layers.block import ResidualBlock

    kernel_rows = bench_block_step()
    gen = {}
    for dtype in ("float32", "bfloat16"):
        try:
            gen[f"fused {dtype}"] = bench_generate(dtype=dtype, num_steps=None if dtype == "float32" else 4000)
        except Exception as err:
            print(f"bench_generate {dtype} failed: {type(err).__name__}: {err}")
    fused_step = ResidualBlock.fused_step
    ResidualBlock.fused_step = property(lambda self: False)  # the unfused graph, for comparison
    try:
        gen["unfused float32"] = bench_generate(num_steps=2000)
    except Exception as err:
        print(f"unfused bench_generate failed: {type(err).__name__}: {err}")
    finally:
        ResidualBlock.fused_step = fused_step
    best = {}
    for r in kernel_rows:
        if r["what"] == "fused" and r["us_per_block"] == r["us_per_block"]:
            key = (r["dtype"], r["D"], r["B"])
            if key not in best or r["us_per_block"] < best[key]["us_per_block"]:
                best[key] = r
    print("\n== summary: fused block step (best config) vs unfused, µs per block step")
    for r in kernel_rows:
        if r["what"] == "unfused":
            b = best.get((r["dtype"], r["D"], r["B"]))
            if b is not None:
                print(f"{r['dtype']:>9} D={r['D']:<4} B={r['B']:<3} fused {b['us_per_block']:7.2f} "
                      f"(tile {b['tile']}, {b['warps']} warps)   unfused {r['us_per_block']:7.2f}")
    print("== summary: generate sc09_small, steady samples/s (target B=1: 16,000; B=64: 1,000,000)")
    for name, rows in gen.items():
        print(f"{name:>16}: " + "   ".join(f"B={r['batch']}: {r['steady_samples_per_s']:,.0f}" for r in rows))


if __name__ == "__main__":
    main()
