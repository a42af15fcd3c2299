"""The wide-stage generation step for many batch rows: each program takes a tile of rows, products as ``tl.dot``.

The split step (``block_step_split``) gives each program one batch row and one slice of E. At batch 64 every row
then reads every weight of the block (D = 256: 64 x 1.7 MB of L2 reads per block), and the stage is bound by L2.
Here a program takes a tile of ``BB`` rows and a slice of ``BE`` channels, grid (S, T) with T = ceil(B / BB), with
the split step's two launches per block (capitals are (BB, ·) tiles of rows):

    in   (block i)  H = H_prev + Σ_s O_part[s] (+ bias), or the stage input X (+ up) for i = 0       (BB, D)
                    (U, Z) = Norm(H) @ in_proj[slice rows]^T;  conv over the slice;  Cx = SiLU(...)   (BB, BE)
                    X_part[s] = Cx @ x_proj[:, slice]^T                                             (BB, R + 2N)
    out  (block i)  (δ, Bv, Cv) = Σ_s X_part[s];  Δ = softplus(δ @ dt_proj[slice]^T + bias)           (BB, BE)
                    ssm ← exp(Δ A) ⊙ ssm + (Δ Cx) ⊗ Bv over chunks of N;  Y = (ssm Cv + D Cx) ⊙ SiLU(Z)
                    O_part[s] = Y @ out_proj[:, slice]^T                                            (BB, D)

Each weight tile is read once per tile of rows instead of once per row. The partial sums are reduced once per row
tile, by the last program of the tile to arrive at the end of each launch (an arrival counter per tile and
phase): ``in``'s last program writes Σ_s X_part to the (B, R + 2N) scratch that ``out`` reads, ``out``'s last
program adds Σ_s O_part (+ bias) to the block-input rows H (B, D) in place, and after the last block finishes the
stage for its rows (residual, output, pool buffers). Those reductions run over chunks of columns, the next chunk
requested before the current one is summed; in_proj and out_proj run as loops over chunks of D (``BK``), so that
no weight tile is staged whole in registers. The products are ``tl.dot`` in IEEE float32 by default
(``input_precision="ieee"``: the sums differ from the reference only in their order); the state update runs over
chunks of N, the next chunk's tiles requested before the current one is written. ``BB`` rows make a tile (at
least 16, ``tl.dot``'s smallest M) of which ``RB`` are used: fewer rows per program means more programs. The
split step's launcher (``block_step_split.mamba1_stage_step_split_triton``, from ``rows_min`` rows on) runs it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import softplus as _softplus
from .block_step import _p2, _shift_pools, _silu

# Defaults (kernels/NOTES.md, "Version 4"): 16 rows and 32 channels per program (D = 256: 16 slices, D = 128:
# 8), chunks of 64 columns of D, 8 warps, the state in chunks of 16.
_BB, _BE, _BK, _WARPS, _CHUNK_N, _PRECISION = 16, 32, 64, 8, 16, "ieee"
_REDUCE_ELEMENTS = 8192  # (S, BB, columns) tile of one reduction chunk


def rows_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, overrides: dict) -> dict:
    """Block sizes of the kernel: RB rows per program in tiles of BB >= 16 (``tl.dot``'s smallest M), BE >= 16
    channels per slice, S = ceil(E / BE) slices, BK columns of
    D per chunk, BN states per chunk, CC columns per reduction chunk (an (S, BB, CC) tile of about ``reduce``
    elements), warps. ``overrides`` may set "rows_be", "rows_warps", "rows_rb", "rows_bk", "rows_reduce",
    "chunk_n", "precision"."""
    block_d = max(16, _p2(d_model))
    block_e = min(max(16, _p2(d_inner)), max(16, overrides.get("rows_be", _BE)))
    slices = triton.cdiv(d_inner, block_e)
    rows = overrides.get("rows_rb", _BB)
    block_n = max(16, _p2(d_state))
    return {"BLOCK_D": block_d, "BE": block_e, "S": slices, "BLOCK_S": _p2(slices), "RB": rows,
            "BB": max(16, _p2(rows)), "BLOCK_R": max(16, _p2(dt_rank)), "BLOCK_N": block_n,
            "BN": min(block_n, overrides.get("chunk_n", _CHUNK_N)), "BK": min(block_d, overrides.get("rows_bk", _BK)),
            "CC": max(16, overrides.get("rows_reduce", _REDUCE_ELEMENTS) // (_p2(slices) * max(16, _p2(rows)))),
            "BLOCK_W": _p2(d_conv - 1),
            "PRECISION": overrides.get("precision", _PRECISION), "num_warps": overrides.get("rows_warps", _WARPS)}


@triton.jit
def _slab_chunk(part_ptr, rows, m_b, n_rows, c0, C: tl.constexpr, S: tl.constexpr, BLOCK_S: tl.constexpr,
                CC: tl.constexpr):
    """The (BLOCK_S, BB, CC) tile of an (S, B, C) float32 partial-sum scratch at columns c0 ... c0 + CC - 1 (zero
    outside), read past L1 (other programs of this launch wrote it)."""
    ss = tl.arange(0, BLOCK_S)
    cc = c0 + tl.arange(0, CC)
    off = (ss[:, None, None] * n_rows + rows[None, :, None]) * C + cc[None, None, :]
    mask = (ss < S)[:, None, None] & m_b[None, :, None] & (cc < C)[None, None, :]
    return tl.load(part_ptr + off, mask=mask, other=0.0, cache_modifier=".cg")


@triton.jit
def _reduce_slabs(part_ptr, dst_ptr, bias_ptr, rows, m_b, n_rows, C: tl.constexpr, S: tl.constexpr,
                  BLOCK_S: tl.constexpr, CC: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """dst[rows, :] = Σ_s part[s, rows, :] (ACCUMULATE: dst + Σ (+ bias), rounded to dst's dtype) over chunks of
    CC columns, the next chunk requested before the current one is summed. The sum's order does not depend on
    which program runs it."""
    nxt = _slab_chunk(part_ptr, rows, m_b, n_rows, 0, C, S, BLOCK_S, CC)
    for c0 in range(0, C, CC):
        cur = nxt
        nxt = _slab_chunk(part_ptr, rows, m_b, n_rows, c0 + CC, C, S, BLOCK_S, CC)
        cc = c0 + tl.arange(0, CC)
        m = m_b[:, None] & (cc < C)[None, :]
        dst = dst_ptr + rows[:, None] * C + cc[None, :]
        v = tl.sum(cur, axis=0)
        if ACCUMULATE:
            v += tl.load(dst, mask=m, other=0.0, cache_modifier=".cg").to(tl.float32)
            if HAS_BIAS:
                v += tl.load(bias_ptr + cc, mask=cc < C, other=0.0).to(tl.float32)[None, :]
        tl.store(dst, v.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def _input_cols(FIRST: tl.constexpr, rows, cols, m, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, h_ptr,
                D: tl.constexpr, UP: tl.constexpr):
    """(BB, len(cols)) float32 input rows of the block at columns ``cols``, rounded to the activations' dtype: the
    stage input x (+ up) for the first block, else the block-input scratch H."""
    if FIRST:
        v = tl.load(x_ptr + rows[:, None] * s_xb + cols[None, :] * s_xd, mask=m, other=0.0).to(tl.float32)
        if UP:
            v += tl.load(up_ptr + rows[:, None] * s_ub + cols[None, :] * s_ud, mask=m, other=0.0).to(tl.float32)
        v = v.to(h_ptr.dtype.element_ty).to(tl.float32)
    else:
        v = tl.load(h_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
    return v


@triton.jit
def _phase_in(FIRST: tl.constexpr, i, rows, m_b, s, x_ptr, up_ptr, h_ptr, cz_ptr, xpart_ptr, conv_ptr,
              norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr,
              eps, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, n_rows,
              D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
              BB: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, PRECISION: tl.constexpr,
              UP: tl.constexpr, RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr,
              HAS_IN_B: tl.constexpr, HAS_CONV_B: tl.constexpr):
    """Block i, slice s, the program's rows: norm statistics, the slice's in_proj rows over chunks of D, conv,
    x_proj partial sums (to x_part[s, rows])."""
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    m_bd = m_b[:, None] & m_d[None, :]
    e = s * BE + tl.arange(0, BE)
    m_e = e < E
    m_be = m_b[:, None] & m_e[None, :]
    # ---- conv state (BB, BE, taps 0..W-2) and weights: loads that depend on nothing computed
    offs_w = tl.arange(0, BLOCK_W)
    m_w = offs_w < W - 1
    m_bew = m_be[:, :, None] & m_w[None, None, :]
    c_row = conv_ptr + i * s_ci + rows[:, None, None] * s_cb + e[None, :, None] * s_ce
    old = tl.load(c_row + offs_w[None, None, :] * s_cw, mask=m_bew, other=0.0).to(tl.float32)
    nxt = tl.load(c_row + (offs_w + 1)[None, None, :] * s_cw, mask=m_bew & (offs_w < W - 2)[None, None, :], other=0.0)
    cw = tl.load(conv_w_ptr + i * (E * W) + e[:, None] * W + offs_w[None, :], mask=m_e[:, None] & m_w[None, :],
                 other=0.0).to(tl.float32)
    cw_last = tl.load(conv_w_ptr + i * (E * W) + e * W + (W - 1), mask=m_e, other=0.0).to(tl.float32)

    # ---- norm statistics of the input rows; the first block's input rows kept in H
    v = _input_cols(FIRST, rows, offs_d, m_bd, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, h_ptr, D, UP)
    if FIRST:
        if s == 0:
            tl.store(h_ptr + rows[:, None] * D + offs_d[None, :], v.to(h_ptr.dtype.element_ty), mask=m_bd)
    if RMSNORM:
        mean = tl.zeros([BB], tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / D + eps)
    else:
        mean = tl.sum(v, axis=1) / D
        xc = tl.where(m_bd, v - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)

    # ---- in_proj rows of the slice over chunks of D: (BB, BK) normalised inputs @ (BK, BE) weights
    in_w = in_w_ptr + i * (2 * E * D)
    u = tl.zeros([BB, BE], tl.float32)
    z = tl.zeros([BB, BE], tl.float32)
    for k0 in range(0, BLOCK_D, BK):
        kk = k0 + tl.arange(0, BK)
        m_k = kk < D
        m_bk = m_b[:, None] & m_k[None, :]
        w_off = kk[:, None] + e[None, :] * D
        m_ke = m_k[:, None] & m_e[None, :]
        w_u = tl.load(in_w + w_off, mask=m_ke, other=0.0).to(tl.float32)
        w_z = tl.load(in_w + E * D + w_off, mask=m_ke, other=0.0).to(tl.float32)
        hk = (_input_cols(FIRST, rows, kk, m_bk, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, h_ptr, D, UP)
              - mean[:, None]) * rstd[:, None]
        if HAS_NORM_W:
            hk = hk * tl.load(norm_w_ptr + i * D + kk, mask=m_k, other=0.0).to(tl.float32)[None, :]
        if HAS_NORM_B:
            hk = hk + tl.load(norm_b_ptr + i * D + kk, mask=m_k, other=0.0).to(tl.float32)[None, :]
        hk = tl.where(m_bk, hk, 0.0)
        u = tl.dot(hk, w_u, u, input_precision=PRECISION)
        z = tl.dot(hk, w_z, z, input_precision=PRECISION)
    if HAS_IN_B:
        u += tl.load(in_b_ptr + i * (2 * E) + e, mask=m_e, other=0.0).to(tl.float32)[None, :]
        z += tl.load(in_b_ptr + i * (2 * E) + E + e, mask=m_e, other=0.0).to(tl.float32)[None, :]

    # ---- causal conv over [conv_state, u] and the state shift, in place
    u_r = u.to(conv_ptr.dtype.element_ty)  # the value the state will hold
    pre = tl.sum(cw[None, :, :] * old, axis=2) + cw_last[None, :] * u_r.to(tl.float32)
    if HAS_CONV_B:
        pre += tl.load(conv_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)[None, :]
    c = tl.where(m_be, _silu(pre), 0.0)  # (BB, BE)

    # ---- x_proj partial sums over the slice: (BB, R + 2N) at x_part[s, rows]
    xp_w = xp_w_ptr + i * ((R + 2 * N) * E)
    rr = tl.arange(0, BLOCK_R)
    m_r = rr < R
    nn = tl.arange(0, BLOCK_N)
    m_n = nn < N
    m_en = m_e[:, None] & m_n[None, :]
    w_r = tl.load(xp_w + rr[None, :] * E + e[:, None], mask=m_e[:, None] & m_r[None, :], other=0.0).to(tl.float32)
    w_b = tl.load(xp_w + (R + nn)[None, :] * E + e[:, None], mask=m_en, other=0.0).to(tl.float32)
    w_c = tl.load(xp_w + (R + N + nn)[None, :] * E + e[:, None], mask=m_en, other=0.0).to(tl.float32)
    dst = xpart_ptr + (s * n_rows + rows[:, None]) * (R + 2 * N)
    tl.store(dst + rr[None, :], tl.dot(c, w_r, input_precision=PRECISION), mask=m_b[:, None] & m_r[None, :])
    m_bn = m_b[:, None] & m_n[None, :]
    tl.store(dst + R + nn[None, :], tl.dot(c, w_b, input_precision=PRECISION), mask=m_bn)
    tl.store(dst + R + N + nn[None, :], tl.dot(c, w_c, input_precision=PRECISION), mask=m_bn)
    cz = cz_ptr + rows[:, None] * (2 * E) + e[None, :]
    tl.store(cz, c, mask=m_be)
    tl.store(cz + E, z, mask=m_be)
    tl.debug_barrier()  # every thread has read the old conv state before any thread overwrites it
    tl.store(c_row + offs_w[None, None, :] * s_cw, tl.where((offs_w == W - 2)[None, None, :], u_r[:, :, None], nxt),
             mask=m_bew)


@triton.jit
def _scan_tiles(k, h_base, s_hn, a_log, xs_ptr, rows, m_b, e, m_e, m_be, R: tl.constexpr, N: tl.constexpr,
                BN: tl.constexpr):
    """The tiles of state chunk k (states k·BN ... k·BN + BN-1): the state (BB, BE, BN) float32, A_log (BE, BN),
    and the rows' B and C values (BB, BN)."""
    nk = k * BN + tl.arange(0, BN)
    m_n = nk < N
    h = tl.load(h_base + nk[None, None, :] * s_hn, mask=m_be[:, :, None] & m_n[None, None, :], other=0.0)
    a = tl.load(a_log + e[:, None] * N + nk[None, :], mask=m_e[:, None] & m_n[None, :], other=0.0).to(tl.float32)
    m_bn = m_b[:, None] & m_n[None, :]
    xs = xs_ptr + rows[:, None] * (R + 2 * N)
    bv = tl.load(xs + R + nk[None, :], mask=m_bn, other=0.0)
    cv = tl.load(xs + R + N + nk[None, :], mask=m_bn, other=0.0)
    return h, a, bv, cv


@triton.jit
def _phase_out(i, rows, m_b, s, opart_ptr, cz_ptr, xs_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
               out_w_ptr, n_rows, s_hi, s_hb, s_he, s_hn, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr,
               N: tl.constexpr, BB: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr,
               HAS_D: tl.constexpr):
    """Block i, slice s, the program's rows: Δ, the state update and readout (chunks of N), gate, out_proj
    partial sums over chunks of D (to out_part[s, rows])."""
    e = s * BE + tl.arange(0, BE)
    m_e = e < E
    m_be = m_b[:, None] & m_e[None, :]
    rr = tl.arange(0, BLOCK_R)
    m_r = rr < R
    # ---- loads that depend on nothing computed: Δ's weights, c and z, δ, the first state chunk
    w_dt = tl.load(dt_w_ptr + i * (E * R) + e[None, :] * R + rr[:, None], mask=m_r[:, None] & m_e[None, :],
                   other=0.0).to(tl.float32)  # (BLOCK_R, BE)
    dt_b = tl.load(dt_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)
    cz = cz_ptr + rows[:, None] * (2 * E) + e[None, :]
    c = tl.load(cz, mask=m_be, other=0.0)
    z = tl.load(cz + E, mask=m_be, other=0.0)
    delta = tl.load(xs_ptr + rows[:, None] * (R + 2 * N) + rr[None, :], mask=m_b[:, None] & m_r[None, :], other=0.0)
    h_base = ssm_ptr + i * s_hi + rows[:, None, None] * s_hb + e[None, :, None] * s_he
    a_log = a_log_ptr + i * (E * N)
    h_n, a_n, bv_n, cv_n = _scan_tiles(0, h_base, s_hn, a_log, xs_ptr, rows, m_b, e, m_e, m_be, R, N, BN)

    dt = tl.dot(delta, w_dt, input_precision=PRECISION) + dt_b[None, :]
    dt = tl.where(m_be, _softplus(dt), 0.0)  # (BB, BE)
    if HAS_D:
        y = tl.load(d_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)[None, :] * c
    else:
        y = tl.zeros([BB, BE], tl.float32)
    dtc = dt * c
    # ---- the state in chunks of N, the next chunk's tiles requested before this one is written
    for k in tl.static_range(BLOCK_N // BN):
        h, a, bv, cv = h_n, a_n, bv_n, cv_n
        if k + 1 < BLOCK_N // BN:
            h_n, a_n, bv_n, cv_n = _scan_tiles(k + 1, h_base, s_hn, a_log, xs_ptr, rows, m_b, e, m_e, m_be, R, N,
                                               BN)
        h = tl.exp(dt[:, :, None] * -tl.exp(a)[None, :, :]) * h + dtc[:, :, None] * bv[:, None, :]
        y += tl.sum(h * cv[:, None, :], axis=2)
        tl.debug_barrier()  # the old chunk is read everywhere before it is overwritten
        nk = k * BN + tl.arange(0, BN)
        tl.store(h_base + nk[None, None, :] * s_hn, h, mask=m_be[:, :, None] & (nk < N)[None, None, :])
    y = tl.where(m_be, y * _silu(z), 0.0)
    # ---- out_proj partial sums over chunks of D: (BB, BE) @ (BE, BK)
    out_w = out_w_ptr + i * (D * E)
    dst = opart_ptr + (s * n_rows + rows[:, None]) * D
    for k0 in range(0, BLOCK_D, BK):
        kk = k0 + tl.arange(0, BK)
        m_k = kk < D
        w_o = tl.load(out_w + kk[None, :] * E + e[:, None], mask=m_e[:, None] & m_k[None, :], other=0.0)
        o = tl.dot(y, w_o.to(tl.float32), input_precision=PRECISION)
        tl.store(dst + kk[None, :], o, mask=m_b[:, None] & m_k[None, :])


@triton.jit
def _finish(rows, m_b, x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, h_ptr,
            s_xb, s_xd, s_ub, s_ud, s_db, s_dp, s_dd, s_vb, s_vp, s_vd,
            D: tl.constexpr, P: tl.constexpr, BLOCK_D: tl.constexpr, BK: tl.constexpr, BLOCK_P: tl.constexpr,
            UP: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr, RESIDUAL: tl.constexpr):
    """The program's rows after the last block, over chunks of BK columns: the stage output (H (+ the stage input
    (+ up))), then the pool buffers: the down window takes x, the up buffer rotates by one."""
    for k0 in range(0, BLOCK_D, BK):
        kk = k0 + tl.arange(0, BK)
        m_bk = m_b[:, None] & (kk < D)[None, :]
        o = tl.load(h_ptr + rows[:, None] * D + kk[None, :], mask=m_bk, other=0.0).to(out_ptr.dtype.element_ty)
        x0 = tl.load(x_ptr + rows[:, None] * s_xb + kk[None, :] * s_xd, mask=m_bk, other=0.0)
        if RESIDUAL:
            h0 = x0.to(tl.float32)
            if UP:
                h0 = h0 + tl.load(up_ptr + rows[:, None] * s_ub + kk[None, :] * s_ud, mask=m_bk,
                                  other=0.0).to(tl.float32)
                h0 = h0.to(out_ptr.dtype.element_ty).to(tl.float32)
            o = (o.to(tl.float32) + h0).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * D + kk[None, :], o, mask=m_bk)
        _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, kk, m_bk, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P, BLOCK_P,
                     DOWN_PUSH, UP_ROTATE)


@triton.jit(do_not_specialize=["i"])
def rows_kernel(
    x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, h_ptr, opart_ptr, cz_ptr, xpart_ptr, xs_ptr, conv_ptr, ssm_ptr,
    count_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr,
    d_ptr, out_w_ptr, out_b_ptr,
    i, eps, n_rows, n_tiles,
    s_xb, s_xd, s_ub, s_ud, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
    S: tl.constexpr, BLOCK_S: tl.constexpr, RB: tl.constexpr, BB: tl.constexpr, BLOCK_D: tl.constexpr,
    BE: tl.constexpr, BK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BN: tl.constexpr,
    CC: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
    MODE: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    UP: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr, RESIDUAL: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr,
):
    """Grid (S, T): slice s = program 0, row tile t = program 1 (rows t·RB ... t·RB + RB-1). MODE 0: block i's
    ``in`` phase, whose last program per tile sums the x_proj partials into xs; MODE 1: its ``out`` phase, whose
    last program per tile adds the out_proj partials to H (LAST: and finishes the stage). Each phase's counters
    (count[MODE, t]) are reset by that program. Scratch: partials (S, B, ·) and xs (B, R + 2N) float32, c and z
    (B, 2, E) float32, H (B, D) in the activations' dtype."""
    s = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    lane = tl.arange(0, BB)
    rows = t * RB + lane
    m_b = (lane < RB) & (rows < n_rows)
    if MODE == 0:
        _phase_in(FIRST, i, rows, m_b, s, x_ptr, up_ptr, h_ptr, cz_ptr, xpart_ptr, conv_ptr, norm_w_ptr,
                  norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, eps, s_xb, s_xd, s_ub, s_ud,
                  s_ci, s_cb, s_ce, s_cw, n_rows, D, E, R, N, W, BB, BLOCK_D, BE, BK, BLOCK_R, BLOCK_N, BLOCK_W,
                  PRECISION, UP, RMSNORM, HAS_NORM_W, HAS_NORM_B, HAS_IN_B, HAS_CONV_B)
    else:
        _phase_out(i, rows, m_b, s, opart_ptr, cz_ptr, xs_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
                   out_w_ptr, n_rows, s_hi, s_hb, s_he, s_hn, D, E, R, N, BB, BLOCK_D, BE, BK, BLOCK_R, BLOCK_N, BN,
                   PRECISION, HAS_D)
    tl.debug_barrier()  # every thread's partials are written before the arrival is counted
    counter = count_ptr + MODE * n_tiles + t
    arrived = tl.atomic_add(counter, 1)  # acq_rel: the earlier programs' partials are visible
    if arrived == S - 1:  # the tile's last program
        if MODE == 0:
            _reduce_slabs(xpart_ptr, xs_ptr, xs_ptr, rows, m_b, n_rows, R + 2 * N, S, BLOCK_S, CC, False, False)
        else:
            _reduce_slabs(opart_ptr, h_ptr, out_b_ptr + i * D, rows, m_b, n_rows, D, S, BLOCK_S, CC, True,
                          HAS_OUT_B)
            if LAST:
                tl.debug_barrier()  # H's rows are written before they are read back
                _finish(rows, m_b, x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, h_ptr, s_xb, s_xd, s_ub, s_ud,
                        s_db, s_dp, s_dd, s_vb, s_vp, s_vd, D, P, BLOCK_D, BK, BLOCK_P, UP, DOWN_PUSH, UP_ROTATE,
                        RESIDUAL)
        tl.store(counter, 0)  # every program of the tile has arrived: ready for the next launch


__all__ = ["rows_config", "rows_kernel"]
