"""Mamba-1 selective scan in Triton for the inputs outside the fast path: complex A (S4D-Lin style) and fixed
(non-selective) B / C, forward and backward, with initial state in and a differentiable final state out.

``kernels.mamba1_scan`` covers real A with input-dependent B and C; this module covers everything else that
mamba_ssm's ``selective_scan_fn`` accepts:
    A: (E, N) real or complex;
    B, C: each input-dependent (B, N, L) / (B, G, N, L), or fixed (E, N); with a complex A an input-dependent
        B/C is a complex tensor (..., N, L) or mamba_ssm's real form (..., N, 2L) with (real, imaginary) pairs
        interleaved along time, and a fixed one is complex (or real).
The recurrence (complex arithmetic when A is complex; K = 2 for a complex state, else 1):
    h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t ;  y_t = K Re(Σ_n C_t h_t) + D u_t ;  y_t *= SiLU(z_t)

Design: time-sequential, state on chip. One program owns (batch row, a block of BE channels of one group, all N
states); it walks time one step at a time with the state as [BE, NP] registers (real and imaginary planes).
The forward writes y, the final state and, for the backward, the state every CK steps. The backward walks
these intervals in reverse: it recomputes the interval's states from its checkpoint into a per-program scratch,
then runs the adjoint backwards through the interval. With the complex gradient convention of PyTorch
(G_w = ∂L/∂Re w + i ∂L/∂Im w) and a_t = exp(Δ_t A):
    g_t = K dy_t conj(C_t) + conj(a_{t+1}) g_{t+1}        (g_{L-1} starts from the final state's gradient)
    G_{C_t} = K dy_t conj(h_t) ;  G_{B_t} = Δ_t u_t g_t ;  d(Δ_t u_t) = Σ_n Re(g_t conj(B_t))
    w_t = Δ_t A:  G_w = conj(a_t h_{t-1}) g_t ;  dΔ_t += Σ_n Re(G_w conj(A)) ;  G_A += Δ_t G_w
    G_{h_init} = conj(a_0) g_0
Input-dependent dB / dC are summed over the program's channels and added atomically; per-channel sums (dA, fixed
dB / dC, dD, dΔ-bias) are written per batch row and summed afterwards. Inputs may be float32, bfloat16 or
float16; all arithmetic and the state are float32 (complex64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus

_CK = 16  # steps between stored states (the backward's recomputation interval)


# ---------------------------------------------------------------- device helpers


@triton.jit
def _load_bc(ptr, b, g, e, n, t, s_b, s_g, s_e, s_n, s_t, s_im, mask_en, mask_n,
             VAR: tl.constexpr, IM: tl.constexpr):
    """(real, imaginary) parts of B_t or C_t as float32: [NP] vectors when input-dependent, [BE, NP] when fixed
    (imaginary part zero without IM)."""
    if VAR:
        re, im = _load_complex(ptr + b * s_b + g * s_g + n * s_n + t * s_t, s_im, mask_n, IM)
        re, im = re[None, :], im[None, :]
    else:
        re, im = _load_complex(ptr + e[:, None] * s_e + n[None, :] * s_n, s_im, mask_en, IM)
    return re, im


@triton.jit
def _load_complex(ptrs, s_im, mask, IM: tl.constexpr):
    """(real, imaginary) float32 parts at ``ptrs``, the imaginary ones s_im further (zero without IM)."""
    re = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if IM:
        im = tl.load(ptrs + s_im, mask=mask, other=0.0).to(tl.float32)
    else:
        im = re * 0.0
    return re, im


@triton.jit
def _step_inputs(u_ptr, dt_ptr, dtb, b, e, t, s_ub, s_ue, s_ul, s_db, s_de, s_dl, e_mask, softplus):
    """u_t, raw Δ_t + bias and the Δ_t used (softplus'd when ``softplus``; zero on masked channels), [BE]
    float32."""
    u = tl.load(u_ptr + b * s_ub + e * s_ue + t * s_ul, mask=e_mask, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + b * s_db + e * s_de + t * s_dl, mask=e_mask, other=0.0).to(tl.float32) + dtb
    dt = tl.where(softplus, _softplus(raw), raw)
    return u, raw, tl.where(e_mask, dt, 0.0)


@triton.jit
def _decay(dt, Ar, Ai, CPLX: tl.constexpr):
    """exp(Δ A) as (real, imaginary) [BE, NP] planes (imaginary zero for a real A)."""
    mag = tl.exp(dt[:, None] * Ar)
    if CPLX:
        ang = dt[:, None] * Ai
        return mag * tl.cos(ang), mag * tl.sin(ang)
    else:
        return mag, mag * 0.0


@triton.jit
def _program_setup(A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, E, EG, NEB, s_ae, s_an, s_aim,
                   s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim,
                   N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, CPLX: tl.constexpr, B_IM: tl.constexpr,
                   C_IM: tl.constexpr):
    """What the forward and backward programs share: this program's batch row b, group g and channels e (with
    masks), the state index n, A (real and imaginary parts), the B / C tiles read as fixed (E, N) ones, the Δ
    bias and D, all float32 [BE] or [BE, NP]."""
    pid = tl.program_id(0)
    b = (pid // (NEB * (E // EG))).to(tl.int64)
    rem = pid % (NEB * (E // EG))
    g = rem // NEB
    e_loc = (rem % NEB) * BE + tl.arange(0, BE)
    e_mask = e_loc < EG
    e = g * EG + e_loc
    n = tl.arange(0, NP)
    n_mask = n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    Ar, Ai = _load_complex(A_ptr + e[:, None] * s_ae + n[None, :] * s_an, s_aim, en_mask, CPLX)
    Bfr, Bfi = _load_bc(B_ptr, b, g, e, n, 0, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask, n_mask, False, B_IM)
    Cfr, Cfi = _load_bc(C_ptr, b, g, e, n, 0, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, en_mask, n_mask, False, C_IM)
    dtb = tl.load(dtb_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    Dv = tl.load(D_ptr + e, mask=e_mask, other=0.0).to(tl.float32)
    return b, g, e, e_mask, n, n_mask, en_mask, Ar, Ai, Bfr, Bfi, Cfr, Cfi, dtb, Dv


# ---------------------------------------------------------------- forward

# Sizes and strides are not specialized (Triton would compile a variant per layout and per size divisible by 16;
# the per-step loads gather across channels and gain nothing from it), so the variants are only those of the
# constexpr meta-parameters and the pointer dtypes.
_SIZES = ["E", "L", "EG", "NEB", "NCK"]
_STRIDES = ["s_ub", "s_ue", "s_ul", "s_db", "s_de", "s_dl", "s_Bb", "s_Bg", "s_Be", "s_Bn", "s_Bt", "s_Bim",
            "s_Cb", "s_Cg", "s_Ce", "s_Cn", "s_Ct", "s_Cim", "s_zb", "s_ze", "s_zl"]
_FWD_STRIDES = ["s_yb", "s_ye", "s_yl"]
_BWD_STRIDES = ["s_gb", "s_ge", "s_gl", "s_xb", "s_xe", "s_xl", "s_qb", "s_qe", "s_ql", "s_wb", "s_we", "s_wl"]


@triton.jit(do_not_specialize=_SIZES + _STRIDES + _FWD_STRIDES + ["FLAGS"])
def _gen_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, h0_ptr, y_ptr, hT_ptr, ck_ptr,
    E, L, EG, NEB, NCK,
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an, s_aim,
    s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim,
    s_zb, s_ze, s_zl, s_yb, s_ye, s_yl, FLAGS,
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, CK: tl.constexpr, NC: tl.constexpr,
    CPLX: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, B_IM: tl.constexpr, C_IM: tl.constexpr,
):
    """One program: batch row b, channels [e0, e0 + BE) of group g, all of time. States are stored as planes
    (B, E, [NCK,] NC, N) float32: plane 0 real, plane 1 (NC = 2) imaginary. FLAGS (runtime bits, so that the
    options do not multiply the compiled variants): 1 softplus, 2 z given, 4 initial state given, 8 store the
    checkpoints. D and the Δ bias are always given (zeros when absent)."""
    softplus = (FLAGS & 1) != 0
    has_z = (FLAGS & 2) != 0
    has_h0 = (FLAGS & 4) != 0
    store_ck = (FLAGS & 8) != 0
    b, g, e, e_mask, n, n_mask, en_mask, Ar, Ai, Bfr, Bfi, Cfr, Cfi, dtb, Dv = _program_setup(
        A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, E, EG, NEB, s_ae, s_an, s_aim,
        s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, N, NP, BE, CPLX, B_IM, C_IM)
    st = (b * E + e[:, None]) * (NC * N) + n[None, :]  # plane 0 of (B, E, NC, N)
    hr = tl.load(h0_ptr + st, mask=en_mask & has_h0, other=0.0)
    if CPLX:
        hi = tl.load(h0_ptr + st + N, mask=en_mask & has_h0, other=0.0)
    else:
        hi = hr * 0.0
    # software prefetch: the inputs of step t + 1 are requested before step t is computed, so that their memory
    # latency overlaps the step (masked past the end, so nothing extra is read)
    m_n = e_mask & (L > 0)
    u_n = tl.load(u_ptr + b * s_ub + e * s_ue, mask=m_n, other=0.0)
    d_n = tl.load(dt_ptr + b * s_db + e * s_de, mask=m_n, other=0.0)
    z_n = tl.load(z_ptr + b * s_zb + e * s_ze, mask=m_n & has_z, other=0.0)
    if VAR_B:
        Bnr, Bni = _load_bc(B_ptr, b, g, e, n, 0, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask, n_mask & (L > 0),
                            True, B_IM)
    if VAR_C:
        Cnr, Cni = _load_bc(C_ptr, b, g, e, n, 0, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, en_mask, n_mask & (L > 0),
                            True, C_IM)
    for t in range(0, L):
        if store_ck:
            if t % CK == 0:
                ck = ((b * E + e[:, None]) * NCK + t // CK) * (NC * N) + n[None, :]
                tl.store(ck_ptr + ck, hr, mask=en_mask)
                if CPLX:
                    tl.store(ck_ptr + ck + N, hi, mask=en_mask)
        u = u_n.to(tl.float32)
        raw = d_n.to(tl.float32) + dtb
        zz = z_n.to(tl.float32)
        Br, Bi = Bfr, Bfi
        if VAR_B:
            Br, Bi = Bnr, Bni
        Cr, Ci = Cfr, Cfi
        if VAR_C:
            Cr, Ci = Cnr, Cni
        tn = t + 1
        m_n = e_mask & (tn < L)
        u_n = tl.load(u_ptr + b * s_ub + e * s_ue + tn * s_ul, mask=m_n, other=0.0)
        d_n = tl.load(dt_ptr + b * s_db + e * s_de + tn * s_dl, mask=m_n, other=0.0)
        z_n = tl.load(z_ptr + b * s_zb + e * s_ze + tn * s_zl, mask=m_n & has_z, other=0.0)
        if VAR_B:
            Bnr, Bni = _load_bc(B_ptr, b, g, e, n, tn, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask,
                                n_mask & (tn < L), True, B_IM)
        if VAR_C:
            Cnr, Cni = _load_bc(C_ptr, b, g, e, n, tn, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, en_mask,
                                n_mask & (tn < L), True, C_IM)
        dt = tl.where(e_mask, tl.where(softplus, _softplus(raw), raw), 0.0)
        ar, ai = _decay(dt, Ar, Ai, CPLX)
        x = (dt * u)[:, None]
        if CPLX:
            hr, hi = ar * hr - ai * hi + x * Br, ar * hi + ai * hr + x * Bi
            y = 2.0 * tl.sum(hr * Cr - hi * Ci, axis=1)
        else:
            hr = ar * hr + x * Br
            y = tl.sum(hr * Cr, axis=1)
        y += Dv * u
        y = tl.where(has_z, y * zz * tl.sigmoid(zz), y)
        tl.store(y_ptr + b * s_yb + e * s_ye + t * s_yl, y.to(y_ptr.dtype.element_ty), mask=e_mask)
    tl.store(hT_ptr + st, hr, mask=en_mask)
    if CPLX:
        tl.store(hT_ptr + st + N, hi, mask=en_mask)


# ---------------------------------------------------------------- backward


@triton.jit(do_not_specialize=_SIZES + _STRIDES + _BWD_STRIDES + ["FLAGS"])
def _gen_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, dy_ptr, ck_ptr, dT_ptr, scr_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddtb_ptr, dh0_ptr,
    E, L, EG, NEB, NCK,
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an, s_aim,
    s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim,
    s_zb, s_ze, s_zl, s_gb, s_ge, s_gl, s_xb, s_xe, s_xl, s_qb, s_qe, s_ql, s_wb, s_we, s_wl, FLAGS,
    N: tl.constexpr, NP: tl.constexpr, BE: tl.constexpr, CK: tl.constexpr, NC: tl.constexpr,
    CPLX: tl.constexpr, VAR_B: tl.constexpr, VAR_C: tl.constexpr, B_IM: tl.constexpr, C_IM: tl.constexpr,
):
    """One program per forward program. dy: the output's gradient (strides s_g*); du, dΔ, dz written with
    strides s_x*, s_q*, s_w*. dA, fixed dB / dC: per batch row (B, E, NC, N); dD, dΔ-bias: (B, E); input-dependent
    dB / dC: float32 buffers shaped like B / C (strides of B / C), added atomically. FLAGS (runtime bits):
    1 softplus, 2 z given, 4 final-state gradient given, 8 write the initial state's gradient."""
    softplus = (FLAGS & 1) != 0
    has_z = (FLAGS & 2) != 0
    has_dT = (FLAGS & 4) != 0
    need_dh0 = (FLAGS & 8) != 0
    b, g, e, e_mask, n, n_mask, en_mask, Ar, Ai, Bfr, Bfi, Cfr, Cfi, dtb, Dv = _program_setup(
        A_ptr, B_ptr, C_ptr, D_ptr, dtb_ptr, E, EG, NEB, s_ae, s_an, s_aim,
        s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, N, NP, BE, CPLX, B_IM, C_IM)
    K = 2.0 if CPLX else 1.0
    st = (b * E + e[:, None]) * (NC * N) + n[None, :]  # plane 0 of (B, E, NC, N)
    # gradient of the final state: the adjoint's start
    cr = tl.load(dT_ptr + st, mask=en_mask & has_dT, other=0.0)
    if CPLX:
        ci = tl.load(dT_ptr + st + N, mask=en_mask & has_dT, other=0.0)
    else:
        ci = cr * 0.0
    dAr = tl.zeros([BE, NP], tl.float32)
    dAi = tl.zeros([BE, NP], tl.float32)
    dBr = tl.zeros([BE, NP], tl.float32)
    dBi = tl.zeros([BE, NP], tl.float32)
    dCr = tl.zeros([BE, NP], tl.float32)
    dCi = tl.zeros([BE, NP], tl.float32)
    dD = tl.zeros([BE], tl.float32)
    ddtb = tl.zeros([BE], tl.float32)
    scr = scr_ptr + tl.program_id(0).to(tl.int64) * (CK * 2 * BE * NP) + tl.arange(0, BE)[:, None] * NP + n[None, :]
    # The adjoint walks t = NCK·CK - 1 down to 0 (steps past L are masked: Δ = 0, dy = 0 make them identities).
    # Its per-step inputs are prefetched one step ahead, across the recomputation of the next interval.
    t = NCK * CK - 1
    m_n = e_mask & (t < L)
    u_n = tl.load(u_ptr + b * s_ub + e * s_ue + t * s_ul, mask=m_n, other=0.0)
    d_n = tl.load(dt_ptr + b * s_db + e * s_de + t * s_dl, mask=m_n, other=0.0)
    z_n = tl.load(z_ptr + b * s_zb + e * s_ze + t * s_zl, mask=m_n & has_z, other=0.0)
    g_n = tl.load(dy_ptr + b * s_gb + e * s_ge + t * s_gl, mask=m_n, other=0.0)
    if VAR_B:
        Bnr, Bni = _load_bc(B_ptr, b, g, e, n, t, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask, n_mask & (t < L),
                            True, B_IM)
    if VAR_C:
        Cnr, Cni = _load_bc(C_ptr, b, g, e, n, t, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, en_mask, n_mask & (t < L),
                            True, C_IM)
    for ci_rev in range(0, NCK):
        c = NCK - 1 - ci_rev
        t0 = c * CK
        ck = ((b * E + e[:, None]) * NCK + c) * (NC * N) + n[None, :]
        h0r = tl.load(ck_ptr + ck, mask=en_mask, other=0.0)
        if CPLX:
            h0i = tl.load(ck_ptr + ck + N, mask=en_mask, other=0.0)
        else:
            h0i = h0r * 0.0
        # recompute the interval's states into the scratch (the state after step t0 + s in slot s)
        hr = h0r
        hi = h0i
        for s in range(0, CK):
            t = t0 + s
            u, raw, dt = _step_inputs(u_ptr, dt_ptr, dtb, b, e, t, s_ub, s_ue, s_ul, s_db, s_de, s_dl,
                                      e_mask & (t < L), softplus)
            Br, Bi = Bfr, Bfi
            if VAR_B:
                Br, Bi = _load_bc(B_ptr, b, g, e, n, t, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask,
                                  n_mask & (t < L), True, B_IM)
            ar, ai = _decay(dt, Ar, Ai, CPLX)
            x = (dt * u)[:, None]
            if CPLX:
                hr, hi = ar * hr - ai * hi + x * Br, ar * hi + ai * hr + x * Bi
            else:
                hr = ar * hr + x * Br
            tl.store(scr + s * (2 * BE * NP), hr)
            if CPLX:
                tl.store(scr + s * (2 * BE * NP) + BE * NP, hi)
        tl.debug_barrier()
        # adjoint through the interval, last step first; (hr, hi) is the state after step t
        for s_rev in range(0, CK):
            s = CK - 1 - s_rev
            t = t0 + s
            valid = e_mask & (t < L)
            prev = s > 0
            pr = tl.where(prev, tl.load(scr + (s - 1) * (2 * BE * NP), mask=(n < NP)[None, :] & prev, other=0.0),
                          h0r)
            if CPLX:
                pi = tl.where(prev, tl.load(scr + (s - 1) * (2 * BE * NP) + BE * NP,
                                            mask=(n < NP)[None, :] & prev, other=0.0), h0i)
            else:
                pi = pr * 0.0
            u = u_n.to(tl.float32)
            raw = d_n.to(tl.float32) + dtb
            zz = z_n.to(tl.float32)
            dout = g_n.to(tl.float32)
            Br, Bi = Bfr, Bfi
            if VAR_B:
                Br, Bi = Bnr, Bni
            Cr, Ci = Cfr, Cfi
            if VAR_C:
                Cr, Ci = Cnr, Cni
            tp = t - 1
            m_n = e_mask & (tp >= 0) & (tp < L)
            u_n = tl.load(u_ptr + b * s_ub + e * s_ue + tp * s_ul, mask=m_n, other=0.0)
            d_n = tl.load(dt_ptr + b * s_db + e * s_de + tp * s_dl, mask=m_n, other=0.0)
            z_n = tl.load(z_ptr + b * s_zb + e * s_ze + tp * s_zl, mask=m_n & has_z, other=0.0)
            g_n = tl.load(dy_ptr + b * s_gb + e * s_ge + tp * s_gl, mask=m_n, other=0.0)
            if VAR_B:
                Bnr, Bni = _load_bc(B_ptr, b, g, e, n, tp, s_Bb, s_Bg, s_Be, s_Bn, s_Bt, s_Bim, en_mask,
                                    n_mask & (tp >= 0) & (tp < L), True, B_IM)
            if VAR_C:
                Cnr, Cni = _load_bc(C_ptr, b, g, e, n, tp, s_Cb, s_Cg, s_Ce, s_Cn, s_Ct, s_Cim, en_mask,
                                    n_mask & (tp >= 0) & (tp < L), True, C_IM)
            dt = tl.where(valid, tl.where(softplus, _softplus(raw), raw), 0.0)
            ar, ai = _decay(dt, Ar, Ai, CPLX)
            sig = tl.sigmoid(zz)
            pre = K * tl.sum(hr * Cr - hi * Ci, axis=1) + Dv * u
            dz = dout * pre * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_ptr + b * s_wb + e * s_we + t * s_wl, dz.to(dz_ptr.dtype.element_ty), mask=valid & has_z)
            dy = tl.where(has_z, dout * zz * sig, dout)
            kdy = (K * dy)[:, None]
            gr = cr + kdy * Cr
            gi = ci - kdy * Ci
            x = dt * u
            # C_t, B_t gradients
            gCr = kdy * hr
            gCi = -kdy * hi
            gBr = x[:, None] * gr
            gBi = x[:, None] * gi
            if VAR_C:
                off = b * s_Cb + g * s_Cg + n * s_Cn + t * s_Ct
                tl.atomic_add(dC_ptr + off, tl.sum(gCr, axis=0), mask=n_mask & (t < L), sem="relaxed")
                if C_IM:
                    tl.atomic_add(dC_ptr + off + s_Cim, tl.sum(gCi, axis=0), mask=n_mask & (t < L), sem="relaxed")
            else:
                dCr += gCr
                dCi += gCi
            if VAR_B:
                off = b * s_Bb + g * s_Bg + n * s_Bn + t * s_Bt
                tl.atomic_add(dB_ptr + off, tl.sum(gBr, axis=0), mask=n_mask & (t < L), sem="relaxed")
                if B_IM:
                    tl.atomic_add(dB_ptr + off + s_Bim, tl.sum(gBi, axis=0), mask=n_mask & (t < L), sem="relaxed")
            else:
                dBr += gBr
                dBi += gBi
            dx = tl.sum(gr * Br + gi * Bi, axis=1)  # d(Δ u)
            # decay: w = Δ A, G_w = conj(a h_prev) g
            qr = ar * pr - ai * pi
            qi = ar * pi + ai * pr
            wr = qr * gr + qi * gi
            wi = qr * gi - qi * gr
            ddt = u * dx + tl.sum(wr * Ar + wi * Ai, axis=1)
            dAr += dt[:, None] * wr
            dAi += dt[:, None] * wi
            ddt = tl.where(softplus, ddt * tl.sigmoid(raw), ddt)
            ddt = tl.where(valid, ddt, 0.0)
            ddtb += ddt
            du = dt * dx + Dv * dy
            dD += dy * u
            tl.store(du_ptr + b * s_xb + e * s_xe + t * s_xl, du.to(du_ptr.dtype.element_ty), mask=valid)
            tl.store(ddt_ptr + b * s_qb + e * s_qe + t * s_ql, ddt.to(ddt_ptr.dtype.element_ty), mask=valid)
            # carry conj(a_t) g_t to the previous step
            cr = ar * gr + ai * gi
            ci = ar * gi - ai * gr
            hr = pr
            hi = pi
        tl.debug_barrier()
    tl.store(dA_ptr + st, dAr, mask=en_mask)
    if CPLX:
        tl.store(dA_ptr + st + N, dAi, mask=en_mask)
    if not VAR_B:
        tl.store(dB_ptr + st, dBr, mask=en_mask)
        if B_IM:
            tl.store(dB_ptr + st + N, dBi, mask=en_mask)
    if not VAR_C:
        tl.store(dC_ptr + st, dCr, mask=en_mask)
        if C_IM:
            tl.store(dC_ptr + st + N, dCi, mask=en_mask)
    tl.store(dD_ptr + b * E + e, dD, mask=e_mask)
    tl.store(ddtb_ptr + b * E + e, ddtb, mask=e_mask)
    tl.store(dh0_ptr + st, cr, mask=en_mask & need_dh0)
    if CPLX:
        tl.store(dh0_ptr + st + N, ci, mask=en_mask & need_dh0)


