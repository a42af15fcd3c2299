"""A Mamba-1 mixer between in_proj and out_proj as one differentiable op that keeps little for the backward.

(Module name: ``mamba1_recompute``, not ``mamba1_inner``, so that importing it never shadows the package's
``audiomamba.kernels.mamba1_inner`` function.)

    u = SiLU(causal_conv1d(x));  (δ, B, C) = x_proj(u);  Δ = dt_proj(δ)  (no bias: the scan adds delta_bias)
    y = selective_scan(u, Δ, A, B, C, D, z, delta_bias, softplus)

Composed from the separate ops, autograd keeps u, x_proj's output and Δ for the backward: about three (B, E, L)
tensors per layer. ``Mamba1InnerFn`` keeps only its inputs (x and z, views of in_proj's output, which autograd keeps
anyway) and the scan's states every ck_save steps, and recomputes the conv and the two projections in the backward
(one depthwise conv and two thin GEMMs, a few per cent of the scan's time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _projections(u, x_proj_weight, dt_proj_weight):
    """(Δ (B, E, L), B (B, N, L), C (B, N, L)) from the conv output u (B, E, L); views of channel-last memory."""
    rank = dt_proj_weight.shape[1]
    n = (x_proj_weight.shape[0] - rank) // 2
    x_dbl = F.linear(u.transpose(1, 2), x_proj_weight)  # (B, L, R + 2N)
    dt_low, Bm, Cm = x_dbl.split([rank, n, n], dim=-1)
    return F.linear(dt_low, dt_proj_weight).transpose(1, 2), Bm.transpose(1, 2), Cm.transpose(1, 2)


def mamba1_inner_composed(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D):
    """The op from the separate dispatched ops (any backend; autograd keeps the intermediates)."""
    from . import causal_conv1d, selective_scan

    u = causal_conv1d(x, conv_weight, conv_bias, activation="silu")
    delta, Bm, Cm = _projections(u, x_proj_weight, dt_proj_weight)
    return selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias, True)


class Mamba1InnerFn(torch.autograd.Function):
    """Triton forward (conv, projections, scan keeping its states every ck_save steps); the backward recomputes
    the conv and the projections with autograd, runs the scan's backward and sends its gradients through them."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D):
        from .conv1d import causal_conv1d_triton
        from .mamba1_scan import _selective_scan_fwd

        u = causal_conv1d_triton(x, conv_weight, conv_bias, activation="silu")
        delta, Bm, Cm = _projections(u, x_proj_weight, dt_proj_weight)
        y, _, ck, cfg = _selective_scan_fwd(u, delta, A, Bm, Cm, D, z, delta_bias, True, None,
                                            store_checkpoints=True)
        ctx.save_for_backward(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D, ck)
        ctx.cfg = cfg
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy):
        from .conv1d import causal_conv1d_triton
        from .mamba1_scan import _selective_scan_bwd

        x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D, ck = ctx.saved_tensors
        needs = ctx.needs_input_grad
        inputs = (x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight)
        leaves = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(inputs, (needs[0], *needs[2:6]))]
        x_, cw_, cb_, xw_, dw_ = leaves
        with torch.enable_grad():
            u = causal_conv1d_triton(x_, cw_, cb_, activation="silu")
            delta, Bm, Cm = _projections(u, xw_, dw_)
        du, ddelta, dA, dB, dC, dD, dz, ddtb, _ = _selective_scan_bwd(
            dy, None, u.detach(), delta.detach(), A, Bm.detach(), Cm.detach(), D, z, delta_bias, True, ck, False,
            ctx.cfg)
        roots = [(t, g) for t, g in ((u, du), (delta, ddelta), (Bm, dB), (Cm, dC)) if t.requires_grad]
        if roots:
            torch.autograd.backward([t for t, _ in roots], [g for _, g in roots])
        grads = [None if t is None or not t.requires_grad else t.grad for t in leaves]
        dx, dcw, dcb, dxw, ddw = grads
        return dx, dz, dcw, dcb, dxw, ddw, ddtb, dA, dD


def mamba1_inner_triton(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D):
    """Triton op; contract of ``mamba1_inner_composed``. Low memory when autograd records it."""
    return Mamba1InnerFn.apply(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D)
