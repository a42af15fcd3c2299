"""The serving engine: a pool of per-stream state slots and one batched push over any subset of them.

    engine = Engine(model, max_streams=64, chunk=160)
    a, b = engine.open(), engine.open()            # two slots, each at the start of a stream
    out = engine.push([a, b], x)                    # x (2, chunk): one chunk per slot → per-slot results
    saved = engine.slot_state(a)                    # Stream.state_dict format (+ serve.* entries)
    engine.close(a); c = engine.open(saved)         # ... restored bit-exactly, in this or another process

The pool holds the model's state for ``max_streams`` streams (plus one scratch slot that padded rows of a batch
read and write), batch-first tensors on the model's device, indexed by slot. A push gathers the rows of the slots
it serves, runs the model's forward over one chunk for all of them at once, and scatters the new state back. The
rows of a batch never mix, so a stream's outputs do not depend on which other streams share its push: they match
``model.stream(1)`` fed the same chunks (up to float rounding of the batched products, well within 1e-5).

Every slot advances by whole chunks and a chunk is a multiple of the model's pooling product, so every slot sits
at pooling phase 0 at the start of every push: one program per batch size serves them all (no host sync for the
phases). The fast paths run fixed batch sizes (padded with the scratch slot), so that they need few programs:

- CPU, ``compile=True``: a push of more than half of ``max_streams`` runs through the compiled streaming graph
  (``Stream(compile=True)``'s, inductor C++) of batch ``max_streams``, padded: one graph (a compile takes a minute
  or more on a small CPU), compiled on a helper thread from its first use (``warmup`` compiles ahead); smaller
  pushes, and all pushes until the graph is ready, run eagerly at their own batch size;
- CUDA (``cuda_graphs``, default on): batch sizes round up to buckets (1, 2, 3, 4, 6, 8, 12, ..., ``max_streams``:
  at most a third of a batch is padding); gather, forward, scatter and the result reduction of a bucket are
  captured as one CUDA graph on first use (``warmup`` captures ahead); a push is then one graph replay and one copy
  of the results to the host.

What a push returns per slot is the reduction a client is sent: a classifier's class probabilities after the
chunk's last sample; a language model's surprise, the mean negative log2-likelihood per token of the chunk's
tokens under the model (its first token scored by the previous chunk's last logits, kept per slot).
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from ..state import flatten_state, map_state
from ..streaming import _compile_push_graph, prepare_push_graph

POSITION_KEY = "stream.position"  # the entries of Stream.state_dict (audiomamba.streaming)
STATE_PREFIX = "state."
SERVE_PREFIX = "serve."  # entries the server adds beside them (ignored by Stream.load_state_dict's callers)


class CapacityError(RuntimeError):
    """Every slot is taken."""


@dataclass
class PushResult:
    """What one push computed, rows in the order of its slots.

    probs: (b, C) float32 class probabilities after each chunk (classifiers), else None.
    bits: (b,) float32 mean -log2 p per token of each chunk (language models), else None.
    positions: each slot's position after the push (samples consumed at the model rate).
    """

    probs: torch.Tensor | None
    bits: torch.Tensor | None
    positions: list[int]


class Engine:
    """State slots for ``max_streams`` streams of a causal AudioClassifier or one-codebook AudioLM.

    Args:
        model: a causal model in eval mode (float32 for ``compile``).
        max_streams: slots in the pool.
        chunk: samples (or tokens) per push and slot; a multiple of ``model.backbone.pool_product``.
        device: where the pool lives and the model runs (default: the model's device).
        compile: CPU only: pushes of more than half the slots through one compiled streaming graph.
        cuda_graphs: CUDA only: capture each bucket's push as a CUDA graph (default: on for CUDA).

    Thread-safe: pushes and slot operations take one lock.
    """

    def __init__(self, model, max_streams: int, chunk: int, device=None, compile: bool = False,
                 cuda_graphs: bool | None = None):
        if not getattr(model, "causal", False):
            raise ValueError("serving needs a causal model (backbone.bidirectional: false)")
        if model.config.kind == "lm" and model.config.n_codebooks != 1:
            raise ValueError(f"serving takes one-codebook language models, this one has {model.config.n_codebooks}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        pool_product = model.backbone.pool_product
        if chunk < 1 or chunk % pool_product:
            raise ValueError(f"chunk: {chunk} samples is not a multiple of the model's pooling product "
                             f"{pool_product} (choose --chunk-ms so that it is)")
        param = next(model.parameters())
        self.model = model
        self.device = torch.device(device) if device is not None else param.device
        if self.device.type == param.device.type and self.device.index is None:
            self.device = param.device  # "cuda" names the model's card
        if param.device != self.device:
            raise ValueError(f"device: the model is on {param.device}, not {self.device} (move it first)")
        self.max_streams, self.chunk = max_streams, chunk
        self.kind = model.config.kind
        self.tokens = model.config.kind == "lm" or model.config.input == "tokens"
        self.vocab_size = model.config.vocab_size if self.tokens else None
        if compile and self.device.type != "cpu":
            raise ValueError(f"compile: the compiled push runs on the CPU, got device {self.device}")
        if compile and param.dtype != torch.float32:
            raise ValueError("compile: needs a float32 model")
        self.compile = bool(compile)
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs: needs a CUDA device")
        self._phases = [0] * len(model.backbone.pools)
        # the pool: every state tensor with max_streams + 1 rows (the last one is the scratch slot)
        self.scratch = max_streams
        self._template = model.init_state(1, self.device)
        self._init = flatten_state(self._template)  # {name: (1, ...)} a fresh stream
        self.pool = {k: v.repeat(max_streams + 1, *([1] * (v.dim() - 1))) for k, v in self._init.items()}
        if self.kind == "lm":  # the log-probabilities of each slot's next token (scores the next chunk's first)
            self.pool["last_logp"] = torch.zeros(max_streams + 1, self.vocab_size, device=self.device)
        self.positions = [0] * (max_streams + 1)
        self._free = list(range(max_streams - 1, -1, -1))  # a stack: the lowest slots first
        self._lock = threading.RLock()
        self._programs: dict[int, object] = {}  # bucket → its compile (a Future) or captured CUDA graph
        self._to_compile: queue.Queue = queue.Queue()
        self._compiler: threading.Thread | None = None
        self._graph_pool = None

    # ------------------------------------------------------------------------------------------- slots

    @property
    def active(self) -> int:
        """Slots in use."""
        return self.max_streams - len(self._free)

    def open(self, saved: dict[str, torch.Tensor] | None = None) -> int:
        """Take a free slot, at the start of a stream or restored from ``slot_state`` output; CapacityError when
        all ``max_streams`` are taken, ValueError for a saved state that does not fit the model."""
        rows = self._check_saved(saved) if saved is not None else None
        with self._lock:
            if not self._free:
                raise CapacityError(f"all {self.max_streams} stream slots are in use")
            slot = self._free.pop()
            for k, v in (rows or self._init_rows()).items():
                self.pool[k][slot].copy_(v[0])
            self.positions[slot] = int(saved[POSITION_KEY][0]) if saved is not None else 0
            return slot

    def close(self, slot: int) -> None:
        """Give a slot back."""
        with self._lock:
            self._check_slot(slot)
            self._free.append(slot)

    def slot_state(self, slot: int) -> dict[str, torch.Tensor]:
        """One slot as CPU tensors in ``Stream.state_dict`` format (``state.<path>`` entries of batch 1 and
        ``stream.position``), plus ``serve.last_logp`` (1, V) for language models."""
        with self._lock:
            self._check_slot(slot)
            out = {STATE_PREFIX + k: self.pool[k][slot : slot + 1].cpu().clone() for k in self._init}
            if self.kind == "lm":
                out[SERVE_PREFIX + "last_logp"] = self.pool["last_logp"][slot : slot + 1].cpu().clone()
            out[POSITION_KEY] = torch.tensor([self.positions[slot]], dtype=torch.long)
            return out

    def _init_rows(self) -> dict[str, torch.Tensor]:
        rows = dict(self._init)
        if self.kind == "lm":
            rows["last_logp"] = torch.zeros(1, self.vocab_size, device=self.device)
        return rows

    def _check_saved(self, saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pool rows of a saved slot; ValueError naming what does not fit."""
        if POSITION_KEY not in saved:
            raise ValueError(f"saved stream: missing {POSITION_KEY!r}")
        position = int(saved[POSITION_KEY][0])
        if position < 0 or position % self.chunk:
            raise ValueError(f"saved stream: position {position} is not a whole number of {self.chunk}-sample chunks "
                             "(saved by a server with another chunk length?)")
        rows = {}
        for k, ref in self._init.items():
            got = saved.get(STATE_PREFIX + k)
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                raise ValueError(f"saved stream: entry {STATE_PREFIX + k} is missing or not {tuple(ref.shape)} "
                                 f"{ref.dtype} (saved from another model?)")
            rows[k] = got
        if self.kind == "lm":
            got = saved.get(SERVE_PREFIX + "last_logp")
            if got is None or got.shape != (1, self.vocab_size):
                raise ValueError(f"saved stream: entry {SERVE_PREFIX}last_logp is missing or not "
                                 f"(1, {self.vocab_size})")
            rows["last_logp"] = got.float()
        known = {POSITION_KEY} | {STATE_PREFIX + k for k in self._init}
        extra = sorted(k for k in saved if k not in known and not k.startswith(SERVE_PREFIX))
        if extra:
            raise ValueError(f"saved stream: unexpected entries {extra[:5]}")
        return rows

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.max_streams or slot in self._free:
            raise ValueError(f"slot {slot} is not open")

    # ------------------------------------------------------------------------------------------- pushes

    def bucket(self, n: int) -> int:
        """The batch size a push of n slots runs at on a fast path: the next of 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
        (powers of two and three times them: at most a third of a batch is padding), at most ``max_streams``."""
        return min(next(b for b in _buckets(n)), self.max_streams)

    def push(self, slots: list[int], x: torch.Tensor) -> PushResult:
        """One chunk for each of ``slots`` (distinct open slots): x (b, chunk) finite waveform samples (float) or
        tokens (int, in range), both checked → the per-slot reductions (see the module docstring), state
        advanced."""
        b = len(slots)
        if x.shape != (b, self.chunk):
            raise ValueError(f"x: expected ({b}, {self.chunk}) (one chunk per slot), got {tuple(x.shape)}")
        if len(set(slots)) != b:
            raise ValueError("slots: each slot at most once per push")
        if self.tokens:
            if x.is_floating_point():
                raise ValueError(f"x: this model takes tokens, got {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"x: tokens must lie in [0, {self.vocab_size})")
            x = x.long()
        elif not x.is_floating_point():
            raise ValueError(f"x: this model takes float waveform samples, got {x.dtype}")
        elif not bool(torch.isfinite(x).all()):  # here, not in the step (a host sync, which a CUDA graph cannot hold)
            raise ValueError("x: NaN or infinite samples (push rejected, no slot changed)")
        with self._lock:
            for s in slots:
                self._check_slot(s)
            graph = self._compiled(self.max_streams) if self.compile and 2 * b > self.max_streams else None
            size = self.max_streams if graph is not None else self.bucket(b) if self.cuda_graphs else b
            index = torch.full((size,), self.scratch, dtype=torch.long)
            index[:b] = torch.tensor(slots, dtype=torch.long)
            first = torch.zeros(size, dtype=torch.bool)  # rows whose chunk is the stream's first (no previous logits)
            first[:b] = torch.tensor([self.positions[s] == 0 for s in slots])
            xs = x.new_zeros((size, self.chunk)) if size > b else x
            if size > b:
                xs[:b] = x
            xs, index, first = xs.to(self.device), index.to(self.device), first.to(self.device)
            if self.cuda_graphs:
                summary = self._run_graph(size, xs, index, first)
            else:
                summary = self._step(xs, index, first, graph)
            summary = summary[:b].float().cpu()
            for s in slots:
                self.positions[s] += self.chunk
            positions = [self.positions[s] for s in slots]
        if self.kind == "lm":
            return PushResult(None, summary, positions)
        return PushResult(summary, None, positions)

    def _step(self, x: torch.Tensor, index: torch.Tensor, first: torch.Tensor, graph=None) -> torch.Tensor:
        """Gather the rows ``index`` of the pool, run one chunk x (B, n), scatter the new state back; returns the
        reduction (B, C) probabilities or (B,) bits. ``graph``: the compiled streaming graph for batch B."""
        model = self.model
        names = list(self._init)
        # eager pushes in inference mode (less dispatch work per op); the compiled graph and CUDA graph captures
        # under no_grad, as the compiled stream runs them
        mode = torch.no_grad() if graph is not None or self.cuda_graphs else torch.inference_mode()
        with mode:
            flat = [self.pool[k].index_select(0, index) for k in names]
            h = model.embed(x[..., None]) if self.tokens else x  # (B, n, D) embedded tokens (range checked in push)
            if graph is not None:
                prepare_push_graph(model, h, flat, list(self._phases), self.tokens, False, first=False)
                out, new = graph(model, h, flat, list(self._phases), self.tokens, False)
            else:
                it = iter(flat)
                state = map_state(lambda _: next(it), self._template)
                h = h if self.tokens else model._inputs(h, check_finite=False)  # push checked it
                out, state = model.forward_embedded(h, state, self._phases)
                new = list(flatten_state(state).values())
            for k, t in zip(names, new):
                self.pool[k].index_copy_(0, index, t)
            if self.kind != "lm":
                return out[:, -1].float().softmax(dim=-1)  # (B, C)
            logp = out[:, :, 0].float().log_softmax(dim=-1)  # (B, n, V)
            inner = logp[:, :-1].gather(-1, x[:, 1:, None]).sum(dim=(1, 2))  # (B,) tokens 1..n-1 of the chunk
            prev = self.pool["last_logp"].index_select(0, index).gather(-1, x[:, :1])[:, 0]  # (B,) token 0
            total = inner + torch.where(first, torch.zeros_like(prev), prev)
            count = (x.shape[1] - 1) + (~first).to(total.dtype)
            self.pool["last_logp"].index_copy_(0, index, logp[:, -1])
            return -total / count.clamp(min=1) / math.log(2)  # (B,)

    def _compiled(self, size: int, wait: bool = False):
        """The compiled streaming graph for batch ``size`` once it is built; until then None (the push runs
        eagerly at its own batch size) while a helper thread compiles it (one bucket at a time). ``wait``: build
        it now."""
        entry = self._programs.get(size)
        if entry is None:
            entry = self._programs[size] = Future()
            self._to_compile.put((size, entry))
            if self._compiler is None:  # a daemon thread: an unfinished compile never holds up the exit
                self._compiler = threading.Thread(target=self._compile_loop, name="audiomamba-compile", daemon=True)
                self._compiler.start()
        if wait:
            entry.exception()  # waits
        if not entry.done():
            return None
        if entry.exception() is not None:  # e.g. no C++ compiler: push eagerly from now on
            warnings.warn(f"serving: the compiled push failed to build, pushing eagerly ({entry.exception()})",
                          stacklevel=3)
            self.compile = False
            return None
        return entry.result()

    def _compile_loop(self) -> None:
        while True:
            size, future = self._to_compile.get()
            try:
                future.set_result(self._compile(size))
            except Exception as e:  # reported (once) by the next push that wants the graph
                future.set_exception(e)

    def _compile(self, size: int):
        """Compile the push of batch ``size`` (a first call on fresh states; the pool is not touched)."""
        graph = _compile_push_graph()
        x = torch.zeros(size, self.chunk, dtype=torch.long if self.tokens else torch.float32)
        flat = [v.expand(size, *v.shape[1:]).contiguous() for v in self._init.values()]
        with torch.no_grad():
            h = self.model.embed(x[..., None]) if self.tokens else x
            prepare_push_graph(self.model, h, flat, list(self._phases), self.tokens, False, first=True)
            graph(self.model, h, flat, list(self._phases), self.tokens, False)
        return graph

    def _run_graph(self, size: int, x: torch.Tensor, index: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The bucket's push as a CUDA graph (captured at its first push; eager if capture fails)."""
        entry = self._programs.get(size)
        if entry is None:
            entry = self._programs[size] = self._capture(size, x, index, first)
        if entry == "eager":
            return self._step(x, index, first)
        graph, static = entry
        static["x"].copy_(x)
        static["index"].copy_(index)
        static["first"].copy_(first)
        graph.replay()
        return static["out"]

    def _capture(self, size: int, x: torch.Tensor, index: torch.Tensor, first: torch.Tensor):
        """Capture ``_step`` for batch ``size`` into a CUDA graph; its warm-up runs write only the scratch slot."""
        scratch = torch.full_like(index, self.scratch)
        static = {"x": x.clone(), "index": scratch, "first": first.clone()}
        backup = {k: v[self.scratch].clone() for k, v in self.pool.items()}
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up (lazy initialisations, autotuning) outside the capture
                    self._step(static["x"], static["index"], static["first"])
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                static["out"] = self._step(static["x"], static["index"], static["first"])
        except RuntimeError as err:  # e.g. an op with a host sync inside a mixer: the same push, eagerly
            torch.cuda.synchronize(self.device)
            warnings.warn(f"serving: CUDA graph capture failed for batch {size}, pushing eagerly ({err})",
                          stacklevel=3)
            return "eager"
        finally:
            for k, v in backup.items():
                self.pool[k][self.scratch].copy_(v)
        return graph, static

    def warmup(self, sizes: list[int] | None = None) -> None:
        """Build the programs now: the compiled graph (CPU), or the CUDA graphs of the buckets of these batch sizes
        (default: every bucket up to ``max_streams``), run on the scratch slot; a no-op on the eager path."""
        if not (self.compile or self.cuda_graphs):
            return
        if not self.cuda_graphs:
            self._compiled(self.max_streams, wait=True)
            return
        sizes = sorted({self.bucket(n) for n in (sizes or _powers_up_to(self.max_streams))}, reverse=True)
        dtype = torch.long if self.tokens else torch.float32
        with self._lock:
            backup = {k: v[self.scratch].clone() for k, v in self.pool.items()}
            for size in sizes:
                x = torch.zeros(size, self.chunk, dtype=dtype, device=self.device)
                index = torch.full((size,), self.scratch, dtype=torch.long, device=self.device)
                first = torch.zeros(size, dtype=torch.bool, device=self.device)
                self._run_graph(size, x, index, first)
            for k, v in backup.items():
                self.pool[k][self.scratch].copy_(v)

    # ------------------------------------------------------------------------------------------- tails

    def push_tail(self, slot: int, x: torch.Tensor) -> PushResult:
        """The last, partial chunk of a stream that ends: x (1, n), n < chunk, eagerly at batch 1. The slot's
        position is then no longer a whole number of chunks: close it afterwards."""
        if x.dim() != 2 or x.shape[0] != 1 or not 0 < x.shape[1] < self.chunk:
            raise ValueError(f"x: expected (1, n) with 0 < n < {self.chunk}, got {tuple(x.shape)}")
        with self._lock:
            self._check_slot(slot)
            index = torch.tensor([slot], device=self.device)
            names = list(self._init)
            it = iter([self.pool[k].index_select(0, index) for k in names])
            state = map_state(lambda _: next(it), self._template)
            x = x.to(self.device)
            with torch.inference_mode():
                out, state = self.model(x, state)
                for k, t in zip(names, flatten_state(state).values()):
                    self.pool[k].index_copy_(0, index, t)
                first = self.positions[slot] == 0
                if self.kind == "lm":
                    logp = out.float().log_softmax(dim=-1)  # (1, n, V)
                    total = logp[:, :-1].gather(-1, x[:, 1:, None]).sum()
                    count = x.shape[1] - 1
                    if not first:
                        total = total + self.pool["last_logp"][slot, x[0, 0]]
                        count += 1
                    self.pool["last_logp"][slot] = logp[0, -1]
                    summary = (-total / max(count, 1) / math.log(2)).reshape(1).float().cpu()
                else:
                    summary = out[:, -1].float().softmax(dim=-1).cpu()
            self.positions[slot] += x.shape[1]
            positions = [self.positions[slot]]
        if self.kind == "lm":
            return PushResult(None, summary, positions)
        return PushResult(summary, None, positions)


def chunk_samples(model, sample_rate: int, chunk_ms: float) -> int:
    """Samples per push for chunks of about ``chunk_ms`` at ``sample_rate``: the nearest multiple of the model's
    pooling product (at least one), e.g. 20 ms at 8 kHz for a pooling product of 64: 192 samples (24 ms)."""
    pool = model.backbone.pool_product
    return pool * max(1, round(sample_rate * chunk_ms / 1000 / pool))


def _buckets(start: int = 1):
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... from the first >= start."""
    p = 1
    while True:
        for b in (p, 3 * p // 2) if p >= 2 else (p,):
            if b >= start:
                yield b
        p *= 2


def _powers_up_to(n: int) -> list[int]:
    """The buckets up to n, and n."""
    sizes = []
    for b in _buckets():
        if b >= n:
            return sizes + [n]
        sizes.append(b)