# ---------------------------------------------------------------- launchers


def _bc_view(M: torch.Tensor, complex_a: bool):
    """(real tensor, strides (b, g, e, n, t, imaginary), input-dependent?, has an imaginary part?) of a B / C:
    input-dependent ones as contiguous (B, G, N, ·) with the time stride t and the imaginary part at +imaginary
    elements (a float32 buffer of the real tensor's shape has the same strides)."""
    if M.dim() == 2:  # fixed (E, N)
        if M.is_complex():
            R = torch.view_as_real(M.resolve_conj())
            return R, (0, 0, R.stride(0), R.stride(1), 0, R.stride(2)), False, True
        return M, (0, 0, M.stride(0), M.stride(1), 0, 0), False, False
    G = (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()  # contiguous: its gradient buffer has its strides
    if G.is_complex():  # (B, G, N, L) complex -> (B, G, N, L, 2) real
        R = torch.view_as_real(G.resolve_conj())
        return R, (R.stride(0), R.stride(1), 0, R.stride(2), R.stride(3), R.stride(4)), True, True
    if complex_a:  # mamba_ssm's (B, G, N, 2L): (real, imaginary) pairs along time
        return G, (G.stride(0), G.stride(1), 0, G.stride(2), 2 * G.stride(3), G.stride(3)), True, True
    return G, (G.stride(0), G.stride(1), 0, G.stride(2), G.stride(3), 0), True, False


def _planes(h: torch.Tensor, complex_a: bool) -> torch.Tensor:
    """(B, E, N) state (complex64 or float) -> (B, E, NC, N) contiguous float32 planes."""
    if complex_a:
        return torch.view_as_real(h.to(torch.complex64).resolve_conj()).movedim(-1, 2).contiguous()
    return h.to(torch.float32).unsqueeze(2).contiguous()


def _unplanes(p: torch.Tensor, complex_a: bool) -> torch.Tensor:
    """(B, E, NC, N) float32 planes -> (B, E, N) float32 / complex64."""
    return torch.complex(p[:, :, 0], p[:, :, 1]) if complex_a else p[:, :, 0]


def _config(batch: int, channels: int, groups: int, n: int):
    """(channels per program BE, padded N, warps). Up to ~512 (channel, state) pairs per program; fewer channels
    per program (down to 4) while the programs would not give each of ~132 SMs four of them (long sequences at
    small batch × channels: each program walks all of time, so programs are the only parallelism)."""
    np2 = triton.next_power_of_2(n)
    eg = max(1, channels // groups)
    be = min(triton.next_power_of_2(eg), max(1, 512 // np2))
    while be > 4 and batch * groups * triton.cdiv(eg, be) < 4 * 132:
        be //= 2
    return be, np2, max(1, min(8, be * np2 // 64))


def _flags(*bits) -> int:
    """The kernels' runtime FLAGS word from its bits, lowest first."""
    return sum(1 << i for i, bit in enumerate(bits) if bit)


def _groups_of(B: torch.Tensor, C: torch.Tensor) -> int:
    return B.shape[1] if B.dim() == 4 else C.shape[1] if C.dim() == 4 else 1


def _general_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, store_checkpoints):
    """Launch the forward. Returns (y (B, E, L) in u's dtype, final state planes (B, E, NC, N) float32,
    checkpoints (B, E, ceil(L/CK), NC, N) float32 or None)."""
    batch, channels, length = u.shape
    n = A.shape[1]
    cplx = A.is_complex()
    nc = 2 if cplx else 1
    groups = _groups_of(B, C)
    eg = channels // groups
    BE, NP, warps = _config(batch, channels, groups, n)
    neb = triton.cdiv(eg, BE)
    nck = max(1, triton.cdiv(length, _CK))
    dev = u.device
    y = torch.empty_like(u)
    hT = torch.empty(batch, channels, nc, n, device=dev, dtype=torch.float32)
    h0 = None if initial_state is None else _planes(initial_state, cplx)
    ck = torch.empty(batch, channels, nck, nc, n, device=dev, dtype=torch.float32) if store_checkpoints else None
    if length == 0:
        hT.copy_(h0 if h0 is not None else torch.zeros_like(hT))
        return y, hT, ck
    Ar = torch.view_as_real(A.resolve_conj()) if cplx else A
    a_strides = (Ar.stride(0), Ar.stride(1), Ar.stride(2) if cplx else 0)
    Bv, sB, varB, imB = _bc_view(B, cplx)
    Cv, sC, varC, imC = _bc_view(C, cplx)
    z_ = z if z is not None else u
    zeros = torch.zeros(channels, device=dev, dtype=torch.float32)  # D / Δ bias when absent
    flags = _flags(delta_softplus, z is not None, h0 is not None, store_checkpoints)
    _gen_fwd_kernel[(batch * groups * neb,)](
        u, delta, Ar, Bv, Cv, D if D is not None else zeros, z_, delta_bias if delta_bias is not None else zeros,
        h0 if h0 is not None else hT, y, hT, ck if ck is not None else hT,
        channels, length, eg, neb, nck,
        *u.stride(), *delta.stride(), *a_strides, *sB, *sC, *z_.stride(), *y.stride(), flags,
        N=n, NP=NP, BE=BE, CK=_CK, NC=nc, CPLX=cplx, VAR_B=varB, VAR_C=varC, B_IM=imB, C_IM=imC, num_warps=warps,
    )
    return y, hT, ck


def _bc_grad(buf: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Float32 gradient buffer laid out as ``_bc_view``'s real view of M -> the gradient in M's form."""
    if M.dim() == 2:  # fixed: (B, E, NC, N) per batch row
        g = buf.sum(0)
        return torch.complex(g[:, 0], g[:, 1]).to(M.dtype) if M.is_complex() else g[:, 0].to(M.dtype)
    g = buf if M.dim() == 4 else buf[:, 0]
    return torch.view_as_complex(g).to(M.dtype) if M.is_complex() else g.to(M.dtype)


def _general_bwd(dy, d_final, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ck, need_dh0):
    """Launch the backward. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, d_initial_state); entries for
    absent inputs are None; d_final: the final state's gradient (B, E, N) or None."""
    batch, channels, length = u.shape
    n = A.shape[1]
    cplx = A.is_complex()
    nc = 2 if cplx else 1
    groups = _groups_of(B, C)
    eg = channels // groups
    BE, NP, warps = _config(batch, channels, groups, n)
    neb = triton.cdiv(eg, BE)
    nck = max(1, triton.cdiv(length, _CK))
    dev, f32 = u.device, torch.float32
    du = torch.zeros_like(u)
    ddelta = torch.zeros_like(delta)
    dz = torch.zeros_like(z) if z is not None else None
    rows = torch.zeros(batch, channels, nc, n, device=dev, dtype=f32)  # per-row buffers, (B, E, NC, N)
    dA = torch.zeros_like(rows)
    Bv, sB, varB, imB = _bc_view(B, cplx)
    Cv, sC, varC, imC = _bc_view(C, cplx)
    dBbuf = torch.zeros(Bv.shape, device=dev, dtype=f32) if varB else torch.zeros_like(rows)
    dCbuf = torch.zeros(Cv.shape, device=dev, dtype=f32) if varC else torch.zeros_like(rows)
    dD = torch.zeros(batch, channels, device=dev, dtype=f32)  # per-row sums, (B, E)
    ddtb = torch.zeros(batch, channels, device=dev, dtype=f32)
    dh0 = torch.zeros_like(rows) if need_dh0 else None
    dT = None if d_final is None else _planes(d_final, cplx)
    if length > 0:
        Ar = torch.view_as_real(A.resolve_conj()) if cplx else A
        a_strides = (Ar.stride(0), Ar.stride(1), Ar.stride(2) if cplx else 0)
        z_, dz_ = (z, dz) if z is not None else (u, du)
        programs = batch * groups * neb
        scratch = torch.empty(programs * _CK * 2 * BE * NP, device=dev, dtype=f32)
        zeros = torch.zeros(channels, device=dev, dtype=f32)  # D / Δ bias when absent
        _gen_bwd_kernel[(programs,)](
            u, delta, Ar, Bv, Cv, D if D is not None else zeros, z_,
            delta_bias if delta_bias is not None else zeros, dy, ck, dT if dT is not None else rows, scratch,
            du, ddelta, dz_, dA, dBbuf, dCbuf, dD, ddtb, dh0 if dh0 is not None else rows,
            channels, length, eg, neb, nck,
            *u.stride(), *delta.stride(), *a_strides, *sB, *sC, *z_.stride(), *dy.stride(), *du.stride(),
            *ddelta.stride(), *dz_.stride(), _flags(delta_softplus, z is not None, dT is not None, need_dh0),
            N=n, NP=NP, BE=BE, CK=_CK, NC=nc, CPLX=cplx, VAR_B=varB, VAR_C=varC, B_IM=imB, C_IM=imC, num_warps=warps,
        )
    elif need_dh0 and dT is not None:
        dh0.copy_(dT)
    dA_ = torch.complex(dA.sum(0)[:, 0], dA.sum(0)[:, 1]) if cplx else dA.sum(0)[:, 0]
    return (du, ddelta, dA_.to(A.dtype), _bc_grad(dBbuf, B), _bc_grad(dCbuf, C),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else ddtb.sum(0).to(delta_bias.dtype),
            None if dh0 is None else _unplanes(dh0, cplx))


class GeneralScanFn(torch.autograd.Function):
    """Autograd wrapper: the forward keeps the state every CK steps; the backward recomputes from them."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        y, hT, ck = _general_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ck)
        ctx.delta_softplus = delta_softplus
        ctx.h0_dtype = None if initial_state is None else initial_state.dtype
        return y, _unplanes(hT, A.is_complex())

    @staticmethod
    def backward(ctx, dy, dhT):
        u, delta, A, B, C, D, z, delta_bias, ck = ctx.saved_tensors
        if dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, ddtb, dh0 = _general_bwd(
            dy, dhT, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ck, ctx.h0_dtype is not None,
        )
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, ddtb, None, dh0


def selective_scan_general_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Mamba-1 selective scan in Triton for complex A and/or fixed B / C (also correct, but slower than
    ``mamba1_scan``, for real A with input-dependent B / C); contract of ``selective_scan_ref``.

    Args:
        u, delta, z: (B, E, L), any strides; A: (E, N) float32 or complex64; B, C: (B, N, L), (B, G, N, L) or
        (E, N), complex / mamba_ssm's interleaved (B, [G,] N, 2L) with a complex A (see the module docstring);
        D, delta_bias: (E,); initial_state: (B, E, N) float32 / complex64.

    Returns:
        y: (B, E, L) in u's dtype, or (y, final_state (B, E, N) float32 / complex64).
    """
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    if needs_graph:
        y, hT = GeneralScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    else:
        y, hT, _ = _general_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, False)
        hT = _unplanes(hT, A.is_complex())
    return (y, hT) if return_final_state else y


__all__ = ["GeneralScanFn", "selective_scan_general_triton"]
