"""``audiomamba bench serve``: how many real-time streams one server sustains.

End to end: the server runs as its own process (``audiomamba serve``) on loopback; N clients (spread over
``client_processes`` processes) each send synthetic audio at real-time pace, one frame per chunk period, their
start times spread over one period; for every result the client takes the time from sending the frame that
completed the chunk to receiving its result. A load counts as sustained when every frame got its result and the
p99 latency is within ``latency_ms``.

Engine only (no network): N streams pushed as one batch per tick, timed over ``ticks`` ticks; beside it the same
chunks pushed one stream at a time, and the ratio of the two throughputs.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .engine import Engine, chunk_samples
from .metrics import percentile


def bench_model(model_dir: str | None = None, preset: str = "classifier_small", device: str = "cpu"):
    """(model, contract) to serve: a saved model (its audio contract), or a preset with random weights — a model
    preset (a 16 kHz waveform contract) or an experiment preset (its data section's contract)."""
    from ..contract import AudioContract
    from ..models import build_model, load_model

    if model_dir is not None:
        model = load_model(model_dir, device=device).eval()
        if model.audio is None:
            raise ValueError(f"{model_dir}: the model has no audio contract (sample rate, labels)")
        return model, model.audio
    torch.manual_seed(0)
    from ..config import config_names

    if preset in config_names("experiment"):
        from ..config import load_experiment_config
        from ..data.synthetic import CLASSES

        cfg = load_experiment_config(preset)
        model = build_model(cfg.model)
        labels = CLASSES if cfg.data.source == "synthetic" else [str(i) for i in range(cfg.model.n_classes)]
        contract = AudioContract.from_experiment(cfg, labels=labels)
    else:
        model = build_model(preset)
        labels = [str(i) for i in range(model.config.n_classes)] if model.config.kind == "classifier" else []
        contract = AudioContract(16_000, "waveform", labels=labels) if model.config.input == "waveform" else None
        if contract is None:
            raise ValueError(f"--preset {preset}: a token model preset has no audio contract; use an experiment "
                             "preset or a saved model")
    return model.to(device).eval(), contract


def _synthetic_audio(n: int, length: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """(n, length) float32 clips of the synthetic sound classes."""
    from ..data.synthetic import CLASSES, synthesize

    rng = np.random.default_rng(seed)
    return np.stack([synthesize(CLASSES[i % len(CLASSES)], length, sample_rate, rng) for i in range(n)])


# ----------------------------------------------------------------------------------------------- engine only


def bench_engine(model, contract, streams: int, chunk_ms: float = 20.0, ticks: int = 50, compile: bool = False,
                 single: int = 20) -> dict:
    """Time ``ticks`` pushes of ``streams`` streams at once, and ``single`` pushes of one stream."""

    rate = contract.sample_rate
    chunk = chunk_samples(model, rate, chunk_ms)
    engine = Engine(model, streams, chunk, compile=compile)
    slots = [engine.open() for _ in range(streams)]
    distinct = 8  # chunks of audio cycled through
    audio = _synthetic_audio(min(streams, 64), distinct * chunk, rate)
    audio = torch.from_numpy(np.resize(audio, (streams, distinct * chunk)))
    if engine.tokens:
        audio = contract.tokenizer.build().encode(audio)
    xs = [audio[:, i * chunk : (i + 1) * chunk].contiguous() for i in range(distinct)]
    start = time.perf_counter()
    engine.warmup([streams, 1])
    warm_s = time.perf_counter() - start
    for i in range(3):
        engine.push(slots, xs[i])
    times = []
    for i in range(ticks):
        t = time.perf_counter()
        engine.push(slots, xs[i % distinct])
        times.append(time.perf_counter() - t)
    one = []
    for i in range(single + 3):
        t = time.perf_counter()
        engine.push(slots[i % streams : i % streams + 1], xs[i % distinct][i % streams : i % streams + 1])
        if i >= 3:
            one.append(time.perf_counter() - t)
    tick, one_ms = float(np.median(times)) * 1e3, float(np.median(one)) * 1e3
    chunk_ms = 1000 * chunk / rate
    return {"streams": streams, "chunk": chunk, "chunk_ms": chunk_ms, "tick_p50_ms": tick,
            "tick_p99_ms": percentile([t * 1e3 for t in times], 99), "one_stream_ms": one_ms,
            "ratio": streams * one_ms / tick, "real_time_streams": streams * chunk_ms / tick,
            "real_time": percentile([t * 1e3 for t in times], 99) <= chunk_ms, "warmup_s": warm_s,
            "device": str(engine.device), "mode": _mode(engine)}


def _mode(engine) -> str:
    if engine.cuda_graphs:
        return "CUDA graphs"
    return "compiled" if engine.compile else "eager"


# ----------------------------------------------------------------------------------------------- end to end


async def _client(url: str, frames: np.ndarray, chunk_s: float, t0: float, latencies: list, missing: list) -> None:
    """One real-time client: frames (F, chunk) int16 sent at t0 + k * chunk_s; latency per result."""
    import aiohttp

    sent = [0.0] * len(frames)
    chunk = frames.shape[1]
    got = 0
    async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": int(round(chunk / chunk_s)),
                                      "format": "s16le"}))
        started = json.loads((await ws.receive(timeout=30)).data)
        if started.get("type") != "started":
            raise RuntimeError(f"bench client refused: {started}")

        async def receive() -> None:
            nonlocal got
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                data = json.loads(msg.data)
                if data["type"] == "result":
                    k = data["position"] // chunk - 1
                    latencies.append(time.perf_counter() - sent[k])
                    got += 1
                elif data["type"] in ("final", "error"):
                    return

        receiver = asyncio.ensure_future(receive())
        for k, frame in enumerate(frames):
            delay = t0 + k * chunk_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[k] = time.perf_counter()
            await ws.send_bytes(frame.tobytes())
        await ws.send_str(json.dumps({"type": "end"}))
        try:
            await asyncio.wait_for(receiver, timeout=30)
        except asyncio.TimeoutError:
            receiver.cancel()
    missing.append(len(frames) - got)


