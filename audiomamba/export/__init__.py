"""Portable streaming export: one streaming step of a causal model, traced from the plain-PyTorch layers, with
every state tensor as a named input and output, written as ONNX or a torch.export program beside a JSON file
with the state layout and the model's audio contract.

    from audiomamba.export import export_stream, OnnxStream
    export_stream(model, "export/", fmt="onnx", chunk=320)      # or: audiomamba export MODEL --chunk 320 export/
    stream = OnnxStream("export/")                               # push / state_dict / reset, as Stream
    y = stream.push(chunk)                                       # (1, 320) float32 → (1, 320, C)

Modules: ``step`` (the traced step, fixed shapes for any pooling phase), ``exporter`` (tracing and writing),
``layout`` (the JSON file), ``runner`` (``OnnxStream``, ``ProgramStream``).
"""

from .exporter import FORMATS, export_stream, trace_step
from .layout import LAYOUT_FILE, read_layout
from .runner import ExportedStream, OnnxStream, ProgramStream
from .step import ExportError, StreamStep, check_exportable

__all__ = [
    "FORMATS",
    "LAYOUT_FILE",
    "ExportError",
    "ExportedStream",
    "OnnxStream",
    "ProgramStream",
    "StreamStep",
    "check_exportable",
    "export_stream",
    "read_layout",
    "trace_step",
]
