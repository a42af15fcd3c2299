"""Serving: batch invariance of the engine, the WebSocket protocol against model.stream(1), resume after a dropped
connection and after a restart, bad input that leaves the stream and its neighbours undisturbed, capacity,
tokens and timeouts. Tiny models, loopback only, bounded loops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random

import aiohttp
import numpy as np
import pytest
import torch
from aiohttp import WSMsgType, web
from helpers import tiny_model

from audiomamba.contract import AudioContract, TokenizerSpec
from audiomamba.serving import Engine, Scheduler
from audiomamba.serving.app import ServeConfig, StreamServer

torch.set_num_threads(1)

TOL = 1e-5
RATE = 1600  # the tiny models' rate: 20 ms = 32 samples, a multiple of their pooling product 8
CHUNK = 32
LABELS = ("low", "mid", "high")


def _classifier(tokens: bool = False):
    kw = {"input": "tokens", "vocab_size": 256} if tokens else {}
    return tiny_model("classifier_small", n_classes=len(LABELS), **kw)


def _contract(model) -> AudioContract:
    if model.config.kind == "lm":
        return AudioContract(RATE, "tokens", TokenizerSpec("mulaw", bits=8))
    if model.config.input == "tokens":
        return AudioContract(RATE, "tokens", TokenizerSpec("mulaw", bits=8), labels=LABELS)
    return AudioContract(RATE, "waveform", labels=LABELS)


def _reference(model, x: torch.Tensor, chunk: int = CHUNK) -> list:
    """What a served stream must report per chunk: model.stream(1) fed x (1, L) chunk by chunk — class
    probabilities after each chunk, or an LM's mean -log2 p per token (the first token of the stream unscored)."""
    stream, out, prev = model.stream(1), [], None
    for start in range(0, x.shape[1] - chunk + 1, chunk):
        piece = x[:, start : start + chunk]
        y = stream.push(piece)
        if model.config.kind != "lm":
            out.append(y[0, -1].softmax(-1))
            continue
        logp = y[0].double().log_softmax(-1)
        total, count = -logp[:-1].gather(-1, piece[0, 1:, None]).sum(), chunk - 1
        if prev is not None:
            total, count = total - prev[piece[0, 0]], count + 1
        prev = logp[-1]
        out.append(total / count / math.log(2))
    return out


def _close(got, ref) -> float:
    g = torch.as_tensor(np.array(got, dtype=np.float64))
    r = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in ref])
    return float((g - r).abs().max())


# ----------------------------------------------------------------------------------------------- engine


@pytest.mark.parametrize("what", ["waveform", "tokens", "lm"])
def test_engine_outputs_do_not_depend_on_the_batch(what):
    """Streams arriving at random, fed random-length pieces, opening and closing (a reused slot starts afresh),
    batched by the scheduler however they happen to be ready: each gets what model.stream(1) gives it alone."""
    model = tiny_model("sc09_mixed") if what == "lm" else _classifier(tokens=what == "tokens")
    rng = random.Random(0)
    torch.manual_seed(1)
    engine = Engine(model, max_streams=4, chunk=CHUNK)
    results: dict[int, list] = {}
    scheduler = Scheduler(engine, max_wait_ms=0, on_results=lambda slots, r: [
        results[s].append(float(r.bits[i]) if r.bits is not None else r.probs[i].numpy()) for i, s in
        enumerate(slots)])
    n_streams, length = 7, 6 * CHUNK
    inputs = [torch.randint(0, 256, (1, length)) if what != "waveform" else torch.randn(1, length) * 0.5
              for _ in range(n_streams)]
    fed = [0] * n_streams
    slot_of, waiting, done = {}, list(range(n_streams)), {}
    for _ in range(2000):
        if not waiting and not slot_of:
            break
        if waiting and engine.active < engine.max_streams and rng.random() < 0.3:  # a new stream arrives
            k = waiting.pop(0)
            slot_of[k] = engine.open()
            results[slot_of[k]] = []
            scheduler.add(slot_of[k])
        for k in list(slot_of):
            if fed[k] < length and rng.random() < 0.5:
                n = min(length - fed[k], rng.randint(1, 2 * CHUNK))
                scheduler.feed(slot_of[k], inputs[k][0, fed[k] : fed[k] + n].numpy())
                fed[k] += n
        if rng.random() < 0.7:
            scheduler.tick(timeout=0)
        for k in list(slot_of):
            slot = slot_of[k]
            if len(results[slot]) == length // CHUNK:
                scheduler.remove(slot)
                engine.close(slot)
                done[k] = results.pop(slot)
                del slot_of[k]
    assert len(done) == n_streams
    sizes = scheduler.batch_sizes.recent()
    assert max(sizes) > 1 and min(sizes) == 1  # the streams did share ticks, in varying company
    for k in range(n_streams):
        assert _close(done[k], _reference(model, inputs[k])) < TOL, k


