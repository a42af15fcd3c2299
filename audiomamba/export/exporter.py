"""``export_stream``: trace a causal model's streaming step and write it as ONNX or a torch.export program.

The output directory holds two graphs of the same step (``StreamStep``), one for chunks of N samples
(``chunk.onnx`` / ``chunk.pt2``) and one for a single sample (``sample.*``), and ``stream.json`` (the state
layout, see ``audiomamba.export.layout``). The runners push chunks of N samples through the first; a chunk
whose length is not a multiple of N (the end of a stream) runs its last n mod N samples through the second, one
sample per call: exact, and the state after it is the stream's state, so that the stream can go on.

Both formats come from a ``torch.export`` trace of the step (no grad, the reference layers on the CPU), for a
fixed batch size (default 1: one stream per graph call; fixed shapes export faster and let the runtime plan
them) or a dynamic one. ONNX is written by the torch.export-based exporter (``torch.onnx.export(...,
dynamo=True)``, which needs onnxscript); the older TorchScript exporter has no ONNX form of ``linalg_vecdot``
(the Mamba-1 mixers' short-chunk convolution) and cannot trace the step.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import torch

from audiomamba.state import flatten_state

from .layout import INPUT_NAME, OUTPUT_NAME, STATE_IN, STATE_OUT, build_layout, write_layout
from .step import ExportError, StreamStep, check_exportable

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
ONNX_OPSET = 18
_DYNAMIC_TRACE_BATCH = 2  # example batch of a dynamic-batch trace (not 1, which torch.export specialises on)


def trace_step(model, chunk: int, batch_size: int | None = 1) -> torch.export.ExportedProgram:
    """``torch.export`` of ``StreamStep(model, chunk)``: inputs (x, *state tensors) in ``flatten_state`` order,
    outputs (y, *new state tensors); for ``batch_size`` streams, or any number when ``batch_size`` is None."""
    step = StreamStep(model, chunk).eval()
    config = model.config
    batch = batch_size if batch_size is not None else _DYNAMIC_TRACE_BATCH
    if config.kind == "lm" or config.input == "tokens":
        shape = (batch, chunk) + ((config.n_codebooks,) if config.n_codebooks > 1 else ())
        x = torch.randint(0, config.vocab_size, shape)
    else:
        x = torch.randn(batch, chunk)
    flat = tuple(flatten_state(model.init_state(batch, torch.device("cpu"))).values())
    dynamic = None
    if batch_size is None:
        dim = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = ({0: dim}, tuple({0: dim} for _ in flat))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(step, (x, *flat), dynamic_shapes=dynamic, strict=False)


def _onnx_exp2(x):
    """exp2 as Exp(x · ln 2): the default translation, Pow(2, x), runs ~20x slower in ONNX Runtime on CPUs."""
    from onnxscript import opset18 as op

    return op.Exp(op.Mul(x, op.CastLike(math.log(2.0), x)))


def _write_onnx(program: torch.export.ExportedProgram, names: list[str], path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter's dependency: fail here with the extra's name)
    except ImportError:
        raise ImportError("export --format onnx needs onnx and onnxscript: pip install 'audiomamba[export]'") from None
    inputs = [INPUT_NAME] + [STATE_IN + n for n in names]
    outputs = [OUTPUT_NAME] + [STATE_OUT + n for n in names]
    # the exporter logs a warning per optional torchvision op it cannot register: not about this model
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=inputs, output_names=outputs,
                                             opset_version=ONNX_OPSET, optimize=True, verbose=False,
                                             custom_translation_table={torch.ops.aten.exp2.default: _onnx_exp2})
    finally:
        registry_log.setLevel(level)
    onnx_program.save(str(path))


def export_stream(model, out_dir: str | Path, fmt: str = "onnx", chunk: int = 320, batch_size: int | None = 1,
                  sample_graph: bool = True) -> Path:
    """Export the streaming step of a causal ``model`` for chunks of ``chunk`` samples into ``out_dir``.

    Args:
        model: a causal float32 AudioLM or AudioClassifier (CPU); ExportError (a ValueError) otherwise, e.g. for
            a bidirectional classifier, which cannot stream.
        out_dir: the directory to write (created; existing export files in it are replaced).
        fmt: "onnx" or "torch-export".
        chunk: N, samples (token frames for an LM) per call of the main graph.
        batch_size: B, the streams each call runs (the graphs' fixed batch); None: any batch (a dynamic
            dimension; slower to export).
        sample_graph: also export the one-sample graph that runs the ends of streams (chunks shorter than N).

    Returns the path of ``stream.json``.
    """
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"batch_size must be >= 1 or None (dynamic), got {batch_size}")
    if fmt not in FORMATS:
        raise ExportError(f"export format must be one of {sorted(FORMATS)}, got {fmt!r}")
    check_exportable(model, chunk, fmt)
    if next(model.parameters()).device.type != "cpu":
        raise ExportError("export traces on the CPU; move the model there first (model.cpu())")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(flatten_state(model.init_state(1)))
    graphs = {"chunk": chunk} | ({"sample": 1} if sample_graph else {})
    files = {}
    was_training = model.training
    model.eval()
    try:
        for key, length in graphs.items():
            program = trace_step(model, length, batch_size)
            path = out / f"{key}{FORMATS[fmt]}"
            if fmt == "onnx":
                _write_onnx(program, names, path)
            else:
                torch.export.save(program, str(path))
            files[key] = path.name
    finally:
        model.train(was_training)
    if not sample_graph:
        (out / f"sample{FORMATS[fmt]}").unlink(missing_ok=True)
    return write_layout(build_layout(model, chunk, fmt, files, batch_size), out)
