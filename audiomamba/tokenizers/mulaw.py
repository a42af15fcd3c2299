"""8-bit (or any width) mu-law companding tokenizer for waveforms, through torchaudio.functional."""

from __future__ import annotations

import torch
import torchaudio.functional as AF


class MuLawTokenizer:
    """Waveform in [-1, 1] <-> integer codes in [0, V) with mu-law companding (mu = V - 1).

    Decoding is exact in the sense that ``encode(decode(c)) == c`` for every code ``c``; ``decode(encode(x))``
    is within one quantization step of ``x`` (fine near zero, coarse near full scale).

    Args:
        bits: code width; V = 2**bits (8 bits: the 256-way mu-law of WaveNet / SampleRNN / SaShiMi).
    """

    kind = "mulaw"

    def __init__(self, bits: int = 8):
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {bits}")
        self.bits = bits
        self.vocab_size = 2**bits

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Args: wave (..., L) float in [-1, 1] (clipped). Returns: codes (..., L) int64 in [0, V)."""
        if not torch.is_floating_point(wave):
            raise TypeError(f"wave must be a float tensor, got {wave.dtype}")
        x = wave.float().clamp(-1.0, 1.0)
        return AF.mu_law_encoding(x, self.vocab_size).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (..., L) integer in [0, V). Returns: wave (..., L) float32 in [-1, 1]."""
        if torch.is_floating_point(codes):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return AF.mu_law_decoding(codes.long(), self.vocab_size).float()

    def __repr__(self) -> str:
        return f"MuLawTokenizer(bits={self.bits})"
