"""Tokenizers: waveform quantizers (mu-law, linear), codec interleaving patterns, the EnCodec adapter."""

from __future__ import annotations

from audiomamba.tokenizers.codec import PATTERNS, CodebookPattern
from audiomamba.tokenizers.linear import LinearTokenizer
from audiomamba.tokenizers.mulaw import MuLawTokenizer

WAVEFORM_TOKENIZERS = {"mulaw": MuLawTokenizer, "linear": LinearTokenizer}


def build_tokenizer(kind: str, bits: int = 8):
    """A waveform tokenizer by name: "mulaw" | "linear"."""
    if kind not in WAVEFORM_TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {sorted(WAVEFORM_TOKENIZERS)}, got {kind!r}")
    return WAVEFORM_TOKENIZERS[kind](bits)


def __getattr__(name):  # the EnCodec adapter imports the optional `encodec` package only when asked for
    if name == "EncodecTokenizer":
        from audiomamba.tokenizers.encodec_adapter import EncodecTokenizer

        return EncodecTokenizer
    raise AttributeError(name)


__all__ = [
    "PATTERNS", "CodebookPattern", "LinearTokenizer", "MuLawTokenizer", "WAVEFORM_TOKENIZERS", "build_tokenizer",
    "EncodecTokenizer",
]
