"""Mamba-1 selective scan (S6) in Triton: forward and backward, with initial state in and final state out.

(Module name: ``mamba1_scan``, not ``selective_scan``, so that importing it never shadows the package's
``audiomamba.kernels.selective_scan`` function with a submodule of the same name.)

The three ideas of the paper's hardware-aware algorithm, as they appear here (launch settings: ``scan_config``):

* Kernel fusion. One program owns (batch row, BE channels of one group, all N states) for a segment of time.
  For each chunk of T steps it loads tiles of u, Δ, z ([T, BE]) and B, C — the next chunk's [T, BE] tiles are
  requested before the current one is computed — applies bias + softplus, discretizes (exp(Δ A) as one ex2 with
  A·log2 e, Δ B u), runs the recurrence, reads out with C, adds the D skip and applies the SiLU(z) gate before
  storing y. The state [N, BE] stays in registers from chunk to chunk; nothing of size (B, E, L, N) touches
  memory. Two forward kernels: "tile" (``_ss_fwd_kernel``, for small N: [T, N, BE] register tiles with 32
  channels across the lanes, the chunk's recurrence a sequential in-register ``tl.associative_scan`` and the C
  readout an in-thread sum) and "step" (``_ss_fwd_step_kernel``, for large N: the states spread over lanes as
  well, 8 per thread, the steps written out one by one and the readout finished by a short lane reduction).
* Parallel scan over time. When batch × channel blocks alone cannot fill the GPU, time is cut into segments: a
  first pass computes each segment's end state from zero and its total decay, a tiny kernel chains the segments'
  start states, and the full pass reruns each segment from its true start.
* Recomputation. The forward keeps only the state every ck_save steps (32 for N <= 16, 128 above),
  (B, E, ceil(L / ck_save), N) float32: linear in L. The backward (``_ss_bwd_kernel``) walks intervals of ck (8)
  steps in reverse; entering a block of ck_save steps it reruns the block's forward from the kept state and parks
  its interval starts in a per-program scratch. Per interval, a prologue computes every per-(step, channel) value
  once (softplus, gate, ...) into a small scratch, a pass reruns the interval's forward parking one state per 4
  steps, and 4-step sub-chunks are walked backwards on [N, BE] tiles: their states recomputed, the adjoint
  g_t = C_t dy_t + a_{t+1} g_{t+1} as explicit FMAs, du, dΔ, dz, dB, dC parked per interval and written as
  coalesced tiles / vector atomics (dB, dC summed over the channel block). Segments are chained as in the forward.

Gradients (with a_t h_{t-1} = h_t - b_t, so no shifted state is needed):
    dΔ_t = Σ_n g_t (h_t - b_t) A + u_t Σ_n g_t B_t ;  du_t = Δ_t Σ_n g_t B_t + D dy_t
    dA = Σ_t g_t (h_t - b_t) Δ_t ;  dB_t = Σ_e g_t Δ_t u_t ;  dC_t = Σ_e dy_t h_t ;  dh_init = a_0 g_0

Layout: u, Δ, z, y are (B, E, L) with any strides (channel-first or channel-last memory, no copies); B, C are
(B, N, L) or (B, G, N, L) with any strides. Inputs may be float32, bfloat16 or float16; all arithmetic and the
state are float32.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus

LOG2E = 1.4426950408889634

# Warps wanted in flight before time is cut into parallel segments (about 16 per SM on an H200).
_TARGET_WARPS = 8192


# ---------------------------------------------------------------- device helpers


@triton.jit
def _pair_combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier segment (later, for a reverse scan): h = a2 (a1 h0 + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    # FAST: one MUFU.EX2 (flush-to-zero) instead of the range-fixed sequence of tl.exp2; GPU only.
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _load_dt(dt_ptr, off, mask, dtb, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw Δ tile (+bias) and the Δ actually used (softplus'd, zero where masked)."""
    return _dt_from_raw(tl.load(dt_ptr + off, mask=mask, other=0.0), mask, dtb, HAS_DTB, SOFTPLUS)


