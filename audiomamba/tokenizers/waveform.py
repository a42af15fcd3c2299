"""The common part of the waveform quantizers: V = 2**bits codes, input checks, and the codes' range check."""

from __future__ import annotations

import torch


class WaveformTokenizer:
    """Waveform in [-1, 1] <-> integer codes in [0, V). Subclasses give ``kind`` and the two maps
    ``_encode(x)`` (x: float, already clipped to [-1, 1]) and ``_decode(codes)`` (codes: int64, in range).

    Args:
        bits: code width; V = 2**bits.
    """

    kind = ""

    def __init__(self, bits: int = 8):
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {bits}")
        self.bits = bits
        self.vocab_size = 2**bits

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (..., L) float in [-1, 1] (clipped). Returns: codes (..., L) int64 in [0, V)."""
        if not torch.is_floating_point(wave):
            raise TypeError(f"wave must be a float tensor, got {wave.dtype}")
        return self._encode(wave.clamp(-1.0, 1.0)).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (..., L) integer in [0, V). Returns: wave (..., L) float32 in [-1, 1]."""
        if torch.is_floating_point(codes):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return self._decode(codes.long()).float()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits})"
