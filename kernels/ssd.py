"""Mamba-2 SSD scan in Triton (chunked state-space duality): forward, and backward by recomputation.

Per head h, with a_t = exp(Δ_t A_h) a scalar, the recurrence h_t = a_t h_{t-1} + Δ_t x_t ⊗ B_t,
y_t = h_t C_t is evaluated in chunks of Q steps (S_t = cumulative Δ A inside the chunk):

1. ``_ssd_chunk_state_kernel`` (per batch, head, chunk): Δ (bias, softplus), S, and the chunk's state from zero
   Σ_s exp(S_end - S_s) Δ_s x_s ⊗ B_s as a matrix product [P, Q] @ [Q, N] (tensor cores).
2. ``_ssd_state_pass_kernel`` (per batch, head, block of P·N): h_c+1 = exp(S_end,c) h_c + state_c, sequential
   over chunks, from ``initial_state``; writes each chunk's start state and the final state.
3. ``_ssd_chunk_scan_kernel`` (per batch, head, chunk, block of rows): y_t = exp(S_t) C_t h_start
   + Σ_{s≤t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s, the second term as masked [T, T] blocks and two matrix products
   (the quadratic "attention" form inside the chunk), then + D x and × SiLU(z).

Backward (``_ssd_scan_bwd``), by recomputation from what the forward keeps (S and Δ (B, H, L), the state
entering each chunk (B, NC, H, P, N), the chunk log decays (B, H, NC)); g_t = dy_t SiLU(z_t):

4. ``_ssd_bwd_chunk_dstate_kernel`` (per batch, head, chunk): Σ_t exp(S_t) g_t ⊗ C_t, what the chunk's outputs
   send back to its start state, as [P, Q] @ [Q, N] products.
5. ``_ssd_bwd_state_pass_kernel``: the state pass in reverse, from the final state's gradient: the gradient at
   each chunk's end state, the initial state's gradient, and exp(S_end) <dh_end, h_start> for S_end.
6. ``_ssd_bwd_target_kernel`` (per batch, head, chunk, block of target rows t): dC, the target-side dS_t, and dz
   (y recomputed) and Σ g x for dD, looping over source blocks s ≤ t with [T, T] blocks as in the forward.
7. ``_ssd_bwd_source_kernel`` (per batch, head, chunk, block of source rows s): dx, dB, Δ's gradient through
   Δ x, the source-side dS_s and the chunk-state terms, looping over target blocks t ≥ s.
Then O(B·H·L) PyTorch: dS reverse-summed inside each chunk gives A's and Δ's gradients through S = cumsum Δ A,
then softplus and dt_bias; B and C sum their per-head gradients over the heads of a group (no atomics).

Shapes: x (B, L, H, P), dt (B, L, H), A (H,), B, C (B, L, G, N), D (H,) or (H, P), z (B, L, H, P),
dt_bias (H,), states (B, H, P, N) float32. Any strides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .activations import softplus as _softplus


@triton.jit
def _ssd_dt(dt_ptr, b, t, h, mask, dtb, s_db, s_dl, s_dh, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    d = tl.load(dt_ptr + b * s_db + t * s_dl + h * s_dh, mask=mask, other=0.0).to(tl.float32)
    if HAS_DTB:
        d += dtb
    if SOFTPLUS:
        d = _softplus(d)
    return tl.where(mask, d, 0.0)


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, dtb_ptr, cum_ptr, dtp_ptr, st_ptr, tot_ptr,
    L, H, HG, NC, Q,
    s_xb, s_xl, s_xh, s_xp, s_db, s_dl, s_dh, s_Bb, s_Bl, s_Bg, s_Bn,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, IEEE: tl.constexpr,
):
    """Writes cum (B, H, L) = S, dtp (B, H, L) = Δ, st (B, NC, H, P, N) chunk states, tot (B, H, NC) = S_end."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g = h // HG
    A = tl.load(A_ptr + h).to(tl.float32)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + h).to(tl.float32)
    else:
        dtb = 0.0
    t0 = c * Q
    kk = tl.arange(0, BK)
    # pass 1: S_end of the chunk
    total = 0.0
    for k0 in range(0, Q, BK):
        t = t0 + k0 + kk
        m = (k0 + kk < Q) & (t < L)
        total += tl.sum(_ssd_dt(dt_ptr, b, t, h, m, dtb, s_db, s_dl, s_dh, HAS_DTB, SOFTPLUS) * A, axis=0)
    # pass 2: running cumsum, decay to the chunk end, state as [P, K] @ [K, N] products
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    acc = tl.zeros([BP, BN], tl.float32)
    run = 0.0
    for k0 in range(0, Q, BK):
        t = t0 + k0 + kk
        m = (k0 + kk < Q) & (t < L)
        d = _ssd_dt(dt_ptr, b, t, h, m, dtb, s_db, s_dl, s_dh, HAS_DTB, SOFTPLUS)
        cum = run + tl.cumsum(d * A, axis=0)
        run += tl.sum(d * A, axis=0)
        tl.store(cum_ptr + (b * H + h) * L + t, cum, mask=m)
        tl.store(dtp_ptr + (b * H + h) * L + t, d, mask=m)
        w = tl.where(m, tl.exp(total - cum) * d, 0.0)  # [BK]
        xt = tl.load(x_ptr + b * s_xb + t[None, :] * s_xl + h * s_xh + p[:, None] * s_xp,
                     mask=m[None, :] & (p < P)[:, None], other=0.0)  # [BP, BK]
        Bk = tl.load(B_ptr + b * s_Bb + t[:, None] * s_Bl + g * s_Bg + n[None, :] * s_Bn,
                     mask=m[:, None] & (n < N)[None, :], other=0.0)  # [BK, BN]
        xw = (xt.to(tl.float32) * w[None, :]).to(Bk.dtype)
        if IEEE:
            acc += tl.dot(xw, Bk, input_precision="ieee")
        else:
            acc += tl.dot(xw, Bk)
    pn = (p < P)[:, None] & (n < N)[None, :]
    tl.store(st_ptr + (((b * NC + c) * H + h) * P + p[:, None]) * N + n[None, :], acc, mask=pn)
    tl.store(tot_ptr + (b * H + h) * NC + c, total)


