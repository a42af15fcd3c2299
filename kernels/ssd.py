"""Mamba-2 SSD scan in Triton (chunked state-space duality): forward, and backward by recomputation.

Per head h, with a_t = exp(Δ_t A_h) a scalar, the recurrence h_t = a_t h_{t-1} + Δ_t x_t ⊗ B_t,
y_t = h_t C_t is evaluated in chunks of Q steps (S_t = cumulative Δ A inside the chunk):

1. ``_ssd_chunk_state_kernel`` (per batch, head, chunk): Δ (bias, softplus), S, and the chunk's state from zero
   Σ_s exp(S_end - S_s) Δ_s x_s ⊗ B_s as a matrix product [P, Q] @ [Q, N] (tensor cores).
2. ``_ssd_state_pass_kernel`` (per batch, head, block of P·N): h_c+1 = exp(S_end,c) h_c + state_c, sequential
   over chunks, from ``initial_state``; writes each chunk's start state and the final state.
3. ``_ssd_chunk_scan_kernel`` (per batch, head, chunk, block of rows): y_t = exp(S_t) C_t h_start
   + Σ_{s≤t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s: the block's own steps as a masked [T, T] tile and two matrix
   products (the quadratic "attention" form), the earlier steps of the chunk and h_start through the state at
   the block's start (one [N, T] @ [T, P] product per earlier block); then + D x and × SiLU(z).

Backward (``_ssd_scan_bwd``), by recomputation from what the forward keeps (S and Δ (B, H, L), the state
entering each chunk (B, NC, H, P, N), the chunk log decays (B, H, NC), with z the SSM output before D x and the
gate (B, L, H, P)); g_t = dy_t SiLU(z_t):

4. ``_ssd_bwd_chunk_dstate_kernel`` (per batch, head, chunk), everything linear in the chunk's steps:
   Σ_t exp(S_t) g_t ⊗ C_t (what the chunk's outputs send back to its start state) as [P, Q] @ [Q, N] products;
   g stored for the next kernel; dz; Σ g x for dD; the start state's part of dS_t.
5. ``_ssd_bwd_state_pass_kernel``: the state pass in reverse, from the final state's gradient: the gradient at
   each chunk's end state, the initial state's gradient, and exp(S_end) <dH_c, h_c> for S_end.
6. ``_ssd_bwd_chunk_kernel`` (per batch, head, chunk, block of 64 rows), the quadratic part as [64, 32] tiles on
   tensor cores: target rows t (dC, the target side of dS; loop over source blocks ≤ t) and source rows s (dx,
   dB, Δ's gradient through Δ x, the source side of dS, the chunk-state terms; loop over target blocks ≥ s), as
   two launches (or one, see ``SSDLaunch``).
7. ``_ssd_bwd_dt_kernel`` (per batch, head, chunk): dS reverse-summed inside the chunk gives A's and Δ's
   gradients through S = cumsum Δ A; softplus; partial sums for A and dt_bias.
Then PyTorch sums those partials, dD's, and B's and C's per-head gradients over the heads of a group (no atomics).

Shapes: x (B, L, H, P), dt (B, L, H), A (H,), B, C (B, L, G, N), D (H,) or (H, P), z (B, L, H, P),
dt_bias (H,), states (B, H, P, N) float32. Any strides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
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


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
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
    for c in tl.range(0, NC, num_stages=4):  # a chain over chunks: loads of later chunks in flight (cp.async)
        off = ((b * NC + c) * H + h) * M + m
        tl.store(hs_ptr + off, hv, mask=mask)
        hv = tl.exp(tl.load(tot_ptr + (b * H + h) * NC + c)) * hv + tl.load(st_ptr + off, mask=mask, other=0.0)
    tl.store(hT_ptr + (b * H + h) * M + m, hv, mask=mask)


@triton.jit
def _ld(ptr, mask, EVEN: tl.constexpr):
    """Load with zeros outside ``mask``, or unmasked when EVEN (every row in range)."""
    if EVEN:
        return tl.load(ptr)
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """[M, K] @ [K, N] with float32 accumulation: exact float32 FMAs when IEEE, else tensor cores on the
    operands as given (the callers pass the input's 16-bit dtype)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
def _ssd_chunk_scan_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, cum_ptr, dtp_ptr, hs_ptr, y_ptr, ys_ptr,
    L, H, HG, NC, Q,
    s_xb, s_xl, s_xh, s_xp, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp,
    s_zb, s_zl, s_zh, s_zp, s_yb, s_yl, s_yh, s_yp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IEEE: tl.constexpr, STORE_YS: tl.constexpr, EVEN: tl.constexpr,
):
    """y (any strides); with STORE_YS also ys (B, L, H, P) contiguous = the SSM part before D x and the gate.
    Program (batch, head, row block tb; chunk c). Everything the diagonal block and the epilogue need is loaded
    up front in one round of memory latency (the diagonal block's source rows are the target rows: x_t serves
    both its product and D x_t; also z_t and h_c); the diagonal block as a masked [T, T] tile; the earlier source
    blocks sb < tb through the state at the row block's start, one [N, T] @ [T, P] product each (pipelined
    loads, no [T, T] tiles, a [T] vector of exponentials instead of a [T, T] tile); then C_t times that state.
    EVEN (L a multiple of Q, Q of BT, P = BP and N = BN): no masks at all."""
    # row blocks of one (batch, head, chunk) are consecutive programs: they share the chunk's tiles in L2
    NTB = tl.cdiv(Q, BT)
    pid = tl.program_id(0) // NTB
    tb = tl.program_id(0) % NTB
    c = tl.program_id(1)
    if c * Q + tb * BT >= L:  # a row block past the end of the sequence (last chunk partial)
        return
    b = (pid // H).to(tl.int64)
    h = pid % H
    g = h // HG
    bh = b * H + h
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    loc_t = tb * BT + tl.arange(0, BT)
    t = c * Q + loc_t
    if EVEN:
        mt = None
        mtp = None
        mtn = None
    else:
        mt = (loc_t < Q) & (t < L)
        mtp = mt[:, None] & (p < P)[None, :]
        mtn = mt[:, None] & (n < N)[None, :]
    # ---- one round of loads: the target rows' tiles (also the diagonal block's source tiles), h_c, z_t
    cum_t = _ld(cum_ptr + bh * L + t, mt, EVEN)
    dt_t = _ld(dtp_ptr + bh * L + t, mt, EVEN)
    Ct = _ld(C_ptr + b * s_Cb + t[:, None] * s_Cl + g * s_Cg + n[None, :] * s_Cn, mtn, EVEN)
    BtT = _ld(B_ptr + b * s_Bb + t[None, :] * s_Bl + g * s_Bg + n[:, None] * s_Bn,
              None if EVEN else mt[None, :] & (n < N)[:, None], EVEN)  # [BN, BT] = B_tᵀ
    xt = _ld(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mtp, EVEN)
    h0 = _ld(hs_ptr + (((b * NC + c) * H + h) * P + p[None, :]) * N + n[:, None],
             None if EVEN else (p < P)[None, :] & (n < N)[:, None], EVEN)  # [BN, BP] = h_cᵀ
    if HAS_Z:
        zz = _ld(z_ptr + b * s_zb + t[:, None] * s_zl + h * s_zh + p[None, :] * s_zp, mtp, EVEN)
    if IEEE:  # exact float32 products
        Ct, BtT, xt = Ct.to(tl.float32), BtT.to(tl.float32), xt.to(tl.float32)
    # ---- the diagonal block: Σ_{s≤t, same block} (C_t·B_s) exp(S_t - S_s) Δ_s x_s
    causal = loc_t[None, :] <= loc_t[:, None]
    if not EVEN:
        causal = causal & mt[None, :]
    sc = _mm(Ct, BtT, IEEE)
    sc = sc * tl.exp(tl.where(causal, cum_t[:, None] - cum_t[None, :], float("-inf"))) * dt_t[None, :]
    acc = _mm(sc.to(xt.dtype), xt, IEEE)  # [BT, BP]
    # ---- the state at the row block's start, transposed ([N, P]), from the chunk's start state and the
    # source blocks before it: exp(S_r) h_cᵀ + Σ_{s < tb·BT} exp(S_r - S_s) Δ_s B_sᵀ x_s (S_r: S one step
    # before the block, 0 for the first); then y_t += exp(S_t - S_r) C_t · it. Both factors are ≤ 1 (S falls).
    r = c * Q + tb * BT - 1
    cum_r = tl.where(tb > 0, tl.load(cum_ptr + bh * L + tl.maximum(r, c * Q)), 0.0)
    hT = h0 * tl.exp(cum_r)  # [BN, BP] float32
    for sb in range(0, tb):
        s = c * Q + sb * BT + tl.arange(0, BT)
        ms = None if EVEN else s < L
        cum_s = _ld(cum_ptr + bh * L + s, ms, EVEN)
        w = tl.exp(cum_r - cum_s) * _ld(dtp_ptr + bh * L + s, ms, EVEN)  # [BT]
        if not EVEN:
            w = tl.where(ms, w, 0.0)
        Bs = _ld(B_ptr + b * s_Bb + s[None, :] * s_Bl + g * s_Bg + n[:, None] * s_Bn,
                 None if EVEN else ms[None, :] & (n < N)[:, None], EVEN)  # [BN, BT] = B_sᵀ
        xs = _ld(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp,
                 None if EVEN else ms[:, None] & (p < P)[None, :], EVEN)  # [BT, BP]
        if IEEE:
            xs = xs.to(tl.float32)
        hT += _mm((Bs.to(tl.float32) * w[None, :]).to(xs.dtype), xs, IEEE)
    acc += _mm(Ct, hT.to(Ct.dtype), IEEE) * tl.exp(cum_t - cum_r)[:, None]
    if STORE_YS:
        tl.store(ys_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], acc.to(ys_ptr.dtype.element_ty),
                 mask=mtp)
    if HAS_D:
        acc += _ld(D_ptr + h * s_Dh + p * s_Dp, None if EVEN else p < P, EVEN).to(tl.float32)[None, :] \
            * xt.to(tl.float32)
    if HAS_Z:
        zz = zz.to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(y_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :] * s_yp, acc.to(y_ptr.dtype.element_ty),
             mask=mtp)


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
def _dstate_ahead(cum_ptr, x_ptr, ys_ptr, b, bh, h, t, in_chunk, p, pm, L, H, P: tl.constexpr,
                  s_xb, s_xl, s_xh, s_xp, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """The rows t ([BK]) of the dstate loop's loads that feed no product: S_t [BK], x_t and y_ssm_t [BK, BP] (the
    log decay in their place where HAS_D / HAS_Z is off; zero outside the chunk and the sequence)."""
    m = in_chunk & (t < L)
    mo = m[:, None] & pm[None, :]
    cum = tl.load(cum_ptr + bh * L + t, mask=m, other=0.0)
    x = cum
    y = cum
    if HAS_D:
        x = tl.load(x_ptr + b * s_xb + t[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mo, other=0.0)
    if HAS_Z:
        y = tl.load(ys_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], mask=mo, other=0.0)
    return cum, x, y


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
def _ssd_bwd_chunk_dstate_kernel(
    x_ptr, C_ptr, D_ptr, z_ptr, dy_ptr, ys_ptr, cum_ptr, hs_ptr, dhl_ptr, g_ptr, dz_ptr, dSt_ptr, dD_ptr,
    L, H, HG, NC, Q,
    s_xb, s_xl, s_xh, s_xp, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp, s_zb, s_zl, s_zh, s_zp, s_yb, s_yl, s_yh, s_yp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, IEEE: tl.constexpr,
):
    """Per (batch, head, chunk), the backward's work that is linear in the chunk's steps t (g_t = dy_t SiLU(z_t)):
    dhl (B, NC, H, P, N) = Σ_t exp(S_t) g_t ⊗ C_t, what the chunk's outputs send to its start state h_c;
    g ((B, L, H, P) contiguous, in the [T, T] kernel's operand dtype); dz_t = dy_t (y_ssm_t + D x_t) SiLU'(z_t)
    (y_ssm saved by the forward); the state part of the target-side dS_t = g_t·(exp(S_t) C_t h_c) into dSt;
    dD partials (B, NC, H, P) = Σ_t g_t x_t."""
    OPT: tl.constexpr = g_ptr.dtype.element_ty
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = pid % H
    g_ = h // HG
    bh = b * H + h
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    pm = p < P
    kk = tl.arange(0, BK)
    h0t = tl.load(hs_ptr + (((b * NC + c) * H + h) * P + p[None, :]) * N + n[:, None],
                  mask=pm[None, :] & (n < N)[:, None], other=0.0).to(OPT)  # [BN, BP] = h_cᵀ
    if HAS_D:
        Dv = tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=pm, other=0.0).to(tl.float32)
        dDacc = tl.zeros([BP], tl.float32)
    acc = tl.zeros([BP, BN], tl.float32)
    # the loads that feed no product (x, y_ssm, S; not pipelined by the compiler) one block ahead, by hand
    cum_n, x_n, y_n = _dstate_ahead(cum_ptr, x_ptr, ys_ptr, b, bh, h, c * Q + kk, kk < Q, p, pm, L, H, P,
                                    s_xb, s_xl, s_xh, s_xp, HAS_D, HAS_Z)
    for k0 in range(0, Q, BK):
        t = c * Q + k0 + kk
        m = (k0 + kk < Q) & (t < L)
        mo = m[:, None] & pm[None, :]
        cum_c, x_c, y_c = cum_n, x_n, y_n
        cum_n, x_n, y_n = _dstate_ahead(cum_ptr, x_ptr, ys_ptr, b, bh, h, t + BK, k0 + BK + kk < Q, p, pm, L, H,
                                        P, s_xb, s_xl, s_xh, s_xp, HAS_D, HAS_Z)
        et = tl.where(m, tl.exp(cum_c), 0.0)
        dy, g, sig, zz = _ssd_gate_grad(dy_ptr, z_ptr, b, t, h, p, mo,
                                        s_yb, s_yl, s_yh, s_yp, s_zb, s_zl, s_zh, s_zp, HAS_Z)  # [BK, BP]
        tl.store(g_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], g.to(OPT), mask=mo)
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g_ * s_Cg + n[None, :] * s_Cn,
                     mask=m[:, None] & (n < N)[None, :], other=0.0).to(OPT)  # [BK, BN]
        acc += _mm(tl.trans(g * et[:, None]).to(OPT), Ct, IEEE)
        tl.store(dSt_ptr + bh * L + t, tl.sum(g * _mm(Ct, h0t, IEEE), axis=1) * et, mask=m)
        if HAS_D:
            xt = x_c.to(tl.float32)
            dDacc += tl.sum(g * xt, axis=0)
        if HAS_Z:
            y0 = y_c.to(tl.float32)
            if HAS_D:
                y0 += Dv[None, :] * xt
            dz = dy * y0 * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mo)
    pn = pm[:, None] & (n < N)[None, :]
    tl.store(dhl_ptr + (((b * NC + c) * H + h) * P + p[:, None]) * N + n[None, :], acc, mask=pn)
    if HAS_D:
        tl.store(dD_ptr + ((b * NC + c) * H + h) * P + p, dDacc, mask=pm)


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
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
    for i in tl.range(0, NC, num_stages=4):  # loads of later chunks in flight (cp.async)
        c = NC - 1 - i
        off = ((b * NC + c) * H + h) * M + m
        tl.store(dH_ptr + off, dh, mask=mask)
        a = tl.exp(tl.load(tot_ptr + (b * H + h) * NC + c))
        hv = tl.load(hs_ptr + off, mask=mask, other=0.0)
        tl.store(dtot_ptr + ((b * H + h) * NC + c) * NBLK + blk, a * tl.sum(dh * hv, axis=0))
        dh = a * dh + tl.load(dhl_ptr + off, mask=mask, other=0.0)
    tl.store(dh0_ptr + (b * H + h) * M + m, dh, mask=mask)


