"""Uniform (linear) quantization tokenizer for waveforms."""

from __future__ import annotations

import torch

from audiomamba.tokenizers.waveform import WaveformTokenizer


class LinearTokenizer(WaveformTokenizer):
    """Waveform in [-1, 1] <-> integer codes in [0, V) on a uniform grid of V levels from -1 to 1.

    Code c decodes to ``-1 + 2 c / (V - 1)``; encoding rounds to the nearest level, so
    ``encode(decode(c)) == c`` exactly and ``|decode(encode(x)) - x| <= 1 / (V - 1)``.

    Args:
        bits: code width; V = 2**bits.
    """

    kind = "linear"

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round((x.double() + 1.0) * (0.5 * (self.vocab_size - 1)))

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.double() * (2.0 / (self.vocab_size - 1)) - 1.0
