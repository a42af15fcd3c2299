"""Uniform (linear) quantization tokenizer for waveforms."""

from __future__ import annotations

import torch


class LinearTokenizer:
    """Waveform in [-1, 1] <-> integer codes in [0, V) on a uniform grid of V levels from -1 to 1.

    Code c decodes to ``-1 + 2 c / (V - 1)``; encoding rounds to the nearest level, so
    ``encode(decode(c)) == c`` exactly and ``|decode(encode(x)) - x| <= 1 / (V - 1)``.

    Args:
        bits: code width; V = 2**bits.
    """

    kind = "linear"

    def __init__(self, bits: int = 8):
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {bits}")
        self.bits = bits
        self.vocab_size = 2**bits

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (..., L) float in [-1, 1] (clipped). Returns: codes (..., L) int64 in [0, V)."""
        if not torch.is_floating_point(wave):
            raise TypeError(f"wave must be a float tensor, got {wave.dtype}")
        x = wave.double().clamp(-1.0, 1.0)
        return torch.round((x + 1.0) * (0.5 * (self.vocab_size - 1))).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (..., L) integer in [0, V). Returns: wave (..., L) float32 in [-1, 1]."""
        if torch.is_floating_point(codes):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return (codes.double() * (2.0 / (self.vocab_size - 1)) - 1.0).float()

    def __repr__(self) -> str:
        return f"LinearTokenizer(bits={self.bits})"