@triton.jit(do_not_specialize=["NC", "NHB"])  # one compile for any number of chunks and of head blocks
def _ssd_bwd_chunk_kernel(
    x_ptr, B_ptr, C_ptr, D_ptr, g_ptr, cum_ptr, dtp_ptr, hs_ptr, tot_ptr, dH_ptr,
    dx_ptr, dB_ptr, dC_ptr, dSt_ptr, dSs_ptr, dSe_ptr, ddt_ptr,
    L, H, HG, NC, Q, NTB, HPP, NHB,
    s_xb, s_xl, s_xh, s_xp, s_Bb, s_Bl, s_Bg, s_Bn, s_Cb, s_Cl, s_Cg, s_Cn, s_Dh, s_Dp,
    P: tl.constexpr, N: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
    HAS_D: tl.constexpr, IEEE: tl.constexpr, TARGET: tl.constexpr, SOURCE: tl.constexpr,
):
    """Program (b, block of HPP heads of one group, block i; chunk c): the target rows t of block i (if TARGET),
    then the source rows s of block i (if SOURCE); with both, every program does the same work. Rows come in
    blocks of BT, the other side of each [T, T] tile in blocks of BS (BS divides BT). dB and dC are summed over
    the program's heads in registers and written per block of heads, (B, L, H / HPP, N) float32.
    With g_t = dy_t SiLU(z_t), X_s = Δ_s x_s, L_ts = exp(S_t - S_s) (s ≤ t in the chunk),
    M_ts = (C_t·B_s) L_ts Δ_s, h_c / dH the chunk's start state / end-state gradient, per head:

    target: dC_t = exp(S_t) g_t h_c + Σ_{s≤t} L_ts Δ_s (g_t·x_s) B_s;  dS_t (target side) += Σ_{s<t} M_ts (g_t·x_s)
    (dSt holds the state part g_t·(exp(S_t) C_t h_c) from the dstate kernel, which also did dz and dD).
    source: dX_s = w_s dH B_s + Σ_{t≥s} (C_t·B_s) L_ts g_t (w_s = exp(S_end - S_s));  dx_s = Δ_s dX_s + D g_s;
    dB_s = Δ_s (w_s dHᵀ x_s + Σ_{t≥s} L_ts (g_t·x_s) C_t);  x_s·dX_s (Δ's gradient through X);
    dS_s (source side) = -Σ_{t>s} M_ts (g_t·x_s);  dSe_s = Δ_s x_s·(w_s dH B_s).
    Both sides of dS form M_ts (g_t·x_s) from the same float32 products: in the chunk's reverse sum of dS they
    cancel except on the rectangle that each log decay spans; with 16-bit operands, two different roundings
    (e.g. g·y_ssm against x·dX) would leave errors of the size of the cancelled terms (dA off by ~1e-2 in fp16).
    The diagonal s = t does not depend on S and is left out of both.
    Dot operands are in OPT (the input's 16-bit dtype, or float32 with exact products)."""
    OPT: tl.constexpr = g_ptr.dtype.element_ty
    # row blocks of one (batch, heads, chunk) are consecutive programs: they share the chunk's tiles in L2
    pid = tl.program_id(0) // NTB
    i = tl.program_id(0) % NTB
    c = tl.program_id(1)
    b = (pid // NHB).to(tl.int64)
    hb = pid % NHB
    g_ = (hb * HPP) // HG
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    pm = p < P
    nm = n < N
    if TARGET:
        # ---- target rows t = block i
        loc_t = i * BT + tl.arange(0, BT)
        t = c * Q + loc_t
        mt = (loc_t < Q) & (t < L)
        mo = mt[:, None] & pm[None, :]
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + g_ * s_Cg + n[None, :] * s_Cn,
                     mask=mt[:, None] & nm[None, :], other=0.0).to(OPT)  # [BT, BN]
        hmask = pm[:, None] & nm[None, :]
        dC = tl.zeros([BT, BN], tl.float32)
        for hh in range(0, HPP):
            h = hb * HPP + hh
            bh = b * H + h
            cum_t = tl.load(cum_ptr + bh * L + t, mask=mt, other=0.0)
            gop = tl.load(g_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :], mask=mo, other=0.0)  # [BT, BP]
            h0 = tl.load(hs_ptr + (((b * NC + c) * H + h) * P + p[:, None]) * N + n[None, :], mask=hmask,
                         other=0.0)  # [BP, BN]
            dC += _mm(gop, h0.to(OPT), IEEE) * tl.where(mt, tl.exp(cum_t), 0.0)[:, None]  # [BT, BN]
            dS = tl.load(dSt_ptr + bh * L + t, mask=mt, other=0.0)  # the state part, from the dstate kernel
            for sb in range(0, (i + 1) * (BT // BS)):
                loc_s = sb * BS + tl.arange(0, BS)
                s = c * Q + loc_s
                ms = (loc_s < Q) & (s < L)
                cum_s = tl.load(cum_ptr + bh * L + s, mask=ms, other=0.0)
                dt_s = tl.load(dtp_ptr + bh * L + s, mask=ms, other=0.0)
                xsT = tl.load(x_ptr + b * s_xb + s[None, :] * s_xl + h * s_xh + p[:, None] * s_xp,
                              mask=ms[None, :] & pm[:, None], other=0.0).to(OPT)  # [BP, BS] = x_sᵀ
                Bs = tl.load(B_ptr + b * s_Bb + s[:, None] * s_Bl + g_ * s_Bg + n[None, :] * s_Bn,
                             mask=ms[:, None] & nm[None, :], other=0.0).to(OPT)  # [BS, BN]
                causal = (loc_s[None, :] <= loc_t[:, None]) & ms[None, :] & mt[:, None]
                w = tl.exp(tl.where(causal, cum_t[:, None] - cum_s[None, :], float("-inf"))) * dt_s[None, :]
                w = w * _mm(gop, xsT, IEEE)  # [BT, BS]: L Δ (g·x)
                dC += _mm(w.to(OPT), Bs, IEEE)
                # dS from the same float32 products as the source side's (see above); the diagonal left out
                z_ts = tl.where(loc_s[None, :] < loc_t[:, None], _mm(Ct, tl.trans(Bs), IEEE) * w, 0.0)
                dS += tl.sum(z_ts, axis=1)
            tl.store(dSt_ptr + bh * L + t, dS, mask=mt)
        tl.store(dC_ptr + ((b * L + t[:, None]) * NHB + hb) * N + n[None, :], dC, mask=mt[:, None] & nm[None, :])
    if SOURCE:
        # ---- source rows s = block i
        loc_s = i * BT + tl.arange(0, BT)
        s = c * Q + loc_s
        ms = (loc_s < Q) & (s < L)
        mso = ms[:, None] & pm[None, :]
        Bs = tl.load(B_ptr + b * s_Bb + s[:, None] * s_Bl + g_ * s_Bg + n[None, :] * s_Bn,
                     mask=ms[:, None] & nm[None, :], other=0.0).to(OPT)  # [BT, BN]
        dB = tl.zeros([BT, BN], tl.float32)
        for hh in range(0, HPP):
            h = hb * HPP + hh
            bh = b * H + h
            cum_s = tl.load(cum_ptr + bh * L + s, mask=ms, other=0.0)
            dt_s = tl.load(dtp_ptr + bh * L + s, mask=ms, other=0.0)
            xop = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mso,
                          other=0.0).to(OPT)  # [BT, BP]
            dbase = dH_ptr + (((b * NC + c) * H + h) * P) * N
            dHt = tl.load(dbase + p[None, :] * N + n[:, None], mask=pm[None, :] & nm[:, None], other=0.0)
            dH = tl.load(dbase + p[:, None] * N + n[None, :], mask=pm[:, None] & nm[None, :], other=0.0)
            ws = tl.where(ms, tl.exp(tl.load(tot_ptr + bh * NC + c) - cum_s), 0.0)
            dX = _mm(Bs, dHt.to(OPT), IEEE) * ws[:, None]  # [BT, BP]
            dB += _mm(xop, dH.to(OPT), IEEE) * (ws * dt_s)[:, None]  # [BT, BN], summed over the heads
            sE = tl.sum(dX * xop.to(tl.float32), axis=1)  # x_s·(w_s dH B_s)
            dS = tl.zeros([BT], tl.float32)
            for tb in range(i * (BT // BS), tl.cdiv(Q, BS)):
                loc_u = tb * BS + tl.arange(0, BS)
                u = c * Q + loc_u
                mu = (loc_u < Q) & (u < L)
                cum_u = tl.load(cum_ptr + bh * L + u, mask=mu, other=0.0)
                CuT = tl.load(C_ptr + b * s_Cb + u[None, :] * s_Cl + g_ * s_Cg + n[:, None] * s_Cn,
                              mask=mu[None, :] & nm[:, None], other=0.0).to(OPT)  # [BN, BS] = C_uᵀ
                gu = tl.load(g_ptr + ((b * L + u[:, None]) * H + h) * P + p[None, :],
                             mask=mu[:, None] & pm[None, :], other=0.0)  # [BS, BP]
                causal = (loc_u[None, :] >= loc_s[:, None]) & mu[None, :] & ms[:, None]
                e = tl.exp(tl.where(causal, cum_u[None, :] - cum_s[:, None], float("-inf")))  # [BT, BS]
                cb = _mm(Bs, CuT, IEEE) * e
                dX += _mm(cb.to(OPT), gu, IEEE)
                xg = _mm(xop, tl.trans(gu), IEEE)
                dB += _mm((xg * e * dt_s[:, None]).to(OPT), tl.trans(CuT), IEEE)
                dS += tl.sum(tl.where(loc_u[None, :] > loc_s[:, None], cb * xg, 0.0), axis=1)  # see the target side
            # x reloaded (from L2) rather than kept live across the loop in float32 registers
            xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :] * s_xp, mask=mso, other=0.0)
            xdx = tl.sum(dX * xs.to(tl.float32), axis=1)
            dx = dX * dt_s[:, None]
            if HAS_D:  # g from the dstate kernel (x's dtype for 16-bit inputs, like dx)
                gs = tl.load(g_ptr + ((b * L + s[:, None]) * H + h) * P + p[None, :], mask=mso, other=0.0)
                Dv = tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=pm, other=0.0).to(tl.float32)
                dx += Dv[None, :] * gs.to(tl.float32)
            tl.store(dx_ptr + ((b * L + s[:, None]) * H + h) * P + p[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=mso)
            tl.store(dSs_ptr + bh * L + s, -dt_s * dS, mask=ms)
            tl.store(dSe_ptr + bh * L + s, dt_s * sE, mask=ms)
            tl.store(ddt_ptr + bh * L + s, xdx, mask=ms)
        tl.store(dB_ptr + ((b * L + s[:, None]) * NHB + hb) * N + n[None, :], dB, mask=ms[:, None] & nm[None, :])


@triton.jit(do_not_specialize=["NC"])  # one compile for any number of chunks
def _ssd_bwd_dt_kernel(
    dSt_ptr, dSs_ptr, dSe_ptr, dtot_ptr, dtp_ptr, ddtX_ptr, dt_ptr, A_ptr, dtb_ptr, ddt_ptr, dA_ptr, dtbp_ptr,
    L, H, NC, Q, NBLK, s_db, s_dl, s_dh, s_gb, s_gl, s_gh,
    BQ: tl.constexpr, BNB: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Per (batch, head, chunk): S_t = Σ_{u≤t in the chunk} Δ_u A, so Δ_u's gradient through S is A R_u with
    R_u = Σ_{t≥u in the chunk} dS_t; a chunk's S_end (its last step's S) also collects dSe and the state pass's
    dtot, which reach every R_u of the chunk. ddt (dt's strides and dtype) = (x·dX + A R) σ(dt + dt_bias) with
    softplus; partial sums of Δ R for A and of ddt for dt_bias, (B, H, NC) each."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid // H).to(tl.int64)
    h = pid % H
    bh = b * H + h
    k = tl.arange(0, BQ)
    t = c * Q + k
    m = (k < Q) & (t < L)
    dse = tl.load(dSe_ptr + bh * L + t, mask=m, other=0.0)
    dS = tl.load(dSt_ptr + bh * L + t, mask=m, other=0.0) + tl.load(dSs_ptr + bh * L + t, mask=m, other=0.0) - dse
    j = tl.arange(0, BNB)
    end = tl.sum(dse, axis=0) + tl.sum(tl.load(dtot_ptr + (bh * NC + c) * NBLK + j, mask=j < NBLK, other=0.0), axis=0)
    R = tl.cumsum(dS, axis=0, reverse=True) + end
    A = tl.load(A_ptr + h).to(tl.float32)
    tl.store(dA_ptr + bh * NC + c, tl.sum(tl.where(m, tl.load(dtp_ptr + bh * L + t, mask=m, other=0.0) * R, 0.0),
                                          axis=0))
    dd = tl.load(ddtX_ptr + bh * L + t, mask=m, other=0.0) + A * R
    if SOFTPLUS:
        pre = tl.load(dt_ptr + b * s_db + t * s_dl + h * s_dh, mask=m, other=0.0).to(tl.float32)
        if HAS_DTB:
            pre += tl.load(dtb_ptr + h).to(tl.float32)
        dd = dd * tl.sigmoid(pre)
    tl.store(ddt_ptr + b * s_gb + t * s_gl + h * s_gh, dd.to(ddt_ptr.dtype.element_ty), mask=m)
    tl.store(dtbp_ptr + bh * NC + c, tl.sum(tl.where(m, dd, 0.0), axis=0))


@dataclass(frozen=True)
class SSDLaunch:
    """Launch settings of the SSD kernels; ``default_launch`` gives the tuned ones per input precision.

    Forward: ``state_*`` the chunk-state kernel (steps per block, warps, pipeline stages), ``pass_block`` the
    elements of P·N per program of the state pass; ``fwd_*`` the chunk scan (rows per block, warps, stages, an
    optional register cap).
    Backward: ``dstate_*`` the chunk-dstate kernel (steps per block, warps, stages, register cap); ``bwd_*`` the
    [T, T] kernel: rows per block, columns per block of the other side, warps, stages, ``bwd_split`` (target and
    source phases as two launches, or both in one), register cap, and ``bwd_min_programs`` (the target phase, or
    both in one launch) / ``bwd_min_programs_source``: each program takes as many heads of its group (dC / dB
    summed over them in registers) as keep at least that many programs (None: one head per program).
    A register cap only applies on a GPU (the interpreter has none).
    """

    state_bk: int = 64
    state_warps: int = 4
    state_stages: int = 3
    pass_block: int = 256
    fwd_rows: int = 64
    fwd_warps: int = 4
    fwd_stages: int = 2
    fwd_maxnreg: int | None = 168
    dstate_bk: int = 32
    dstate_warps: int = 8
    dstate_stages: int = 3
    dstate_maxnreg: int | None = None
    bwd_rows: int = 64
    bwd_cols: int = 32
    bwd_warps: int = 4
    bwd_stages: int = 3
    bwd_split: bool = True
    bwd_maxnreg: int | None = None
    bwd_min_programs: int | None = 2048
    bwd_min_programs_source: int | None = None


# 16-bit inputs: tensor-core tiles of 64 rows; the forward chunk scan at a 168-register cap (three programs per SM
# without spills), the backward with 64 x 32 tiles, its target phase looping over the heads of a group, 3 stages.
# float32 inputs: exact FMA loops (no tf32), so smaller tiles that stay in registers. The sweeps behind these
# choices are in benchmarks/notes/ssd.md.
_LAUNCH_16BIT = SSDLaunch()
_LAUNCH_FLOAT32 = SSDLaunch(
    fwd_rows=32, fwd_stages=3, fwd_maxnreg=None, dstate_bk=16, bwd_rows=32, bwd_cols=16, bwd_warps=8, bwd_stages=2,
    bwd_min_programs=None,
)


def default_launch(ieee: bool) -> SSDLaunch:
    """The tuned launch for float32 inputs (``ieee``: exact float32 products) or 16-bit inputs."""
    return _LAUNCH_FLOAT32 if ieee else _LAUNCH_16BIT


def _maxnreg(cap, t):
    """Launch keywords for an optional register cap (GPU tensors only)."""
    return {"maxnreg": cap} if cap and t.is_cuda else {}


def _is_ieee(x, B):
    return x.dtype == torch.float32 or B.dtype == torch.float32


def _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_state=None, return_aux=False, launch=None):
    """Triton forward. Returns (y (B, L, H, P) in x's dtype, final_state (B, H, P, N) float32), and with
    ``return_aux`` a third item for the backward: (S (B, H, L), Δ (B, H, L), states entering each chunk
    (B, NC, H, P, N), chunk log decays S_end (B, H, NC), all float32, and with z the SSM output before D x and the
    gate (B, L, H, P), float32 for float32 inputs, else x's dtype) (None when L = 0)."""
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
    ieee = _is_ieee(x, B)
    cfg = launch or default_launch(ieee)
    BP = max(16, triton.next_power_of_2(headdim))
    BN = max(16, triton.next_power_of_2(n))
    BK = max(16, min(cfg.state_bk, triton.next_power_of_2(Q)))
    BT = max(16, min(cfg.fwd_rows, triton.next_power_of_2(Q)))
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
        IEEE=ieee, num_warps=cfg.state_warps, num_stages=cfg.state_stages,
    )
    hs = torch.empty_like(st)
    M = headdim * n
    h0 = None if initial_state is None else initial_state.to(f32).contiguous()
    sblk = cfg.pass_block
    _ssd_state_pass_kernel[(batch * heads, triton.cdiv(M, sblk))](
        st, tot, h0 if h0 is not None else dummy, hs, hT, heads, nc, M,
        HAS_H0=h0 is not None, BLOCK=sblk, num_warps=4,
    )
    if D is not None and D.dim() == 1:
        D = D[:, None].expand(heads, headdim)
    z_ = z if z is not None else x
    # the backward's dz needs the SSM output before D x and the gate (x's dtype for 16-bit inputs: dz has it too)
    store_ys = return_aux and z is not None
    ys = torch.empty(batch, length, heads, headdim, device=dev, dtype=f32 if ieee else x.dtype) if store_ys \
        else dummy
    _ssd_chunk_scan_kernel[(batch * heads * triton.cdiv(Q, BT), nc)](
        x, B, C, D if D is not None else dummy, z_, cum, dtp, hs, y, ys,
        length, heads, hg, nc, Q, *x.stride(), *B.stride(), *C.stride(),
        *(D.stride() if D is not None else (0, 0)), *z_.stride(), *y.stride(),
        P=headdim, N=n, BP=BP, BN=BN, BT=BT, HAS_D=D is not None, HAS_Z=z is not None, IEEE=ieee,
        STORE_YS=store_ys, EVEN=length % Q == 0 and Q % BT == 0 and BP == headdim and BN == n,
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages, **_maxnreg(cfg.fwd_maxnreg, x),
    )
    return (y, hT, (cum, dtp, hs, tot, ys)) if return_aux else (y, hT)


