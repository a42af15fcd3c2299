"""``audiomamba bench stream``: real-time factor and per-chunk latency of ``Stream.push``."""

from __future__ import annotations

import os
import statistics
import time

import torch

from audiomamba.models import build_model

from .timing import sync

STREAM_TARGETS = {"rtf": 0.05, "ms_per_chunk": 2.0}  # one CPU thread, 20 ms chunks at 16 kHz


def bench_stream(
    preset: str = "classifier_small", sample_rate: int = 16_000, chunk_ms: float = 20.0, seconds: float = 10.0,
    threads: int = 1, batch_size: int = 1, device: str = "cpu", seed: int = 0, compile: bool = False,
    weights: str = "float32",
) -> dict:
    """Real-time factor and per-chunk latency of ``Stream.push`` (a classifier's running prediction).

    RTF = compute time / audio duration. Latency percentiles are over the chunks of ``seconds`` of audio,
    after 10 warm-up chunks. Wall-clock time is what the targets judge; the CPU time of the pushing thread is
    printed beside it (on a machine shared with other processes, wall - cpu is time spent waiting for a core).
    ``compile``: measure ``model.stream(batch_size, compile=True)``; the compile happens in the warm-up chunks,
    is reported as ``compile_s`` and is not part of the RTF or the latencies. ``weights``: "float32" (the model,
    exact) or "bfloat16" (``model.stream(..., weights="bfloat16")``, an approximation): measured as its own row.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = build_model(preset).to(device).eval()
        chunk = int(round(sample_rate * chunk_ms / 1000))
        n_chunks = max(1, int(seconds * sample_rate) // chunk)
        audio = torch.randn(batch_size, (n_chunks + 10) * chunk, device=device) * 0.1
        stream = model.stream(batch_size, compile=compile, weights=weights)
        for i in range(10):
            stream.push(audio[:, i * chunk : (i + 1) * chunk])
        lat, cpu = [], []
        for i in range(10, n_chunks + 10):
            x = audio[:, i * chunk : (i + 1) * chunk]
            start, start_cpu = time.perf_counter(), time.thread_time()
            stream.push(x)
            if device != "cpu":
                sync(device)
            lat.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
    finally:
        torch.set_num_threads(previous_threads)
    ms, cpu_ms = sorted(x * 1e3 for x in lat), sorted(x * 1e3 for x in cpu)
    audio_s = n_chunks * chunk / sample_rate
    result = {
        "preset": preset, "params": model.num_parameters(), "chunk_samples": chunk, "chunks": n_chunks,
        "threads": threads, "batch": batch_size, "rtf": sum(lat) / audio_s,
        "ms_median": statistics.median(ms), "ms_p90": ms[int(0.9 * (len(ms) - 1))], "ms_max": ms[-1],
        "cpu_rtf": sum(cpu) / audio_s, "cpu_ms_median": statistics.median(cpu_ms),
        "cpu_ms_p90": cpu_ms[int(0.9 * (len(cpu_ms) - 1))], "cpu_ms_max": cpu_ms[-1],
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "mode": ("compiled" if compile else "eager") + ("" if weights == "float32" else f"+{weights}"),
        "weights": weights, "compile_s": stream.compile_seconds if compile else None,
    }
    graphs = stream.compiled_patterns
    print(f"stream: {preset} ({result['params'] / 1e6:.2f}M params), {chunk_ms:g} ms chunks ({chunk} samples at "
          f"{sample_rate} Hz), batch {batch_size}, {threads} thread(s), {device}, {n_chunks} chunks")
    if compile:
        print(f"mode: compiled (torch.compile, inductor C++): {graphs} graph(s) compiled in the warm-up in "
              f"{result['compile_s']:.1f} s (not in the RTF)")
    else:
        print("mode: eager (audiomamba bench stream --compile measures the torch.compile'd push)")
    if weights != "float32":
        print(f"weights: {weights} (opt-in low-precision copy: an approximation of the float32 model's outputs)")
    if result["load_average"] is not None:
        print(f"load average {result['load_average']:.2f} on {os.cpu_count()} CPUs; targets judge wall-clock time")
    print(f"{'metric [' + result['mode'] + ']':<18} {'wall':>9} {'cpu':>9} {'target':>8}  ok")
    rows = [("real-time factor", "rtf", STREAM_TARGETS["rtf"]),
            ("ms/chunk median", "ms_median", STREAM_TARGETS["ms_per_chunk"]),
            ("ms/chunk p90", "ms_p90", STREAM_TARGETS["ms_per_chunk"]),
            ("ms/chunk max", "ms_max", None)]
    for name, key, target in rows:
        value = result[key]
        ok = "-" if target is None else ("yes" if value <= target else "NO")
        shown = "" if target is None else f"{target:g}"
        print(f"{name:<18} {value:>9.3f} {result['cpu_' + key]:>9.3f} {shown:>8}  {ok}")
    return result
