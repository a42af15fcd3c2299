"""Triton device functions shared by the kernels (elementwise math in float32)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softplus(x):
    """log(1 + e^x), as torch computes it: log1p accuracy for very negative x (through the u = 1 + e trick),
    x itself above 20."""
    e = tl.exp(x)
    one_e = 1.0 + e
    lp = tl.where(one_e == 1.0, e, tl.log(one_e) * (e / (one_e - 1.0)))
    return tl.where(x > 20.0, x, lp)