def _ssd_scan_bwd(dy, dhT, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, aux, launch=None):
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
    cum, dtp, hs, tot, ys = aux
    ieee = _is_ieee(x, B)
    cfg = launch or default_launch(ieee)
    BP = max(16, triton.next_power_of_2(headdim))
    BN = max(16, triton.next_power_of_2(n))
    BK = max(16, min(cfg.dstate_bk, triton.next_power_of_2(Q)))
    # [T, T] kernel: 64-row blocks with 16-bit tensor-core operands; exact float32 FMAs on 32-row blocks
    BT = max(16, min(cfg.bwd_rows, triton.next_power_of_2(Q)))
    BS = min(BT, cfg.bwd_cols)
    ntb = triton.cdiv(Q, BT)
    M = headdim * n
    NBLK = triton.cdiv(M, 1024)
    if D is not None and D.dim() == 1:
        D = D[:, None].expand(heads, headdim)
    z_ = z if z is not None else x
    dhT = dhT.to(f32).contiguous()
    dummy = tot
    dhl = torch.empty(batch, nc, heads, headdim, n, device=dev, dtype=f32)
    gbuf = torch.empty(batch, length, heads, headdim, device=dev, dtype=f32 if ieee else x.dtype)
    dz = torch.empty(batch, length, heads, headdim, device=dev, dtype=z.dtype) if z is not None else dummy
    dS_t = torch.empty(batch, heads, length, device=dev, dtype=f32)
    dDp = torch.empty(batch, nc, heads, headdim, device=dev, dtype=f32) if D is not None else dummy
    _ssd_bwd_chunk_dstate_kernel[(batch * heads, nc)](
        x, C, D if D is not None else dummy, z_, dy, ys, cum, hs, dhl, gbuf, dz, dS_t, dDp,
        length, heads, hg, nc, Q, *x.stride(), *C.stride(), *(D.stride() if D is not None else (0, 0)),
        *z_.stride(), *dy.stride(),
        P=headdim, N=n, BP=BP, BN=BN, BK=BK, HAS_D=D is not None, HAS_Z=z is not None, IEEE=ieee,
        num_warps=cfg.dstate_warps, num_stages=cfg.dstate_stages, **_maxnreg(cfg.dstate_maxnreg, x),
    )
    dH = torch.empty_like(dhl)
    dh0 = torch.empty(batch, heads, headdim, n, device=dev, dtype=f32)
    dtot = torch.empty(batch, heads, nc, NBLK, device=dev, dtype=f32)
    _ssd_bwd_state_pass_kernel[(batch * heads, NBLK)](
        dhl, tot, hs, dhT, dH, dh0, dtot, heads, nc, M, NBLK, BLOCK=1024, num_warps=4,
    )
    dx = torch.empty(batch, length, heads, headdim, device=dev, dtype=x.dtype)

    def heads_per_program(min_programs):  # dB or dC summed over them in registers; keep >= min_programs programs
        return max(d for d in range(1, hg + 1) if hg % d == 0 and (d == 1 or min_programs is not None and
                                                                   batch * nc * ntb * (heads // d) >= min_programs))

    # one launch per phase (the target phase has a loop over heads without spilling, the source phase does not),
    # or both phases in one launch with one count of heads per program
    launches = ((True, False, cfg.bwd_min_programs), (False, True, cfg.bwd_min_programs_source)) if cfg.bwd_split \
        else ((True, True, cfg.bwd_min_programs),)
    nhb_c = heads // heads_per_program(launches[0][2])
    nhb_b = heads // heads_per_program(launches[-1][2])
    dCh = torch.empty(batch, length, nhb_c, n, device=dev, dtype=f32)
    dBh = torch.empty(batch, length, nhb_b, n, device=dev, dtype=f32)
    dS_s, dS_e, dX_dt = torch.empty_like(dS_t), torch.empty_like(dS_t), torch.empty_like(dS_t)
    for target, source, min_programs in launches:
        hpp = heads_per_program(min_programs)
        _ssd_bwd_chunk_kernel[(batch * (heads // hpp) * ntb, nc)](
            x, B, C, D if D is not None else dummy, gbuf, cum, dtp, hs, tot, dH,
            dx, dBh, dCh, dS_t, dS_s, dS_e, dX_dt,
            length, heads, hg, nc, Q, ntb, hpp, heads // hpp,
            *x.stride(), *B.stride(), *C.stride(), *(D.stride() if D is not None else (0, 0)),
            P=headdim, N=n, BP=BP, BN=BN, BT=BT, BS=BS, HAS_D=D is not None, IEEE=ieee,
            TARGET=target, SOURCE=source, num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
            **_maxnreg(cfg.bwd_maxnreg, x),
        )
    # Δ's and A's gradients through S (reverse sums of dS inside each chunk), softplus, dt_bias partials
    ddt = torch.empty(batch, length, heads, device=dev, dtype=dt.dtype)
    dA_p = torch.empty(batch, heads, nc, device=dev, dtype=f32)
    dtb_p = torch.empty_like(dA_p)
    _ssd_bwd_dt_kernel[(batch * heads, nc)](
        dS_t, dS_s, dS_e, dtot, dtp, dX_dt, dt, A, dt_bias if dt_bias is not None else dummy, ddt, dA_p, dtb_p,
        length, heads, nc, Q, NBLK, *dt.stride(), *ddt.stride(),
        BQ=max(16, triton.next_power_of_2(Q)), BNB=max(2, triton.next_power_of_2(NBLK)),
        HAS_DTB=dt_bias is not None, SOFTPLUS=bool(dt_softplus), num_warps=4,
    )
    dD = None
    if D is not None:
        dD = dDp.sum((0, 1))
        dD = (dD.sum(-1) if D_in.dim() == 1 else dD).to(D_in.dtype)

    def group_sum(t, dtype):  # per block of heads (B, L, H / hpp, N) -> per group (B, L, G, N), no atomics
        nhb = t.shape[2]
        return t.to(dtype) if nhb == groups else t.view(batch, length, groups, nhb // groups, n).sum(3).to(dtype)

    return (
        dx, ddt, dA_p.sum((0, 2)).to(A.dtype), group_sum(dBh, B.dtype), group_sum(dCh, C.dtype),
        dD, dz if z is not None else None,
        dtb_p.sum((0, 2)).to(dt_bias.dtype) if dt_bias is not None else None, dh0,
    )


class SSDScanFn(torch.autograd.Function):
    """Triton forward and Triton backward (recomputation from the per-chunk states the forward keeps)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, launch):
        y, hT, aux = _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state,
                                   return_aux=True, launch=launch)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, *(aux or ()))
        ctx.chunk_size, ctx.dt_softplus, ctx.launch = chunk_size, dt_softplus, launch
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        # dy and dhT are tensors: autograd materializes the gradient of an unused output as zeros.
        x, dt, A, B, C, D, z, dt_bias, h0, *aux = ctx.saved_tensors
        grads = _ssd_scan_bwd(dy, dhT, x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, ctx.dt_softplus,
                              aux or None, ctx.launch)
        dx, ddt, dA, dB, dC, dD, dz, ddtb, dh0 = grads
        dh0 = dh0.to(h0.dtype) if h0 is not None else None
        need = ctx.needs_input_grad
        out = [dx, ddt, dA, dB, dC, None, dD, dz, ddtb, None, dh0, None]
        return tuple(g if need[i] else None for i, g in enumerate(out))


def ssd_scan_triton(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                    initial_state=None, return_final_state=False, launch=None):
    """Mamba-2 SSD with a Triton forward and backward; contract of ``ssd_scan_ref``.

    Args:
        x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); D: (H,) or (H, P); z: (B, L, H, P);
        dt_bias: (H,); initial_state: (B, H, P, N) float32; chunk_size: steps per chunk.
        launch: an ``SSDLaunch`` for every kernel of the call and its backward (default: ``default_launch``
            for the input precision).

    Returns:
        y: (B, L, H, P) in x's dtype, or (y, final_state (B, H, P, N) float32).
    """
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, dt_bias, initial_state)
    )
    if needs_graph:
        y, hT = SSDScanFn.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, launch)
    else:
        y, hT = _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, launch=launch)
    return (y, hT) if return_final_state else y


__all__ = ["SSDLaunch", "SSDScanFn", "default_launch", "ssd_scan_triton"]