def _client_process(args) -> tuple[list[float], int]:
    """Run some clients in this process: (latencies of the results after the first second, frames unanswered)."""
    url, audio, chunk_s, start_at, warm = args

    async def run():
        latencies, missing = [], []
        n = len(audio)
        tasks = [_client(url, audio[i], chunk_s, start_at + chunk_s * i / max(n, 1), latencies, missing)
                 for i in range(n)]
        await asyncio.gather(*tasks)
        return latencies, sum(missing)

    latencies, missing = asyncio.run(run())
    return latencies[warm:], missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log) -> None:
    """Wait until the server answers /healthz; if it exits first, raise with the end of ``log`` (its stderr, an
    open text file)."""
    import urllib.error
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            log.seek(0)
            tail = "\n".join(log.read().splitlines()[-20:])
            raise RuntimeError(f"the server exited with code {proc.returncode}; the end of its log:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {url}/healthz within {timeout:g} s")


def _wait_idle(url: str, timeout: float) -> None:
    """Wait (at most ``timeout`` s) until the server holds no streams."""
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            if json.loads(r.read())["streams"] == 0:
                return
        time.sleep(0.5)


def _metrics(url: str) -> dict:
    """Mean tick time and batch size from the server's /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def bench_end_to_end(model_dir: str, model, contract, streams: list[int], seconds: float = 10.0,
                     chunk_ms: float = 20.0, max_wait_ms: float = 5.0, device: str = "cpu", threads: int | None = None,
                     client_processes: int = 1, latency_ms: float = 100.0, compile: bool = False,
                     on_row=None) -> list[dict]:
    """Start ``audiomamba serve model_dir`` on loopback, then for each N of ``streams``: N real-time clients.
    ``on_row(row)`` is called as each N's row is done (a long run shows its rows as they come)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "audiomamba.cli", "serve", model_dir, "--port", str(port), "--max-streams",
           str(max(streams)), "--max-wait-ms", str(max_wait_ms), "--chunk-ms", str(chunk_ms), "--device", device,
           "--keep-s", "5"]
    if threads:
        cmd += ["--threads", str(threads)]
    if compile:
        cmd += ["--compile"]
    # the server's log goes to a file: a pipe nobody reads would block the server once its buffer is full
    log = tempfile.TemporaryFile("w+", errors="replace")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    rows = []
    try:
        _wait_healthy(url, proc, timeout=600, log=log)
        rate = contract.sample_rate
        chunk = chunk_samples(model, rate, chunk_ms)  # what the server pushes
        chunk_s = chunk / rate
        frames_per_stream = int(seconds / chunk_s)
        warm = int(1.0 / chunk_s)
        base = _synthetic_audio(min(max(streams), 64), frames_per_stream * chunk, rate)
        for n in streams:
            audio = (np.resize(base, (n, frames_per_stream * chunk)) * 32767).astype("<i2")
            audio = audio.reshape(n, frames_per_stream, chunk)
            before = _metrics(url)
            groups = [g for g in np.array_split(np.arange(n), client_processes) if len(g)]
            # a common start (perf_counter is system-wide on Linux: CLOCK_MONOTONIC), late enough for spawned client
            # processes to have imported their modules
            start_at = time.perf_counter() + (1.0 if len(groups) == 1 else 20.0)
            jobs = [(url + "/v1/stream", audio[g], chunk_s, start_at, warm * len(g)) for g in groups]
            if len(jobs) == 1:
                outs = [_client_process(jobs[0])]
            else:
                with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
                    outs = pool.map(_client_process, jobs)
            _wait_idle(url, timeout=300)  # an overloaded server may still be pushing the backlog of this run
            latencies = [x * 1e3 for out in outs for x in out[0]]
            missing = sum(out[1] for out in outs)
            after = _metrics(url)
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            ticks = max(delta["audiomamba_tick_seconds_count"], 1)
            tick_ms = 1e3 * delta["audiomamba_tick_seconds_sum"] / ticks
            batch = delta["audiomamba_tick_batch_size_sum"] / ticks
            p99 = percentile(latencies, 99)
            rows.append({"streams": n, "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                         "p99_ms": p99, "missing": missing, "tick_mean_ms": tick_ms, "batch_mean": batch,
                         "sustained": missing == 0 and p99 <= latency_ms})
            if on_row is not None:
                on_row(rows[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


# ----------------------------------------------------------------------------------------------- command


def bench_serve(model_dir: str | None = None, preset: str = "classifier_small", streams: list[int] | None = None,
                seconds: float = 10.0, chunk_ms: float = 20.0, max_wait_ms: float = 5.0, device: str = "cpu",
                threads: int | None = None, engine_only: bool = False, compile: bool = False, ticks: int = 50,
                client_processes: int = 1, latency_ms: float = 100.0) -> dict:
    """Print (and return) the end-to-end table (unless ``engine_only``) and the engine-only table."""
    streams = streams or [32]
    if threads:
        torch.set_num_threads(threads)
    model, contract = bench_model(model_dir, preset, device)
    name = model_dir or preset
    chunk = chunk_samples(model, contract.sample_rate, chunk_ms)
    print(f"bench serve: {name} ({model.config.kind}, {model.num_parameters() / 1e6:.2f}M params), "
          f"{contract.sample_rate} Hz, {chunk} samples per chunk ({1000 * chunk / contract.sample_rate:g} ms), "
          f"{device}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    result = {"e2e": [], "engine": []}
    if not engine_only:
        with tempfile.TemporaryDirectory() as tmp:
            directory = model_dir
            if directory is None:
                model.audio = contract
                directory = str(model.save(Path(tmp) / "model"))
            print(f"end to end (WebSockets on loopback, real-time clients, {seconds:g} s each, max wait "
                  f"{max_wait_ms:g} ms; sustained: every result back, p99 <= {latency_ms:g} ms)")
            print(f"{'streams':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'tick ms':>8} {'batch':>7} "
                  f"{'missing':>8}  sustained", flush=True)

            def row(r):
                print(f"{r['streams']:>8} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                      f"{r['tick_mean_ms']:>8.2f} {r['batch_mean']:>7.1f} {r['missing']:>8}  "
                      f"{'yes' if r['sustained'] else 'NO'}", flush=True)

            rows = bench_end_to_end(directory, model, contract, streams, seconds, chunk_ms, max_wait_ms, device,
                                    threads, client_processes, latency_ms, compile, on_row=row)
        ok = [r["streams"] for r in rows if r["sustained"]]
        print(f"streams sustained: {max(ok) if ok else 0}")
        result["e2e"] = rows
    print(f"engine only (no network; {ticks} ticks, batched vs one stream at a time)")
    print(f"{'streams':>8} {'tick p50 ms':>12} {'tick p99 ms':>12} {'1 stream ms':>12} {'ratio':>7} "
          f"{'RT streams':>11}  mode")
    for n in streams:
        r = bench_engine(model, contract, n, chunk_ms, ticks, compile)
        result["engine"].append(r)
        print(f"{n:>8} {r['tick_p50_ms']:>12.2f} {r['tick_p99_ms']:>12.2f} {r['one_stream_ms']:>12.2f} "
              f"{r['ratio']:>7.1f} {r['real_time_streams']:>11.0f}  {r['mode']}"
              f"{'' if r['real_time'] else ' (p99 tick over the chunk: not real time)'}")
    return result