@triton.jit
def _ssd_state_pass_kernel(st_ptr, tot_ptr, h0_ptr, hs_ptr, hT_ptr, H, NC, M,
                           HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """hs (B, NC, H, P·N): state entering each chunk; hT (B, H, P·N): final state."""
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = pid % H
    m = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    if HAS_H0:
        hv = tl.load(h0_ptr + (b * H + h) * M + m, mask=mask, other=0.0).to(tl.float32)
    else:
        hv = tl.zeros([BLOCK], tl.float32)
    for c in range(0, NC):
        off = ((b * NC + c) * H + h) * M + m
        tl.store(hs_ptr + off, hv, mask=mask)
        hv = tl.exp(tl.load(tot_ptr + (b * H + h) * NC + c)) * hv + tl.load(st_ptr + off, mask=mask, other=0.0)
    tl.store(hT_ptr + (b * H + h) * M + m, hv, mask=mask)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, cum_ptr, dtp_ptr, hs_ptr, y_ptr,
    L, H, HG, NC, Q,
    s_xb, s_xl, s_xh, s_xp, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp,
    s_zb, s_zl, s_zh, s_zp, s_yb, s_yl, s_yh, s_yp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    c = tl.program_id(1)
    tb = tl.program_id(2)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g = h // HG
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    loc_t = tb * BT + tl.arange(0, BT)
    t = c * Q + loc_t
    mt = (loc_t < Q) & (t < L)
    cum_t = tl.load(cum_ptr + (b * H + h) * L + t, mask=mt, other=0.0)
    Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g * s_Cg + n[None, :] * s_Cn,
                 mask=mt[:, None] & (n < N)[None, :], other=0.0)  # [BT, BN]
    # contribution of the state entering the chunk: exp(S_t) C_t h0^T
    h0 = tl.load(hs_ptr + (((b * NC + c) * H + h) * P + p[None, :]) * N + n[:, None],
                 mask=(p < P)[None, :] & (n < N)[:, None], other=0.0)  # [BN, BP] = h0^T
    if IEEE:
        acc = tl.dot(Ct.to(tl.float32), h0, input_precision="ieee")
    else:
        acc = tl.dot(Ct, h0.to(Ct.dtype))
    acc = acc * tl.exp(cum_t)[:, None]  # [BT, BP]
    # inside the chunk: Σ_{s<=t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s, blocks of BT source steps up to the diagonal
    for sb in range(0, tb + 1):
        loc_s = sb * BT + tl.arange(0, BT)
        s = c * Q + loc_s
        ms = (loc_s < Q) & (s < L)
        cum_s = tl.load(cum_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
        dt_s = tl.load(dtp_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
        Bs = tl.load(B_ptr + b * s_Bb + s[None, :] * s_Bl + g * s_Bg + n[:, None] * s_Bn,
                     mask=ms[None, :] & (n < N)[:, None], other=0.0)  # [BN, BT] = B_s^T
        xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp,
                     mask=ms[:, None] & (p < P)[None, :], other=0.0)  # [BT, BP]
        if IEEE:
            sc = tl.dot(Ct.to(tl.float32), Bs.to(tl.float32), input_precision="ieee")
        else:
            sc = tl.dot(Ct, Bs)
        causal = (loc_s[None, :] <= loc_t[:, None]) & ms[None, :] & mt[:, None]
        decay = tl.exp(tl.where(causal, cum_t[:, None] - cum_s[None, :], float("-inf")))
        sc = sc * decay * dt_s[None, :]
        if IEEE:
            acc += tl.dot(sc, xs.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(sc.to(xs.dtype), xs)
    mo = mt[:, None] & (p < P)[None, :]
    if HAS_D:
        xt = tl.load(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mo, other=0.0)
        acc += tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=p < P, other=0.0).to(tl.float32)[None, :] * xt.to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + t[:, None] * s_zl + h * s_zh + p[None, :] * s_zp, mask=mo, other=0.0)
        zz = zz.to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(y_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :] * s_yp, acc.to(y_ptr.dtype.element_ty),
             mask=mo)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """[M, K] @ [K, N] in float32: exact FMAs for float32 inputs, tensor cores (tf32) otherwise."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _ssd_gate_grad(dy_ptr, z_ptr, b, t, h, p, mask, s_yb, s_yl, s_yh, s_yp, s_zb, s_zl, s_zh, s_zp,
                   HAS_Z: tl.constexpr):
    """Returns (dy, g = dy · SiLU(z), σ(z), z) as float32 [T, P] tiles (g = dy and the others 0 without z)."""
    dy = tl.load(dy_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :] * s_yp, mask=mask,
                 other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_zb + t[:, None] * s_zl + h * s_zh + p[None, :] * s_zp, mask=mask,
                     other=0.0).to(tl.float32)
        sig = tl.sigmoid(zz)
        g = dy * zz * sig
    else:
        zz = tl.zeros_like(dy)
        sig = zz
        g = dy
    return dy, g, sig, zz


@triton.jit
def _ssd_bwd_chunk_dstate_kernel(
    dy_ptr, z_ptr, C_ptr, cum_ptr, dhl_ptr,
    L, H, HG, NC, Q,
    s_yb, s_yl, s_yh, s_yp, s_zb, s_zl, s_zh, s_zp, s_Cb, s_Cl, s_Cg, s_Cn,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_Z: tl.constexpr, IEEE: tl.constexpr,
):
    """dhl (B, NC, H, P, N) = Σ_t exp(S_t) g_t ⊗ C_t: the gradient that chunk c's outputs send to its start state."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g_ = h // HG
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    kk = tl.arange(0, BK)
    acc = tl.zeros([BP, BN], tl.float32)
    for k0 in range(0, Q, BK):
        t = c * Q + k0 + kk
        m = (k0 + kk < Q) & (t < L)
        cum = tl.load(cum_ptr + (b * H + h) * L + t, mask=m, other=0.0)
        _, g, _, _ = _ssd_gate_grad(dy_ptr, z_ptr, b, t, h, p, m[:, None] & (p < P)[None, :],
                                    s_yb, s_yl, s_yh, s_yp, s_zb, s_zl, s_zh, s_zp, HAS_Z)  # [BK, BP]
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g_ * s_Cg + n[None, :] * s_Cn,
                     mask=m[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)  # [BK, BN]
        gw = tl.trans(g * tl.where(m, tl.exp(cum), 0.0)[:, None])  # [BP, BK]
        acc += _dot(gw, Ct, IEEE)
    pn = (p < P)[:, None] & (n < N)[None, :]
    tl.store(dhl_ptr + (((b * NC + c) * H + h) * P + p[:, None]) * N + n[None, :], acc, mask=pn)


