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


def assert_same_grads(outs1, outs2, leaves: dict, tol: float = 1e-4) -> None:
    """The gradients of one random linear function of ``outs1`` and of ``outs2`` (matching tuples of tensors, e.g.
    (y, final_state) of two implementations) agree within ``tol`` for every named leaf of ``leaves``."""
    cot = [torch.randn_like(o) for o in outs1]  # shared cotangents
    g1 = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs1, cot)), list(leaves.values()))
    g2 = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs2, cot)), list(leaves.values()))
    for name, a, b in zip(leaves, g1, g2):
        assert rel_err(b, a) < tol, name


TINY_STREAMING = {  # a tiny model for streaming tests: pooling product 8, small states
    "backbone.d_model": 8,
    "backbone.n_blocks": [1],
    "backbone.pool": [2, 4],
    "backbone.mixer_options": {"mamba1": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8},
                               "s4d": {"d_state": 8}},
}


def tiny_model(spec, **overrides):
    """``build_model(spec)`` with TINY_STREAMING and ``overrides`` (dotted keys), seeded, in eval mode."""
    from audiomamba.models import build_model

    torch.manual_seed(0)
    return build_model(spec, **{**TINY_STREAMING, **overrides}).eval()


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
