"""Exact streaming inference: push chunks of any length into a causal model, get the outputs for exactly those
samples, equal to the offline forward over everything pushed so far (up to float rounding).

    stream = model.stream(batch_size=4)
    for chunk in chunks:                  # (4, n) waveform or tokens, any n (1, 320, 1000, ...)
        logits = stream.push(chunk)       # (4, n, ...) outputs for these n samples
    saved = stream.state_dict()           # plain tensors: save with safetensors, restore bit-exactly
    stream.load_state_dict(saved)         # ... also in another process, on another device

The rows of a batch are independent streams that advance together (one time axis), so B streams cost one
batched call. The state is the model's explicit state (``model.init_state``); nothing is hidden in modules.

``model.stream(B, compile=True)`` (CPU, float32) runs each push through ``torch.compile`` (inductor's C++
backend, static shapes, the whole push one graph): the first push of a chunk length compiles (tens of seconds on
a small CPU), later pushes of that length reuse it. The graph specialises on the chunk length and on the pooling
phases at the chunk's start, so chunk lengths that are multiples of the pooling product (``pool_product``, 64 for
``classifier_small``: 20 ms = 320 samples at 16 kHz) need one graph; other lengths cycle through several phases,
one compile each; past ``MAX_COMPILED_PATTERNS`` patterns per stream, new ones run eagerly (same outputs, eager
speed, one warning). For ragged chunking, stream with compile=False. S4D mixers stream through matrix products
whose operators depend only on the weights: they are computed once per chunk length and kept (recomputed when a
weight changes), and a compiled graph reads them as inputs.

``model.stream(B, weights="bfloat16")`` (opt-in, eager or compiled) streams a ``model.low_precision_copy()`` made
when the stream is made (later changes to the model's weights do not reach it): the linear layers' weights and
products in bfloat16, the rest in float32. Compiled, the copy's weights are frozen into the graphs (inductor
keeps them prepacked for oneDNN's bfloat16 kernels): faster on CPUs with bfloat16 instructions; eager, no faster
than float32. It approximates the float32 model's outputs (no 1e-5 guarantee: see ``low_precision_copy``);
the default, float32, streams the model itself, exactly.

The compiled graphs of a model are kept per (model, chunk pattern) and shared by its streams; each is called
without torch.compile's guards (whose checks of every weight and state tensor cost about as much as the
elementwise work of a 20 ms chunk): the stream itself makes sure that a graph only ever sees the inputs it was
made for (its chunk pattern, contiguous chunks, states with standard strides, the model's float32 CPU weights).
The graphs run with inductor's C++ wrapper (no Python between the kernels).
"""

from __future__ import annotations

import time
import types
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .layers.pool import _phase_of
from .layers.s4d import S4DMixer
from .precision import inference_weights_name
from .state import flatten_state, map_state, state_to, unflatten_state

MAX_COMPILED_PATTERNS = 8  # chunk patterns (length, pooling phases) compiled per stream; more run eagerly
_POSITION_KEY = "stream.position"
_STATE_PREFIX = "state."
# the compiled push graphs of each model: {chunk pattern: compiled function}; shared by the model's streams
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_S4D_MIXERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its S4D mixers


