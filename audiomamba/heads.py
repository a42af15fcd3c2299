"""Output heads on the backbone's features h: (B, L, D)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class LMHead(nn.Module):
    """Next-token logits per codebook: (B, L, D) → (B, L, K, V)."""

    def __init__(self, d_model: int, vocab_size: int, n_codebooks: int = 1):
        super().__init__()
        self.vocab_size, self.n_codebooks = vocab_size, n_codebooks
        self.linear = nn.Linear(d_model, n_codebooks * vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).unflatten(-1, (self.n_codebooks, self.vocab_size))  # (B, L, K·V) → (B, L, K, V)


@dataclass
class MeanPoolState:
    """Running sum of the features (B, D) float64 and the number of steps seen (B,) int64."""

    total: torch.Tensor
    count: torch.Tensor


class ClassifierHead(nn.Module):
    """Pooling over time, then a linear map to class logits.

    Causal: a running prediction at every step, (B, L, D) → (B, L, C): "mean" averages the features of all steps
    so far (a streaming state carries the sum), "last" reads the current step. Bidirectional: one prediction per
    sequence, (B, L, D) → (B, C), from the mean (over valid steps when ``lengths`` is given) or the last valid step.

    Args:
        d_model: D. n_classes: C. pooling: "mean" or "last". causal: running (True) or whole-sequence pooling.
    """

    def __init__(self, d_model: int, n_classes: int, pooling: str = "mean", causal: bool = True):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling: expected 'mean' or 'last', got {pooling!r}")
        self.d_model, self.pooling, self.causal = d_model, pooling, causal
        self.linear = nn.Linear(d_model, n_classes)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MeanPoolState | None:
        if not self.causal:
            raise ValueError("a bidirectional classifier head has no streaming state")
        if self.pooling != "mean":
            return None
        device = device if device is not None else self.linear.weight.device
        return MeanPoolState(
            total=torch.zeros(batch_size, self.d_model, dtype=torch.float64, device=device),
            count=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def forward(self, h: torch.Tensor, state: MeanPoolState | None = None):
        """Causal: h (B, L, D) → running logits (B, L, C), new state. State None starts a stream."""
        if not self.causal:
            raise ValueError("a bidirectional classifier head pools whole sequences: call pool_sequence")
        if self.pooling == "last":
            return self.linear(h), None
        batch, length, _ = h.shape
        if state is None:
            state = self.init_state(batch, h.device)
        totals = torch.cumsum(h, dim=1, dtype=torch.float64).add_(state.total[:, None])  # (B, L, D) float64
        counts = state.count[:, None] + torch.arange(1, length + 1, device=h.device)  # (B, L)
        mean = (totals / counts[..., None]).to(h.dtype)  # (B, L, D)
        new = MeanPoolState(total=totals[:, -1] if length else state.total, count=state.count + length)
        return self.linear(mean), new

    def pool_sequence(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Whole-sequence prediction h (B, L, D) → (B, C); ``lengths`` (B,) counts the valid steps per row."""
        batch, length, _ = h.shape
        if lengths is None:
            lengths = torch.full((batch,), length, device=h.device, dtype=torch.long)
        if self.pooling == "last":
            feat = h[torch.arange(batch, device=h.device), lengths - 1]  # (B, D)
        else:
            mask = torch.arange(length, device=h.device)[None, :] < lengths[:, None]  # (B, L)
            feat = (h * mask[..., None]).sum(1) / lengths[:, None].clamp(min=1).to(h.dtype)  # (B, D)
        return self.linear(feat)
