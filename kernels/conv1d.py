"""Causal depthwise conv1d in Triton, forward and backward, with the conv state (last W-1 inputs) in and out.

With x̃ = [initial_state, x] along time (W-1 + L steps):
    y[b, e, t] = act(bias[e] + Σ_k w[e, k] · x̃[b, e, t + k]),  act ∈ {identity, SiLU}
Backward (p indexes x̃; pre = the activation's input, recomputed):
    dx̃[p] = Σ_k w[k] · dpre[p - k]   (split into d initial_state = dx̃[:W-1] and dx = dx̃[W-1:])
    dw[k] = Σ_t dpre[t] · x̃[t + k],  dbias = Σ_t dpre[t]
The final state x̃[L:] is a slice of the inputs, so its gradient reaches x / initial_state through autograd.
x, y: (B, E, L) with any strides (channel-last memory works without copies); weight: (E, W); bias: (E,);
state: (B, E, W-1). Arithmetic in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_xp(x_ptr, s_ptr, b, e, q, e_mask, L,
             s_xb, s_xe, s_xl, s_sb, s_se, s_sl, W: tl.constexpr, HAS_STATE: tl.constexpr):
    """x̃[b, e, q] as float32 ([BE, BT]; zero outside 0 <= q < W-1+L, state part zero without a state)."""
    in_x = (q >= W - 1) & (q < L + W - 1)
    v = tl.load(x_ptr + b * s_xb + e[:, None] * s_xe + (q - (W - 1))[None, :] * s_xl,
                mask=e_mask[:, None] & in_x[None, :], other=0.0).to(tl.float32)
    if HAS_STATE:
        in_s = (q >= 0) & (q < W - 1)
        v += tl.load(s_ptr + b * s_sb + e[:, None] * s_se + q[None, :] * s_sl,
                     mask=e_mask[:, None] & in_s[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, s_ptr, y_ptr,
    E, L,
    s_xb, s_xe, s_xl, s_we, s_wk, s_sb, s_se, s_sl, s_yb, s_ye, s_yl,
    W: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    t = tl.program_id(2) * BT + tl.arange(0, BT)
    e_mask = e < E
    acc = tl.zeros([BE, BT], tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + e, mask=e_mask, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + e * s_we + k * s_wk, mask=e_mask, other=0.0).to(tl.float32)
        acc += wk[:, None] * _load_xp(x_ptr, s_ptr, b, e, t + k, e_mask, L,
                                      s_xb, s_xe, s_xl, s_sb, s_se, s_sl, W, HAS_STATE)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m = e_mask[:, None] & (t < L)[None, :]
    tl.store(y_ptr + b * s_yb + e[:, None] * s_ye + t[None, :] * s_yl, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, s_ptr, dy_ptr, dx_ptr, ds_ptr, dw_ptr, dbias_ptr,
    E, L,
    s_xb, s_xe, s_xl, s_we, s_wk, s_sb, s_se, s_sl, s_gb, s_ge, s_gl,
    s_dxb, s_dxe, s_dxl, s_dsb, s_dse, s_dsl,
    W: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, SILU: tl.constexpr,
):
    """One program: (b, BE channels, BT positions p of x̃). Writes dx̃ there; adds its dw, dbias share."""
    b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    p = tl.program_id(2) * BT + tl.arange(0, BT)
    e_mask = e < E
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    dxp = tl.zeros([BE, BT], tl.float32)
    for k in tl.static_range(W):
        s = p - k  # output positions that read x̃[p] with weight k
        s_ok = (s >= 0) & (s < L)
        m = e_mask[:, None] & s_ok[None, :]
        dpre = tl.load(dy_ptr + b * s_gb + e[:, None] * s_ge + s[None, :] * s_gl, mask=m, other=0.0)
        dpre = dpre.to(tl.float32)
        if SILU:
            pre = tl.zeros([BE, BT], tl.float32)
            if HAS_BIAS:
                pre += bias[:, None]
            for j in tl.static_range(W):
                wj = tl.load(w_ptr + e * s_we + j * s_wk, mask=e_mask, other=0.0).to(tl.float32)
                pre += wj[:, None] * _load_xp(x_ptr, s_ptr, b, e, s + j, e_mask, L,
                                              s_xb, s_xe, s_xl, s_sb, s_se, s_sl, W, HAS_STATE)
            sg = tl.sigmoid(pre)
            dpre = dpre * sg * (1.0 + pre * (1.0 - sg))
        dpre = tl.where(m, dpre, 0.0)
        wk = tl.load(w_ptr + e * s_we + k * s_wk, mask=e_mask, other=0.0).to(tl.float32)
        dxp += wk[:, None] * dpre
        if k == 0:
            # s == p: this tile's own outputs; their weight and bias gradients.
            for j in tl.static_range(W):
                xj = _load_xp(x_ptr, s_ptr, b, e, p + j, e_mask, L,
                              s_xb, s_xe, s_xl, s_sb, s_se, s_sl, W, HAS_STATE)
                tl.atomic_add(dw_ptr + e * W + j, tl.sum(dpre * xj, axis=1), mask=e_mask, sem="relaxed")
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + e, tl.sum(dpre, axis=1), mask=e_mask, sem="relaxed")
    in_x = (p >= W - 1) & (p < L + W - 1)
    tl.store(dx_ptr + b * s_dxb + e[:, None] * s_dxe + (p - (W - 1))[None, :] * s_dxl,
             dxp.to(dx_ptr.dtype.element_ty), mask=e_mask[:, None] & in_x[None, :])
    if HAS_STATE:
        in_s = (p >= 0) & (p < W - 1)
        tl.store(ds_ptr + b * s_dsb + e[:, None] * s_dse + p[None, :] * s_dsl,
                 dxp.to(ds_ptr.dtype.element_ty), mask=e_mask[:, None] & in_s[None, :])


def _blocks(x):
    channel_last = x.stride(1) == 1 and x.stride(2) != 1
    return (64, 32) if channel_last else (8, 256)


def _causal_conv1d_fwd(x, weight, bias, initial_state, activation):
    """y (B, E, L) in x's dtype (same strides as x when x is dense)."""
    batch, channels, length = x.shape
    width = weight.shape[1]
    y = torch.empty_like(x)
    if length == 0:
        return y
    BE, BT = _blocks(x)
    s = initial_state if initial_state is not None else x
    s_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    grid = (batch, triton.cdiv(channels, BE), triton.cdiv(length, BT))
    _conv_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, s, y, channels, length,
        *x.stride(), *weight.stride(), *s_strides, *y.stride(),
        W=width, BE=BE, BT=BT, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None,
        SILU=activation == "silu", num_warps=4,
    )
    return y


