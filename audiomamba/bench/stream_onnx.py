"""``audiomamba bench stream --backend onnxruntime``: the exported streaming step in ONNX Runtime beside the
PyTorch stream, compiled and eager, on the same audio, on the CPU.

The preset (a model preset with a 16 kHz waveform contract, or an experiment preset with its data's contract;
untrained weights) is exported with ``audiomamba.export.export_stream`` for the benchmark's chunk length into a
temporary directory and pushed through ``OnnxStream``; ``model.stream(1, compile=True)`` and ``model.stream(1)``
get the same chunks (random audio, or random tokens for a token model). The pushes of each chunk alternate, so
that all see the same load of a shared machine. The outputs are compared over the whole run (they compute the
same function, up to float rounding). The target is against the compiled stream; the eager row shows what
compiling gains.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from audiomamba.serving.bench import bench_model

TARGET_RATIO = 0.5  # ONNX Runtime's time per chunk at most half the compiled PyTorch stream's


def _summary(lat: list[float], cpu: list[float], audio_s: float) -> dict:
    ms, cpu_ms = sorted(x * 1e3 for x in lat), sorted(x * 1e3 for x in cpu)
    return {"rtf": sum(lat) / audio_s, "ms_median": statistics.median(ms), "ms_p90": ms[int(0.9 * (len(ms) - 1))],
            "ms_max": ms[-1], "cpu_ms_median": statistics.median(cpu_ms)}


def bench_stream_onnx(preset: str = "classifier_small", chunk_ms: float = 20.0, seconds: float = 10.0,
                      threads: int = 1, seed: int = 0) -> dict:
    """Real-time factor and per-chunk latency of ``OnnxStream.push`` and of ``Stream.push``, compiled and eager
    (one stream, ``threads`` threads each), at the preset's sample rate, 10 warm-up chunks (the compile) left out.
    Returns the rows, the export and compile times and the largest output difference relative to the largest
    output."""
    import onnxruntime

    from audiomamba.export import OnnxStream, export_stream

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, contract = bench_model(None, preset)
        sample_rate = contract.sample_rate
        chunk = int(round(sample_rate * chunk_ms / 1000))
        n_chunks = max(1, int(seconds * sample_rate) // chunk)
        torch.manual_seed(seed)
        if contract.input == "tokens":
            audio = torch.randint(0, model.config.vocab_size, (1, (n_chunks + 10) * chunk))
        else:
            audio = torch.randn(1, (n_chunks + 10) * chunk) * 0.1
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            export_stream(model, directory, "onnx", chunk, sample_graph=False)
            export_s = time.perf_counter() - start
            ort_stream = OnnxStream(directory, threads=threads)
        torch_stream = model.stream(1, compile=True)
        timings = {"torch": ([], []), "eager": ([], []), "onnxruntime": ([], [])}
        pushes = {"torch": torch_stream.push, "eager": model.stream(1).push, "onnxruntime": ort_stream.push}
        err, scale = 0.0, 0.0
        for i in range(n_chunks + 10):
            x = audio[:, i * chunk : (i + 1) * chunk]
            outs = {}
            for name, push in pushes.items():
                start, start_cpu = time.perf_counter(), time.thread_time()
                outs[name] = push(x)
                if i >= 10:
                    timings[name][0].append(time.perf_counter() - start)
                    timings[name][1].append(time.thread_time() - start_cpu)
            ref = outs["torch"].numpy()
            err = max(err, float(np.abs(outs["onnxruntime"] - ref).max()),
                      float(np.abs(outs["eager"].numpy() - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
    finally:
        torch.set_num_threads(previous_threads)
    audio_s = n_chunks * chunk / sample_rate
    rows = {name: _summary(lat, cpu, audio_s) for name, (lat, cpu) in timings.items()}
    ratio = rows["onnxruntime"]["ms_median"] / rows["torch"]["ms_median"]
    cpu_ratio = rows["onnxruntime"]["cpu_ms_median"] / rows["torch"]["cpu_ms_median"]
    result = {"preset": preset, "params": model.num_parameters(), "chunk_samples": chunk, "chunks": n_chunks,
              "threads": threads, "rows": rows, "ratio": ratio, "cpu_ratio": cpu_ratio, "export_s": export_s,
              "compile_s": torch_stream.compile_seconds, "max_rel_diff": err / scale if scale else err,
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print(f"stream: {preset} ({result['params'] / 1e6:.2f}M params), {chunk_ms:g} ms chunks ({chunk} samples at "
          f"{sample_rate} Hz), batch 1, {threads} thread(s), CPU, {n_chunks} chunks; export {export_s:.0f} s, "
          f"compile {result['compile_s']:.0f} s (not in the RTF)")
    if result["load_average"] is not None:
        print(f"load average {result['load_average']:.2f} on {os.cpu_count()} CPUs (the backends alternate chunk by "
              "chunk)")
    print(f"{'backend':<30} {'RTF':>7} {'ms median':>10} {'ms p90':>8} {'ms max':>8} {'/ torch':>8} {'cpu ms':>8} "
          f"{'/ torch':>8}")
    labels = {"torch": f"torch {torch.__version__} (compiled)", "eager": f"torch {torch.__version__} (eager)",
              "onnxruntime": f"onnxruntime {onnxruntime.__version__}"}
    base = rows["torch"]
    for name, r in rows.items():
        print(f"{labels[name]:<30} {r['rtf']:>7.4f} {r['ms_median']:>10.3f} {r['ms_p90']:>8.3f} {r['ms_max']:>8.3f} "
              f"{r['ms_median'] / base['ms_median']:>8.2f} {r['cpu_ms_median']:>8.3f} "
              f"{r['cpu_ms_median'] / base['cpu_ms_median']:>8.2f}")
    eager_ratio = rows["onnxruntime"]["cpu_ms_median"] / rows["eager"]["cpu_ms_median"]
    result["eager_cpu_ratio"] = eager_ratio
    print(f"onnxruntime / compiled torch per chunk (median wall): {ratio:.2f}, CPU time of the pushing thread: "
          f"{cpu_ratio:.2f} (target <= {TARGET_RATIO:g}: {'yes' if ratio <= TARGET_RATIO else 'NO'}); against the "
          f"eager stream (CPU time): {eager_ratio:.2f}; outputs differ by at most {result['max_rel_diff']:.1e} of the "
          "largest")
    return result
