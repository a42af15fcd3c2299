"""Single-step (decode) kernels for Mamba-1 generation, in Triton; states are updated in place.

* ``causal_conv1d_update``: one program per (batch row, channel block) reads the W-1 carried inputs and the
  new input, writes act(bias + Σ_k w_k x̃_k) and shifts the window in place (one launch for conv + state).
* ``selective_state_update``: softplus(Δ + bias), exp(Δ A), h ← exp(ΔA) h + Δ B x, y = C·h + D x,
  y *= silu(z), with h (B, E, N) float32 updated in place (one launch; B/C may be grouped).
* ``mamba1_decode_step``: the Mamba-1 mixer's step between its projections: conv update (kernel 1) → x_proj
  (cuBLAS: it mixes all channels, so it cannot live inside a per-channel program) → dt_proj (cuBLAS) →
  selective state update (kernel 2). Fixed shapes and in-place states keep it CUDA-graph capturable.

Each has a plain-PyTorch ``*_ref`` twin in ``reference.py`` with the same signature and in-place semantics.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus
from .reference import causal_conv1d_update_ref, mamba1_decode_step_ref, selective_state_update_ref


def _use_triton(t: torch.Tensor) -> bool:
    forced = os.environ.get("AUDIOMAMBA_BACKEND", "").strip().lower()
    if forced:
        return forced == "triton"
    return t.is_cuda


@triton.jit
def _conv_update_kernel(
    x_ptr, s_ptr, w_ptr, bias_ptr, y_ptr, E,
    s_xb, s_xe, s_sb, s_se, s_sk, s_we, s_wk, s_yb, s_ye,
    W: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    em = e < E
    xv = tl.load(x_ptr + b * s_xb + e * s_xe, mask=em, other=0.0)
    acc = tl.load(w_ptr + e * s_we + (W - 1) * s_wk, mask=em, other=0.0).to(tl.float32) * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + e, mask=em, other=0.0).to(tl.float32)
    for k in tl.static_range(W - 1):
        sk = tl.load(s_ptr + b * s_sb + e * s_se + k * s_sk, mask=em, other=0.0)
        acc += tl.load(w_ptr + e * s_we + k * s_wk, mask=em, other=0.0).to(tl.float32) * sk.to(tl.float32)
    # shift the window: state[k] <- state[k + 1], state[W-2] <- x (each program owns its channels)
    for k in tl.static_range(W - 2):
        nxt = tl.load(s_ptr + b * s_sb + e * s_se + (k + 1) * s_sk, mask=em, other=0.0)
        tl.store(s_ptr + b * s_sb + e * s_se + k * s_sk, nxt, mask=em)
    if W > 1:
        tl.store(s_ptr + b * s_sb + e * s_se + (W - 2) * s_sk, xv.to(s_ptr.dtype.element_ty), mask=em)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * s_yb + e * s_ye, acc.to(y_ptr.dtype.element_ty), mask=em)


@triton.jit
def _ssu_kernel(
    h_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr, E, EG,
    s_hb, s_he, s_hn, s_xb, s_xe, s_db, s_de, s_ae, s_an, s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn,
    s_zb, s_ze, s_yb, s_ye,
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    n = tl.arange(0, NP)
    em = e < E
    m2 = em[:, None] & (n < N)[None, :]
    grp = e // EG  # group of each channel
    x = tl.load(x_ptr + b * s_xb + e * s_xe, mask=em, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_db + e * s_de, mask=em, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + e, mask=em, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + e[:, None] * s_ae + n[None, :] * s_an, mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_Bb + grp[:, None] * s_Bg + n[None, :] * s_Bn, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_Cb + grp[:, None] * s_Cg + n[None, :] * s_Cn, mask=m2, other=0.0).to(tl.float32)
    hp = h_ptr + b * s_hb + e[:, None] * s_he + n[None, :] * s_hn
    h = tl.load(hp, mask=m2, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv
    tl.store(hp, h.to(h_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += tl.load(D_ptr + e, mask=em, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + e * s_ze, mask=em, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + b * s_yb + e * s_ye, y.to(y_ptr.dtype.element_ty), mask=em)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One conv step. x: (B, E); conv_state: (B, E, W-1), updated in place to the last W-1 inputs;
    weight: (E, W); bias: (E,); activation None | "silu". Returns y (B, E) in x's dtype."""
    if not _use_triton(x):
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    batch, channels = x.shape
    width = weight.shape[1]
    if conv_state.shape != (batch, channels, width - 1):
        raise ValueError(f"conv_state: expected shape {(batch, channels, width - 1)}, got {tuple(conv_state.shape)}")
    y = torch.empty_like(x)
    BE = 128
    _conv_update_kernel[(batch, triton.cdiv(channels, BE))](
        x, conv_state, weight, bias if bias is not None else weight, y, channels,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        W=width, BE=BE, HAS_BIAS=bias is not None, SILU=activation == "silu", num_warps=4,
    )
    return y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One selective-scan step. state: (B, E, N) float32, updated in place; x, dt, z: (B, E);
    A: (E, N); B, C: (B, N) or (B, G, N); D, dt_bias: (E,). Returns y (B, E) in x's dtype."""
    if not _use_triton(x):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    batch, channels = x.shape
    n = A.shape[1]
    Bg = B.unsqueeze(1) if B.dim() == 2 else B
    Cg = C.unsqueeze(1) if C.dim() == 2 else C
    if channels % Bg.shape[1] or Cg.shape[1] != Bg.shape[1]:
        raise ValueError(f"B, C: groups {Bg.shape[1]}, {Cg.shape[1]} must match and divide {channels} channels")
    y = torch.empty_like(x)
    np2 = triton.next_power_of_2(n)
    BE = max(1, min(64, 2048 // np2))
    z_ = z if z is not None else x
    dummy = A
    _ssu_kernel[(batch, triton.cdiv(channels, BE))](
        state, x, dt, A, Bg, Cg, D if D is not None else dummy, z_, dt_bias if dt_bias is not None else dummy, y,
        channels, channels // Bg.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *Bg.stride(), *Cg.stride(), *z_.stride(),
        *y.stride(),
        N=n, NP=np2, BE=BE, HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), num_warps=4,
    )
    return y


def mamba1_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                       dt_proj_bias, A, D):
    """One Mamba-1 mixer step between in_proj and out_proj (see ``mamba1_decode_step_ref``).

    x, z: (B, E); conv_state: (B, E, W-1) and ssm_state: (B, E, N) float32, both updated in place;
    conv_weight: (E, W); conv_bias: (E,) or None; x_proj_weight: (R + 2N, E); dt_proj_weight: (E, R);
    dt_proj_bias: (E,); A: (E, N); D: (E,). Returns y (B, E) (before out_proj).
    """
    if not _use_triton(x):
        return mamba1_decode_step_ref(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                      dt_proj_weight, dt_proj_bias, A, D)
    n = A.shape[1]
    rank = dt_proj_weight.shape[1]
    xc = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu")  # (B, E)
    x_dbl = xc @ x_proj_weight.t()  # (B, R + 2N)
    dt_low, Bm, Cm = x_dbl.split([rank, n, n], dim=-1)
    dt = dt_low @ dt_proj_weight.t()  # (B, E); bias added in the kernel
    return selective_state_update(ssm_state, xc, dt, A, Bm, Cm, D, z, dt_proj_bias, True)


__all__ = ["causal_conv1d_update", "mamba1_decode_step", "selective_state_update"]
