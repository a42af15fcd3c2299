"""Ticks: when to run a batched push, and over which streams.

Each stream fed to the scheduler has a buffer of model-rate input (waveform samples or tokens) not yet pushed.
A tick takes one chunk from every stream whose buffer holds a full one and runs them as one ``Engine.push``.
The policy: once some stream has a chunk ready, wait until every stream has one, or until ``max_wait_ms`` have
passed since the first became ready, whichever comes first; then tick. Streams that produce audio in real time
thus share ticks (one push per chunk period), and an idle stream delays the others by at most ``max_wait_ms``.
A stream that is further ahead (a client sending faster than real time) advances one chunk per tick.

The ticks run on one thread (``start`` / ``stop``), or one at a time through ``tick`` (tests, benchmarks); the
results go to ``on_results`` on the ticking thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from .engine import Engine, PushResult
from .metrics import Histogram

TICK_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
logger = logging.getLogger(__name__)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Scheduler:
    """Buffers and ticks over an :class:`Engine`'s open slots.

    Args:
        engine: the engine whose slots are fed.
        max_wait_ms: how long a ready chunk may wait for the batch to fill.
        max_buffer: samples a stream's buffer may hold before ``feed`` refuses more (BufferError).
        on_results: called after each tick with (slots, PushResult) on the ticking thread.
    """

    def __init__(self, engine: Engine, max_wait_ms: float = 5.0, max_buffer: int | None = None,
                 on_results: Callable[[list[int], PushResult], None] | None = None):
        self.engine = engine
        self.max_wait = max_wait_ms / 1000
        self.max_buffer = max_buffer if max_buffer is not None else 250 * engine.chunk
        self.on_results = on_results
        self.dtype = np.int64 if engine.tokens else np.float32
        self._buffers: dict[int, np.ndarray] = {}
        self._ready_since: dict[int, float] = {}  # slot → when its buffer first held a full chunk
        self._busy: set[int] = set()  # slots of the tick in flight
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.tick_seconds = Histogram(TICK_SECONDS_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)

    # ------------------------------------------------------------------------------------------- streams

    def add(self, slot: int, buffered: np.ndarray | None = None) -> None:
        """Start feeding an open slot (``buffered``: input carried over from a saved stream)."""
        with self._cond:
            self._buffers[slot] = np.zeros(0, self.dtype)
        if buffered is not None and len(buffered):
            self.feed(slot, buffered)

    def remove(self, slot: int) -> np.ndarray:
        """Stop feeding a slot once the tick in flight (if it has the slot) is done; returns its unpushed input."""
        with self._cond:
            while slot in self._busy:
                self._cond.wait()
            self._ready_since.pop(slot, None)
            self._cond.notify_all()  # the batch a waiting tick expects is one smaller
            return self._buffers.pop(slot)

    def buffered(self, slot: int) -> np.ndarray:
        """A copy of a slot's unpushed input."""
        with self._cond:
            return self._buffers[slot].copy()

    def full(self, slot: int) -> bool:
        """Whether a slot's buffer holds ``max_buffer`` samples or more (``feed`` refuses more)."""
        with self._cond:
            return len(self._buffers[slot]) >= self.max_buffer

    def feed(self, slot: int, x: np.ndarray) -> None:
        """Append model-rate input (L,) to a slot's buffer; BufferError (nothing appended) when it already holds
        ``max_buffer`` samples (so a buffer holds at most ``max_buffer`` plus one feed)."""
        with self._cond:
            buf = self._buffers[slot]
            if len(buf) >= self.max_buffer:
                raise BufferError(f"input buffer full ({len(buf)} samples waiting, at most {self.max_buffer}): "
                                  "audio arrives faster than the server processes it")
            buf = self._buffers[slot] = np.concatenate([buf, np.asarray(x, self.dtype)])
            if len(buf) >= self.engine.chunk and slot not in self._ready_since:
                self._ready_since[slot] = time.monotonic()
                self._cond.notify_all()

    def drained(self, slot: int) -> bool:
        """Whether a slot has no full chunk waiting and none in flight."""
        with self._cond:
            return len(self._buffers[slot]) < self.engine.chunk and slot not in self._busy

    @property
    def streams(self) -> int:
        return len(self._buffers)

    # ------------------------------------------------------------------------------------------- ticks

    def tick(self, timeout: float | None = None) -> tuple[list[int], PushResult] | None:
        """Wait (at most ``timeout`` s) for a chunk, apply the batching policy, run one push; None if no chunk
        became ready in time (or the scheduler is stopping)."""
        end = None if timeout is None else time.monotonic() + timeout
        chunk = self.engine.chunk
        with self._cond:
            while not self._ready_since and not self._stopping:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self._stopping:
                return None
            deadline = min(self._ready_since.values()) + self.max_wait
            limit = min(len(self._buffers), self.engine.max_streams)
            while len(self._ready_since) < limit and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                limit = min(len(self._buffers), self.engine.max_streams)
            slots = sorted(self._ready_since, key=self._ready_since.get)[: self.engine.max_streams]
            rows = []
            for s in slots:
                buf = self._buffers[s]
                rows.append(buf[:chunk])
                self._buffers[s] = buf[chunk:]
                if len(buf) - chunk >= chunk:
                    self._ready_since[s] = time.monotonic()
                else:
                    del self._ready_since[s]
            self._busy.update(slots)
        try:
            start = time.perf_counter()
            result = self.engine.push(slots, torch.from_numpy(np.stack(rows)))
            self.tick_seconds.observe(time.perf_counter() - start)
            self.batch_sizes.observe(len(slots))
            if self.on_results is not None:
                self.on_results(slots, result)
        finally:
            with self._cond:
                self._busy.difference_update(slots)
                self._cond.notify_all()
        return slots, result

    def start(self) -> None:
        """Run ticks on a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="audiomamba-ticks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the tick in flight and stop ticking."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.tick(timeout=0.5)
            except Exception:  # a failed push loses that tick's chunks; the server keeps ticking for the rest
                logger.exception("serving: a tick failed")