@triton.jit
def _ssd_bwd_state_pass_kernel(dhl_ptr, tot_ptr, hs_ptr, dhT_ptr, dH_ptr, dh0_ptr, dtot_ptr, H, NC, M, NBLK,
                               BLOCK: tl.constexpr):
    """Reverse pass over chunks: dH (B, NC, H, P·N) = gradient reaching the end state of each chunk,
    dh0 (B, H, P·N) = gradient of the initial state, dtot (B, H, NC, NBLK) partial sums of
    exp(S_end) <dH_c, h_c> (the gradient of each chunk's total log decay through the state pass)."""
    pid = tl.program_id(0)
    blk = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = pid % H
    m = blk * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    dh = tl.load(dhT_ptr + (b * H + h) * M + m, mask=mask, other=0.0).to(tl.float32)
    for i in range(0, NC):
        c = NC - 1 - i
        off = ((b * NC + c) * H + h) * M + m
        tl.store(dH_ptr + off, dh, mask=mask)
        a = tl.exp(tl.load(tot_ptr + (b * H + h) * NC + c))
        hv = tl.load(hs_ptr + off, mask=mask, other=0.0)
        tl.store(dtot_ptr + ((b * H + h) * NC + c) * NBLK + blk, a * tl.sum(dh * hv, axis=0))
        dh = a * dh + tl.load(dhl_ptr + off, mask=mask, other=0.0)
    tl.store(dh0_ptr + (b * H + h) * M + m, dh, mask=mask)