@triton.jit
def _dt_from_raw(raw, mask, dtb, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(raw Δ + bias, Δ used: softplus'd and zero where masked) from a loaded tile."""
    raw = raw.to(tl.float32)
    if HAS_DTB:
        raw = raw + dtb  # broadcast by the caller
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return raw, tl.where(mask, dt, 0.0)


@triton.jit
def _softplus_sig(raw, SOFTPLUS: tl.constexpr, FAST_EXP: tl.constexpr):
    """(softplus(raw), σ(raw)) from one exponential, softplus as in activations.softplus (log1p accuracy, linear
    above 20); (raw, 1) without SOFTPLUS."""
    if SOFTPLUS:
        ex = _exp2(raw * 1.4426950408889634, FAST_EXP)
        one_e = 1.0 + ex
        dtv = tl.where(raw > 20.0, raw, tl.where(one_e == 1.0, ex, tl.log(one_e) * tl.fdiv(ex, one_e - 1.0)))
        dsp = tl.where(raw > 20.0, 1.0, tl.fdiv(ex, one_e))
    else:
        dtv = raw
        dsp = tl.full(raw.shape, 1.0, tl.float32)
    return dtv, dsp


@triton.jit
def _dt_sig_from_raw(raw, mask, dtb, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_EXP: tl.constexpr):
    """(Δ used: raw + bias, softplus'd, zero where masked; σ(raw + bias)) from a loaded [·, BE] tile, with one
    exponential (``_softplus_sig``); ``dtb`` (BE,)."""
    raw = raw.to(tl.float32)
    if HAS_DTB:
        raw += dtb[None, :]
    dtv, dsp = _softplus_sig(raw, SOFTPLUS, FAST_EXP)
    return tl.where(mask, dtv, 0.0), dsp


@triton.jit
def _tile_te(ptr, b, e, t, sb, se, sl, mask):
    """[T, BE] tile at (b, e, t) in the input dtype (zeros where masked)."""
    return tl.load(ptr + b * sb + e[None, :] * se + t[:, None] * sl, mask=mask, other=0.0)


@triton.jit
def _tile_tn(ptr, b, g, n, t, sb, sg, sn, sl, mask):
    """[T, NP] tile of B or C at (b, g, n, t) in the input dtype."""
    return tl.load(ptr + b * sb + g * sg + n[None, :] * sn + t[:, None] * sl, mask=mask, other=0.0)


# ---------------------------------------------------------------- forward


@triton.jit
def _ss_fwd_kernel(
    # pointers
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr,
    hs_ptr, ck_ptr, hT_ptr, S_ptr, P_ptr,
    # sizes
    E, L, EG, NEB, SEG, NSEG, NCK,
    # strides
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_yb, s_ye, s_yl,
    # meta
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    LOCAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_CK: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """Forward ("tile") for small N. One program: batch row b, channels [e0, e0+BE) of group g, time segment s.

    LOCAL: run the segment from a zero state, write its end state S and total decay P (B, E, NSEG, N).
    Otherwise: run from hs[b, e, s] (or zero), write y, the state every CK steps into ck (B, E, NCK, N) and, for
    the last segment, the final state hT (B, E, N).

    Tiles are [T, NP, BE] with channels fastest, so a warp's lanes own 32 channels and each thread walks
    time for all N states of its channel: the scan over the T steps of a chunk is a sequential in-register
    loop (no shuffles), the C readout is an in-thread sum over N, and per-(channel, step) work (softplus,
    gate) is done once, not once per state. The carried state enters as part of the first step's input.
    """
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_r // (NEB * (E // EG))).to(tl.int64)  # 64-bit offsets for tensors past 2**31 elements
    rem = pid_r % (NEB * (E // EG))
    g = rem // NEB
    e_loc = (rem % NEB) * BE + tl.arange(0, BE)
    e_mask = e_loc < EG
    e = g * EG + e_loc  # [BE]
    n = tl.arange(0, NP)
    n_mask = n < N
    en_mask = n_mask[:, None] & e_mask[None, :]  # [NP, BE]
    A2 = tl.load(A_ptr + e[None, :] * s_ae + n[:, None] * s_an, mask=en_mask, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros([BE], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    st_off = ((b * E + e[None, :]) * NSEG + pid_s) * N + n[:, None]  # into (B, E, NSEG, N)
    if HAS_H0 and not LOCAL:
        h = tl.load(hs_ptr + st_off, mask=en_mask, other=0.0)
    else:
        h = tl.zeros([NP, BE], tl.float32)
    dt_sum = tl.zeros([BE], tl.float32)
    tt = tl.arange(0, T)
    first = (tt == 0)[:, None, None]
    last = (tt == T - 1)[:, None, None]
    t_begin = pid_s * SEG
    n_chunks = tl.cdiv(tl.minimum(SEG, L - t_begin), T)
    # Software prefetch: the tiles of chunk c + 1 are requested before chunk c is computed, so the memory
    # latency overlaps the exponentials (masked past the segment, so nothing extra is read).
    t_lim = tl.minimum(L, t_begin + SEG)
    t = t_begin + tt
    pm = (t < t_lim)[:, None] & e_mask[None, :]
    pn = (t < t_lim)[:, None] & n_mask[None, :]
    u_n = _tile_te(u_ptr, b, e, t, s_ub, s_ue, s_ul, pm)
    d_n = _tile_te(dt_ptr, b, e, t, s_db, s_de, s_dl, pm)
    B_n = _tile_tn(B_ptr, b, g, n, t, s_Bb, s_Bg, s_Bn, s_Bl, pn)
    if LOCAL:
        C_n = B_n
        z_n = u_n
    else:
        C_n = _tile_tn(C_ptr, b, g, n, t, s_Cb, s_Cg, s_Cn, s_Cl, pn)
        if HAS_Z:
            z_n = _tile_te(z_ptr, b, e, t, s_zb, s_ze, s_zl, pm)
        else:
            z_n = u_n
    for c in range(0, n_chunks):
        t0 = t_begin + c * T
        t = t0 + tt
        t_mask = t < L
        m2 = t_mask[:, None] & e_mask[None, :]  # [T, BE]
        if STORE_CK:
            if t0 % CK == 0:
                tl.store(ck_ptr + ((b * E + e[None, :]) * NCK + t0 // CK) * N + n[:, None], h, mask=en_mask)
        u_c = u_n
        d_c = d_n
        B_c = B_n
        C_c = C_n
        z_c = z_n
        tq = t + T
        pm = (tq < t_lim)[:, None] & e_mask[None, :]
        pn = (tq < t_lim)[:, None] & n_mask[None, :]
        u_n = _tile_te(u_ptr, b, e, tq, s_ub, s_ue, s_ul, pm)
        d_n = _tile_te(dt_ptr, b, e, tq, s_db, s_de, s_dl, pm)
        B_n = _tile_tn(B_ptr, b, g, n, tq, s_Bb, s_Bg, s_Bn, s_Bl, pn)
        if not LOCAL:
            C_n = _tile_tn(C_ptr, b, g, n, tq, s_Cb, s_Cg, s_Cn, s_Cl, pn)
            if HAS_Z:
                z_n = _tile_te(z_ptr, b, e, tq, s_zb, s_ze, s_zl, pm)
        u = u_c.to(tl.float32)
        raw, dt = _dt_from_raw(d_c, m2, dtb[None, :], HAS_DTB, SOFTPLUS)
        Bt = B_c.to(tl.float32)  # [T, NP]
        a = _exp2(dt[:, None, :] * A2[None, :, :], FAST_EXP)  # [T, NP, BE]
        bx = (dt * u)[:, None, :] * Bt[:, :, None]  # [T, NP, BE]
        bx = tl.where(first, bx + a * h[None, :, :], bx)
        acum, hs = tl.associative_scan((a, bx), axis=0, combine_fn=_pair_combine)
        h = tl.sum(tl.where(last, hs, 0.0), axis=0)  # [NP, BE], state after the chunk
        if LOCAL:
            dt_sum += tl.sum(dt, axis=0)
        else:
            Ct = C_c.to(tl.float32)
            y = tl.sum(hs * Ct[:, :, None], axis=1)  # [T, BE]
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zz = z_c.to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(y_ptr + b * s_yb + e[None, :] * s_ye + t[:, None] * s_yl,
                     y.to(y_ptr.dtype.element_ty), mask=m2)
    if LOCAL:
        tl.store(S_ptr + st_off, h, mask=en_mask)
        tl.store(P_ptr + st_off, _exp2(A2 * dt_sum[None, :], FAST_EXP), mask=en_mask)
    else:
        if pid_s == NSEG - 1:
            tl.store(hT_ptr + (b * E + e[None, :]) * N + n[:, None], h, mask=en_mask)


@triton.jit(do_not_specialize=["s_an", "s_ckn"])
def _ss_fwd_step_kernel(
    # pointers
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr,
    hs_ptr, ck_ptr, hT_ptr, S_ptr, P_ptr, scr_ptr,
    # sizes
    E, L, EG, NEB, SEG, NSEG, NCK,
    # strides
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_yb, s_ye, s_yl, s_ckn,
    # meta
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    LOCAL: tl.constexpr, HAS_H0: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_CK: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """Forward ("step") for large N, same contract as ``_ss_fwd_kernel``: the state is an [NP, BE] tile whose
    states are spread over the lanes as well as the channels (BE < 32), and the T steps of a chunk are written
    out one by one.

    Per chunk, the per-(step, channel) values (Δ after bias and softplus, Δu) are computed once on coalesced
    [T, BE] tiles and parked in a small per-program scratch (L1), then each step reads its [BE] rows back
    (broadcast over the lanes that hold other states) and its B, C rows [NP] straight from memory, and does one
    exponential, two FMAs and a multiply per (state, channel); the readout over N is an in-thread sum plus a
    short reduction across the lanes that share a channel. The step outputs are collected in registers (no store
    inside the steps, so that every step's loads can be issued ahead of the arithmetic); the D skip and the
    SiLU(z) gate, computed on the compact [T, BE] tiles before the steps and parked beside Δ, are applied to the
    chunk's y before one coalesced store. The [T, BE] tiles of chunk c + 1 are requested before chunk c is
    computed.
    """
    # The strides s_an and s_ckn (n-stride of the state tensors, 1) are not specialised: the loads and stores of A and
    # of the states then impose no layout, and the state tile takes the B/C row loads' one (8 contiguous states
    # per thread for bf16, no conversions in the loop).
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_r // (NEB * (E // EG))).to(tl.int64)  # 64-bit offsets for tensors past 2**31 elements
    rem = pid_r % (NEB * (E // EG))
    g = rem // NEB
    eo = tl.arange(0, BE)
    e_loc = (rem % NEB) * BE + eo
    e_mask = e_loc < EG
    e = g * EG + e_loc  # [BE]
    n = tl.arange(0, NP)
    n_mask = n < N
    en_mask = n_mask[:, None] & e_mask[None, :]  # [NP, BE]
    A2 = tl.load(A_ptr + e[None, :] * s_ae + n[:, None] * s_an, mask=en_mask, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros([BE], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    st_off = ((b * E + e[None, :]) * NSEG + pid_s) * N + n[:, None] * s_ckn  # into (B, E, NSEG, N)
    if HAS_H0 and not LOCAL:
        h = tl.load(hs_ptr + st_off, mask=en_mask, other=0.0)
    else:
        h = tl.zeros([NP, BE], tl.float32)
    dt_sum = tl.zeros([BE], tl.float32)
    tt = tl.arange(0, T)
    # scratch per program: the chunk's Δ, Δu, D·u and SiLU(z) rows, (4, T, BE) float32
    scr = scr_ptr + (pid_r * NSEG + pid_s) * (4 * T * BE)
    ty = tt[:, None]
    scr_te = scr + tt[:, None] * BE + eo[None, :]  # [T, BE]
    t_begin = pid_s * SEG
    t_lim = tl.minimum(L, t_begin + SEG)
    n_chunks = tl.cdiv(t_lim - t_begin, T)
    t = t_begin + tt
    pm = (t < t_lim)[:, None] & e_mask[None, :]
    u_n = _tile_te(u_ptr, b, e, t, s_ub, s_ue, s_ul, pm)
    d_n = _tile_te(dt_ptr, b, e, t, s_db, s_de, s_dl, pm)
    if HAS_Z and not LOCAL:
        z_n = _tile_te(z_ptr, b, e, t, s_zb, s_ze, s_zl, pm)
    else:
        z_n = u_n
    # B and C rows are loaded as [NP, BE] tiles (the same address for every channel): their contiguous, vectorized
    # layout then becomes the state tile's, with no conversion between the loads and the arithmetic. Steps past
    # the end read row L - 1 (their Δ is 0: the state does not move, and their y is not stored).
    zero_e = tl.zeros([1, BE], tl.int32)
    B_row = B_ptr + b * s_Bb + g * s_Bg + n[:, None] * s_Bn + zero_e
    C_row = C_ptr + b * s_Cb + g * s_Cg + n[:, None] * s_Cn + zero_e
    bc_mask = n_mask[:, None] & (zero_e == 0)
    for c in range(0, n_chunks):
        t0 = t_begin + c * T
        t = t0 + tt
        m2 = (t < L)[:, None] & e_mask[None, :]  # [T, BE]
        if STORE_CK:
            if t0 % CK == 0:
                tl.store(ck_ptr + ((b * E + e[None, :]) * NCK + t0 // CK) * N + n[:, None] * s_ckn, h, mask=en_mask)
        u_c = u_n
        d_c = d_n
        z_c = z_n
        tq = t + T
        pm = (tq < t_lim)[:, None] & e_mask[None, :]
        u_n = _tile_te(u_ptr, b, e, tq, s_ub, s_ue, s_ul, pm)
        d_n = _tile_te(dt_ptr, b, e, tq, s_db, s_de, s_dl, pm)
        if HAS_Z and not LOCAL:
            z_n = _tile_te(z_ptr, b, e, tq, s_zb, s_ze, s_zl, pm)
        u = u_c.to(tl.float32)
        dtv = _dt_sig_from_raw(d_c, m2, dtb, HAS_DTB, SOFTPLUS, FAST_EXP)[0]
        if LOCAL:
            dt_sum += tl.sum(dtv, axis=0)
        tl.debug_barrier()  # the previous chunk's reads of the scratch are done
        tl.store(scr_te, dtv)
        tl.store(scr_te + T * BE, dtv * u)
        if not LOCAL:
            # the output's D skip and gate, computed here on the compact tile (after the steps, y is spread like
            # the state tile, where they would be computed once per state lane)
            if HAS_D:
                tl.store(scr_te + 2 * T * BE, Dv[None, :] * u)
            if HAS_Z:
                zz = z_c.to(tl.float32)
                tl.store(scr_te + 3 * T * BE, zz * tl.sigmoid(zz))
        tl.debug_barrier()
        y = tl.zeros([T, BE], tl.float32)
        for s in tl.static_range(T):
            ts = tl.minimum(t0 + s, L - 1)
            dts = tl.load(scr + s * BE + eo)
            xs = tl.load(scr + (T + s) * BE + eo)
            if NP == N:
                Bs = tl.load(B_row + ts * s_Bl).to(tl.float32)
            else:
                Bs = tl.load(B_row + ts * s_Bl, mask=bc_mask, other=0.0).to(tl.float32)
            h = _exp2(dts[None, :] * A2, FAST_EXP) * h + xs[None, :] * Bs
            if not LOCAL:
                if NP == N:
                    Cs = tl.load(C_row + ts * s_Cl).to(tl.float32)
                else:
                    Cs = tl.load(C_row + ts * s_Cl, mask=bc_mask, other=0.0).to(tl.float32)
                y = tl.where(ty == s, tl.sum(h * Cs, axis=0)[None, :], y)
        if not LOCAL:
            if HAS_D:
                y += tl.load(scr_te + 2 * T * BE)
            if HAS_Z:
                y = y * tl.load(scr_te + 3 * T * BE)
            tl.store(y_ptr + b * s_yb + e[None, :] * s_ye + t[:, None] * s_yl, y.to(y_ptr.dtype.element_ty), mask=m2)
    if LOCAL:
        tl.store(S_ptr + st_off, h, mask=en_mask)
        tl.store(P_ptr + st_off, _exp2(A2 * dt_sum[None, :], FAST_EXP), mask=en_mask)
    else:
        if pid_s == NSEG - 1:
            tl.store(hT_ptr + (b * E + e[None, :]) * N + n[:, None] * s_ckn, h, mask=en_mask)


@triton.jit
def _ss_pass_kernel(S_ptr, P_ptr, x0_ptr, out_ptr, M, NSEG,
                    N: tl.constexpr, HAS_X0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """Chain segments: x_{s+1} = P_s x_s + S_s (REVERSE: x_{s-1} = P_s x_s + S_s); out[s] = x entering s.

    S, P, out: (B, E, NSEG, N) float32; x0: (B, E, N) (the initial state, or the final-state gradient).
    """
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = m < M
    row = m // N
    nn = m % N
    if HAS_X0:
        x = tl.load(x0_ptr + m, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.zeros([BLOCK], tl.float32)
    for i in range(0, NSEG):
        if REVERSE:
            s = NSEG - 1 - i
        else:
            s = i
        off = (row * NSEG + s) * N + nn
        tl.store(out_ptr + off, x, mask=mask)
        x = tl.load(P_ptr + off, mask=mask, other=0.0) * x + tl.load(S_ptr + off, mask=mask, other=0.0)


# ---------------------------------------------------------------- backward


@triton.jit
def _pe_off(r, eo, BE: tl.constexpr):
    """Offset of (row r, channel eo) in one [CK, BE] slot of the lean scratch (broadcasts r against eo). Rows are
    stored in pairs, channel-major inside a pair ((CK/2, BE, 2)): rows r and r + 1 of a channel (r even) are one
    8-byte word, so that a sub-chunk loads two steps with one instruction per channel."""
    return (r - r % 2) * BE + 2 * eo + r % 2


@triton.jit
def _pe_rows(ptr, r0, eo, BE: tl.constexpr):
    """Rows r0 (even) and r0 + 1 of a scratch slot as two [BE] vectors: one 8-byte load per channel, split by
    truncation / shift and bitcast (a [BE, 2] tile and ``tl.split`` made Triton load 4 bytes per thread and convert
    the layout through shared memory)."""
    w = tl.load(ptr.to(tl.pointer_type(tl.int64)) + (r0 // 2) * BE + eo)
    return w.to(tl.int32).to(tl.float32, bitcast=True), (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _pe_store_rows(ptr, r0, eo, v0, v1, BE: tl.constexpr):
    """Store two [BE] vectors as rows r0 (even) and r0 + 1 of a scratch slot (one 8-byte store per channel)."""
    lo = v0.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    hi = v1.to(tl.int32, bitcast=True).to(tl.int64) << 32
    tl.store(ptr.to(tl.pointer_type(tl.int64)) + (r0 // 2) * BE + eo, lo | hi)


@triton.jit
def _lean_grads(dA_acc, h, bx, gg, Bt, Ct, A2, dtv, x, u, dyv, kz, dsp, Dv, n, pd, r,
                CK: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """Gradients of one step (row r of its checkpoint interval) from its state h [NP, BE], input bx = Δ B u,
    adjoint gg, A2 = A log2 e, B and C rows as [NP, BE] tiles and the per-channel values [BE]. dB and dC (summed
    over the channels) go to the interval's (2, NP, CK) scratch pd; returns (dA_acc + this step's dA terms [NP, BE], and
    the [BE] vectors dΔ, du and dz (zeros without z)) for the caller to park."""
    ghp = gg * (h - bx)  # g_t a_t h_{t-1}
    gB = tl.sum(gg * Bt, axis=0)  # [BE]
    ddt = dsp * (0.6931471805599453 * tl.sum(ghp * A2, axis=0) + u * gB)
    du = dtv * gB
    if HAS_D:
        du += Dv * dyv
    if HAS_Z:
        yp = tl.sum(h * Ct, axis=0)
        if HAS_D:
            yp += Dv * u
        dz = kz * yp
    else:
        dz = du
    tl.store(pd + n * CK + r, tl.sum(gg * x[None, :], axis=1))
    tl.store(pd + (NP + n) * CK + r, tl.sum(h * dyv[None, :], axis=1))
    return dA_acc + ghp * dtv[None, :], ddt, du, dz


@triton.jit
def _lean_rows(p_dt, p_dy, p_u, p_sp, p_kz, pbc, r0, eo, nb,
               CK: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, HAS_Z: tl.constexpr):
    """Phase B's inputs of rows r0 (even) and r0 + 1: (Δ, dy·SiLU(z), u, σ(raw Δ), dz factor) [BE] pairs and
    the B, C rows as [NP, BE] tiles (nb: state offsets broadcast over the channels, so that the rows load straight
    into the state tile's layout)."""
    dt0, dt1 = _pe_rows(p_dt, r0, eo, BE)
    dy0, dy1 = _pe_rows(p_dy, r0, eo, BE)
    u0, u1 = _pe_rows(p_u, r0, eo, BE)
    sp0, sp1 = _pe_rows(p_sp, r0, eo, BE)
    if HAS_Z:
        kz0, kz1 = _pe_rows(p_kz, r0, eo, BE)
    else:
        kz0 = dy0
        kz1 = dy1
    B0 = tl.load(pbc + r0 * NP + nb)
    B1 = tl.load(pbc + (r0 + 1) * NP + nb)
    C0 = tl.load(pbc + (CK + r0) * NP + nb)
    C1 = tl.load(pbc + (CK + r0 + 1) * NP + nb)
    return dt0, dt1, dy0, dy1, u0, u1, sp0, sp1, kz0, kz1, B0, B1, C0, C1


@triton.jit
def _lean_two(dA_acc, h0, h1, a1, a_nx, g_nx, A2, dt0, dt1, dy0, dy1, u0, u1, sp0, sp1, kz0, kz1, B0, B1, C0, C1,
              Dv, n, eo, pd, p_dt, p_sp, p_kz, r0,
              CK: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """Adjoint and gradients of rows r0 + 1 then r0 (states h1, h0 [NP, BE]; a1 the decay of row r0 + 1; a_nx,
    g_nx the decay and adjoint of the row after). Parks du, dΔ, dz over the slots of Δ, σ(raw Δ) and the dz
    factor they were computed from. Returns (dA_acc, g of row r0, Σ dΔ, Σ dy u) over the two rows."""
    x0 = dt0 * u0
    x1 = dt1 * u1
    g1 = C1 * dy1[None, :] + a_nx * g_nx
    dA_acc, ddt1, du1, dz1 = _lean_grads(dA_acc, h1, x1[None, :] * B1, g1, B1, C1, A2, dt1, x1, u1, dy1,
                                         kz1, sp1, Dv, n, pd, r0 + 1, CK, NP, HAS_D, HAS_Z)
    g0 = C0 * dy0[None, :] + a1 * g1
    dA_acc, ddt0, du0, dz0 = _lean_grads(dA_acc, h0, x0[None, :] * B0, g0, B0, C0, A2, dt0, x0, u0, dy0,
                                         kz0, sp0, Dv, n, pd, r0, CK, NP, HAS_D, HAS_Z)
    _pe_store_rows(p_dt, r0, eo, du0, du1, BE)
    _pe_store_rows(p_sp, r0, eo, ddt0, ddt1, BE)
    if HAS_Z:
        _pe_store_rows(p_kz, r0, eo, dz0, dz1, BE)
    return dA_acc, g0, ddt0 + ddt1, dy0 * u0 + dy1 * u1


@triton.jit
def _stage_forward_rows(dt_ptr, u_ptr, B_ptr, b, g, e, e_mask, n, n_mask, dtb, t0, L, tp, pe_tp, pbc_tp, p_dt, p_u,
                        s_db, s_de, s_dl, s_ub, s_ue, s_ul, s_Bb, s_Bg, s_Bn, s_Bl,
                        CK: tl.constexpr, PT: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr,
                        HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_EXP: tl.constexpr):
    """Stage what a forward rerun over the CK steps from t0 reads: Δ (bias, softplus; zero past L) and u into
    their [CK, BE] scratch slots, the B rows (CK, NP) float32, from coalesced [PT, ·] tiles."""
    for q in tl.static_range(CK // PT):
        t = t0 + q * PT + tp
        m2 = (t < L)[:, None] & e_mask[None, :]  # [PT, BE]
        dtv = _dt_sig_from_raw(_tile_te(dt_ptr, b, e, t, s_db, s_de, s_dl, m2), m2, dtb, HAS_DTB, SOFTPLUS,
                               FAST_EXP)[0]
        tl.store(p_dt + q * PT * BE + pe_tp, dtv)
        tl.store(p_u + q * PT * BE + pe_tp, _tile_te(u_ptr, b, e, t, s_ub, s_ue, s_ul, m2).to(tl.float32))
        tl.store(pbc_tp + q * PT * NP, _tile_tn(B_ptr, b, g, n, t, s_Bb, s_Bg, s_Bn, s_Bl,
                                                (t < L)[:, None] & n_mask[None, :]).to(tl.float32))


@triton.jit
def _stage_interval(dt_ptr, dy_ptr, z_ptr, u_ptr, B_ptr, C_ptr, b, g, e, e_mask, n, n_mask, dtb, k0, L, tp, pe_tp,
                    pbc_tp, p_dt, p_dy, p_u, p_sp, p_kz,
                    s_db, s_de, s_dl, s_gb, s_ge, s_gl, s_zb, s_ze, s_zl, s_ub, s_ue, s_ul,
                    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
                    CK: tl.constexpr, PT: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, LOCAL: tl.constexpr,
                    HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, FAST_EXP: tl.constexpr):
    """The backward's prologue of the interval of CK steps from k0: every per-(step, channel) value once, PT steps
    at a time (few registers), into the scratch slots: Δ (bias, softplus), dy·SiLU(z), and without LOCAL u, σ(raw
    Δ) and the dz factor; the C rows and, without LOCAL, the B rows (CK, NP) float32. Zero past L."""
    for q in tl.static_range(CK // PT):
        t = k0 + q * PT + tp
        m2 = (t < L)[:, None] & e_mask[None, :]  # [PT, BE]
        dtv, dsp = _dt_sig_from_raw(_tile_te(dt_ptr, b, e, t, s_db, s_de, s_dl, m2), m2, dtb, HAS_DTB, SOFTPLUS,
                                    FAST_EXP)
        dout = _tile_te(dy_ptr, b, e, t, s_gb, s_ge, s_gl, m2).to(tl.float32)
        if HAS_Z:
            zz = _tile_te(z_ptr, b, e, t, s_zb, s_ze, s_zl, m2).to(tl.float32)
            zsig = tl.fdiv(1.0, 1.0 + _exp2(zz * -1.4426950408889634, FAST_EXP))
            dyv = dout * zz * zsig
            if not LOCAL:
                tl.store(p_kz + q * PT * BE + pe_tp, dout * zsig * (1.0 + zz * (1.0 - zsig)))
        else:
            dyv = dout
        tl.store(p_dt + q * PT * BE + pe_tp, dtv)
        tl.store(p_dy + q * PT * BE + pe_tp, dyv)
        tn_mask = (t < L)[:, None] & n_mask[None, :]
        tl.store(pbc_tp + (CK + q * PT) * NP,
                 _tile_tn(C_ptr, b, g, n, t, s_Cb, s_Cg, s_Cn, s_Cl, tn_mask).to(tl.float32))
        if not LOCAL:
            tl.store(pbc_tp + q * PT * NP,
                     _tile_tn(B_ptr, b, g, n, t, s_Bb, s_Bg, s_Bn, s_Bl, tn_mask).to(tl.float32))
            tl.store(p_u + q * PT * BE + pe_tp, _tile_te(u_ptr, b, e, t, s_ub, s_ue, s_ul, m2).to(tl.float32))
            tl.store(p_sp + q * PT * BE + pe_tp, tl.where(m2, dsp, 0.0))


@triton.jit
def _write_interval(du_ptr, ddt_ptr, dz_ptr, b, e, e_mask, k0, L, tp, pe_tp, p_du, p_ddt, p_dz,
                    s_dub, s_due, s_dul, s_ddb, s_dde, s_ddl, s_dzb, s_dze, s_dzl,
                    CK: tl.constexpr, PT: tl.constexpr, BE: tl.constexpr, HAS_Z: tl.constexpr):
    """Write the interval's du, dΔ and dz from their scratch slots as coalesced [PT, BE] tiles (up to L)."""
    for q in tl.static_range(CK // PT):
        t = k0 + q * PT + tp
        m2 = (t < L)[:, None] & e_mask[None, :]
        tl.store(du_ptr + b * s_dub + e[None, :] * s_due + t[:, None] * s_dul,
                 tl.load(p_du + q * PT * BE + pe_tp).to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + b * s_ddb + e[None, :] * s_dde + t[:, None] * s_ddl,
                 tl.load(p_ddt + q * PT * BE + pe_tp).to(ddt_ptr.dtype.element_ty), mask=m2)
        if HAS_Z:
            tl.store(dz_ptr + b * s_dzb + e[None, :] * s_dze + t[:, None] * s_dzl,
                     tl.load(p_dz + q * PT * BE + pe_tp).to(dz_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _ss_bwd_kernel(
    # pointers
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, dy_ptr,
    ck_ptr, gc_ptr, Gl_ptr, Q_ptr, scr_ptr, pe_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddtb_ptr, dh0_ptr,
    # sizes
    E, L, G, EG, NEB, SEG, NSEG, NCK,
    # strides
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_gb, s_ge, s_gl,
    s_dub, s_due, s_dul, s_ddb, s_dde, s_ddl, s_dzb, s_dze, s_dzl,
    # meta
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, CK: tl.constexpr, CKS: tl.constexpr, PT: tl.constexpr,
    LOCAL: tl.constexpr, HAS_GC: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, NEED_DH0: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """Backward over one (b, channel block, segment); 4-step sub-chunks written out.

    LOCAL: adjoint from a zero carry only; write Gl (adjoint at the segment's first step) and Q = Π a_{t+1} over
    the segment, both (B, E, NSEG, N). Otherwise: full gradients, with the carry gc[b, e, s] = adjoint of the
    state at the first step after the segment (or the final-state gradient), from the states kept every CKS
    steps in ck (B, E, NCK, N).

    Entering a block of CKS steps (walked backwards, i.e. at its last interval), the block's forward is rerun from
    its kept state and the states at its interval starts are parked in rg. Per interval of CK steps (walked last to
    first): a prologue computes every per-(step, channel)
    value once from coalesced [PT, BE] tiles (Δ after bias and softplus, dy·SiLU(z), u, σ of the raw Δ, the dz
    factor) into a per-program scratch pe (5 slots of [CK, BE], rows in pairs: ``_pe_off``), followed by the B
    and C rows (2, CK, NP) in float32; phase A reruns the interval's forward on [NP, BE] tiles and parks the
    state after the first step of every 4 in scr; phase B walks the 4-step sub-chunks in reverse, recomputes
    their other three states and runs the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} as explicit FMAs (a_{t+1}
    kept from the step after). Phase B
    parks du, dΔ, dz over the slots of Δ, σ(raw Δ) and the dz factor of the same rows (the values they are
    computed from, so the loads are done first) and dB, dC in (2, NP, CK); after the interval they are written
    as coalesced tiles (one vector atomic per dB/dC tile). With segments (LOCAL), only the adjoint from a zero
    carry runs after the prologue.
    """
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_r // (NEB * G)).to(tl.int64)  # 64-bit offsets for tensors past 2**31 elements
    rem = pid_r % (NEB * G)
    g = rem // NEB
    eo = tl.arange(0, BE)
    e_loc = (rem % NEB) * BE + eo
    e_mask = e_loc < EG
    e = g * EG + e_loc
    n = tl.arange(0, NP)
    n_mask = n < N
    en_mask = n_mask[:, None] & e_mask[None, :]  # [NP, BE]
    A2 = tl.load(A_ptr + e[None, :] * s_ae + n[:, None] * s_an, mask=en_mask, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634  # A log2(e); A itself is not kept (Σ g a h A = ln 2 · Σ g a h A2)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros([BE], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BE], tl.float32)
    st_off = ((b * E + e[None, :]) * NSEG + pid_s) * N + n[:, None]
    t_begin = pid_s * SEG
    t_end = tl.minimum(t_begin + SEG, L)
    # carry: adjoint of the state at step t_end and a_{t_end} (1 past the sequence end)
    _, dt_after = _load_dt(dt_ptr, b * s_db + e * s_de + t_end * s_dl, e_mask & (t_end < L), dtb, HAS_DTB, SOFTPLUS)
    a_next = _exp2(A2 * dt_after[None, :], FAST_EXP)  # [NP, BE]
    if HAS_GC and not LOCAL:
        g_next = tl.load(gc_ptr + st_off, mask=en_mask, other=0.0)
    else:
        g_next = tl.zeros([NP, BE], tl.float32)
    dA_acc = tl.zeros([NP, BE], tl.float32)
    ddtb_acc = tl.zeros([BE], tl.float32)
    dD_acc = tl.zeros([BE], tl.float32)
    dt_sum = tl.zeros([BE], tl.float32)
    prog = pid_r * NSEG + pid_s
    # parked states n-fastest, like A, the checkpoints and the carries: one [NP, BE] layout for all state tiles
    scr = scr_ptr + prog * ((CK // 4 + CKS // CK) * NP * BE) + n[:, None] + eo[None, :] * NP
    rg = scr + (CK // 4) * NP * BE  # the states at the interval starts of the current block, regenerated
    # scratch per program: slots (Δ, dy·SiLU(z), u, σ(raw Δ), dz factor) [CK, BE] each, then B, C, dB, dC rows
    pe = pe_ptr + prog * ((5 * BE + 4 * NP) * CK)
    p_dt = pe
    p_dy = pe + CK * BE
    p_u = pe + 2 * CK * BE
    p_sp = pe + 3 * CK * BE
    p_kz = pe + 4 * CK * BE
    tp = tl.arange(0, PT)
    pe_tp = _pe_off(tp[:, None], eo[None, :], BE)  # [PT, BE] offsets into a slot
    pbc = pe + 5 * CK * BE  # B and C rows of the interval, float32, (2, CK, NP)
    pbc_tp = pbc + tp[:, None] * NP + n[None, :]  # [PT, NP]
    pd = pbc + 2 * CK * NP  # the interval's dB, dC rows, (2, NP, CK)
    pd_nc = pd + n[:, None] * CK + tl.arange(0, CK)[None, :]  # [NP, CK]
    nb = n[:, None] + tl.zeros([1, BE], tl.int32)  # [NP, BE]: B, C rows are loaded in the state tile's layout
    n_ck = tl.cdiv(t_end - t_begin, CK)
    for i in range(0, n_ck):
        k0 = t_begin + (n_ck - 1 - i) * CK  # first step of this checkpoint interval
        kb = k0 - k0 % CKS  # first step of the saved checkpoint's block
        if not LOCAL:
            if (i == 0) | ((k0 + CK) % CKS == 0):
                # entering a block (walked backwards: at its last interval): regenerate the states at its interval
                # starts up to k0 from the saved checkpoint, into rg (Δ, u, B staged in pe per interval)
                h = tl.load(ck_ptr + ((b * E + e[None, :]) * NCK + kb // CKS) * N + n[:, None], mask=en_mask,
                            other=0.0)
                tl.store(rg, h)
                for jb in range(0, (k0 - kb) // CK):
                    tl.debug_barrier()  # the previous reads of pe are done
                    _stage_forward_rows(dt_ptr, u_ptr, B_ptr, b, g, e, e_mask, n, n_mask, dtb, kb + jb * CK, L,
                                        tp, pe_tp, pbc_tp, p_dt, p_u, s_db, s_de, s_dl, s_ub, s_ue, s_ul,
                                        s_Bb, s_Bg, s_Bn, s_Bl, CK, PT, NP, BE, HAS_DTB, SOFTPLUS, FAST_EXP)
                    tl.debug_barrier()
                    for j in range(0, CK // 2):
                        dt0, dt1 = _pe_rows(p_dt, 2 * j, eo, BE)
                        u0, u1 = _pe_rows(p_u, 2 * j, eo, BE)
                        B0 = tl.load(pbc + 2 * j * NP + nb)
                        B1 = tl.load(pbc + (2 * j + 1) * NP + nb)
                        h = _exp2(dt0[None, :] * A2, FAST_EXP) * h + (dt0 * u0)[None, :] * B0
                        h = _exp2(dt1[None, :] * A2, FAST_EXP) * h + (dt1 * u1)[None, :] * B1
                    tl.store(rg + (jb + 1) * (NP * BE), h)
        # prologue: per-(step, channel) values, once each, PT steps at a time (few registers)
        tl.debug_barrier()  # the previous interval's reads of pe (and the writes of rg) are done
        _stage_interval(dt_ptr, dy_ptr, z_ptr, u_ptr, B_ptr, C_ptr, b, g, e, e_mask, n, n_mask, dtb, k0, L, tp,
                        pe_tp, pbc_tp, p_dt, p_dy, p_u, p_sp, p_kz, s_db, s_de, s_dl, s_gb, s_ge, s_gl,
                        s_zb, s_ze, s_zl, s_ub, s_ue, s_ul, s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
                        CK, PT, NP, BE, LOCAL, HAS_Z, HAS_DTB, SOFTPLUS, FAST_EXP)
        tl.debug_barrier()
        n_sub = tl.cdiv(tl.minimum(CK, L - k0), 2)
        if not LOCAL:
            # phase A: the interval's forward from its checkpoint; the state after the first step of each
            # 4-step sub-chunk parked (phase B needs no state before it: a_t h_{t-1} = h_t - Δ_t B_t u_t)
            h = tl.load(rg + ((k0 - kb) // CK) * (NP * BE))
            for j in range(0, n_sub):
                dt0, dt1 = _pe_rows(p_dt, 2 * j, eo, BE)
                u0, u1 = _pe_rows(p_u, 2 * j, eo, BE)
                B0 = tl.load(pbc + 2 * j * NP + nb)
                B1 = tl.load(pbc + (2 * j + 1) * NP + nb)
                h = _exp2(dt0[None, :] * A2, FAST_EXP) * h + (dt0 * u0)[None, :] * B0
                if j % 2 == 0:
                    tl.store(scr + (j // 2) * (NP * BE), h)
                h = _exp2(dt1[None, :] * A2, FAST_EXP) * h + (dt1 * u1)[None, :] * B1
            tl.debug_barrier()
        if LOCAL:
            # adjoint only, from a zero carry
            for jj in range(0, n_sub):
                r0 = 2 * (n_sub - 1 - jj)
                dt0, dt1 = _pe_rows(p_dt, r0, eo, BE)
                dy0, dy1 = _pe_rows(p_dy, r0, eo, BE)
                C0 = tl.load(pbc + (CK + r0) * NP + nb)
                C1 = tl.load(pbc + (CK + r0 + 1) * NP + nb)
                a0 = _exp2(dt0[None, :] * A2, FAST_EXP)
                g1 = C1 * dy1[None, :] + a_next * g_next
                g0 = C0 * dy0[None, :] + _exp2(dt1[None, :] * A2, FAST_EXP) * g1
                dt_sum += dt0 + dt1
                a_next = a0
                g_next = g0
        else:
            # phase B: 4-step sub-chunks in reverse; their states recomputed from the parked one
            for jj in range(0, tl.cdiv(n_sub, 2)):
                j = tl.cdiv(n_sub, 2) - 1 - jj
                r0 = 4 * j
                h0 = tl.load(scr + j * (NP * BE))
                dt0, dt1, dy0, dy1, u0, u1, sp0, sp1, kz0, kz1, B0, B1, C0, C1 = _lean_rows(
                    p_dt, p_dy, p_u, p_sp, p_kz, pbc, r0, eo, nb, CK, NP, BE, HAS_Z)
                a0 = _exp2(dt0[None, :] * A2, FAST_EXP)
                a1 = _exp2(dt1[None, :] * A2, FAST_EXP)
                h1 = a1 * h0 + (dt1 * u1)[None, :] * B1
                dt2, dt3, dy2, dy3, u2, u3, sp2, sp3, kz2, kz3, B2, B3, C2, C3 = _lean_rows(
                    p_dt, p_dy, p_u, p_sp, p_kz, pbc, r0 + 2, eo, nb, CK, NP, BE, HAS_Z)
                a2 = _exp2(dt2[None, :] * A2, FAST_EXP)
                a3 = _exp2(dt3[None, :] * A2, FAST_EXP)
                h2 = a2 * h1 + (dt2 * u2)[None, :] * B2
                h3 = a3 * h2 + (dt3 * u3)[None, :] * B3
                # rows r0 + 3, r0 + 2 (states h3, h2), then r0 + 1, r0 (h1 and the parked h0)
                dA_acc, g_next, ddt_s, dD_s = _lean_two(
                    dA_acc, h2, h3, a3, a_next, g_next, A2, dt2, dt3, dy2, dy3, u2, u3, sp2, sp3, kz2, kz3,
                    B2, B3, C2, C3, Dv, n, eo, pd, p_dt, p_sp, p_kz, r0 + 2, CK, NP, BE, HAS_D, HAS_Z)
                ddtb_acc += ddt_s
                dD_acc += dD_s
                a_next = a2
                dA_acc, g_next, ddt_s, dD_s = _lean_two(
                    dA_acc, h0, h1, a1, a_next, g_next, A2, dt0, dt1, dy0, dy1, u0, u1, sp0, sp1, kz0, kz1,
                    B0, B1, C0, C1, Dv, n, eo, pd, p_dt, p_sp, p_kz, r0, CK, NP, BE, HAS_D, HAS_Z)
                ddtb_acc += ddt_s
                dD_acc += dD_s
                a_next = a0
            # the interval's du, dΔ, dz and dB, dC: coalesced tile stores and vector atomics
            tl.debug_barrier()
            _write_interval(du_ptr, ddt_ptr, dz_ptr, b, e, e_mask, k0, L, tp, pe_tp, p_dt, p_sp, p_kz, s_dub, s_due,
                            s_dul, s_ddb, s_dde, s_ddl, s_dzb, s_dze, s_dzl, CK, PT, BE, HAS_Z)
            tk = k0 + tl.arange(0, CK)
            nt_mask = n_mask[:, None] & (tk < L)[None, :]
            bc_off = ((b * G + g) * NP + n[:, None]) * L + tk[None, :]  # [NP, CK] into (B, G, NP, L)
            tl.atomic_add(dB_ptr + bc_off, tl.load(pd_nc), mask=nt_mask, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_off, tl.load(pd_nc + NP * CK), mask=nt_mask, sem="relaxed")
    if LOCAL:
        # Q = Π a_{t+1} over the segment: Δ summed over its steps but the first, plus the one after it
        dt_first = tl.load(p_dt + _pe_off(0, eo, BE))  # pe holds the segment's first interval now
        tl.store(Gl_ptr + st_off, g_next, mask=en_mask)
        dt_tot = dt_sum - dt_first + dt_after
        tl.store(Q_ptr + st_off, _exp2(A2 * dt_tot[None, :], FAST_EXP), mask=en_mask)
    else:
        if NEED_DH0:
            if pid_s == 0:
                tl.store(dh0_ptr + (b * E + e[None, :]) * N + n[:, None], a_next * g_next, mask=en_mask)
        tl.atomic_add(dA_ptr + e[None, :] * N + n[:, None], dA_acc, mask=en_mask, sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + e, dD_acc, mask=e_mask, sem="relaxed")
        if HAS_DTB:
            tl.atomic_add(ddtb_ptr + e, ddtb_acc, mask=e_mask, sem="relaxed")


# ---------------------------------------------------------------- backward, large N ("grid" layout)
# The state tile is 5-D, [NL, EL, W, NR, ER]: channel c = (er·W + w)·EL + el and state n = nr·NL + nl, so that a
# thread holds ER channels × NR states in registers, the lanes of a warp split EL channels × NL states, and the W
# warps of a program split the channels. Both per-step reductions are then mostly in-thread: over N (Σ g B,
# Σ g a h A, Σ h C) NR − 1 adds and log2(NL) shuffles per channel held, over the channels (dB, dC) ER − 1 adds and
# log2(EL) shuffles per state held, each warp keeping its own partial rows. Per-channel values are tensors of
# shape [NL, EL, W, 1, ER] and per-state rows [NL, EL, W, NR, 1]: both take the state tile's own layout (their
# lanes and warps are laid out as the tile's), so broadcasting them needs no layout conversion. The offsets of
# the loads and stores are multiplied by a unit stride ``s_one`` that Triton does not specialise: with no known
# contiguity, each memory access gets the layout that fills lanes, then warps, from the first dimension on, which
# is the tile's (the dimensions are ordered for it).


@triton.jit
def _gsum_n(x):
    """Σ over the states of a [NL, EL, W, NR, ER] tile: [1, EL, W, 1, ER]."""
    return tl.sum(tl.sum(x, axis=3, keep_dims=True), axis=0, keep_dims=True)


@triton.jit
def _gsum_e(x):
    """Σ over a warp's channels of a [NL, EL, W, NR, ER] tile: [NL, 1, W, NR, 1] (one partial row per warp)."""
    return tl.sum(tl.sum(x, axis=4, keep_dims=True), axis=1, keep_dims=True)


@triton.jit
def _grid_grads(dA_acc, h, bx, gg, Bt, Ct, A2, dtv, x, u, dyv, kz, dsp, Dv, pd_row, r,
                CK: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """Gradients of one step (row r of its interval) on grid tiles: state h, input bx = Δ B u, adjoint gg, B and C
    rows; per-channel dtv, x = Δu, u, dyv = dy·SiLU(z), kz (dz factor), dsp = σ(raw Δ), D. Stores the warp's dB,
    dC partial rows at pd_row + r (dC NP·CK further); returns (dA_acc, dΔ, du, dz)."""
    ghp = gg * (h - bx)  # g_t a_t h_{t-1}
    gB = _gsum_n(gg * Bt)
    ddt = dsp * (0.6931471805599453 * _gsum_n(ghp * A2) + u * gB)
    du = dtv * gB
    if HAS_D:
        du += Dv * dyv
    if HAS_Z:
        yp = _gsum_n(h * Ct)
        if HAS_D:
            yp += Dv * u
        dz = kz * yp
    else:
        dz = du
    tl.store(pd_row + r, _gsum_e(gg * x))
    tl.store(pd_row + r + NP * CK, _gsum_e(h * dyv))
    return dA_acc + ghp * dtv, ddt, du, dz


@triton.jit(do_not_specialize=["s_one", "s_an"])
def _ss_bwd_grid_kernel(
    # pointers
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, dy_ptr,
    ck_ptr, gc_ptr, Gl_ptr, Q_ptr, scr_ptr, pe_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddtb_ptr, dh0_ptr,
    # sizes
    E, L, G, EG, NEB, SEG, NSEG, NCK,
    # strides
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_gb, s_ge, s_gl,
    s_dub, s_due, s_dul, s_ddb, s_dde, s_ddl, s_dzb, s_dze, s_dzl, s_one,
    # meta
    N: tl.constexpr, NP: tl.constexpr, ER: tl.constexpr, NR: tl.constexpr, W: tl.constexpr, EL: tl.constexpr,
    NL: tl.constexpr, CK: tl.constexpr, CKS: tl.constexpr, PT: tl.constexpr,
    LOCAL: tl.constexpr, HAS_GC: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, NEED_DH0: tl.constexpr, FAST_EXP: tl.constexpr,
):
    """Backward over one (b, channel block of ER·W·EL channels, segment) on grid tiles; same contract as
    ``_ss_bwd_kernel`` (LOCAL, carries, checkpoints every CKS steps, CK-step intervals, the prologue's scratch).

    Differences: entering a block of CKS steps, the states regenerated from its checkpoint are parked every 4
    steps (not every CK), and each 4-step half of an interval is then done in one go: its four states and decays
    computed forward from the parked state and kept in registers, then its four rows walked backwards (no
    separate forward pass over the interval: two exponentials per element and step in all, the regeneration's and
    the half's). dB and dC are kept per warp, (W, 2, NP, CK), and summed over the warps when the interval's rows
    are written.
    """
    BE: tl.constexpr = ER * W * EL
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_r // (NEB * G)).to(tl.int64)  # 64-bit offsets for tensors past 2**31 elements
    rem = pid_r % (NEB * G)
    g = rem // NEB
    i_nl = tl.arange(0, NL)[:, None, None, None, None]
    i_el = tl.arange(0, EL)[None, :, None, None, None]
    i_w = tl.arange(0, W)[None, None, :, None, None]
    i_nr = tl.arange(0, NR)[None, None, None, :, None]
    i_er = tl.arange(0, ER)[None, None, None, None, :]
    cc = (i_er * W + i_w) * EL + i_el + i_nl * 0  # [NL, EL, W, 1, ER]: the channel within the block
    nr = i_nr * NL + i_nl + (i_w + i_el) * 0  # [NL, EL, W, NR, 1]: the state
    wr = i_w + (i_nr + i_el + i_nl) * 0  # [NL, EL, W, NR, 1]: the warp
    e_loc = (rem % NEB) * BE + cc
    e_mask = e_loc < EG
    e = g * EG + e_loc
    n_mask = nr < N
    en_mask = n_mask & e_mask  # [NL, EL, W, NR, ER]
    cs = cc * s_one  # unit-stride offsets Triton cannot see through (no vectorised layouts of their own)
    ns = nr * s_one
    A2 = tl.load(A_ptr + e * s_ae + ns * s_an, mask=en_mask, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634  # A log2(e)
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros([NL, EL, W, 1, ER], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([NL, EL, W, 1, ER], tl.float32)
    st_off = ((b * E + e) * NSEG + pid_s) * N + ns
    t_begin = pid_s * SEG
    t_end = tl.minimum(t_begin + SEG, L)
    _, dt_after = _load_dt(dt_ptr, b * s_db + e * s_de + t_end * s_dl, e_mask & (t_end < L), dtb, HAS_DTB, SOFTPLUS)
    a_next = _exp2(A2 * dt_after, FAST_EXP)
    if HAS_GC and not LOCAL:
        g_next = tl.load(gc_ptr + st_off, mask=en_mask, other=0.0)
    else:
        g_next = tl.zeros([NL, EL, W, NR, ER], tl.float32)
    dA_acc = tl.zeros([NL, EL, W, NR, ER], tl.float32)
    ddtb_acc = tl.zeros([NL, EL, W, 1, ER], tl.float32)
    dD_acc = tl.zeros([NL, EL, W, 1, ER], tl.float32)
    dt_sum = tl.zeros([NL, EL, W, 1, ER], tl.float32)
    prog = pid_r * NSEG + pid_s
    # parked states: one per 4 steps of the current block (and the state after it)
    rg = scr_ptr + prog * ((CKS // 4 + 1) * NP * BE) + cs * NP + ns
    # scratch per program: slots (Δ, dy·SiLU(z), u, σ(raw Δ), dz factor) [CK, BE] each, B, C rows (2, CK, NP),
    # then the warps' dB, dC rows (W, 2, NP, CK)
    pe = pe_ptr + prog * ((5 * BE + 2 * NP + 2 * W * NP) * CK)
    p_dt = pe
    p_dy = pe + CK * BE
    p_u = pe + 2 * CK * BE
    p_sp = pe + 3 * CK * BE
    p_kz = pe + 4 * CK * BE
    eo = tl.arange(0, BE)  # the prologue's coalesced [PT, BE] tiles
    e2 = g * EG + (rem % NEB) * BE + eo
    e2_mask = (rem % NEB) * BE + eo < EG
    if HAS_DTB:
        dtb2 = tl.load(dtb_ptr + e2, mask=e2_mask, other=0.0).to(tl.float32)
    else:
        dtb2 = tl.zeros([BE], tl.float32)
    n2 = tl.arange(0, NP)
    n2_mask = n2 < N
    tp = tl.arange(0, PT)
    pe_tp = _pe_off(tp[:, None], eo[None, :], BE)
    pbc = pe + 5 * CK * BE
    pbc_tp = pbc + tp[:, None] * NP + n2[None, :]
    pbc_r = pbc + ns  # rows in the grid layout
    pd = pbc + 2 * CK * NP
    pd_row = pd + wr * (2 * NP * CK) + ns * CK  # this warp's dB row (+ NP·CK: dC)
    ck2 = tl.arange(0, CK)
    pd_nc = pd + n2[:, None] * CK + ck2[None, :]
    n_ck = tl.cdiv(t_end - t_begin, CK)
    for i in range(0, n_ck):
        k0 = t_begin + (n_ck - 1 - i) * CK
        kb = k0 - k0 % CKS
        if not LOCAL:
            if (i == 0) | ((k0 + CK) % CKS == 0):
                h = tl.load(ck_ptr + ((b * E + e) * NCK + kb // CKS) * N + ns, mask=en_mask, other=0.0)
                tl.store(rg, h)
                for jb in range(0, (k0 - kb) // CK + 1):  # through the current interval (its middle state)
                    tl.debug_barrier()
                    _stage_forward_rows(dt_ptr, u_ptr, B_ptr, b, g, e2, e2_mask, n2, n2_mask, dtb2, kb + jb * CK, L,
                                        tp, pe_tp, pbc_tp, p_dt, p_u, s_db, s_de, s_dl, s_ub, s_ue, s_ul,
                                        s_Bb, s_Bg, s_Bn, s_Bl, CK, PT, NP, BE, HAS_DTB, SOFTPLUS, FAST_EXP)
                    tl.debug_barrier()
                    for j in tl.static_range(CK // 2):
                        dt0, dt1 = _pe_rows(p_dt, 2 * j, cs, BE)
                        u0, u1 = _pe_rows(p_u, 2 * j, cs, BE)
                        B0 = tl.load(pbc_r + 2 * j * NP)
                        B1 = tl.load(pbc_r + (2 * j + 1) * NP)
                        h = _exp2(dt0 * A2, FAST_EXP) * h + (dt0 * u0) * B0
                        h = _exp2(dt1 * A2, FAST_EXP) * h + (dt1 * u1) * B1
                        if j % 2 == 1:
                            tl.store(rg + (jb * (CK // 4) + j // 2 + 1) * (NP * BE), h)
        tl.debug_barrier()
        _stage_interval(dt_ptr, dy_ptr, z_ptr, u_ptr, B_ptr, C_ptr, b, g, e2, e2_mask, n2, n2_mask, dtb2, k0, L, tp,
                        pe_tp, pbc_tp, p_dt, p_dy, p_u, p_sp, p_kz, s_db, s_de, s_dl, s_gb, s_ge, s_gl,
                        s_zb, s_ze, s_zl, s_ub, s_ue, s_ul, s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
                        CK, PT, NP, BE, LOCAL, HAS_Z, HAS_DTB, SOFTPLUS, FAST_EXP)
        tl.debug_barrier()
        if LOCAL:
            for jj in tl.static_range(CK // 2):
                r0 = CK - 2 - 2 * jj
                dt0, dt1 = _pe_rows(p_dt, r0, cs, BE)
                dy0, dy1 = _pe_rows(p_dy, r0, cs, BE)
                C0 = tl.load(pbc_r + (CK + r0) * NP)
                C1 = tl.load(pbc_r + (CK + r0 + 1) * NP)
                a0 = _exp2(dt0 * A2, FAST_EXP)
                g1 = C1 * dy1 + a_next * g_next
                g_next = C0 * dy0 + _exp2(dt1 * A2, FAST_EXP) * g1
                dt_sum += dt0 + dt1
                a_next = a0
        else:
            for hh in tl.static_range(CK // 4):
                r0 = CK - 4 - 4 * hh  # first row of this 4-step half
                h_in = tl.load(rg + ((k0 - kb) // 4 + r0 // 4) * (NP * BE))
                dt0, dt1 = _pe_rows(p_dt, r0, cs, BE)
                dt2, dt3 = _pe_rows(p_dt, r0 + 2, cs, BE)
                u0, u1 = _pe_rows(p_u, r0, cs, BE)
                u2, u3 = _pe_rows(p_u, r0 + 2, cs, BE)
                B0 = tl.load(pbc_r + r0 * NP)
                B1 = tl.load(pbc_r + (r0 + 1) * NP)
                B2 = tl.load(pbc_r + (r0 + 2) * NP)
                B3 = tl.load(pbc_r + (r0 + 3) * NP)
                x0 = dt0 * u0
                x1 = dt1 * u1
                x2 = dt2 * u2
                x3 = dt3 * u3
                a0 = _exp2(dt0 * A2, FAST_EXP)
                h0 = a0 * h_in + x0 * B0
                a1 = _exp2(dt1 * A2, FAST_EXP)
                h1 = a1 * h0 + x1 * B1
                a2 = _exp2(dt2 * A2, FAST_EXP)
                h2 = a2 * h1 + x2 * B2
                a3 = _exp2(dt3 * A2, FAST_EXP)
                h3 = a3 * h2 + x3 * B3
                dy2, dy3 = _pe_rows(p_dy, r0 + 2, cs, BE)
                sp2, sp3 = _pe_rows(p_sp, r0 + 2, cs, BE)
                if HAS_Z:
                    kz2, kz3 = _pe_rows(p_kz, r0 + 2, cs, BE)
                else:
                    kz2 = dy2
                    kz3 = dy3
                C2 = tl.load(pbc_r + (CK + r0 + 2) * NP)
                C3 = tl.load(pbc_r + (CK + r0 + 3) * NP)
                g3 = C3 * dy3 + a_next * g_next
                dA_acc, ddt3, du3, dz3 = _grid_grads(dA_acc, h3, x3 * B3, g3, B3, C3, A2, dt3, x3, u3, dy3, kz3,
                                                     sp3, Dv, pd_row, r0 + 3, CK, NP, HAS_D, HAS_Z)
                g2 = C2 * dy2 + a3 * g3
                dA_acc, ddt2, du2, dz2 = _grid_grads(dA_acc, h2, x2 * B2, g2, B2, C2, A2, dt2, x2, u2, dy2, kz2,
                                                     sp2, Dv, pd_row, r0 + 2, CK, NP, HAS_D, HAS_Z)
                _pe_store_rows(p_dt, r0 + 2, cs, du2, du3, BE)
                _pe_store_rows(p_sp, r0 + 2, cs, ddt2, ddt3, BE)
                if HAS_Z:
                    _pe_store_rows(p_kz, r0 + 2, cs, dz2, dz3, BE)
                dy0, dy1 = _pe_rows(p_dy, r0, cs, BE)
                sp0, sp1 = _pe_rows(p_sp, r0, cs, BE)
                if HAS_Z:
                    kz0, kz1 = _pe_rows(p_kz, r0, cs, BE)
                else:
                    kz0 = dy0
                    kz1 = dy1
                C0 = tl.load(pbc_r + (CK + r0) * NP)
                C1 = tl.load(pbc_r + (CK + r0 + 1) * NP)
                g1 = C1 * dy1 + a2 * g2
                dA_acc, ddt1, du1, dz1 = _grid_grads(dA_acc, h1, x1 * B1, g1, B1, C1, A2, dt1, x1, u1, dy1, kz1,
                                                     sp1, Dv, pd_row, r0 + 1, CK, NP, HAS_D, HAS_Z)
                g0 = C0 * dy0 + a1 * g1
                dA_acc, ddt0, du0, dz0 = _grid_grads(dA_acc, h0, x0 * B0, g0, B0, C0, A2, dt0, x0, u0, dy0, kz0,
                                                     sp0, Dv, pd_row, r0, CK, NP, HAS_D, HAS_Z)
                _pe_store_rows(p_dt, r0, cs, du0, du1, BE)
                _pe_store_rows(p_sp, r0, cs, ddt0, ddt1, BE)
                if HAS_Z:
                    _pe_store_rows(p_kz, r0, cs, dz0, dz1, BE)
                ddtb_acc += ddt0 + ddt1 + ddt2 + ddt3
                dD_acc += dy0 * u0 + dy1 * u1 + dy2 * u2 + dy3 * u3
                g_next = g0
                a_next = a0
            tl.debug_barrier()
            _write_interval(du_ptr, ddt_ptr, dz_ptr, b, e2, e2_mask, k0, L, tp, pe_tp, p_dt, p_sp, p_kz, s_dub, s_due,
                            s_dul, s_ddb, s_dde, s_ddl, s_dzb, s_dze, s_dzl, CK, PT, BE, HAS_Z)
            tk = k0 + ck2
            nt_mask = n2_mask[:, None] & (tk < L)[None, :]
            dBr = tl.load(pd_nc)
            dCr = tl.load(pd_nc + NP * CK)
            for w in tl.static_range(1, W):
                dBr += tl.load(pd_nc + w * (2 * NP * CK))
                dCr += tl.load(pd_nc + w * (2 * NP * CK) + NP * CK)
            bc_off = ((b * G + g) * NP + n2[:, None]) * L + tk[None, :]
            tl.atomic_add(dB_ptr + bc_off, dBr, mask=nt_mask, sem="relaxed")
            tl.atomic_add(dC_ptr + bc_off, dCr, mask=nt_mask, sem="relaxed")
    lane0 = e_mask & (i_nl == 0)  # per-channel values are held by all NL lanes of a channel: one of them writes
    if LOCAL:
        dt_first = _pe_rows(p_dt, 0, cs, BE)[0]  # pe holds the segment's first interval now
        tl.store(Gl_ptr + st_off, g_next, mask=en_mask)
        dt_tot = dt_sum - dt_first + dt_after
        tl.store(Q_ptr + st_off, _exp2(A2 * dt_tot, FAST_EXP), mask=en_mask)
    else:
        if NEED_DH0:
            if pid_s == 0:
                tl.store(dh0_ptr + (b * E + e) * N + ns, a_next * g_next, mask=en_mask)
        tl.atomic_add(dA_ptr + e * N + ns, dA_acc, mask=en_mask, sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + e, dD_acc, mask=lane0, sem="relaxed")
        if HAS_DTB:
            tl.atomic_add(ddtb_ptr + e, ddtb_acc, mask=lane0, sem="relaxed")


# ---------------------------------------------------------------- launchers


def _as_grouped(M: torch.Tensor) -> torch.Tensor:
    """(B, N, L) -> (B, 1, N, L) view; (B, G, N, L) unchanged."""
    return M.unsqueeze(1) if M.dim() == 3 else M


def _segments(rows, warps_per_program, length, step, target_warps):
    """(segment length, number of segments): cut time so that rows × segments × warps ≈ target_warps."""
    nsteps = max(1, triton.cdiv(length, step))
    want = max(1, min(nsteps, triton.cdiv(target_warps, max(rows * warps_per_program, 1))))
    seg = triton.cdiv(nsteps, want) * step
    return seg, (triton.cdiv(length, seg) if length > 0 else 1)


def _fast_exp(t: torch.Tensor) -> bool:
    """Use the single-instruction exp2 (inline PTX) on real GPUs; the interpreter has no PTX."""
    return t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"


def scan_config(batch, channels, groups, length, n, channel_first=True, *, fwd_kernel=None, fwd_block=None,
                fwd_chunk=None, fwd_warps=None, fwd_target=None, bwd_kernel=None, bwd_block=None, bwd_warps=None,
                bwd_lanes_n=None, bwd_maxnreg=None, bwd_target=None, ck=None, ck_save=None):
    """Launch configuration of one problem size (a dict for ``selective_scan_triton(config=...)``); every keyword
    left None takes the default below.

    Forward: ``fwd_kernel`` "tile" ([T, N, channels] register tiles, for small N) or "step" (the steps written out
    on [N, channels] tiles whose states are spread over lanes too, for large N); ``fwd_block`` channels per
    program, ``fwd_chunk`` steps per chunk T, ``fwd_warps`` warps per program, ``fwd_target`` warps wanted in
    flight before time is cut into segments (segments cost a second pass). Backward: ``bwd_kernel`` "lanes"
    ([N, channels] tiles, channels across the lanes; the default) or "grid" (channels and states each split
    between registers and lanes, the warps splitting the channels), ``bwd_block`` channels per program,
    ``bwd_warps``, ``bwd_lanes_n`` (grid: lanes along the states, of 32; default max(8, N / 8)), ``bwd_maxnreg``
    (register cap, None: the compiler's), ``bwd_target``, ``ck`` steps per recomputation interval. ``ck_save``:
    steps between the states the forward keeps for the backward ((B, E, ceil(L / ck_save), N) float32); the
    backward regenerates the interval starts in between. Defaults from the GPU sweeps in
    benchmarks/notes/mamba1_scan*.md.
    """
    np2 = triton.next_power_of_2(n)
    eg = channels // groups
    eg2 = max(1, triton.next_power_of_2(eg))
    ck = ck or 8
    # every 128 steps at large N (a 16th of the memory of every 8); at N <= 16 the states are 4x smaller and every
    # 32 steps was 3-4 % faster forward + backward than 128 (H100, benchmarks/notes/mamba1_scan_training.md)
    ck_save = ck_save or (32 if np2 <= 16 else 128)
    if ck_save % ck:
        raise ValueError(f"ck_save: expected a multiple of ck = {ck}, got {ck_save}")
    fwd_kernel = fwd_kernel or ("tile" if np2 <= 16 else "step")
    if fwd_kernel not in ("tile", "step"):
        raise ValueError(f"fwd_kernel: expected 'tile' or 'step', got {fwd_kernel!r}")
    if fwd_kernel == "tile":
        be = min(fwd_block or 32, eg2)
        T = fwd_chunk or 4
    else:
        be = min(fwd_block or 8, eg2)
        T = fwd_chunk or math.gcd(16, ck_save)
    if ck_save % T:
        raise ValueError(f"fwd_chunk: expected a divisor of ck_save = {ck_save}, got {T}")
    nw = fwd_warps or max(1, be * np2 // 512)
    rows = batch * groups * triton.cdiv(eg, be)
    if fwd_target is None:
        if np2 <= 16:
            fwd_target = 1 if channel_first and rows * nw >= 384 else _TARGET_WARPS
        else:
            fwd_target = _TARGET_WARPS
    seg, nseg = _segments(rows, nw, length, ck_save, fwd_target)
    cfg = dict(CK=ck, CKS=ck_save, fwd_kernel=fwd_kernel, fwd_BE=be, fwd_T=T, fwd_warps=nw, fwd_seg=seg,
               fwd_nseg=nseg)
    bwd_kernel = bwd_kernel or "lanes"  # the grid kernel measured slower at N = 64 too (H100: 14.9 against 9.8 ms)
    if bwd_kernel not in ("lanes", "grid"):
        raise ValueError(f"bwd_kernel: expected 'lanes' or 'grid', got {bwd_kernel!r}")
    be = min(bwd_block or 16, eg2)
    if bwd_kernel == "lanes":
        nw = bwd_warps or max(1, be * np2 // 512)
        grid = {}
    else:
        if ck % 4:
            raise ValueError(f"ck: the grid backward walks 4-step halves, expected a multiple of 4, got {ck}")
        nl = min(bwd_lanes_n or max(8, np2 // 8), np2)  # 8 states per thread from N = 64 on (no spills)
        el = min(32 // nl, be)
        nl = min(np2, 32 // el)  # few channels: more lanes along the states (tiny problems leave lanes idle)
        nw = bwd_warps or max(1, be // el)  # one channel per thread (no spills at N = 64)
        if be % (el * nw):
            raise ValueError(f"bwd_block: expected a multiple of {el} lanes x {nw} warps, got {be}")
        grid = dict(ER=be // (el * nw), NR=np2 // nl, W=nw, EL=el, NL=nl)
    rows = batch * groups * triton.cdiv(eg, be)
    target = bwd_target or (1 if rows * nw >= 768 else _TARGET_WARPS // 2)
    seg, nseg = _segments(rows, nw, length, ck_save, target)
    cfg.update(bwd_kernel=bwd_kernel, bwd_BE=be, bwd_warps=nw, bwd_grid=grid, bwd_maxnreg=bwd_maxnreg, bwd_seg=seg,
               bwd_nseg=nseg)
    return cfg


def _selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None, store_checkpoints=False, config=None):
    """Launch the forward. Returns (y (B, E, L) in u's dtype, final_state (B, E, N) float32,
    checkpoints (B, E, ceil(L / ck_save), N) float32 or None, config). ``config``: from ``scan_config`` (None:
    its defaults for this size)."""
    batch, channels, length = u.shape
    n = A.shape[1]
    Bg, Cg = _as_grouped(B), _as_grouped(C)
    groups = Bg.shape[1]
    if Cg.shape[1] != groups:
        raise ValueError(f"B and C: expected the same number of groups, got {Bg.shape[1]} and {Cg.shape[1]}")
    eg = channels // groups
    cfg = config or scan_config(batch, channels, groups, length, n, channel_first=u.stride(-1) == 1)
    BE, T, seg, nseg, CKS = cfg["fwd_BE"], cfg["fwd_T"], cfg["fwd_seg"], cfg["fwd_nseg"], cfg["CKS"]
    np2 = triton.next_power_of_2(n)
    neb = triton.cdiv(eg, BE)
    nck = max(1, triton.cdiv(length, CKS))
    dev = u.device
    y = torch.empty_like(u)
    hT = torch.empty(batch, channels, n, device=dev, dtype=torch.float32)
    ck = (torch.empty(batch, channels, nck, n, device=dev, dtype=torch.float32) if store_checkpoints
          else hT)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    if length == 0:
        hT.copy_(h0 if h0 is not None else torch.zeros_like(hT))
        return y, hT, (ck if store_checkpoints else None), cfg
    z_ = z if z is not None else u
    grid = (batch * groups * neb, nseg)
    common = dict(N=n, NP=np2, BE=BE, T=T, HAS_D=D is not None, HAS_Z=z is not None,
                  HAS_DTB=delta_bias is not None, SOFTPLUS=bool(delta_softplus), num_warps=cfg["fwd_warps"],
                  CK=CKS, FAST_EXP=_fast_exp(u))
    strides = (*u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(), *z_.stride(), *y.stride())
    if cfg["fwd_kernel"] == "step":
        kernel = _ss_fwd_step_kernel
        scratch = (torch.empty(grid[0] * nseg * 4 * T * BE, device=dev, dtype=torch.float32),)
        strides += (1,)  # the n-stride of the state tensors (see the kernel)
    else:
        kernel, scratch = _ss_fwd_kernel, ()
    dummy = hT
    Dp = D if D is not None else dummy
    dtbp = delta_bias if delta_bias is not None else dummy
    if nseg > 1:
        S = torch.empty(batch, channels, nseg, n, device=dev, dtype=torch.float32)
        P = torch.empty_like(S)
        kernel[grid](
            u, delta, A, Bg, Cg, Dp, z_, dtbp, y, dummy, dummy, dummy, S, P, *scratch,
            channels, length, eg, neb, seg, nseg, nck, *strides,
            LOCAL=True, HAS_H0=False, STORE_CK=False, **common,
        )
        hs = torch.empty_like(S)
        M = batch * channels * n
        _ss_pass_kernel[(triton.cdiv(M, 1024),)](
            S, P, h0 if h0 is not None else dummy, hs, M, nseg,
            N=n, HAS_X0=h0 is not None, REVERSE=False, BLOCK=1024, num_warps=4,
        )
        has_h0 = True
    else:
        hs = h0 if h0 is not None else dummy
        has_h0 = h0 is not None
    kernel[grid](
        u, delta, A, Bg, Cg, Dp, z_, dtbp, y, hs, ck, hT, dummy, dummy, *scratch,
        channels, length, eg, neb, seg, nseg, nck, *strides,
        LOCAL=False, HAS_H0=has_h0, STORE_CK=store_checkpoints, **common,
    )
    return y, hT, (ck if store_checkpoints else None), cfg


def _selective_scan_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints,
                        need_dh0, config):
    """Launch the backward (``config`` and ``checkpoints`` from the forward).
    Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, d_initial_state); entries for absent inputs are
    None."""
    batch, channels, length = u.shape
    n = A.shape[1]
    Bg, Cg = _as_grouped(B), _as_grouped(C)
    groups = Bg.shape[1]
    eg = channels // groups
    CK, CKS, BE, num_warps = config["CK"], config["CKS"], config["bwd_BE"], config["bwd_warps"]
    seg, nseg = config["bwd_seg"], config["bwd_nseg"]
    np2 = triton.next_power_of_2(n)
    neb = triton.cdiv(eg, BE)
    nck = max(1, triton.cdiv(length, CKS))
    dev = u.device
    f32 = torch.float32
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.zeros(channels, n, device=dev, dtype=f32)
    dBf = torch.zeros(batch, groups, np2, length, device=dev, dtype=f32)
    dCf = torch.zeros(batch, groups, np2, length, device=dev, dtype=f32)
    dD = torch.zeros(channels, device=dev, dtype=f32) if D is not None else None
    ddtb = torch.zeros(channels, device=dev, dtype=f32) if delta_bias is not None else None
    dh0 = torch.zeros(batch, channels, n, device=dev, dtype=f32) if need_dh0 else None
    dT = None if d_final is None else d_final.to(f32).contiguous()
    z_ = z if z is not None else u
    dz_ = dz if dz is not None else du
    dummy = dA
    strides = (*u.stride(), *delta.stride(), *A.stride(), *Bg.stride(), *Cg.stride(), *z_.stride(), *dy.stride(),
               *du.stride(), *ddelta.stride(), *dz_.stride())
    grid = (batch * groups * neb, nseg)
    common = dict(N=n, NP=np2, BE=BE, HAS_D=D is not None, HAS_Z=z is not None,
                  HAS_DTB=delta_bias is not None, SOFTPLUS=bool(delta_softplus), num_warps=num_warps)
    programs = grid[0] * nseg
    common.update(CK=CK, CKS=CKS, PT=next(p for p in (8, 4) if CK % p == 0), FAST_EXP=_fast_exp(u))
    if config.get("bwd_maxnreg"):
        common.update(maxnreg=config["bwd_maxnreg"])
    if config["bwd_kernel"] == "grid":
        kernel = _ss_bwd_grid_kernel
        gl = config["bwd_grid"]
        common.update(gl)
        del common["BE"]
        # per program: states parked every 4 steps of a block; the interval's staged values, B, C rows and the
        # warps' dB, dC rows
        scratch = (torch.empty(programs * (CKS // 4 + 1) * np2 * BE, device=dev, dtype=f32),
                   torch.empty(programs * (5 * BE + 2 * np2 + 2 * gl["W"] * np2) * CK, device=dev, dtype=f32))
        strides += (1,)  # s_one (see the kernel)
    else:
        kernel = _ss_bwd_kernel
        # per program: parked states (CK / 4 + CKS / CK) x [NP, BE]; the interval's staged values and dB, dC rows
        scratch = (torch.empty(programs * (CK // 4 + CKS // CK) * np2 * BE, device=dev, dtype=f32),
                   torch.empty(programs * (5 * BE + 4 * np2) * CK, device=dev, dtype=f32))
    if length > 0:
        Dp = D if D is not None else dummy
        dtbp = delta_bias if delta_bias is not None else dummy
        if nseg > 1:
            Gl = torch.empty(batch, channels, nseg, n, device=dev, dtype=f32)
            Q = torch.empty_like(Gl)
            kernel[grid](
                u, delta, A, Bg, Cg, Dp, z_, dtbp, dy, dummy, dummy, Gl, Q, *scratch,
                du, ddelta, dz_, dA, dBf, dCf, dummy, dummy, dummy,
                channels, length, groups, eg, neb, seg, nseg, nck, *strides,
                LOCAL=True, HAS_GC=False, NEED_DH0=False, **common,
            )
            gc = torch.empty_like(Gl)
            M = batch * channels * n
            _ss_pass_kernel[(triton.cdiv(M, 1024),)](
                Gl, Q, dT if dT is not None else dummy, gc, M, nseg,
                N=n, HAS_X0=dT is not None, REVERSE=True, BLOCK=1024, num_warps=4,
            )
            has_gc = True
        else:
            gc = dT if dT is not None else dummy
            has_gc = dT is not None
        kernel[grid](
            u, delta, A, Bg, Cg, Dp, z_, dtbp, dy, checkpoints, gc, dummy, dummy, *scratch,
            du, ddelta, dz_, dA, dBf, dCf, dD if dD is not None else dummy,
            ddtb if ddtb is not None else dummy, dh0 if dh0 is not None else dummy,
            channels, length, groups, eg, neb, seg, nseg, nck, *strides,
            LOCAL=False, HAS_GC=has_gc, NEED_DH0=need_dh0, **common,
        )
    else:
        du.zero_()
        ddelta.zero_()
        if dz is not None:
            dz.zero_()
        if need_dh0 and dT is not None:
            dh0.copy_(dT)
    dB = dBf[:, :, :n].to(B.dtype)
    dC = dCf[:, :, :n].to(C.dtype)
    if B.dim() == 3:
        dB = dB[:, 0]
    if C.dim() == 3:
        dC = dC[:, 0]
    return (du, ddelta, dA.to(A.dtype), dB, dC, None if dD is None else dD.to(D.dtype), dz,
            None if ddtb is None else ddtb.to(delta_bias.dtype), dh0)


class SelectiveScanFn(torch.autograd.Function):
    """Autograd wrapper: the forward keeps the state every ck_save steps; the backward recomputes from them."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config=None):
        y, hT, ck, cfg = _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                             initial_state, store_checkpoints=True, config=config)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ck)
        ctx.set_materialize_grads(False)  # an unused final state sends no zero gradient to the backward
        ctx.delta_softplus = delta_softplus
        ctx.has_h0 = initial_state is not None
        ctx.h0_dtype = None if initial_state is None else initial_state.dtype
        ctx.cfg = cfg
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B, C, D, z, delta_bias, ck = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, ddtb, dh0 = _selective_scan_bwd(
            dy, dhT, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ck, ctx.has_h0, ctx.cfg,
        )
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, ddtb, None, dh0, None


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, *, config=None,
):
    """Mamba-1 selective scan in Triton; contract of ``selective_scan_ref``.

    Args:
        u, delta, z: (B, E, L), any strides; A: (E, N) float32; B, C: (B, N, L) or (B, G, N, L);
        D, delta_bias: (E,); initial_state: (B, E, N) float32.
        config: launch configuration from ``scan_config`` for this size (None: its defaults).

    Returns:
        y: (B, E, L) in u's dtype, or (y, final_state (B, E, N) float32).
    """
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    if needs_graph:
        y, hT = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, config)
    else:
        y, hT, _, _ = _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                          config=config)
    return (y, hT) if return_final_state else y


__all__ = ["SelectiveScanFn", "scan_config", "selective_scan_triton", "_selective_scan_bwd", "_selective_scan_fwd"]
