"""Shared test utilities (imported by test modules as ``from helpers import ...``)."""

from __future__ import annotations

import random

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero); NaN anywhere counts as infinite error."""
    a, b = a.detach().double(), b.detach().double()
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return diff / scale if scale > 0 else diff


def random_chunks(length: int, rng: random.Random, max_chunk: int | None = None) -> list[int]:
    """Random chunk lengths summing to ``length``; always includes at least one chunk of length 1 when
    length >= 2."""
    max_chunk = max_chunk or max(1, length // 2)
    sizes, left = [1] if length >= 2 else [], length - (1 if length >= 2 else 0)
    while left > 0:
        n = min(left, rng.randint(1, max_chunk))
        sizes.append(n)
        left -= n
    rng.shuffle(sizes)
    return sizes
