"""The streaming server (aiohttp): WebSocket ``/v1/stream``, ``/healthz``, ``/metrics``, the web page at ``/``.

Each WebSocket carries one stream (see ``protocol`` for the client's messages). The server answers:

- ``{"type": "started", "stream_id", "model_sample_rate", "labels", "kind", "chunk", "position", "received"}``:
  ``chunk`` is the samples per result at the model rate, ``position`` the samples the model has consumed and
  ``received`` the client-rate samples taken so far (a resumed stream continues after them);
- per processed chunk, ``{"type": "result", "position", "probs": [...], "top": "<label>"}`` (classifiers) or
  ``{"type": "result", "position", "bits_per_sample"}`` (language models: -log2 p per token of the chunk);
- on ``generate`` (language models): binary frames of the continuation (the client's format, model rate), then
  ``{"type": "generated", "samples"}``;
- on ``end``: ``{"type": "final", "stream_id", "position", "probs", "top"}`` (the prediction after the last
  sample) or ``{..., "bits_per_sample"}`` (over the whole stream), then the connection closes;
- ``{"type": "error", "message"}`` for that client only. A rejected frame or message changes nothing; errors
  that end the connection (idle, input or output queue full, server at capacity, unknown stream) say so.

A connection that drops keeps its stream for ``keep_s`` seconds: a ``start`` with its ``stream_id`` continues
it exactly where the server left it. On shutdown (SIGTERM) every stream is written to ``state_dir`` (one
safetensors file per stream: ``Engine.slot_state`` entries plus ``serve.*`` entries for the unpushed input and
running sums) and a server started on the same ``state_dir`` takes them back. A stream that the server resamples
resumes exactly after a reconnect; after a restart its resampler starts afresh (soxr keeps no saveable state).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from aiohttp import WSMsgType, web
from safetensors import safe_open
from safetensors.torch import save_file

from .continuation import continue_stream
from .engine import SERVE_PREFIX, CapacityError, Engine, PushResult, chunk_samples
from .metrics import render_metric
from .protocol import End, Generate, InputPath, ProtocolError, Start, encode_pcm, parse_message
from .scheduler import Scheduler

logger = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_TEXT_CHARS = 4096  # control messages are short


@dataclass
class ServeConfig:
    """The server's settings (the ``audiomamba serve`` flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = 64
    max_wait_ms: float = 5.0
    chunk_ms: float = 20.0
    keep_s: float = 60.0
    state_dir: str | None = None
    token: str | None = None
    idle_timeout_s: float = 30.0  # a connection that sends nothing for this long is closed
    max_frame_bytes: int = 1 << 20  # larger binary frames are refused
    max_buffer_s: float = 10.0  # model-rate audio a stream may have waiting for the engine
    send_queue: int = 1024  # messages waiting for a client that does not read: more cuts it
    max_generate_s: float = 10.0

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK and not self.token:
            raise ValueError(f"--host {self.host}: binding beyond loopback needs --token (clients must present it)")
        for name in ("max_wait_ms", "keep_s", "idle_timeout_s", "max_buffer_s", "max_generate_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_ms <= 0 or self.max_streams < 1:
            raise ValueError(f"chunk_ms must be > 0 and max_streams >= 1, got {self.chunk_ms}, {self.max_streams}")


class Session:
    """One stream: its slot, input path and running sums; its connection while one is attached."""

    def __init__(self, stream_id: str, slot: int, path: InputPath, fmt: str):
        self.id, self.slot, self.path, self.format = stream_id, slot, path, fmt
        self.ws: web.WebSocketResponse | None = None
        self.outbox: asyncio.Queue | None = None
        self.sender: asyncio.Task | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.last_probs: list[float] | None = None
        self.total_bits, self.scored = 0.0, 0
        self.generating = False
        self.closed = False


class StreamServer:
    """Serves one model to many WebSocket streams.

    Args:
        model: a causal AudioClassifier or one-codebook AudioLM, in eval mode, on its serving device.
        contract: its :class:`audiomamba.contract.AudioContract` (sample rate, labels, tokenizer).
        config: :class:`ServeConfig`. compile: CPU: pushes through the compiled streaming graphs.
    """

    def __init__(self, model, contract, config: ServeConfig, compile: bool = False):
        self.model, self.contract, self.config = model, contract, config
        self.rate = contract.sample_rate
        chunk = chunk_samples(model, self.rate, config.chunk_ms)  # a whole number of the model's pooling frames
        self.engine = Engine(model, config.max_streams, chunk, compile=compile)
        self.kind = self.engine.kind
        self.labels = [] if self.kind == "lm" else (list(contract.labels) or
                                                    [str(i) for i in range(model.config.n_classes)])
        self.tokenizer = None
        if self.engine.tokens:
            if contract.tokenizer is None:
                raise ValueError("this model takes tokens that are not audio (no tokenizer in its audio contract)")
            self.tokenizer = contract.tokenizer.build()
        self.scheduler = Scheduler(self.engine, config.max_wait_ms, int(config.max_buffer_s * self.rate),
                                   on_results=self._on_results)
        self.sessions: dict[str, Session] = {}
        self._by_slot: dict[int, Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generator_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audiomamba-generate")
        self.counts = {"refusals": 0, "errors": 0, "connections": 0, "results": 0, "restored": 0}
        self.stopping = False

    # ------------------------------------------------------------------------------------------- app

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", WEB_DIR, show_index=False)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/stream", self._websocket)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app) -> None:
        self._loop = asyncio.get_running_loop()
        if self.config.state_dir:
            await self._loop.run_in_executor(None, self._restore)
        self.scheduler.start()

    async def _shutdown(self, app) -> None:
        self.stopping = True
        for session in list(self.sessions.values()):
            if session.ws is not None:
                await self._send_now(session, {"type": "error", "message": "server shutting down; the stream is "
                                               "kept" + (" on disk: resume with its stream_id" if
                                                         self.config.state_dir else "")})
                await session.ws.close(code=1012, message=b"server restart")

    async def _cleanup(self, app) -> None:
        await self._loop.run_in_executor(None, self.scheduler.stop)
        if self.config.state_dir:
            saved = await self._loop.run_in_executor(None, self._save_all)
            logger.info("saved %d stream(s) to %s", saved, self.config.state_dir)
        self._generator_pool.shutdown(wait=False, cancel_futures=True)

    async def _index(self, request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _healthz(self, request) -> web.Response:
        return web.json_response({"status": "ok", "streams": len(self.sessions), "max_streams": self.config.max_streams,
                                  "kind": self.kind, "model_sample_rate": self.rate})

    def _authorized(self, request) -> bool:
        if not self.config.token:
            return True
        given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), self.config.token.encode())

    async def _metrics(self, request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401, text="missing or wrong token\n")
        attached = sum(s.ws is not None for s in self.sessions.values())
        lines = []
        lines += render_metric("audiomamba_active_streams", "gauge", "streams with a connection", attached)
        lines += render_metric("audiomamba_kept_streams", "gauge", "streams kept without a connection (resumable)",
                               len(self.sessions) - attached)
        lines += render_metric("audiomamba_max_streams", "gauge", "stream slots", self.config.max_streams)
        lines += self.scheduler.tick_seconds.render("audiomamba_tick_seconds", "time of one batched push")
        lines += self.scheduler.batch_sizes.render("audiomamba_tick_batch_size", "streams per batched push")
        lines += render_metric("audiomamba_refusals_total", "counter", "connections refused at capacity",
                               self.counts["refusals"])
        lines += render_metric("audiomamba_errors_total", "counter", "error messages sent to clients",
                               self.counts["errors"])
        lines += render_metric("audiomamba_connections_total", "counter", "WebSocket connections accepted",
                               self.counts["connections"])
        lines += render_metric("audiomamba_results_total", "counter", "result messages produced",
                               self.counts["results"])
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------------------------------- WebSocket

    async def _websocket(self, request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401, text="missing or wrong token\n")
        cfg = self.config
        ws = web.WebSocketResponse(max_msg_size=4 * cfg.max_frame_bytes, heartbeat=max(cfg.idle_timeout_s, 1.0),
                                   timeout=2.0)  # for the client's answer to a close
        await ws.prepare(request)
        self.counts["connections"] += 1
        session = None
        try:
            session = await self._start(ws)
            if session is None:
                return ws
            await self._serve(ws, session)
        finally:
            if session is not None and session.ws is ws:
                self._detach(session)
            if not ws.closed:
                await ws.close()
        return ws

    async def _error(self, ws, message: str, close_code: int | None = None, session: Session | None = None) -> None:
        """Send an error to this client; with ``close_code``, close the connection (detaching ``session`` from it
        first, so that the stream can be resumed at once)."""
        self.counts["errors"] += 1
        if close_code is not None and session is not None and session.ws is ws:
            self._detach(session)
        if not ws.closed:
            await ws.send_str(json.dumps({"type": "error", "message": message}))
            if close_code is not None:
                await ws.close(code=close_code, message=message[:120].encode())

    async def _start(self, ws) -> Session | None:
        """Read the start message; open or resume the stream, attach it, send ``started``."""
        cfg = self.config
        try:
            msg = await ws.receive(timeout=cfg.idle_timeout_s)
        except asyncio.TimeoutError:
            await self._error(ws, f"no start message within {cfg.idle_timeout_s:g} s", 1008)
            return None
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await self._error(ws, 'send {"type": "start", ...} before any audio', 1008)
            return None
        try:
            start = parse_message(msg.data, cfg.max_generate_s)
            if not isinstance(start, Start):
                raise ProtocolError('the first message must be {"type": "start", ...}')
        except ProtocolError as e:
            await self._error(ws, str(e), 1008)
            return None
        if self.stopping:
            await self._error(ws, "server shutting down", 1012)
            return None
        if start.stream_id is not None:
            session = self.sessions.get(start.stream_id)
            if session is None:
                await self._error(ws, f"unknown stream_id {start.stream_id!r} (expired, ended or never started; "
                                  "omit stream_id to start a new stream)", 1008)
                return None
            if session.ws is not None:
                await self._error(ws, f"stream {start.stream_id!r} is in use by another connection", 1008)
                return None
            if session.path.sample_rate != start.sample_rate:
                await self._error(ws, f"stream {start.stream_id!r} was started at sample_rate "
                                  f"{session.path.sample_rate}: resume at that rate", 1008)
                return None
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            session.format = start.format
        else:
            try:
                slot = self.engine.open()
            except CapacityError:
                self.counts["refusals"] += 1
                await self._error(ws, f"server at capacity ({cfg.max_streams} streams): try again later", 1013)
                return None
            stream_id = secrets.token_hex(8)
            session = Session(stream_id, slot, InputPath(start.sample_rate, self.rate, self.tokenizer), start.format)
            self.sessions[stream_id] = session
            self._by_slot[slot] = session
            self.scheduler.add(slot)
        session.outbox = asyncio.Queue(cfg.send_queue)
        session.outbox.put_nowait(json.dumps({  # first in the queue: before any result of a resumed backlog
            "type": "started", "stream_id": session.id, "model_sample_rate": self.rate, "labels": self.labels,
            "kind": self.kind, "chunk": self.engine.chunk, "position": self.engine.positions[session.slot],
            "received": session.path.received}))
        session.ws = ws
        session.sender = asyncio.ensure_future(self._send_loop(session, ws, session.outbox))
        return session

    async def _serve(self, ws, session: Session) -> None:
        cfg = self.config
        while True:
            try:
                msg = await ws.receive(timeout=cfg.idle_timeout_s)
            except asyncio.TimeoutError:
                await self._error(ws, f"idle for {cfg.idle_timeout_s:g} s: closing (the stream is kept for "
                                  f"{cfg.keep_s:g} s)", 1001, session)
                return
            if session.ws is not ws:  # cut (slow reader) while waiting
                return
            if msg.type == WSMsgType.BINARY:
                if not await self._audio(ws, session, msg.data):
                    return
            elif msg.type == WSMsgType.TEXT:
                if len(msg.data) > MAX_TEXT_CHARS:
                    await self._error(ws, f"text message of {len(msg.data)} characters: at most {MAX_TEXT_CHARS}")
                    continue
                try:
                    parsed = parse_message(msg.data, cfg.max_generate_s)
                except ProtocolError as e:
                    await self._error(ws, str(e))
                    continue
                if isinstance(parsed, Start):
                    await self._error(ws, "already started (one stream per connection)")
                elif isinstance(parsed, Generate):
                    await self._generate(ws, session, parsed)
                elif isinstance(parsed, End):
                    await self._end(ws, session)
                    return
            else:  # close, error
                return

    async def _audio(self, ws, session: Session, data: bytes) -> bool:
        """Take one binary frame; False when the connection is to close."""
        cfg = self.config
        if len(data) > cfg.max_frame_bytes:
            await self._error(ws, f"binary frame of {len(data)} bytes exceeds the limit of {cfg.max_frame_bytes} "
                              "(frame rejected)")
            return True
        if self.scheduler.full(session.slot):
            await self._error(ws, f"input queue full ({cfg.max_buffer_s:g} s of audio waiting): closing; the stream "
                              f"is kept for {cfg.keep_s:g} s, resume from its 'received' count", 1008, session)
            return False
        try:
            x = session.path(data, session.format)
        except ProtocolError as e:
            await self._error(ws, str(e))
            return True
        if len(x):
            self.scheduler.feed(session.slot, x)
        return True

    async def _end(self, ws, session: Session) -> None:
        """Push everything left (the resampler's tail, a partial chunk), send ``final``, drop the stream."""
        loop = self._loop
        await self._drain(session)
        tail = session.path.flush()
        if len(tail):
            self.scheduler.feed(session.slot, tail)
            await self._drain(session)
        self._forget(session)
        rest = await loop.run_in_executor(None, self.scheduler.remove, session.slot)
        if len(rest):
            x = torch.from_numpy(rest)[None]
            result = await loop.run_in_executor(None, self.engine.push_tail, session.slot, x)
            self._account(session, result, 0, len(rest))
        position = self.engine.positions[session.slot]
        await loop.run_in_executor(None, self.engine.close, session.slot)
        final = {"type": "final", "stream_id": session.id, "position": position}
        if self.kind == "lm":
            final["bits_per_sample"] = session.total_bits / session.scored if session.scored else None
        else:
            probs = session.last_probs
            final.update(probs=probs, top=None if probs is None else self.labels[int(np.argmax(probs))])
        try:
            await asyncio.wait_for(session.outbox.join(), self.config.idle_timeout_s)  # results before final
        except asyncio.TimeoutError:
            pass
        await ws.send_str(json.dumps(final))
        await ws.close()

    async def _drain(self, session: Session) -> None:
        while not self.scheduler.drained(session.slot):
            await asyncio.sleep(0.002)

    async def _generate(self, ws, session: Session, request: Generate) -> None:
        if self.kind != "lm":
            await self._error(ws, "generate: this model is a classifier (generation needs a language model)")
            return
        if session.generating:
            await self._error(ws, "generate: a continuation of this stream is already being sent")
            return
        loop, outbox, fmt = self._loop, session.outbox, session.format
        await self._drain(session)
        saved = await loop.run_in_executor(None, self.engine.slot_state, session.slot)
        steps = max(1, int(round(request.seconds * self.rate)))
        block = self.engine.chunk

        def emit(tokens: torch.Tensor) -> bool:
            if session.ws is not ws:
                return False
            frame = encode_pcm(self.tokenizer.decode(tokens)[0].numpy(), fmt)
            loop.call_soon_threadsafe(self._deliver, session, outbox, frame)
            return True

        def run() -> None:
            try:
                n = continue_stream(self.model, saved, steps, emit, request.temperature, request.top_p, block)
                message = json.dumps({"type": "generated", "samples": n})
            except Exception as e:  # reported to this client; the stream itself is untouched
                logger.exception("generate failed")
                message = json.dumps({"type": "error", "message": f"generate failed: {e}"})
            loop.call_soon_threadsafe(self._deliver, session, outbox, message)
            session.generating = False

        session.generating = True
        self._generator_pool.submit(run)

    # ------------------------------------------------------------------------------------------- results

    def _on_results(self, slots: list[int], result: PushResult) -> None:
        """On the ticking thread: one result message per slot, handed to the event loop in one call."""
        out, chunk = [], self.engine.chunk
        for i, slot in enumerate(slots):
            session = self._by_slot.get(slot)
            if session is None:
                continue
            message = self._account(session, result, i, chunk)
            out.append((session, session.outbox, message))
        self.counts["results"] += len(out)
        if out and self._loop is not None:
            self._loop.call_soon_threadsafe(self._deliver_many, out)

    def _account(self, session: Session, result: PushResult, i: int, n: int) -> str:
        """Update a session's running sums with row i of a push of n samples; its result message."""
        position = result.positions[i]
        if self.kind == "lm":
            bits = float(result.bits[i])
            scored = n - 1 if position == n else n  # a stream's first token is not scored
            session.total_bits += bits * scored
            session.scored += scored
            return json.dumps({"type": "result", "position": position, "bits_per_sample": bits})
        probs = result.probs[i].tolist()
        session.last_probs = probs
        top = self.labels[max(range(len(probs)), key=probs.__getitem__)]
        return json.dumps({"type": "result", "position": position, "probs": probs, "top": top})

    def _deliver_many(self, items) -> None:
        for session, outbox, message in items:
            self._deliver(session, outbox, message)

    def _deliver(self, session: Session, outbox: asyncio.Queue | None, message) -> None:
        """Queue a message for the connection it was made for (dropped if that connection is gone)."""
        if outbox is None or session.outbox is not outbox or session.ws is None:
            return
        try:
            outbox.put_nowait(message)
        except asyncio.QueueFull:
            ws = session.ws
            self._detach(session)
            self.counts["errors"] += 1
            asyncio.ensure_future(self._cut(ws))

    async def _cut(self, ws) -> None:
        if not ws.closed:
            text = "client does not read its results: closing (the stream is kept)"
            try:
                await asyncio.wait_for(ws.send_str(json.dumps({"type": "error", "message": text})), 1.0)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await ws.close(code=1008, message=b"send queue full")

    async def _send_loop(self, session: Session, ws, outbox: asyncio.Queue) -> None:
        while True:
            message = await outbox.get()
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return
            finally:
                outbox.task_done()

    async def _send_now(self, session: Session, message: dict) -> None:
        try:
            await session.ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError):
            pass

    # ------------------------------------------------------------------------------------------- lifetime

    def _detach(self, session: Session) -> None:
        """The connection is gone: keep the stream for ``keep_s`` seconds."""
        session.ws = None
        session.outbox = None
        if session.sender is not None:
            session.sender.cancel()
            session.sender = None
        if not session.closed and not self.stopping and self._loop is not None:
            session.expiry = self._loop.call_later(self.config.keep_s, self._expire, session)

    def _expire(self, session: Session) -> None:
        if session.ws is None and not session.closed:
            self._forget(session)
            asyncio.ensure_future(self._release(session.slot))

    async def _release(self, slot: int) -> None:
        await self._loop.run_in_executor(None, self.scheduler.remove, slot)
        await self._loop.run_in_executor(None, self.engine.close, slot)

    def _forget(self, session: Session) -> None:
        session.closed = True
        self.sessions.pop(session.id, None)
        self._by_slot.pop(session.slot, None)

    def _save_all(self) -> int:
        """Write every stream to ``state_dir`` (after the ticks stopped). Returns how many."""
        directory = Path(self.config.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        count = 0
        for session in list(self.sessions.values()):
            tensors = self.engine.slot_state(session.slot)
            buffered = self.scheduler.buffered(session.slot)
            tensors[SERVE_PREFIX + "buffered"] = torch.from_numpy(buffered)[None].clone()
            tensors[SERVE_PREFIX + "received"] = torch.tensor([session.path.received], dtype=torch.long)
            tensors[SERVE_PREFIX + "total_bits"] = torch.tensor([session.total_bits], dtype=torch.float64)
            tensors[SERVE_PREFIX + "scored"] = torch.tensor([session.scored], dtype=torch.long)
            if session.last_probs is not None:
                tensors[SERVE_PREFIX + "last_probs"] = torch.tensor([session.last_probs], dtype=torch.float32)
            metadata = {"sample_rate": str(session.path.sample_rate), "format": session.format}
            tmp = directory / f".{session.id}.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
            tmp.replace(directory / f"{session.id}.safetensors")
            count += 1
        return count

    def _restore(self) -> None:
        """Take back the streams a previous server saved in ``state_dir`` (their files are removed once taken)."""
        directory = Path(self.config.state_dir)
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.safetensors")):
            stream_id = path.name[: -len(".safetensors")]
            try:
                with safe_open(str(path), framework="pt") as f:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                    metadata = f.metadata() or {}
                sample_rate, fmt = int(metadata["sample_rate"]), metadata["format"]
                slot = self.engine.open(tensors)
            except (OSError, KeyError, ValueError, CapacityError) as e:
                logger.warning("not resuming %s: %s", path, e)
                continue
            session = Session(stream_id, slot, InputPath(sample_rate, self.rate, self.tokenizer), fmt)
            session.path.received = int(tensors[SERVE_PREFIX + "received"][0])
            session.total_bits = float(tensors[SERVE_PREFIX + "total_bits"][0])
            session.scored = int(tensors[SERVE_PREFIX + "scored"][0])
            if SERVE_PREFIX + "last_probs" in tensors:
                session.last_probs = tensors[SERVE_PREFIX + "last_probs"][0].tolist()
            self.sessions[stream_id] = session
            self._by_slot[slot] = session
            self.scheduler.add(slot, tensors[SERVE_PREFIX + "buffered"][0].numpy())
            session.expiry = self._loop.call_soon_threadsafe(self._keep, session)
            path.unlink()
            self.counts["restored"] += 1
        if self.counts["restored"]:
            logger.info("resumed %d stream(s) from %s", self.counts["restored"], directory)

    def _keep(self, session: Session) -> None:
        if session.ws is None and not session.closed:
            session.expiry = self._loop.call_later(self.config.keep_s, self._expire, session)


def run_server(server: StreamServer, print_fn=print) -> None:
    """Serve until SIGINT / SIGTERM (then write the streams to ``state_dir``)."""
    cfg = server.config
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print_fn(f"audiomamba serve: {server.kind}, {server.rate} Hz, {server.engine.chunk}-sample chunks "
             f"({1000 * server.engine.chunk / server.rate:g} ms), up to {cfg.max_streams} streams on "
             f"{server.engine.device}; "
             f"http://{cfg.host}:{cfg.port}/ (started {started})")
    web.run_app(server.app(), host=cfg.host, port=cfg.port, print=None, shutdown_timeout=5.0,
                handle_signals=True)



def serve(model, host: str = "127.0.0.1", port: int = 8000, max_streams: int = 64, max_wait_ms: float = 5.0,
          chunk_ms: float = 20.0, keep_s: float = 60.0, state_dir: str | None = None, token: str | None = None,
          compile: bool = False, print_fn=print) -> None:
    """Serve a loaded model (``audiomamba serve``): its audio contract gives the sample rate, labels and
    tokenizer. Runs until SIGINT / SIGTERM."""
    if model.audio is None:
        raise ValueError("the model has no audio contract (sample rate, labels, tokenizer): save it with one "
                         "(model.audio = AudioContract(...); model.save(dir))")
    config = ServeConfig(host=host, port=port, max_streams=max_streams, max_wait_ms=max_wait_ms, chunk_ms=chunk_ms,
                         keep_s=keep_s, state_dir=state_dir, token=token)
    server = StreamServer(model, model.audio, config, compile=compile)
    if server.engine.cuda_graphs:
        print_fn(f"capturing the push of each batch bucket up to {max_streams} as a CUDA graph")
    elif compile:
        print_fn(f"compiling the push of {max_streams} streams (torch.compile: a minute or more on a small CPU)")
    server.engine.warmup()
    run_server(server, print_fn)