@triton.jit
def _ssd_bwd_target_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dy_ptr, cum_ptr, dtp_ptr, hs_ptr,
    dz_ptr, dC_ptr, dSt_ptr, dD_ptr,
    L, H, HG, NC, Q, NTB,
    s_xb, s_xl, s_xh, s_xp, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp,
    s_zb, s_zl, s_zh, s_zp, s_yb, s_yl, s_yh, s_yp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IEEE: tl.constexpr,
):
    """Per block of target steps t of one chunk (g_t = dy_t SiLU(z_t), M_ts = (C_t·B_s) exp(S_t - S_s) Δ_s):
    dC_t (per head) = exp(S_t) h_c g_t + Σ_{s≤t} exp(S_t - S_s) Δ_s (g_t·x_s) B_s;
    dS_t (target side) = g_t·(exp(S_t) C_t h_c) + Σ_{s≤t} M_ts (g_t·x_s);
    dz_t = dy_t (y0_t + D x_t) SiLU'(z_t) with y0 recomputed; partial Σ_t g_t x_t for dD."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    tb = tl.program_id(2)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g_ = h // HG
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    loc_t = tb * BT + tl.arange(0, BT)
    t = c * Q + loc_t
    mt = (loc_t < Q) & (t < L)
    mo = mt[:, None] & (p < P)[None, :]
    cum_t = tl.load(cum_ptr + (b * H + h) * L + t, mask=mt, other=0.0)
    et = tl.where(mt, tl.exp(cum_t), 0.0)
    Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g_ * s_Cg + n[None, :] * s_Cn,
                 mask=mt[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)  # [BT, BN]
    dy, g, sig, zz = _ssd_gate_grad(dy_ptr, z_ptr, b, t, h, p, mo, s_yb, s_yl, s_yh, s_yp,
                                    s_zb, s_zl, s_zh, s_zp, HAS_Z)  # [BT, BP]
    hbase = hs_ptr + ((b * NC + c) * H + h) * P * N
    hpn = (p < P)[:, None] & (n < N)[None, :]
    hnp = (p < P)[None, :] & (n < N)[:, None]
    h0t = tl.load(hbase + p[None, :] * N + n[:, None], mask=hnp, other=0.0)  # [BN, BP] = h^T
    h0 = tl.load(hbase + p[:, None] * N + n[None, :], mask=hpn, other=0.0)  # [BP, BN]
    ys = _dot(Ct, h0t, IEEE) * et[:, None]  # [BT, BP] state part of y
    dC = _dot(g, h0, IEEE) * et[:, None]  # [BT, BN]
    dS = tl.sum(g * ys, axis=1)  # [BT]
    y0 = ys
    for sb in range(0, tb + 1):
        loc_s = sb * BT + tl.arange(0, BT)
        s = c * Q + loc_s
        ms = (loc_s < Q) & (s < L)
        cum_s = tl.load(cum_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
        dt_s = tl.load(dtp_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
        Bs = tl.load(B_ptr + b * s_Bb + s[:, None] * s_Bl + g_ * s_Bg + n[None, :] * s_Bn,
                     mask=ms[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)  # [BT, BN]
        xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp,
                     mask=ms[:, None] & (p < P)[None, :], other=0.0).to(tl.float32)  # [BT, BP]
        causal = (loc_s[None, :] <= loc_t[:, None]) & ms[None, :] & mt[:, None]
        w = tl.exp(tl.where(causal, cum_t[:, None] - cum_s[None, :], float("-inf"))) * dt_s[None, :]  # [BT, BT]
        cb = _dot(Ct, tl.trans(Bs), IEEE)  # [BT, BT]
        gx = _dot(g, tl.trans(xs), IEEE)  # [BT, BT]
        y0 += _dot(cb * w, xs, IEEE)
        wgx = w * gx
        dS += tl.sum(cb * wgx, axis=1)
        dC += _dot(wgx, Bs, IEEE)
    xt = tl.load(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mo,
                 other=0.0).to(tl.float32)
    if HAS_D:
        y0 += tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=p < P, other=0.0).to(tl.float32)[None, :] * xt
        tl.store(dD_ptr + (((b * NC + c) * NTB + tb) * H + h) * P + p, tl.sum(g * xt, axis=0), mask=p < P)
    if HAS_Z:
        dz = dy * y0 * sig * (1.0 + zz * (1.0 - sig))
        tl.store(dz_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], dz, mask=mo)
    tl.store(dC_ptr + ((b * L + t[:, None]) * H + h) * N + n[None, :], dC, mask=mt[:, None] & (n < N)[None, :])
    tl.store(dSt_ptr + (b * H + h) * L + t, dS, mask=mt)


@triton.jit
def _ssd_bwd_source_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dy_ptr, cum_ptr, dtp_ptr, tot_ptr, dH_ptr,
    dx_ptr, dB_ptr, dSs_ptr, dSe_ptr, ddt_ptr,
    L, H, HG, NC, Q, NTB,
    s_xb, s_xl, s_xh, s_xp, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp,
    s_zb, s_zl, s_zh, s_zp, s_yb, s_yl, s_yh, s_yp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IEEE: tl.constexpr,
):
    """Per block of source steps s of one chunk (dH = gradient at the chunk's end state, w_s = exp(S_end - S_s)):
    dX_s = w_s dH B_s + Σ_{t≥s} (C_t·B_s) exp(S_t - S_s) g_t  (X_s = Δ_s x_s);  dx_s = Δ_s dX_s + D g_s;
    dΔ_s (through X) = x_s·dX_s;  dB_s (per head) = Δ_s (w_s dHᵀ x_s + Σ_{t≥s} exp(S_t - S_s) (g_t·x_s) C_t);
    dS_s (source side) = -Σ_{t≥s} M_ts (g_t·x_s); dSe_s = w_s Δ_s x_s·(dH B_s) (enters as +S_end, -S_s)."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    sb = tl.program_id(2)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g_ = h // HG
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    loc_s = sb * BT + tl.arange(0, BT)
    s = c * Q + loc_s
    ms = (loc_s < Q) & (s < L)
    mo = ms[:, None] & (p < P)[None, :]
    cum_s = tl.load(cum_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
    dt_s = tl.load(dtp_ptr + (b * H + h) * L + s, mask=ms, other=0.0)
    Bs = tl.load(B_ptr + b * s_Bb + s[:, None] * s_Bl + g_ * s_Bg + n[None, :] * s_Bn,
                 mask=ms[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)  # [BT, BN]
    xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mo,
                 other=0.0).to(tl.float32)  # [BT, BP]
    dbase = dH_ptr + ((b * NC + c) * H + h) * P * N
    hpn = (p < P)[:, None] & (n < N)[None, :]
    hnp = (p < P)[None, :] & (n < N)[:, None]
    dHt = tl.load(dbase + p[None, :] * N + n[:, None], mask=hnp, other=0.0)  # [BN, BP] = dH^T
    dH = tl.load(dbase + p[:, None] * N + n[None, :], mask=hpn, other=0.0)  # [BP, BN]
    ws = tl.where(ms, tl.exp(tl.load(tot_ptr + (b * H + h) * NC + c) - cum_s), 0.0)  # [BT]
    dX = _dot(Bs, dHt, IEEE) * ws[:, None]  # [BT, BP]
    dB = _dot(xs, dH, IEEE) * ws[:, None]  # [BT, BN] (× Δ_s at the end)
    dSe = tl.sum(dX * xs, axis=1) * dt_s
    dS = tl.zeros([BT], tl.float32)
    for tb in range(sb, NTB):
        loc_t = tb * BT + tl.arange(0, BT)
        t = c * Q + loc_t
        mt = (loc_t < Q) & (t < L)
        cum_t = tl.load(cum_ptr + (b * H + h) * L + t, mask=mt, other=0.0)
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g_ * s_Cg + n[None, :] * s_Cn,
                     mask=mt[:, None] & (n < N)[None, :], other=0.0).to(tl.float32)  # [BT, BN]
        _, g, _, _ = _ssd_gate_grad(dy_ptr, z_ptr, b, t, h, p, mt[:, None] & (p < P)[None, :],
                                    s_yb, s_yl, s_yh, s_yp, s_zb, s_zl, s_zh, s_zp, HAS_Z)  # [BT, BP]
        causal = (loc_t[None, :] >= loc_s[:, None]) & mt[None, :] & ms[:, None]
        e = tl.exp(tl.where(causal, cum_t[None, :] - cum_s[:, None], float("-inf")))  # [BT_s, BT_t]
        bce = _dot(Bs, tl.trans(Ct), IEEE) * e  # [BT_s, BT_t]
        xg = _dot(xs, tl.trans(g), IEEE)  # [BT_s, BT_t]
        dX += _dot(bce, g, IEEE)
        dS -= tl.sum(bce * xg, axis=1) * dt_s
        dB += _dot(e * xg, Ct, IEEE)
    dB = dB * dt_s[:, None]
    dx = dX * dt_s[:, None]
    if HAS_D:
        _, gs, _, _ = _ssd_gate_grad(dy_ptr, z_ptr, b, s, h, p, mo, s_yb, s_yl, s_yh, s_yp,
                                     s_zb, s_zl, s_zh, s_zp, HAS_Z)
        dx += tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=p < P, other=0.0).to(tl.float32)[None, :] * gs
    tl.store(dx_ptr + ((b * L + s[:, None]) * H + h) * P + p[None, :], dx, mask=mo)
    tl.store(dB_ptr + ((b * L + s[:, None]) * H + h) * N + n[None, :], dB, mask=ms[:, None] & (n < N)[None, :])
    tl.store(dSs_ptr + (b * H + h) * L + s, dS, mask=ms)
    tl.store(dSe_ptr + (b * H + h) * L + s, dSe, mask=ms)
    tl.store(ddt_ptr + (b * H + h) * L + s, tl.sum(dX * xs, axis=1), mask=ms)


