"""Streams over an exported step: ``OnnxStream`` (ONNX Runtime) and ``ProgramStream`` (a torch.export program).

Both behave like :class:`audiomamba.streaming.Stream`: ``push`` chunks of any length, get the outputs for
exactly those samples; ``state_dict`` / ``load_state_dict`` / ``save`` / ``load`` / ``reset``. The state dict
has the keys and values of ``Stream.state_dict`` (``state.<path>`` and ``stream.position``), as numpy arrays,
and ``save`` writes the file format of ``Stream.save``, so that a stream can move between PyTorch and an
exported runtime::

    stream = OnnxStream("export/")             # a directory written by `audiomamba export`
    for chunk in chunks:                       # (B, n) float32 waveform, or int tokens
        y = stream.push(chunk)                 # (B, n, C) numpy: running class logits (LM: next-token logits)

A push runs the chunk graph once per N samples (N = ``stream.chunk``, the length it was exported for) and the
one-sample graph for the rest (n mod N samples, one call each): push multiples of N, and let only the end of a
stream be shorter. Both graphs continue the same state, so outputs and state equal ``model.stream``'s for any
chunking (up to float rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layout import INPUT_NAME, read_layout

_POSITION_KEY = "stream.position"  # the keys of Stream.state_dict
_STATE_PREFIX = "state."


class ExportedStream:
    """What the runners share: checks, chunking into graph calls, the state. Subclasses implement ``_run``.

    Args:
        directory: written by ``audiomamba export`` (``stream.json`` and its graphs).
        batch_size: B streams that advance together (the rows of every chunk); default: the batch the graphs
            were exported for (1 for graphs with a dynamic batch). Graphs of a fixed batch run only that one.
    """

    backend = ""

    def __init__(self, directory: str | Path, batch_size: int | None = None):
        self.directory = Path(directory)
        self.layout = read_layout(self.directory)
        if self.layout["backend"] != self.backend:
            raise ValueError(f"{self.directory}: holds a {self.layout['backend']!r} export; "
                             f"{type(self).__name__} runs {self.backend!r}")
        fixed = self.layout["batch"] if isinstance(self.layout["batch"], int) else None
        batch_size = batch_size if batch_size is not None else (fixed or 1)
        self._check_batch(batch_size)
        self.chunk = int(self.layout["chunk"])
        self.batch_size = batch_size
        self.names = [s["name"] for s in self.layout["state"]]
        self._spec = {s["name"]: s for s in self.layout["state"]}
        self._graph_names = [INPUT_NAME] + [s["input"] for s in self.layout["state"]]
        spec = self.layout["input"]
        self._input_shape = list(spec["shape"])
        self._tokens = spec["kind"] == "tokens"
        self._vocab_size = spec.get("vocab_size")
        self.reset()

    def _check_batch(self, batch_size: int) -> None:
        fixed = self.layout["batch"]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(fixed, int) and batch_size != fixed:
            raise ValueError(f"batch_size {batch_size}: {self.directory} was exported for batches of {fixed} "
                             "(export with another --batch, or --dynamic-batch)")

    # ------------------------------------------------------------------ state

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        """The state tensors of ``batch_size`` fresh streams, in the graphs' order."""
        out = []
        for s in self.layout["state"]:
            shape = (batch_size, *s["shape"][1:])
            init = s["init"]
            if isinstance(init, dict):
                out.append(np.ascontiguousarray(np.broadcast_to(np.asarray(init["values"], dtype=s["dtype"]), shape)))
            else:
                out.append(np.full(shape, init, dtype=s["dtype"]))
        return out

    def reset(self) -> None:
        """Start all B streams again from silence (a fresh state, position 0)."""
        self.state = self.initial_state(self.batch_size)
        self.position = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """The stream as arrays: ``state.<path>`` entries and ``stream.position`` (``Stream.state_dict``'s keys)."""
        out = {_STATE_PREFIX + n: t.copy() for n, t in zip(self.names, self.state)}
        out[_POSITION_KEY] = np.array([self.position], dtype=np.int64)
        return out

    def load_state_dict(self, tensors) -> None:
        """Restore ``state_dict`` output, of this class or of ``Stream`` (numpy arrays or CPU torch tensors)."""
        if _POSITION_KEY not in tensors:
            raise ValueError(f"stream state: missing {_POSITION_KEY!r} (not a state_dict of a stream)")
        expected = {_STATE_PREFIX + n for n in self.names}
        missing = sorted(expected - set(tensors))
        extra = sorted(set(tensors) - expected - {_POSITION_KEY})
        if missing or extra:
            raise ValueError(f"stream state does not match the export: missing {missing[:5]}, unexpected {extra[:5]}")
        state, batch = [], set()
        for name in self.names:
            spec, value = self._spec[name], np.asarray(tensors[_STATE_PREFIX + name])
            if list(value.shape[1:]) != spec["shape"][1:] or value.dtype != np.dtype(spec["dtype"]):
                dims = ", ".join(map(str, spec["shape"][1:]))
                raise ValueError(f"stream state entry {name!r}: expected (batch, {dims}) {spec['dtype']}, "
                                 f"got {value.shape} {value.dtype}")
            state.append(np.ascontiguousarray(value).copy())
            batch.add(value.shape[0])
        if len(batch) != 1:
            raise ValueError(f"stream state: entries disagree on the batch size: {sorted(batch)}")
        self._check_batch(next(iter(batch)))
        self.state, self.batch_size = state, batch.pop()
        self.position = int(np.asarray(tensors[_POSITION_KEY]).reshape(-1)[0])

    def save(self, path: str | Path) -> None:
        """Write ``state_dict`` to a safetensors file (the format of ``Stream.save``: either loads it)."""
        from safetensors.numpy import save_file

        save_file(self.state_dict(), str(path))

    def load(self, path: str | Path) -> None:
        """Restore a stream written by ``save`` or by ``Stream.save`` (bit-exact)."""
        from safetensors.numpy import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"stream state file not found: {path}")
        self.load_state_dict(load_file(str(path)))

    # ------------------------------------------------------------------ pushing

    def _input(self, chunk) -> np.ndarray:
        """chunk → the graphs' input array (checked: batch, rank, dtype, token range). Cheap for the common case
        (a contiguous array of the graphs' dtype): a push's own work shows next to a graph call of a millisecond."""
        if isinstance(chunk, np.ndarray):
            x = chunk
        elif hasattr(chunk, "detach"):  # a torch tensor
            x = chunk.detach().cpu().numpy()
        else:
            x = np.asarray(chunk)
        shape = self._input_shape
        if x.ndim != len(shape) or x.shape[0] != self.batch_size or (x.ndim == 3 and x.shape[2] != shape[2]):
            want = ", ".join(["batch", "n"] + [str(k) for k in shape[2:]])
            raise ValueError(f"chunk: expected ({want}) with batch {self.batch_size}, got shape {x.shape}")
        if self._tokens:
            if x.dtype.kind not in "iu":
                raise ValueError(f"chunk: expected integer tokens, got {x.dtype}")
            if x.size and (x.min() < 0 or x.max() >= self._vocab_size):
                raise ValueError(f"chunk: token values must lie in [0, {self._vocab_size}), got {x.min()}..{x.max()}")
            return np.ascontiguousarray(x, dtype=np.int64)
        if x.dtype.kind != "f":
            raise ValueError(f"chunk: expected a float waveform, got {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def push(self, chunk) -> np.ndarray:
        """Feed n new samples per stream, chunk (B, n[, K]) (numpy or torch); returns the outputs (B, n, ...)."""
        x = self._input(chunk)
        n, N = x.shape[1], self.chunk
        if n == N:  # the usual push: one call of the chunk graph
            y = self._step("chunk", x)
            self.position += n
            return y
        whole = n - n % N
        if n % N and "sample" not in self.layout["graphs"]:
            raise ValueError(f"chunk of {n} samples: this export has no one-sample graph for lengths that are not "
                             f"multiples of {N}; export it again with the sample graph")
        outs = []
        for start in range(0, whole, N):
            outs.append(self._step("chunk", x[:, start : start + N]))
        for t in range(whole, n):
            outs.append(self._step("sample", x[:, t : t + 1]))
        self.position += n
        if not outs:
            return np.zeros((self.batch_size, 0, *self.layout["output"]["shape"][2:]), dtype=np.float32)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def _step(self, graph: str, x: np.ndarray) -> np.ndarray:
        y, *self.state = self._run(graph, [np.ascontiguousarray(x), *self.state])
        return y

    def _run(self, graph: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run ``graph`` ("chunk" or "sample") on (x, *state) → [y, *new state]."""
        raise NotImplementedError


class OnnxStream(ExportedStream):
    """A stream over an ONNX export, run by ONNX Runtime on the CPU.

    Args:
        directory: written by ``audiomamba export MODEL --format onnx``.
        batch_size: B streams (see ``ExportedStream``).
        threads: ONNX Runtime's intra-op threads (1: the whole step on the calling thread).
    """

    backend = "onnx"

    def __init__(self, directory: str | Path, batch_size: int | None = None, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("OnnxStream needs onnxruntime: pip install 'audiomamba[export]'") from None
        super().__init__(directory, batch_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.sessions = {key: ort.InferenceSession(str(self.directory / name), options,
                                                   providers=["CPUExecutionProvider"])
                         for key, name in self.layout["graphs"].items()}
        self._outputs = [o.name for o in self.sessions["chunk"].get_outputs()]

    def _run(self, graph: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(self._outputs, dict(zip(self._graph_names, inputs)))


class ProgramStream(ExportedStream):
    """A stream over a torch.export export (``.pt2`` programs, loaded with ``torch.export.load``).

    Args:
        directory: written by ``audiomamba export MODEL --format torch-export``.
        batch_size: B streams (see ``ExportedStream``).
    """

    backend = "torch-export"

    def __init__(self, directory: str | Path, batch_size: int | None = None):
        import torch

        super().__init__(directory, batch_size)
        self._torch = torch
        self.programs = {key: torch.export.load(str(self.directory / name)).module()
                         for key, name in self.layout["graphs"].items()}

    def _run(self, graph: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            outs = self.programs[graph](*(torch.from_numpy(t) for t in inputs))
        return [o.numpy() for o in outs]
