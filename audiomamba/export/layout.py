"""The JSON file written beside an exported streaming step: what a runtime needs to drive it without audiomamba.

``stream.json`` lists the graph files, the chunk length N, the batch (a number, or ``"batch"`` for graphs
exported with a dynamic batch), the input and output (names, dtypes, shapes), every state tensor (its name in
the model's state tree, the graphs' input and output names for it, dtype, shape, initial value) in the order the
graphs take them, and the model's audio contract (sample rate, input kind, tokenizer, labels) when the model
carries one. Example (a waveform classifier)::

    {"format": "audiomamba.stream_step", "version": 1, "backend": "onnx", "chunk": 320, "batch": 1,
     "graphs": {"chunk": "chunk.onnx", "sample": "sample.onnx"},
     "input": {"name": "x", "dtype": "float32", "shape": [1, 320], "kind": "waveform"},
     "output": {"name": "y", "dtype": "float32", "shape": [1, 320, 10], "kind": "class_logits"},
     "state": [{"name": "backbone.down.0.buffer", "input": "state.backbone.down.0.buffer",
                "output": "new_state.backbone.down.0.buffer", "dtype": "float32", "shape": [1, 15, 32],
                "init": 0.0}, ...],
     "model": {"kind": "classifier", "pool_product": 64, ...}, "audio": {"sample_rate": 16000, ...}}

``init`` is the value every element of the tensor starts from (a number), or ``{"values": nested lists}`` for a
tensor of one stream that is not constant (then repeated over the batch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LAYOUT_FILE = "stream.json"
LAYOUT_FORMAT = "audiomamba.stream_step"
LAYOUT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "x", "y"
STATE_IN, STATE_OUT = "state.", "new_state."


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_layout(model, chunk: int, backend: str, graphs: dict[str, str], batch_size: int | None) -> dict[str, Any]:
    """The layout of ``StreamStep(model, chunk)``'s graphs (``graphs``: {"chunk": file, "sample": file or
    absent}) exported as ``backend`` for ``batch_size`` streams (None: any); see the module docstring."""
    from audiomamba.state import flatten_state

    config = model.config
    batch = "batch" if batch_size is None else batch_size
    state = []
    for name, t in flatten_state(model.init_state(1)).items():
        first = t[0]
        init = first.flatten()[0].item() if first.numel() and bool((first == first.flatten()[0]).all()) else None
        state.append({
            "name": name, "input": STATE_IN + name, "output": STATE_OUT + name, "dtype": _dtype_name(t.dtype),
            "shape": [batch, *t.shape[1:]], "init": init if init is not None else {"values": first.tolist()},
        })
    lm = config.kind == "lm"
    tokens = lm or config.input == "tokens"
    codebooks = config.n_codebooks if tokens else 1
    x_shape = [batch, chunk] + ([codebooks] if codebooks > 1 else [])
    if lm:
        y_shape = [batch, chunk] + ([codebooks] if codebooks > 1 else []) + [config.vocab_size]
    else:
        y_shape = [batch, chunk, config.n_classes]
    x = {"name": INPUT_NAME, "dtype": "int64" if tokens else "float32", "shape": x_shape,
         "kind": "tokens" if tokens else "waveform"}
    if tokens:
        x["vocab_size"] = config.vocab_size
    audio = getattr(model, "audio", None)
    return {
        "format": LAYOUT_FORMAT, "version": LAYOUT_VERSION, "backend": backend, "chunk": chunk, "batch": batch,
        "graphs": graphs,
        "input": x,
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": y_shape,
                   "kind": "lm_logits" if lm else "class_logits"},
        "state": state,
        "model": {"kind": config.kind, "input": "tokens" if tokens else "waveform", "n_codebooks": codebooks,
                  "pool_product": model.backbone.pool_product, "parameters": model.num_parameters()},
        "audio": audio.to_dict() if audio is not None else None,
    }


def write_layout(layout: dict[str, Any], directory: str | Path) -> Path:
    """Write ``directory/stream.json``: a key per line, a state tensor per line."""
    lines = []
    for key, value in layout.items():
        if key == "state":
            entries = ",\n".join("  " + json.dumps(s) for s in value)
            lines.append(f"{json.dumps(key)}: [\n{entries}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    path = Path(directory) / LAYOUT_FILE
    path.write_text("{\n " + ",\n ".join(lines) + "\n}\n")
    return path


def read_layout(directory: str | Path) -> dict[str, Any]:
    """The layout in ``directory/stream.json``; FileNotFoundError / ValueError naming the file."""
    path = Path(directory) / LAYOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected a directory written by `audiomamba export`)")
    try:
        layout = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(layout, dict) or layout.get("format") != LAYOUT_FORMAT:
        raise ValueError(f"{path}: not an audiomamba streaming export (format {LAYOUT_FORMAT!r} expected)")
    if layout.get("version") != LAYOUT_VERSION:
        raise ValueError(f"{path}: unsupported version {layout.get('version')!r} (this audiomamba reads "
                         f"version {LAYOUT_VERSION})")
    return layout