class Stream:
    """A stream over a causal AudioLM or AudioClassifier.

    Args:
        model: a causal model (a bidirectional one raises ValueError: it needs the whole input at once); put
            it in eval mode when it has dropout.
        batch_size: B streams run together.
        device, dtype: of the state (default: the model's parameters').
        compile: run pushes through ``torch.compile`` (see the module docstring); CPU and float32 only, else
            ValueError. ``compile_seconds`` adds up the time of the first push of each chunk pattern (length,
            pooling phases) in this stream: the compile (or the load of a graph compiled before in this process).
        weights: "float32" (default, None: the model itself, exact) or "bfloat16": stream a
            ``model.low_precision_copy("bfloat16")`` (``self.model``), an approximation of the float32 model.

    ``push`` takes (B, n) tokens or waveform samples ((B, n, K) tokens for K codebooks) and returns the model's
    outputs for them: LM logits (B, n[, K], V) or running classifier logits (B, n, C).
    """

    def __init__(self, model, batch_size: int = 1, device=None, dtype=None, compile: bool = False,
                 weights: str | None = None):
        if not getattr(model, "causal", False):
            raise ValueError(
                "cannot stream a bidirectional model: its reversed mixers need the whole input. "
                "Use a causal model (backbone.bidirectional: false), e.g. the classifier_small preset."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights = inference_weights_name(weights)
        if self.weights != "float32":
            if dtype not in (None, torch.float32):
                raise ValueError(f"weights={self.weights!r}: the stream's state stays float32, got dtype {dtype}")
            model = model.low_precision_copy(self.weights)
        param = next(model.parameters())
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        if compile:
            _check_compilable(model, self.device, self.dtype)
        self.position = 0
        self.state = model.init_state(batch_size, self.device, self.dtype)
        # where the pooling phases sit among the state's tensors (flatten_state order)
        names, prefix = list(flatten_state(self.state)), "backbone." if hasattr(self.state, "backbone") else ""
        self._phase_index = [names.index(f"{prefix}down.{i}.phase") for i in range(len(model.backbone.pools))]
        self.compile = bool(compile)
        self.compile_seconds = 0.0
        self._graph_keys: set = set()  # (shape, dtype, pooling phases) of the chunk patterns pushed so far
        self._warned = False
        # the weights' dtype and device that the compiled graphs assume (they run without guards)
        self._weights = (param, param.dtype, param.device)

    @property
    def state(self):
        """The streams' state (the model's state tree). Between compiled pushes it is kept as the graphs' flat
        list of tensors (rebuilding the tree at every push costs a tenth of a push) and built when read."""
        if self._leaves is not None:
            it = iter(self._leaves)
            self._state, self._leaves = map_state(lambda _: next(it), self._state), None
        return self._state

    @state.setter
    def state(self, value) -> None:
        self._state, self._leaves = value, None

    @property
    def compiled_patterns(self) -> int:
        """How many chunk patterns (length, pooling phases) this stream has run compiled (0 without compile)."""
        return len(self._graph_keys)

    def reset(self) -> None:
        """Start all B streams again from silence (a fresh state, position 0)."""
        self.state = self.model.init_state(self.batch_size, self.device, self.dtype)
        self.position = 0

    def push(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Feed n new samples per stream, chunk (B, n[, K]) (a tensor or a numpy array); returns the outputs
        (B, n, ...) for them. A chunk that is rejected (wrong shape, NaN or infinite samples, tokens out of range)
        raises ValueError and leaves the stream exactly as it was."""
        if isinstance(chunk, (np.ndarray, np.generic)):
            chunk = np.asarray(chunk)
            chunk = chunk if chunk.flags.c_contiguous else chunk.copy()  # (torch takes no negative strides)
            if chunk.dtype.kind not in "biuf":
                raise ValueError(f"chunk: expected numbers, got a numpy array of {chunk.dtype}")
            chunk = torch.from_numpy(chunk)
            if chunk.is_floating_point():  # numpy's default float64: samples in the state's dtype
                chunk = chunk.to(self.dtype)
        elif not isinstance(chunk, torch.Tensor):
            raise ValueError(f"chunk: expected a tensor or numpy array (batch, n), got {type(chunk).__name__}")
        if chunk.dim() < 2:
            raise ValueError(f"chunk: expected (batch, n) samples, got a {chunk.dim()}-d tensor of shape "
                             f"{tuple(chunk.shape)} (one stream's samples x go in as x[None])")
        if chunk.shape[0] != self.batch_size:
            raise ValueError(f"chunk: expected batch {self.batch_size} (the stream's batch_size), "
                             f"got shape {tuple(chunk.shape)}")
        if chunk.is_floating_point() and not bool(torch.isfinite(chunk).all()):
            raise ValueError(f"chunk: {int(chunk.isnan().sum())} NaN and {int(chunk.isinf().sum())} infinite "
                             f"sample(s) (of {chunk.numel()}); the stream is unchanged")
        chunk = chunk.to(self.device)
        key = self._pattern(chunk) if self.compile and chunk.shape[1] > 0 else None
        if key is None or not self._runs_compiled(key):
            with torch.inference_mode():
                if self.model.config.kind != "lm" and chunk.is_floating_point():
                    # a waveform, checked for NaN/Inf above: no second check (a host sync) in the model's forward
                    h = self.model._inputs(chunk, check_finite=False)
                    out, self.state = self.model.forward_embedded(h, self.state)
                else:
                    out, self.state = self.model(chunk, self.state)
        else:
            # no_grad, not inference_mode: inference tensors in the state would differ from a fresh or loaded
            # state in their dispatch keys, and the graph's guards would recompile for them
            with torch.no_grad():
                out = self._push_compiled(chunk, key)
        self.position += chunk.shape[1]
        return out

    def _flat_state(self) -> list[torch.Tensor]:
        """The state's tensors in ``flatten_state`` order (what the compiled graphs take and return)."""
        return self._leaves if self._leaves is not None else list(flatten_state(self._state).values())

    def _pattern(self, chunk: torch.Tensor) -> tuple:
        """What a compiled graph specialises on: the chunk's shape and dtype, the pooling phases."""
        flat = self._flat_state()
        phases = tuple(_phase_of(flat[i], f"state.down[{s}].phase") for s, i in enumerate(self._phase_index))
        return tuple(chunk.shape), chunk.dtype, phases

    def _runs_compiled(self, key: tuple) -> bool:
        """Whether a chunk pattern runs compiled: one seen before, or a new one within the per-stream budget."""
        if key in self._graph_keys:
            return True
        if len(self._graph_keys) < MAX_COMPILED_PATTERNS:
            return True
        if not self._warned:
            warnings.warn(f"Stream(compile=True): more than {MAX_COMPILED_PATTERNS} chunk patterns (length, pooling "
                          f"phases); new ones run eagerly. Push chunk lengths that are multiples of "
                          f"{self.model.backbone.pool_product} to stay compiled, or use compile=False", stacklevel=3)
            self._warned = True
        return False

    def _check_weights(self) -> None:
        """ValueError if the model was moved to another dtype or device since the stream was made (seen on its
        first parameter: ``model.to`` moves them all); the compiled graphs were made for the weights as they were
        (new values in place, e.g. ``load_state_dict``, are fine)."""
        param, dtype, device = self._weights
        if param.dtype != dtype or param.device != device:
            raise ValueError(f"Stream(compile=True): the model moved from {dtype} on {device} to {param.dtype} on "
                             f"{param.device} since the stream was made; make a new stream")

    def _push_compiled(self, chunk: torch.Tensor, key: tuple):
        model = self.model
        phases = key[2]
        self._check_weights()
        chunk = chunk.contiguous()  # the graphs assume standard strides (no guards check them)
        squeeze = False
        if model.config.kind == "lm" or model.config.input == "tokens":
            # the token range check reads values (a host sync): before the graph, with the embedding
            squeeze = chunk.dim() == 2 and model.config.kind == "lm"
            x, embedded = (model._embed_tokens(chunk) if model.config.kind == "lm" else model._inputs(chunk)), True
        else:
            x, embedded = chunk, False
        graphs = _GRAPHS.setdefault(model, {})
        graph = graphs.get(key)
        flat = self._flat_state()
        prepare_push_graph(model, x, flat, list(phases), embedded, squeeze, first=graph is None)
        if key in self._graph_keys and graph is not None:
            out, leaves = graph(model, x, flat, list(phases), embedded, squeeze)
        else:
            start = time.perf_counter()
            if graph is None:
                graph = graphs[key] = _compile_push_graph()
            # a low-precision copy is private to this stream: its weights are frozen into the graph as constants,
            # which lets inductor keep them prepacked for oneDNN's bfloat16 kernels
            from torch._inductor.exc import InductorError  # inductor costs ~1.4 s to import: only when compiling

            with torch._inductor.config.patch(freezing=self.weights != "float32"):
                try:
                    out, leaves = graph(model, x, flat, list(phases), embedded, squeeze)
                except InductorError:
                    # the C++ wrapper does not take every op: the Python one does
                    graph = graphs[key] = _compile_push_graph(cpp_wrapper=False)
                    out, leaves = graph(model, x, flat, list(phases), embedded, squeeze)
            self._graph_keys.add(key)
            self.compile_seconds += time.perf_counter() - start
        self._leaves = leaves  # the new state, flat (``state`` builds the tree when read)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stream as plain tensors: ``state.<path>`` entries and the position (samples pushed)."""
        out = {_STATE_PREFIX + k: v.detach().clone() for k, v in flatten_state(self.state).items()}
        out[_POSITION_KEY] = torch.tensor([self.position], dtype=torch.long)
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict`` output (bit-exact); the batch size may differ from the current one."""
        if _POSITION_KEY not in tensors:
            raise ValueError(f"stream state: missing {_POSITION_KEY!r} (not a Stream.state_dict)")
        flat = {k[len(_STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_STATE_PREFIX)}
        extra = sorted(k for k in tensors if k != _POSITION_KEY and not k.startswith(_STATE_PREFIX))
        if extra:
            raise ValueError(f"stream state: unexpected entries {extra[:5]}")
        batch = {v.shape[0] for v in flat.values()}
        if len(batch) != 1:
            raise ValueError(f"stream state: entries disagree on the batch size: {sorted(batch)}")
        template = self.model.init_state(batch.pop(), self.device, self.dtype)
        self.state = state_to(unflatten_state(template, flat), self.device)
        if self.compile:  # the strides the compiled graphs were made for (they return standard strides)
            self.state = map_state(_standard_strides, self.state)
        self.batch_size = next(iter(flat.values())).shape[0]
        self.position = int(tensors[_POSITION_KEY][0])

    def save(self, path: str | Path) -> None:
        """Write ``state_dict`` to a safetensors file."""
        save_file({k: v.cpu().contiguous() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: str | Path) -> None:
        """Restore a stream written by ``save`` (bit-exact)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"stream state file not found: {path}")
        self.load_state_dict(load_file(str(path)))


def _check_compilable(model, device: torch.device, dtype: torch.dtype) -> None:
    """ValueError unless the compiled push supports this stream: CPU, float32."""
    if device.type != "cpu":
        raise ValueError(f"compile=True: the compiled streaming path runs on the CPU (inductor's C++ backend), "
                         f"got device {device}; stream with compile=False on {device.type}")
    if dtype != torch.float32 or any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(f"compile=True: the compiled streaming path needs a float32 model and state, got {dtype}; "
                         "use compile=False")


def _compile_push_graph(cpp_wrapper: bool = True):
    """A compiled ``_push_graph`` for one (model, chunk pattern), called without guards.

    torch.compile keeps its graphs per code object and picks one by evaluating guards; here each pattern gets
    a copy of ``_push_graph`` with its own code object, so that its one graph is called directly (the stream
    picks the graph by the pattern, and ``Stream._push_compiled`` keeps the inputs as the graph assumes)."""
    code = _push_graph.__code__.replace()  # a new code object: its own compiled-graph cache
    fn = types.FunctionType(code, _push_graph.__globals__, _push_graph.__name__)
    options = {"cpp_wrapper": cpp_wrapper, "guard_filter_fn": torch.compiler.skip_all_guards_unsafe}
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def prepare_push_graph(model, x: torch.Tensor, flat: list[torch.Tensor], phases: list[int], embedded: bool,
                       squeeze: bool, first: bool) -> None:
    """Before each call of a compiled push graph (arguments as ``_push_graph``'s): the tensors that the graph
    reads as inputs besides the weights and the state, the S4D mixers' matrix operators, are made current for
    the weights as they are now. ``first``: the call traces the graph; one eager run of the same push (on copies
    of the state, no outputs kept) first computes the operators of the chunk lengths the pattern meets, so that
    the graph reads them rather than rebuilding them at every push. A no-op for models without S4D mixers."""
    mixers = _S4D_MIXERS.get(model)
    if mixers is None:
        mixers = _S4D_MIXERS[model] = [m for m in model.modules() if isinstance(m, S4DMixer)]
    if not mixers:
        return
    if first:
        with torch.no_grad():
            _push_graph(model, x, [t.clone() for t in flat], phases, embedded, squeeze)
    for mixer in mixers:
        mixer.refresh_operators()


def _push_graph(model, x: torch.Tensor, flat: list[torch.Tensor], phases: list[int], embedded: bool, squeeze: bool):
    """What a compiled push traces: the model's forward over one chunk with the pooling phases given (Python
    ints, so no host sync in the graph), from the state's tensors ``flat`` to the outputs and the new state's
    tensors (both in ``flatten_state`` order; returned with standard strides, as a fresh state has them).

    x: (B, n) waveform, or (B, n, D) features when ``embedded`` (tokens are embedded before the graph).
    """
    it = iter(flat)  # the state tree, built at trace time (the template's own tensors are never used)
    state = map_state(lambda _: next(it), model.init_state(x.shape[0], x.device))
    out, new = model.forward_embedded(x if embedded else model._inputs(x), state, phases)
    out = out[:, :, 0] if squeeze else out  # one-codebook LM logits (B, n, V)
    return out, [_standard_strides(t) for t in flatten_state(new).values()]


def _standard_strides(t: torch.Tensor) -> torch.Tensor:
    """t with the strides of a fresh contiguous tensor (also along size-1 dimensions, where ``contiguous()``
    keeps any stride: the graph's guards compare strides)."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    if t.stride() == tuple(reversed(strides)):
        return t
    return t.clone(memory_format=torch.contiguous_format)
