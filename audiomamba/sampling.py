"""The sampler of generation: temperature, top-k, top-p and Gumbel-max draws, defined once.

A draw is ``argmax(truncate(logits / temperature) + g)`` with g Gumbel(0, 1) noise: an exact draw from the softmax
of the (truncated, tempered) logits that needs no host sync, and whose noise can be drawn ahead in blocks from a
seeded generator. Temperature 0 is greedy (argmax of the logits). Generation's fused Triton step computes the same
scores in its epilogue (no truncation there); its draws are tested equal to :func:`sample_from_logits` for the same
noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampler:
    """The sampling settings of one generation run (checked once, here).

    temperature: softmax temperature, >= 0 (0: greedy). top_k: keep the k largest logits (>= 1, or None).
    top_p: keep the smallest set of most likely tokens whose probability reaches p (in (0, 1], or None).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """Whether draws are the argmax of the logits (no noise needed)."""
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        """Whether top-k or top-p is set (the fused step of generation does not truncate)."""
        return self.top_k is not None or self.top_p is not None

    def __call__(self, logits: torch.Tensor, gumbel: torch.Tensor | None) -> torch.Tensor:
        """Draw one token per row: logits (..., V) float32, gumbel (..., V) or None → (...) int64."""
        return sample_from_logits(logits, gumbel, self.temperature, self.top_k, self.top_p)


def gumbel_noise_(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``out`` (any shape, float) in place with Gumbel(0, 1) noise -log(-log u), u ~ U(0, 1); returns it."""
    u = out.uniform_(generator=generator)
    return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()


def sample_from_logits(
    logits: torch.Tensor, gumbel: torch.Tensor | None, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Draw one token per row: logits (..., V) float32, gumbel (..., V) Gumbel(0, 1) noise → (...) int64.

    Gumbel-max sampling (argmax of logits / temperature + noise) is an exact draw from the softmax. temperature 0
    (or gumbel None) is greedy. top_k keeps the k largest logits; top_p keeps the smallest set of most likely tokens
    whose probability reaches p (at least one). Ties go to the lowest index.
    """
    if temperature == 0 or gumbel is None:
        return logits.argmax(dim=-1)
    scores = logits / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)  # (..., V)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before a token already reaches p
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return (scores + gumbel).argmax(dim=-1)


__all__ = ["Sampler", "gumbel_noise_", "sample_from_logits"]
