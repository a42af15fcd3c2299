"""8-bit (or any width) mu-law companding tokenizer for waveforms, through torchaudio.functional."""

from __future__ import annotations

import torch
import torchaudio.functional as AF

from audiomamba.tokenizers.waveform import WaveformTokenizer


class MuLawTokenizer(WaveformTokenizer):
    """Waveform in [-1, 1] <-> integer codes in [0, V) with mu-law companding (mu = V - 1).

    Decoding is exact in the sense that ``encode(decode(c)) == c`` for every code ``c``; ``decode(encode(x))``
    is within one quantization step of ``x`` (fine near zero, coarse near full scale).

    Args:
        bits: code width; V = 2**bits (8 bits: the 256-way mu-law of WaveNet / SampleRNN / SaShiMi).
    """

    kind = "mulaw"

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return AF.mu_law_encoding(x.float(), self.vocab_size)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return AF.mu_law_decoding(codes, self.vocab_size)
