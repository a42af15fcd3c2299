"""The ``/v1/stream`` WebSocket protocol: message parsing and validation, PCM decoding and encoding, and the
per-stream input path (client PCM → model-rate samples → model input).

Client → server: one JSON text message first, ``{"type": "start", "sample_rate": 16000, "format": "f32le" |
"s16le", "stream_id": "<optional, to resume>"}``; then binary frames of mono PCM of any length (little-endian
float32 in [-1, 1], or int16); text messages ``{"type": "generate", "seconds": s, "temperature": t, "top_p": p}``
(language models) and ``{"type": "end"}``. The server's messages are built in ``app``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import soxr
import torch

FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
MAX_F32_ABS = 8.0  # f32le samples beyond this are taken for a wrong format, not for loud audio
STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # also the name of its state file


class ProtocolError(ValueError):
    """A message or frame the server refuses; its text is sent to that client as ``{"type": "error"}``."""


@dataclass(frozen=True)
class Start:
    sample_rate: int
    format: str
    stream_id: str | None


@dataclass(frozen=True)
class Generate:
    seconds: float
    temperature: float
    top_p: float | None


@dataclass(frozen=True)
class End:
    pass


def _field(msg: dict, name: str, kinds, default=..., what: str = ""):
    if name not in msg:
        if default is ...:
            raise ProtocolError(f"{msg['type']}: missing field {name!r}")
        return default
    value = msg[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ProtocolError(f"{msg['type']}: {name!r} must be {what}, got {json.dumps(value)[:40]}")
    return value


def parse_message(text: str, max_seconds: float) -> Start | Generate | End:
    """A client text message → Start, Generate or End; ProtocolError naming what is wrong.
    ``max_seconds``: the longest continuation a ``generate`` may ask for."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("text message: not valid JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError('text message: expected a JSON object with a "type"')
    kind = msg["type"]
    allowed = {"start": {"sample_rate", "format", "stream_id"}, "generate": {"seconds", "temperature", "top_p"},
               "end": set()}
    if kind not in allowed:
        raise ProtocolError(f"unknown message type {kind!r} (expected one of {sorted(allowed)})")
    unknown = sorted(set(msg) - allowed[kind] - {"type"})
    if unknown:
        raise ProtocolError(f"{kind}: unknown fields {unknown}")
    if kind == "start":
        rate = _field(msg, "sample_rate", int, what="an integer")
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ProtocolError(f"start: sample_rate must lie in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], got {rate}")
        fmt = _field(msg, "format", str, what="a string")
        if fmt not in FORMATS:
            raise ProtocolError(f"start: format must be one of {sorted(FORMATS)}, got {fmt!r}")
        stream_id = _field(msg, "stream_id", (str, type(None)), None, "a string")
        if stream_id is not None and not STREAM_ID.match(stream_id):
            raise ProtocolError("start: stream_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        return Start(rate, fmt, stream_id)
    if kind == "generate":
        seconds = float(_field(msg, "seconds", (int, float), what="a number"))
        temperature = float(_field(msg, "temperature", (int, float), 1.0, "a number"))
        top_p = _field(msg, "top_p", (int, float, type(None)), None, "a number")
        if not 0 < seconds <= max_seconds:
            raise ProtocolError(f"generate: seconds must lie in (0, {max_seconds:g}], got {seconds:g}")
        if not 0 <= temperature <= 10:
            raise ProtocolError(f"generate: temperature must lie in [0, 10], got {temperature:g}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ProtocolError(f"generate: top_p must lie in (0, 1], got {top_p:g}")
        return Generate(seconds, temperature, None if top_p is None else float(top_p))
    return End()


def decode_pcm(data: bytes, fmt: str) -> np.ndarray:
    """A binary frame → (n,) float32 samples; ProtocolError for a torn sample, NaN/Inf or out-of-range values."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise ProtocolError(f"binary frame: {len(data)} bytes is not a whole number of {fmt} samples "
                            f"({dtype.itemsize} bytes each)")
    x = np.frombuffer(data, dtype)
    if fmt == "s16le":
        return x.astype(np.float32) / 32768.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError("binary frame: NaN or Inf samples (frame rejected)")
    if x.size and np.abs(x).max() > MAX_F32_ABS:
        raise ProtocolError(f"binary frame: f32le samples should lie in [-1, 1], got {float(np.abs(x).max()):.3g} "
                            "(is the audio s16le?)")
    return x


def encode_pcm(x: np.ndarray, fmt: str) -> bytes:
    """(n,) float samples in [-1, 1] → a binary frame in ``fmt``."""
    if fmt == "s16le":
        return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return np.asarray(x, "<f4").tobytes()


class InputPath:
    """One stream's way from client PCM to model input: decode, resample (statefully, soxr's streaming
    resampler; none when the rates agree), tokenize (token models: the model's waveform tokenizer, per sample).

    Args:
        sample_rate: the client's rate. model_rate: the model's. tokenizer: a waveform tokenizer or None.
    """

    def __init__(self, sample_rate: int, model_rate: int, tokenizer=None):
        self.sample_rate, self.model_rate, self.tokenizer = sample_rate, model_rate, tokenizer
        self._resampler = None
        if sample_rate != model_rate:
            self._resampler = soxr.ResampleStream(sample_rate, model_rate, 1, dtype="float32", quality="HQ")
        self.received = 0  # client-rate samples taken

    def __call__(self, data: bytes, fmt: str) -> np.ndarray:
        """A binary frame → model input (m,) (float32 samples or int64 tokens); ProtocolError leaves the path
        as it was (nothing of a rejected frame reaches the resampler)."""
        x = decode_pcm(data, fmt)
        self.received += len(x)
        return self._model_input(x, last=False)

    def flush(self) -> np.ndarray:
        """What the resampler still holds (at the end of the stream)."""
        if self._resampler is None:
            return self._model_input(np.zeros(0, np.float32), last=False)
        return self._model_input(np.zeros(0, np.float32), last=True)

    def _model_input(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        if self.tokenizer is None:
            return np.ascontiguousarray(x, np.float32)
        return self.tokenizer.encode(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