def _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_state=None, return_aux=False):
    """Triton forward. Returns (y (B, L, H, P) in x's dtype, final_state (B, H, P, N) float32), and with
    ``return_aux`` a third item for the backward: (S (B, H, L), Δ (B, H, L), states entering each chunk
    (B, NC, H, P, N), chunk log decays S_end (B, H, NC)), all float32 (None when L = 0)."""
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    dev = x.device
    f32 = torch.float32
    Q = int(chunk_size)
    nc = max(1, triton.cdiv(length, Q))
    y = torch.empty_like(x)
    hT = torch.empty(batch, heads, headdim, n, device=dev, dtype=f32)
    if length == 0:
        hT.copy_(initial_state if initial_state is not None else torch.zeros_like(hT))
        return (y, hT, None) if return_aux else (y, hT)
    ieee = x.dtype == torch.float32 or B.dtype == torch.float32
    BP = max(16, triton.next_power_of_2(headdim))
    BN = max(16, triton.next_power_of_2(n))
    BK = max(16, min(64, triton.next_power_of_2(Q)))
    # float32 products run as exact FMA loops (no tf32): smaller row blocks keep them in registers.
    BT = max(16, min(32 if ieee else 64, triton.next_power_of_2(Q)))
    cum = torch.empty(batch, heads, length, device=dev, dtype=f32)
    dtp = torch.empty_like(cum)
    st = torch.empty(batch, nc, heads, headdim, n, device=dev, dtype=f32)
    tot = torch.empty(batch, heads, nc, device=dev, dtype=f32)
    hg = heads // groups
    dummy = tot
    _ssd_chunk_state_kernel[(batch * heads, nc)](
        x, dt, A, B, dt_bias if dt_bias is not None else dummy, cum, dtp, st, tot,
        length, heads, hg, nc, Q, *x.stride(), *dt.stride(), *B.stride(),
        P=headdim, N=n, BP=BP, BN=BN, BK=BK, HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        IEEE=ieee, num_warps=4,
    )
    hs = torch.empty_like(st)
    M = headdim * n
    h0 = None if initial_state is None else initial_state.to(f32).contiguous()
    _ssd_state_pass_kernel[(batch * heads, triton.cdiv(M, 1024))](
        st, tot, h0 if h0 is not None else dummy, hs, hT, heads, nc, M,
        HAS_H0=h0 is not None, BLOCK=1024, num_warps=4,
    )
    if D is not None and D.dim() == 1:
        D = D[:, None].expand(heads, headdim)
    z_ = z if z is not None else x
    _ssd_chunk_scan_kernel[(batch * heads, nc, triton.cdiv(Q, BT))](
        x, B, C, D if D is not None else dummy, z_, cum, dtp, hs, y,
        length, heads, hg, nc, Q, *x.stride(), *B.stride(), *C.stride(),
        *(D.stride() if D is not None else (0, 0)), *z_.stride(), *y.stride(),
        P=headdim, N=n, BP=BP, BN=BN, BT=BT, HAS_D=D is not None, HAS_Z=z is not None, IEEE=ieee, num_warps=4,
    )
    return (y, hT, (cum, dtp, hs, tot)) if return_aux else (y, hT)