def test_engine_slot_state_restores_bit_exactly_and_loads_into_a_stream():
    model = _classifier()
    engine = Engine(model, max_streams=3, chunk=CHUNK)
    x = torch.randn(1, 4 * CHUNK)
    a = engine.open()
    engine.push([a], x[:, :CHUNK])
    engine.push([a], x[:, CHUNK : 2 * CHUNK])
    saved = engine.slot_state(a)
    bad = x[:, 2 * CHUNK : 3 * CHUNK].clone()
    bad[0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        engine.push([a], bad)  # rejected before the step: the slot is unchanged
    assert all(torch.equal(v, saved[k]) for k, v in engine.slot_state(a).items())
    after = engine.push([a], x[:, 2 * CHUNK : 3 * CHUNK]).probs
    b = engine.open(saved)  # the saved stream in another slot continues identically
    assert b != a and engine.positions[b] == 2 * CHUNK
    assert torch.equal(engine.push([b], x[:, 2 * CHUNK : 3 * CHUNK]).probs, after)
    stream = model.stream(1)  # the same format as Stream.state_dict
    stream.load_state_dict(saved)
    assert stream.position == 2 * CHUNK
    assert (stream.push(x[:, 2 * CHUNK : 3 * CHUNK])[0, -1].softmax(-1) - after[0]).abs().max() < TOL
    with pytest.raises(ValueError, match="pooling product"):
        Engine(model, 2, chunk=CHUNK + 1)


def test_a_tick_waits_at_most_max_wait_for_the_batch_to_fill():
    import threading
    import time

    engine = Engine(_classifier(), max_streams=3, chunk=CHUNK)
    scheduler = Scheduler(engine, max_wait_ms=300)
    a, b, c = (engine.open() for _ in range(3))
    for s in (a, b, c):
        scheduler.add(s)
    chunk = np.zeros(CHUNK, np.float32)
    scheduler.feed(a, chunk)
    threading.Timer(0.05, scheduler.feed, (b, chunk)).start()  # b arrives within the wait, c never does
    start = time.monotonic()
    slots, result = scheduler.tick(timeout=5)
    waited = time.monotonic() - start
    assert sorted(slots) == [a, b] and result.probs.shape == (2, len(LABELS))
    assert 0.25 <= waited < 2.0  # it waited for c until max_wait ran out, not longer
    scheduler.feed(a, chunk)
    scheduler.feed(b, chunk)
    scheduler.feed(c, chunk)
    start = time.monotonic()
    slots, _ = scheduler.tick(timeout=5)  # everyone ready: no waiting
    assert sorted(slots) == [a, b, c] and time.monotonic() - start < 0.25
    assert scheduler.tick(timeout=0.05) is None  # nothing ready


# ----------------------------------------------------------------------------------------------- server


@contextlib.asynccontextmanager
async def _serving(server: StreamServer):
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as client:
            yield client, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()  # what SIGTERM runs: shutdown, then the streams written to state_dir


async def _start(client, url, stream_id=None, sample_rate=RATE, fmt="f32le", path="/v1/stream"):
    ws = await client.ws_connect(url + path)
    msg = {"type": "start", "sample_rate": sample_rate, "format": fmt}
    if stream_id is not None:
        msg["stream_id"] = stream_id
    await ws.send_str(json.dumps(msg))
    return ws, json.loads((await ws.receive(timeout=10)).data)


async def _results(ws, n: int, key: str = "probs") -> list:
    """The next n results' values, skipping nothing else (an error fails the test)."""
    out = []
    while len(out) < n:
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        assert data["type"] == "result", data
        out.append(data[key])
    return out


async def _error(ws) -> str:
    msg = await ws.receive(timeout=10)
    assert msg.type == WSMsgType.TEXT, msg
    data = json.loads(msg.data)
    assert data["type"] == "error", data
    return data["message"]


def _server(model=None, **kw) -> StreamServer:
    model = model if model is not None else _classifier()
    return StreamServer(model, _contract(model), ServeConfig(**{"max_streams": 4, "max_wait_ms": 1, **kw}))


def test_websocket_stream_matches_model_stream_and_ends_with_final():
    model = _classifier(tokens=True)  # s16le at the model rate → mu-law tokens
    x = (np.random.default_rng(0).standard_normal(5 * CHUNK + 7) * 8000).astype("<i2")

    async def run():
        async with _serving(_server(model)) as (client, url):
            ws, started = await _start(client, url, fmt="s16le")
            assert started["type"] == "started" and started["labels"] == list(LABELS)
            assert started["model_sample_rate"] == RATE and started["chunk"] == CHUNK
            for piece in np.array_split(x, 4):
                await ws.send_bytes(piece.tobytes())
            got = await _results(ws, 5)
            await ws.send_str(json.dumps({"type": "end"}))
            final = json.loads((await ws.receive(timeout=10)).data)
            assert (await ws.receive(timeout=10)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            async with client.get(url + "/healthz") as r:
                assert (await r.json())["status"] == "ok"
            async with client.get(url + "/metrics") as r:
                text = await r.text()
            return got, final, text

    got, final, metrics = asyncio.run(run())
    tokens = _contract(model).tokenizer.build().encode(torch.from_numpy(x.astype(np.float32) / 32768))[None]
    ref = _reference(model, tokens)
    assert _close(got, ref) < TOL
    assert final["type"] == "final" and final["position"] == len(x)
    full = model.stream(1).push(tokens)[0, -1].softmax(-1)  # the tail (7 samples) pushed at the end
    assert _close([final["probs"]], [full]) < TOL and final["top"] == LABELS[int(full.argmax())]
    assert "audiomamba_tick_seconds_count" in metrics and "audiomamba_active_streams" in metrics


def test_resampled_input_matches_the_resampled_reference():
    model = _classifier()
    import soxr

    x = (np.random.default_rng(1).standard_normal(4000) * 0.3).astype(np.float32)  # 2.5 s... at 1.6 kHz via 4 kHz

    async def run():
        async with _serving(_server(model)) as (client, url):
            ws, _ = await _start(client, url, sample_rate=4000)
            for piece in np.array_split(x, 9):
                await ws.send_bytes(piece.tobytes())
            await ws.send_str(json.dumps({"type": "end"}))
            got = []
            while True:
                data = json.loads((await ws.receive(timeout=10)).data)
                if data["type"] == "final":
                    return got, data
                got.append(data["probs"])

    got, final = asyncio.run(run())
    resampled = soxr.resample(x, 4000, RATE, quality="HQ")
    assert final["position"] == len(resampled)
    ref = _reference(model, torch.from_numpy(resampled)[None])
    assert len(got) == len(ref) and _close(got, ref) < 1e-4  # soxr's streaming and whole-signal outputs agree


def test_resume_after_a_dropped_connection_and_after_a_restart(tmp_path):
    model = _classifier()
    x = (torch.randn(1, 9 * CHUNK) * 0.5)
    ref = _reference(model, x)
    frames = [x[0, i : i + 48].numpy().tobytes() for i in range(0, x.shape[1], 48)]  # 1.5 chunks per frame

    async def run():
        server = _server(model, state_dir=str(tmp_path))
        async with _serving(server) as (client, url):
            ws, started = await _start(client, url)
            stream_id = started["stream_id"]
            for f in frames[:2]:  # 96 samples: 3 chunks
                await ws.send_bytes(f)
            got = await _results(ws, 3)
            await ws.send_bytes(frames[2])  # 48 more: one chunk pushed, 16 samples left waiting
            got += await _results(ws, 1)
            ws._response.connection.transport.abort()  # the connection drops without a close handshake
            await asyncio.sleep(0.2)
            ws, resumed = await _start(client, url, stream_id)
            assert resumed["type"] == "started" and resumed["stream_id"] == stream_id
            assert resumed["received"] == 144 and resumed["position"] == 4 * CHUNK
            await ws.send_bytes(frames[3])  # 48 + 16 waiting: 2 chunks
            got += await _results(ws, 2)
            await ws.send_bytes(frames[4][: 40 * 4])  # 40 samples: one chunk, 8 samples stay waiting
            got += await _results(ws, 1)
        # the server stopped (as on SIGTERM): its streams are on disk; a new server takes them back
        assert (tmp_path / f"{stream_id}.safetensors").is_file()
        async with _serving(_server(model, state_dir=str(tmp_path))) as (client, url):
            ws, resumed = await _start(client, url, stream_id)
            assert resumed["received"] == 232 and resumed["position"] == 7 * CHUNK
            await ws.send_bytes(x[0, 232:].numpy().tobytes())
            got += await _results(ws, 2)
            ws2, unknown = await _start(client, url, "no-such-stream")
            assert unknown["type"] == "error" and "unknown stream_id" in unknown["message"]
        return got

    got = asyncio.run(run())
    assert len(got) == 9
    assert _close(got, ref) == 0.0  # bit-exact: what the unbroken stream gives (one stream: the same batch-1 path)


def test_bad_input_gets_an_error_and_poisons_neither_the_stream_nor_its_neighbour():
    model = _classifier()
    x, y = torch.randn(1, 4 * CHUNK) * 0.5, torch.randn(1, 4 * CHUNK) * 0.5
    bad = [
        ("text", "{not json", "not valid JSON"),
        ("text", json.dumps({"type": "dance"}), "unknown message type"),
        ("text", json.dumps({"type": "generate", "seconds": 1}), "classifier"),
        ("text", json.dumps({"type": "start", "sample_rate": RATE, "format": "f32le"}), "already started"),
        ("bytes", b"\x00\x00\x80", "not a whole number"),
        ("bytes", np.array([0.1, np.nan], "<f4").tobytes(), "NaN or Inf"),
        ("bytes", np.array([np.inf, 0.2], "<f4").tobytes(), "NaN or Inf"),
        ("bytes", (np.ones(8) * 20000).astype("<i2").tobytes(), "is the audio s16le"),  # s16le sent as f32le
        ("bytes", np.zeros(3000, "<f4").tobytes(), "exceeds the limit"),
        ("text", json.dumps({"type": "end", "pad": "x" * 5000}), "at most"),
    ]

    async def run():
        async with _serving(_server(model, max_frame_bytes=8000)) as (client, url):
            ws, _ = await _start(client, url)
            nb, _ = await _start(client, url)
            await ws.send_bytes(x[0, :CHUNK].numpy().tobytes())
            await nb.send_bytes(y[0, : 2 * CHUNK].numpy().tobytes())
            got = await _results(ws, 1)
            got_nb = await _results(nb, 2)
            for kind, payload, expected in bad:
                await (ws.send_str(payload) if kind == "text" else ws.send_bytes(payload))
                assert expected in await _error(ws)
                await nb.send_bytes(y[0, :0].numpy().tobytes())  # the neighbour keeps streaming meanwhile
            await ws.send_bytes(x[0, CHUNK:].numpy().tobytes())
            await nb.send_bytes(y[0, 2 * CHUNK :].numpy().tobytes())
            got += await _results(ws, 3)
            got_nb += await _results(nb, 2)
            # a binary frame before start, and an unknown stream: errors that close only that connection
            early = await client.ws_connect(url + "/v1/stream")
            await early.send_bytes(b"\x00" * 8)
            assert "before any audio" in await _error(early)
            return got, got_nb

    got, got_nb = asyncio.run(run())
    assert _close(got, _reference(model, x)) < TOL
    assert _close(got_nb, _reference(model, y)) < TOL


def test_capacity_refusal_token_and_idle_timeout(tmp_path):
    async def run():
        async with _serving(_server(max_streams=2, token="s3cret", idle_timeout_s=0.5, keep_s=30)) as (client, url):
            q = "/v1/stream?token=s3cret"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect(url + "/v1/stream?token=wrong")
            assert refused.value.status == 401
            a, sa = await _start(client, url, path=q)
            b, _ = await _start(client, url, path=q)
            c, sc = await _start(client, url, path=q)
            assert sa["type"] == "started" and sc["type"] == "error" and "capacity" in sc["message"]
            assert (await c.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            assert c.close_code == 1013
            async with client.get(url + "/metrics", headers={"Authorization": "Bearer s3cret"}) as r:
                assert "audiomamba_refusals_total 1" in await r.text()
            # a's client goes silent: cut after the idle timeout, its stream kept and resumable
            message = await _error(a)
            assert "idle" in message
            await b.close()
            again, resumed = await _start(client, url, sa["stream_id"], path=q)
            assert resumed["type"] == "started" and resumed["stream_id"] == sa["stream_id"]

    asyncio.run(run())
    with pytest.raises(ValueError, match="--token"):
        ServeConfig(host="0.0.0.0")


def test_language_model_scores_chunks_and_streams_a_continuation():
    model = tiny_model("sc09_mixed")
    x = (np.random.default_rng(2).standard_normal(3 * CHUNK) * 0.3).astype(np.float32)

    async def run():
        async with _serving(_server(model)) as (client, url):
            ws, started = await _start(client, url)
            assert started["kind"] == "lm" and started["labels"] == []
            await ws.send_bytes(x.tobytes())
            bits = await _results(ws, 3, key="bits_per_sample")
            await ws.send_str(json.dumps({"type": "generate", "seconds": 0.05, "temperature": 0.9, "top_p": 0.95}))
            audio = b""
            while True:
                msg = await ws.receive(timeout=30)
                if msg.type == WSMsgType.BINARY:
                    audio += msg.data
                    continue
                data = json.loads(msg.data)
                assert data["type"] == "generated", data
                return bits, audio, data["samples"]

    bits, audio, samples = asyncio.run(run())
    tokens = _contract(model).tokenizer.build().encode(torch.from_numpy(x))[None]
    assert _close(bits, _reference(model, tokens)) < 1e-4
    assert samples == round(0.05 * RATE) and len(audio) == 4 * samples
    wave = np.frombuffer(audio, "<f4")
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0


@pytest.mark.slow
def test_compiled_engine_matches_the_eager_engine():
    """The compiled push (3 of 4 slots: padded to the graph's batch of 4) gives the eager push's outputs, and so
    do the eager pushes of 2 slots between. Slow: inductor compiles for a minute or more on a small CPU."""
    model = _classifier()
    compiled, eager = Engine(model, 4, CHUNK, compile=True), Engine(model, 4, CHUNK)
    a, b = [compiled.open() for _ in range(3)], [eager.open() for _ in range(3)]
    compiled.warmup()
    for n in (3, 2, 3, 3):
        x = torch.randn(n, CHUNK)
        assert (compiled.push(a[:n], x).probs - eager.push(b[:n], x).probs).abs().max() < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("what", ["waveform", "tokens", "lm"])
def test_cuda_graph_pushes_match_the_stream(what):
    """On a GPU each bucket's push is one captured CUDA graph (no eager fallback), and every slot gets what
    model.stream(1) on the GPU gives it alone, for pushes of varying subsets of the slots."""
    import warnings

    model = (tiny_model("sc09_mixed") if what == "lm" else _classifier(tokens=what == "tokens")).cuda()
    engine = Engine(model, max_streams=6, chunk=CHUNK, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns and pushes eagerly: fail instead
        engine.warmup()
    assert all(entry != "eager" for entry in engine._programs.values())
    slots = [engine.open() for _ in range(6)]
    n_chunks = 5
    x = [torch.randint(0, 256, (1, n_chunks * CHUNK)) if what != "waveform" else torch.randn(1, n_chunks * CHUNK)
         for _ in slots]
    got: dict[int, list] = {s: [] for s in slots}
    rng = random.Random(0)
    done = [0] * len(slots)
    while min(done) < n_chunks:
        batch = [i for i in range(len(slots)) if done[i] < n_chunks and rng.random() < 0.6]
        if not batch:
            continue
        chunk = torch.cat([x[i][:, done[i] * CHUNK : (done[i] + 1) * CHUNK] for i in batch])
        r = engine.push([slots[i] for i in batch], chunk)
        for j, i in enumerate(batch):
            got[slots[i]].append(float(r.bits[j]) if r.bits is not None else r.probs[j].numpy())
            done[i] += 1
    for i, s in enumerate(slots):
        assert _close(got[s], [v.cpu() for v in _reference(model, x[i].cuda())]) < 1e-4, i


def test_sigterm_writes_the_streams_and_a_new_server_resumes_them(tmp_path):
    """`audiomamba serve` as a process: SIGTERM mid-stream writes the stream's state; a new server resumes it."""
    import signal
    import socket
    import subprocess
    import sys

    model = _classifier()
    model.audio = _contract(model)
    model.save(tmp_path / "model")
    x = torch.randn(1, 6 * CHUNK) * 0.5
    ref = _reference(model, x)

    def launch():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "audiomamba.cli", "serve", str(tmp_path / "model"), "--port",
                                 str(port), "--state-dir", str(tmp_path / "states"), "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc, f"http://127.0.0.1:{port}"

    async def healthy(client, url, proc):
        for _ in range(600):  # bounded: 60 s
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError("the server did not come up")

    async def run():
        proc, url = launch()
        try:
            async with aiohttp.ClientSession() as client:
                await healthy(client, url, proc)
                ws, started = await _start(client, url)
                await ws.send_bytes(x[0, : 2 * CHUNK + 5].numpy().tobytes())
                got = await _results(ws, 2)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert (tmp_path / "states" / f"{started['stream_id']}.safetensors").is_file()
        async with _serving(_server(model, state_dir=str(tmp_path / "states"))) as (client, url):
            ws, resumed = await _start(client, url, started["stream_id"])
            assert resumed["received"] == 2 * CHUNK + 5 and resumed["position"] == 2 * CHUNK
            await ws.send_bytes(x[0, 2 * CHUNK + 5 :].numpy().tobytes())
            got += await _results(ws, 4)
        return got

    got = asyncio.run(run())
    assert _close(got, ref) == 0.0


# ----------------------------------------------------------------------------------------------- web page


def _web_model_and_tone(rate: int):
    """A tiny classifier (found among a few seeds) whose prediction for a 440 Hz tone differs from its prediction
    for silence and does not change with the tone's gain or phase; the tone; its label."""
    t = np.arange(2 * rate) / rate
    for seed in range(20):
        torch.manual_seed(seed)
        model = tiny_model("classifier_small", n_classes=len(LABELS))
        torch.manual_seed(seed)
        for p in model.parameters():  # tiny_model seeds 0: vary the weights by the seed
            p.data.add_(torch.randn_like(p) * 0.3)
        labels = set()
        for gain, phase in ((0.5, 0.0), (0.35, 1.0), (0.7, 2.0)):
            tone = torch.from_numpy((gain * np.sin(2 * np.pi * 440 * t + phase)).astype(np.float32))[None]
            probs = model.stream(1).push(tone)[0, rate // 2 :].softmax(-1)  # (L, C) after the first 0.5 s
            labels |= {LABELS[i] for i in probs.argmax(-1).tolist()}
        silent = LABELS[int(model.stream(1).push(torch.zeros(1, rate))[0, -1].argmax())]
        if len(labels) == 1 and silent not in labels:
            return model, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), labels.pop()
    raise AssertionError("no seed gives a tone label that differs from silence")


def test_web_page_shows_the_label_of_the_audio_it_hears(tmp_path):
    """The page at / in headless Chromium, its microphone a WAV file (Chromium's fake capture device): it streams
    the audio (AudioWorklet → s16le → server-side resampling) and shows the label the model gives that audio."""
    import shutil
    import threading
    import time

    import soundfile as sf

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.common.by import By

    rate = 16_000
    model, tone, expected = _web_model_and_tone(rate)
    wav = tmp_path / "tone.wav"
    sf.write(wav, tone, rate, subtype="PCM_16")
    server = StreamServer(model, AudioContract(rate, "waveform", labels=LABELS), ServeConfig(max_streams=2))
    ready, loop_box = threading.Event(), {}

    def serve():
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(server.app())
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        loop_box.update(loop=loop, runner=runner, port=site._server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(f"http://127.0.0.1:{loop_box['port']}/")
        browser.find_element(By.ID, "start").click()
        top = browser.find_element(By.ID, "top")
        end = time.monotonic() + 60
        while time.monotonic() < end:  # 1.5 s of audio heard (the page shows labels from the first result on)
            position = top.get_attribute("data-position")
            if position and int(position) >= 1.5 * rate:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no results after 60 s; page status: {browser.find_element(By.ID, 'status').text}")
        assert top.get_attribute("data-label") == expected
        assert top.text == expected
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
        assert [b.get_attribute("data-label") for b in bars] == list(LABELS)
    finally:
        browser.quit()
        loop_box["loop"].call_soon_threadsafe(loop_box["loop"].stop)
        thread.join(30)


def test_a_client_faster_than_the_engine_is_cut_and_can_resume():
    """More audio waiting than max_buffer_s: the connection closes with a clear error, nothing of the refused
    frame was taken, and the stream resumes after the samples the server reports as received."""
    model = _classifier()
    server = _server(model, max_buffer_s=0.1)  # 160 samples at 1.6 kHz
    server.scheduler.start = lambda: None  # no ticks yet: the buffer only fills
    x = torch.randn(1, 12 * CHUNK) * 0.5

    async def run():
        async with _serving(server) as (client, url):
            ws, started = await _start(client, url)
            await ws.send_bytes(x[0, : 6 * CHUNK].numpy().tobytes())  # 192 samples: over the limit, but taken
            await ws.send_bytes(x[0, 6 * CHUNK :].numpy().tobytes())  # refused
            assert "input queue full" in await _error(ws)
            assert (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
            ws, resumed = await _start(client, url, started["stream_id"])
            assert resumed["received"] == 6 * CHUNK and resumed["position"] == 0
            server.scheduler.__class__.start(server.scheduler)  # now the engine catches up
            got = await _results(ws, 6)
            await ws.send_bytes(x[0, 6 * CHUNK :].numpy().tobytes())
            return got + await _results(ws, 6)

    assert _close(asyncio.run(run()), _reference(model, x)) < TOL


def test_serve_command_errors_are_one_line(tmp_path, capsys):
    from audiomamba.cli import main

    model = _classifier()
    model.audio = _contract(model)
    model.save(tmp_path / "model")
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "model not found" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "model"), "--host", "0.0.0.0"]) == 1
    assert "needs --token" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["serve", str(tmp_path / "model"), "--max-streams", "0"]) == 1
    assert "max_streams" in capsys.readouterr().err


def test_end_to_end_bench_reports_each_row_and_a_failed_server_with_its_log(tmp_path):
    """`bench serve` end to end on the CPU: a real server process and real-time clients; each run's row reaches
    ``on_row`` as it ends, every frame gets its result; a server that cannot start is reported with its log."""
    from audiomamba.serving.bench import bench_end_to_end

    model = _classifier()
    contract = _contract(model)
    model.audio = contract
    model.save(tmp_path / "model")
    seen = []
    rows = bench_end_to_end(str(tmp_path / "model"), model, contract, [2], seconds=2.0, chunk_ms=20.0, threads=1,
                            on_row=seen.append)
    assert seen == rows and [r["streams"] for r in rows] == [2]
    row = rows[0]
    assert row["missing"] == 0 and row["batch_mean"] >= 1.0 and row["tick_mean_ms"] > 0
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    with pytest.raises(RuntimeError, match="(?s)exited with code 1.*model not found"):
        bench_end_to_end(str(tmp_path / "missing"), model, contract, [1], seconds=2.0, threads=1)
