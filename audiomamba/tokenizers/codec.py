"""Interleaving patterns for codec token streams with K codebooks (MusicGen-style).

A codec (EnCodec, DAC, ...) turns audio into K parallel streams of codes, one per residual codebook, at a frame
rate. A language model sees them through a *pattern*:

- ``parallel``: all K codebooks of frame t at step t. Sequence (B, K, T); every position valid.
- ``delay``: codebook k is shifted right by k steps, so step s holds codebook k of frame s - k (MusicGen's delay
  pattern: coarse codebooks are predicted before the finer ones of the same frame). Sequence (B, K, T + K - 1);
  positions before a stream starts or after it ends hold ``special_token`` and are invalid.
- ``flatten``: one stream, frame-major: step t * K + k holds codebook k of frame t. Sequence (B, 1, K * T).

Every pattern reverses exactly: ``deinterleave(interleave(codes)[0]) == codes``.
"""

from __future__ import annotations

import torch

PATTERNS = ("parallel", "delay", "flatten")


class CodebookPattern:
    """Interleave (B, K, T) codec codes into an LM sequence and back.

    Args:
        kind: "parallel" | "delay" | "flatten".
        n_codebooks: K.
        special_token: the code written at invalid positions (usually the codebook size, i.e. one extra
            vocabulary entry per codebook); the LM's vocabulary must include it.
    """

    def __init__(self, kind: str, n_codebooks: int, special_token: int):
        if kind not in PATTERNS:
            raise ValueError(f"pattern kind must be one of {PATTERNS}, got {kind!r}")
        if n_codebooks < 1:
            raise ValueError(f"n_codebooks must be >= 1, got {n_codebooks}")
        self.kind = kind
        self.n_codebooks = n_codebooks
        self.special_token = int(special_token)

    @property
    def n_streams(self) -> int:
        """K' = number of parallel streams of the interleaved sequence (1 for flatten)."""
        return 1 if self.kind == "flatten" else self.n_codebooks

    def seq_len(self, n_frames: int) -> int:
        """S, the interleaved length for T frames."""
        K = self.n_codebooks
        if self.kind == "parallel":
            return n_frames
        if self.kind == "delay":
            return n_frames + K - 1
        return n_frames * K

    def n_frames(self, seq_len: int) -> int:
        """T, the number of frames an interleaved sequence of length S holds (error if S is impossible)."""
        K = self.n_codebooks
        if self.kind == "parallel":
            T = seq_len
        elif self.kind == "delay":
            T = seq_len - K + 1
        else:
            if seq_len % K:
                raise ValueError(f"flatten pattern: sequence length {seq_len} is not a multiple of K={K}")
            T = seq_len // K
        if T < 0:
            raise ValueError(f"{self.kind} pattern: sequence length {seq_len} is too short for K={K}")
        return T

    def valid_mask(self, n_frames: int, device=None) -> torch.Tensor:
        """Returns: mask (K', S) bool, True where the sequence holds a real code."""
        K, S = self.n_codebooks, self.seq_len(n_frames)
        if self.kind != "delay":
            return torch.ones(self.n_streams, S, dtype=torch.bool, device=device)
        s = torch.arange(S, device=device)[None, :]  # (1, S)
        k = torch.arange(K, device=device)[:, None]  # (K, 1)
        return (s >= k) & (s < k + n_frames)  # (K, S)

    def interleave(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: codes (B, K, T) integer. Returns: (seq (B, K', S) int64, mask (K', S) bool)."""
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise ValueError(f"codes must be (B, K={self.n_codebooks}, T), got {tuple(codes.shape)}")
        codes = codes.long()
        Bsz, K, T = codes.shape
        mask = self.valid_mask(T, device=codes.device)
        if self.kind == "parallel":
            return codes.clone(), mask
        if self.kind == "flatten":
            return codes.transpose(1, 2).reshape(Bsz, 1, T * K), mask  # (B, T, K) -> (B, 1, T*K)
        S = T + K - 1
        seq = codes.new_full((Bsz, K, S), self.special_token)
        for k in range(K):
            seq[:, k, k : k + T] = codes[:, k]
        return seq, mask

    def deinterleave(self, seq: torch.Tensor) -> torch.Tensor:
        """Args: seq (B, K', S) integer. Returns: codes (B, K, T) int64, the exact inverse of ``interleave``."""
        if seq.dim() != 3 or seq.shape[1] != self.n_streams:
            raise ValueError(f"{self.kind} sequence must be (B, K'={self.n_streams}, S), got {tuple(seq.shape)}")
        Bsz, _, S = seq.shape
        K, T = self.n_codebooks, self.n_frames(S)
        if self.kind == "parallel":
            return seq.long().clone()
        if self.kind == "flatten":
            return seq.long().reshape(Bsz, T, K).transpose(1, 2).contiguous()  # (B, 1, T*K) -> (B, K, T)
        return torch.stack([seq[:, k, k : k + T] for k in range(K)], dim=1).long()  # (B, K, T)

    def __repr__(self) -> str:
        return f"CodebookPattern({self.kind!r}, n_codebooks={self.n_codebooks}, special_token={self.special_token})"