def _ssd_scan_bwd(dy, dhT, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, aux):
    """Triton backward by recomputation from the forward's per-chunk states ``aux`` (see ``_ssd_scan_fwd``).

    Args:
        dy: (B, L, H, P) gradient of y (any strides); dhT: (B, H, P, N) gradient of the final state;
        the rest as the forward. D is (H,) or (H, P).

    Returns:
        (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_state) in the dtypes of their inputs (None for
        absent optional inputs).
    """
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    dev = x.device
    f32 = torch.float32
    Q = int(chunk_size)
    nc = max(1, triton.cdiv(length, Q))
    hg = heads // groups
    D_in = D
    if length == 0:
        zeros = [torch.zeros_like(t) if t is not None else None for t in (x, dt, A, B, C, D, z, dt_bias)]
        return (*zeros, dhT.clone())
    cum, dtp, hs, tot = aux
    ieee = x.dtype == torch.float32 or B.dtype == torch.float32
    BP = max(16, triton.next_power_of_2(headdim))
    BN = max(16, triton.next_power_of_2(n))
    # Offline sm_90a compiles (ptxas -v, P = N = 64): 32-row blocks or 4 warps spill in the target and source
    # kernels (255 registers + 176-1700 bytes); 16-row blocks with 8 warps do not (174-255 registers).
    BK = max(16, min(32, triton.next_power_of_2(Q)))
    BT = 16
    ntb = triton.cdiv(Q, BT)
    M = headdim * n
    NBLK = triton.cdiv(M, 1024)
    if D is not None and D.dim() == 1:
        D = D[:, None].expand(heads, headdim)
    z_ = z if z is not None else x
    dhT = dhT.to(f32).contiguous()
    dummy = tot
    dhl = torch.empty(batch, nc, heads, headdim, n, device=dev, dtype=f32)
    _ssd_bwd_chunk_dstate_kernel[(batch * heads, nc)](
        dy, z_, C, cum, dhl, length, heads, hg, nc, Q, *dy.stride(), *z_.stride(), *C.stride(),
        P=headdim, N=n, BP=BP, BN=BN, BK=BK, HAS_Z=z is not None, IEEE=ieee, num_warps=8,
    )
    dH = torch.empty_like(dhl)
    dh0 = torch.empty(batch, heads, headdim, n, device=dev, dtype=f32)
    dtot = torch.empty(batch, heads, nc, NBLK, device=dev, dtype=f32)
    _ssd_bwd_state_pass_kernel[(batch * heads, NBLK)](
        dhl, tot, hs, dhT, dH, dh0, dtot, heads, nc, M, NBLK, BLOCK=1024, num_warps=4,
    )
    dz = torch.empty(batch, length, heads, headdim, device=dev, dtype=f32) if z is not None else dummy
    dCh = torch.empty(batch, length, heads, n, device=dev, dtype=f32)
    dS_t = torch.empty(batch, heads, length, device=dev, dtype=f32)
    dDp = torch.empty(batch, nc, ntb, heads, headdim, device=dev, dtype=f32) if D is not None else dummy
    strides = (*x.stride(), *B.stride(), *C.stride(), *(D.stride() if D is not None else (0, 0)), *z_.stride(),
               *dy.stride())
    meta = dict(P=headdim, N=n, BP=BP, BN=BN, BT=BT, HAS_D=D is not None, HAS_Z=z is not None, IEEE=ieee,
                num_warps=8)
    _ssd_bwd_target_kernel[(batch * heads, nc, ntb)](
        x, B, C, D if D is not None else dummy, z_, dy, cum, dtp, hs, dz, dCh, dS_t, dDp,
        length, heads, hg, nc, Q, ntb, *strides, **meta,
    )
    dx = torch.empty(batch, length, heads, headdim, device=dev, dtype=f32)
    dBh = torch.empty_like(dCh)
    dS_s, dS_e, dX_dt = torch.empty_like(dS_t), torch.empty_like(dS_t), torch.empty_like(dS_t)
    _ssd_bwd_source_kernel[(batch * heads, nc, ntb)](
        x, B, C, D if D is not None else dummy, z_, dy, cum, dtp, tot, dH, dx, dBh, dS_s, dS_e, dX_dt,
        length, heads, hg, nc, Q, ntb, *strides, **meta,
    )
    # O(B·H·L) epilogue: S_t = Σ_{u≤t in its chunk} Δ_u A, so dΔ_u gets A × (reverse cumsum of dS in the chunk);
    # a chunk's S_end (its last step's S; padded steps have Δ = 0) also collects dS_e and the state pass's dtot.
    pad = nc * Q - length
    dS = F.pad(dS_t + dS_s - dS_e, (0, pad)).view(batch, heads, nc, Q)
    dS[..., -1] += F.pad(dS_e, (0, pad)).view(batch, heads, nc, Q).sum(-1) + dtot.sum(-1)
    R = dS.flip(-1).cumsum(-1).flip(-1).view(batch, heads, nc * Q)[..., :length]  # (B, H, L)
    dA = (dtp * R).sum((0, 2))
    ddelta = (dX_dt + A.to(f32)[None, :, None] * R).transpose(1, 2)  # (B, L, H)
    if dt_softplus:
        pre = dt.to(f32) + (dt_bias.to(f32) if dt_bias is not None else 0.0)
        ddelta = ddelta * torch.sigmoid(pre)
    dD = None
    if D is not None:
        dD = dDp.sum((0, 1, 2))
        dD = (dD.sum(-1) if D_in.dim() == 1 else dD).to(D_in.dtype)
    return (
        dx.to(x.dtype), ddelta.to(dt.dtype), dA.to(A.dtype),
        dBh.view(batch, length, groups, hg, n).sum(3).to(B.dtype),
        dCh.view(batch, length, groups, hg, n).sum(3).to(C.dtype),
        dD, dz.to(z.dtype) if z is not None else None,
        ddelta.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else None, dh0,
    )