def _causal_conv1d_bwd(dy, x, weight, bias, initial_state, activation):
    """(dx, dweight, dbias, d_initial_state); None for absent inputs."""
    batch, channels, length = x.shape
    width = weight.shape[1]
    dx = torch.empty_like(x)
    ds = torch.empty_like(initial_state) if initial_state is not None else None
    dw = torch.zeros(channels, width, device=x.device, dtype=torch.float32)
    db = torch.zeros(channels, device=x.device, dtype=torch.float32) if bias is not None else None
    total = length + width - 1
    BE, BT = _blocks(x)
    s = initial_state if initial_state is not None else x
    s_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    ds_ = ds if ds is not None else dx
    grid = (batch, triton.cdiv(channels, BE), triton.cdiv(total, BT))
    _conv_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, s, dy, dx, ds_, dw, db if db is not None else dw,
        channels, length,
        *x.stride(), *weight.stride(), *s_strides, *dy.stride(), *dx.stride(),
        *(ds.stride() if ds is not None else (0, 0, 0)),
        W=width, BE=BE, BT=BT, HAS_BIAS=bias is not None, HAS_STATE=initial_state is not None,
        SILU=activation == "silu", num_warps=4,
    )
    return dx, dw.to(weight.dtype), None if db is None else db.to(bias.dtype), ds


class CausalConv1dFn(torch.autograd.Function):
    """Autograd wrapper of the Triton causal conv1d (the activation input is recomputed in the backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, activation):
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.activation = activation
        return _causal_conv1d_fwd(x, weight, bias, initial_state, activation)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, initial_state = ctx.saved_tensors
        dx, dw, db, ds = _causal_conv1d_bwd(dy, x, weight, bias, initial_state, ctx.activation)
        return dx, dw, db, ds, None


def causal_conv1d_triton(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Causal depthwise conv1d in Triton; contract of ``causal_conv1d_ref``.

    Args:
        x: (B, E, L), any strides; weight: (E, W); bias: (E,); initial_state: (B, E, W-1) (cast to x's dtype).
        activation: None or "silu".

    Returns:
        y: (B, E, L) in x's dtype, or (y, final_state (B, E, W-1)): the last W-1 inputs seen.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    width = weight.shape[1]
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype)
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, initial_state)
    )
    if needs_graph:
        y = CausalConv1dFn.apply(x, weight, bias, initial_state, activation)
    else:
        y = _causal_conv1d_fwd(x, weight, bias, initial_state, activation)
    if not return_final_state:
        return y
    batch, channels, length = x.shape
    if initial_state is None:
        initial_state = x.new_zeros(batch, channels, width - 1)
    if length >= width - 1:
        final = x[:, :, length - (width - 1):].clone()
    else:
        final = torch.cat([initial_state, x], dim=-1)[:, :, length:]
    return y, final


__all__ = ["CausalConv1dFn", "causal_conv1d_triton"]
