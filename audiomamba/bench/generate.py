"""``audiomamba bench generate``: the sampling rate of ``AudioLM.generate``."""

from __future__ import annotations

import time

import torch

from audiomamba.models import build_model

from .timing import device_name, sync

GENERATE_TARGETS = {1: 16_000.0, 64: 1_000_000.0}  # aggregate samples/s on the H200 (16 kHz real time at B=1)


def bench_generate(
    preset: str = "sc09_small", batch_sizes: tuple[int, ...] = (1, 64), num_steps: int | None = None,
    device: str | None = None, dtype: str = "float32", cuda_graphs: bool | None = None, seed: int = 0,
    launch=None,
) -> list[dict]:
    """Samples per second of ``AudioLM.generate`` (16 kHz 8-bit mu-law: V = 256), untrained weights.

    Two runs per batch size, of n and 2n steps: ``steady`` = B·n / (t(2n) - t(n)) is the stepping rate without
    the one-off set-up of a call (state allocation, CUDA-graph capture), ``end_to_end`` = B·2n / t(2n).

    Args:
        preset: model preset. batch_sizes: B values. num_steps: n (default 16000 on CUDA, 256 on CPU).
        device: default CUDA when available. dtype: model dtype. cuda_graphs: default on for CUDA.
        launch: the fused step's launch settings (``audiomamba.fused_step.FusedLaunch``; None: its defaults), for
            sweeps over them.
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    n = num_steps if num_steps is not None else (16_000 if dev.type == "cuda" else 256)
    torch.manual_seed(seed)
    model = build_model(preset).to(dev, getattr(torch, dtype)).eval()
    rows = []
    for batch in batch_sizes:
        model.generate(batch, min(n, 64), seed=seed, progress=False, cuda_graphs=cuda_graphs,
                       launch=launch)  # compile, warm up
        times = {}
        for steps in (n, 2 * n):
            sync(dev)
            start = time.perf_counter()
            model.generate(batch, steps, seed=seed, progress=False, cuda_graphs=cuda_graphs, launch=launch)
            sync(dev)
            times[steps] = time.perf_counter() - start
        steady = batch * n / max(times[2 * n] - times[n], 1e-9)
        rows.append({
            "preset": preset, "device": str(dev), "dtype": dtype, "batch": batch, "steps": 2 * n,
            "steady_samples_per_s": steady, "end_to_end_samples_per_s": batch * 2 * n / times[2 * n],
            "target": GENERATE_TARGETS.get(batch) if dev.type == "cuda" else None,
        })
    name = device_name(dev)
    graphs = cuda_graphs if cuda_graphs is not None else dev.type == "cuda"
    print(f"generate: {preset} ({model.num_parameters() / 1e6:.1f}M params), {name}, {dtype}, "
          f"CUDA graphs {'on' if graphs else 'off'}")
    print(f"{'batch':>5} {'steps':>7} {'steady samples/s':>17} {'end-to-end':>12} {'target':>10}  ok")
    for r in rows:
        target = r["target"]
        ok = "-" if target is None else ("yes" if r["steady_samples_per_s"] >= target else "NO")
        print(f"{r['batch']:>5} {r['steps']:>7} {r['steady_samples_per_s']:>17,.0f} "
              f"{r['end_to_end_samples_per_s']:>12,.0f} {'' if target is None else f'{target:,.0f}':>10}  {ok}")
    return rows