class SSDScanFn(torch.autograd.Function):
    """Triton forward and Triton backward (recomputation from the per-chunk states the forward keeps)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state):
        y, hT, aux = _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state,
                                   return_aux=True)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, *(aux or ()))
        ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        # dy and dhT are tensors: autograd materializes the gradient of an unused output as zeros.
        x, dt, A, B, C, D, z, dt_bias, h0, *aux = ctx.saved_tensors
        grads = _ssd_scan_bwd(dy, dhT, x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, ctx.dt_softplus,
                              aux or None)
        dx, ddt, dA, dB, dC, dD, dz, ddtb, dh0 = grads
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        need = ctx.needs_input_grad
        out = [dx, ddt, dA, dB, dC, None, dD, dz, ddtb, None, dh0]
        return tuple(g if need[i] else None for i, g in enumerate(out))


def ssd_scan_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                    initial_state=None, return_final_state=False):
    """Mamba-2 SSD with a Triton forward; contract of ``ssd_scan_ref``.

    Args:
        x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); D: (H,) or (H, P); z: (B, L, H, P);
        dt_bias: (H,); initial_state: (B, H, P, N) float32; chunk_size: steps per chunk.

    Returns:
        y: (B, L, H, P) in x's dtype, or (y, final_state (B, H, P, N) float32).
    """
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, dt_bias, initial_state)
    )
    if needs_graph:
        y, hT = SSDScanFn.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state)
    else:
        y, hT = _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state)
    return (y, hT) if return_final_state else y


__all__ = ["SSDScanFn", "ssd_scan_triton"]
