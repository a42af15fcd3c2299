"""One generation step of a stage of Mamba-1 blocks with each block spread over many programs (wide stages).

``block_step.py`` runs a whole stage in one program per batch row: at D >= 128 that one SM streams the stage's
weights alone (D = 256: 8 blocks x 1.7 MB of float32) and the step is bound by its L2 port. Here every block is
split over ``S`` slices of its inner width E (``BE`` channels each) and takes two launches, grid (S, B):

    in   (block i)  h_i = h_{i-1} + Σ_s out_part[s] (+ out_proj bias), or the stage input for i = 0
                    (u, z)[slice] = in_proj[slice rows](Norm(h_i));  conv over the slice;  c[slice]
                    x_part[s] = x_proj[:, slice] c[slice]                    (R + 2N,) partial sums
    out  (block i)  (δ, Bv, Cv) = Σ_s x_part[s];  Δ[slice] = softplus(dt_proj[slice] δ + bias[slice])
                    ssm[slice] ← exp(Δ A) ⊙ ssm + (Δ c) ⊗ Bv;  y = (ssm Cv + D c) ⊙ SiLU(z)
                    out_part[s] = out_proj[:, slice] y[slice]                (D,) partial sums

so each program reads 1/S of the block's weights (one kernel, ``MODE`` 0 and 1). Program s = 0 of ``in`` keeps h_i
in a (2, B, D) ping-pong scratch for the next block; c and z pass from ``in`` to ``out`` through a (B, 2, E)
float32 scratch. The last program of a row to finish the last block's ``out`` (a per-row arrival counter, reset by
that program) sums the partials in slice order (the result does not depend on which program is last), adds the
stage residual, writes the stage output and moves the row's pool buffers (down-pool window push, up-pool rotation).

Same contract as ``mamba1_stage_step_triton`` without the embedding and the head (the stages below the first
never have them); float32 arithmetic and SSM state, float32 / bfloat16 weights and activations, values rounded
to the activations' dtype where the unfused modules round them. Partial sums go through float32 scratch, so the
sums differ from the one-program kernel only in their order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus
from .block_step import BLOCK_WEIGHTS, _contig, _p2, _silu

# Launch settings (H200 sweeps, kernels/NOTES.md). Few rows: one row per program, BE channels per slice such that
# the in_proj tile (BE, D) holds ``tile`` elements (D = 256: BE = 16, 32 slices of E = 512; D = 128: BE = 32, 8
# slices), 4 warps. From ``_MANY_ROWS`` rows on, ``rows`` rows per program share each weight tile (at batch 64 one
# row per program reads every weight 64 times and the stage is L2-bound), the products as ``tl.dot``, BE = ``slice``.
# Overridable for the benchmark's sweep ("tile", "num_warps", "rows", "slice", "min_d").
_TILE, _WARPS = 4096, 4
_MANY_ROWS, _ROWS_MANY, _SLICE_MANY, _WARPS_MANY = 16, 16, 16, 8
# Stages of at least this width take the split step in generation (D = 64 stays one program per row).
_MIN_D = 128
CONFIG_OVERRIDES: dict = {}


def split_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, batch: int = 1) -> dict:
    """Block sizes of the kernel for ``batch`` rows: BB rows per program, BE channels per slice, S = ceil(E / BE)
    slices, SG slices per partial-sum load, BN states per scan chunk, whether products are ``tl.dot``, warps."""
    many = batch >= _MANY_ROWS
    block_d = _p2(d_model)
    rows = CONFIG_OVERRIDES.get("rows", _ROWS_MANY if many else 1)
    if many:
        block_e = min(_p2(d_inner), CONFIG_OVERRIDES.get("slice", _SLICE_MANY))
    else:
        block_e = min(_p2(d_inner), max(1, CONFIG_OVERRIDES.get("tile", _TILE) // block_d))
    dot = rows >= 16 and block_e >= 16 and block_d >= 16
    slices = triton.cdiv(d_inner, block_e)
    return {"BB": rows, "BLOCK_D": block_d, "BE": block_e, "S": slices,
            "SG": min(_p2(slices), max(1, 8192 // (rows * block_d))),
            "BLOCK_R": max(_p2(dt_rank), 16 if dot else 1), "BLOCK_L": _p2(dt_rank + 2 * d_state),
            "BN": min(_p2(d_state), max(1, (8192 if rows == 1 else 4096) // (rows * block_e))),
            "BLOCK_W": _p2(d_conv - 1), "DOT": dot,
            "num_warps": CONFIG_OVERRIDES.get("num_warps", _WARPS_MANY if many else _WARPS)}


def uses_split(d_model: int) -> bool:
    """Whether generation steps a stage of width ``d_model`` with the split kernels."""
    return d_model >= CONFIG_OVERRIDES.get("min_d", _MIN_D)


@triton.jit
def _mv(a, w, DOT: tl.constexpr):
    """(BB, K) rows times a (N, K) weight tile: (BB, N) float32. DOT: ``tl.dot`` in IEEE float32 (BB, K, N >= 16;
    no (BB, N, K) product tile in registers), else a broadcast product reduced over K."""
    if DOT:
        return tl.dot(a, tl.trans(w), input_precision="ieee")
    return tl.sum(a[:, None, :] * w[None, :, :], axis=2)


@triton.jit
def _row_sum(part_ptr, rows, m_b, cols, m_cols, L: tl.constexpr, S: tl.constexpr, SG: tl.constexpr):
    """Σ_s part[rows, s, cols] of a (B, S, L) float32 partial-sum scratch, in slice order: (BB, len(cols)); SG
    slices per load. Read past L1 (other programs wrote them)."""
    acc = tl.zeros([rows.shape[0], cols.shape[0]], tl.float32)
    for g in tl.static_range(0, S, SG):
        ss = g + tl.arange(0, SG)
        off = (rows[:, None, None] * S + ss[None, :, None]) * L + cols[None, None, :]
        m = m_b[:, None, None] & (ss < S)[None, :, None] & m_cols[None, None, :]
        acc += tl.sum(tl.load(part_ptr + off, mask=m, other=0.0, cache_modifier=".cg"), axis=1)
    return acc


@triton.jit
def _block_input(FIRST: tl.constexpr, i, rows, m_b, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, hbuf_ptr, opart_ptr,
                 out_b_ptr, n_rows, offs_d, m_d, D: tl.constexpr, S: tl.constexpr, SG: tl.constexpr,
                 UP: tl.constexpr, HAS_OUT_B: tl.constexpr):
    """(BB, BLOCK_D) float32 input rows of block i, rounded to the activations' dtype: the stage input x (+ up) for
    the first block, else block i-1's input (scratch) + its out_proj partials (+ bias)."""
    m_bd = m_b[:, None] & m_d[None, :]
    if FIRST:
        v = tl.load(x_ptr + rows[:, None] * s_xb + offs_d[None, :] * s_xd, mask=m_bd, other=0.0).to(tl.float32)
        if UP:
            v += tl.load(up_ptr + rows[:, None] * s_ub + offs_d[None, :] * s_ud, mask=m_bd, other=0.0).to(tl.float32)
    else:
        prev = hbuf_ptr + ((i + 1) % 2) * n_rows * D + rows[:, None] * D + offs_d[None, :]
        v = tl.load(prev, mask=m_bd, other=0.0, cache_modifier=".cg").to(tl.float32)
        v += _row_sum(opart_ptr, rows, m_b, offs_d, m_d, D, S, SG)
        if HAS_OUT_B:
            v += tl.load(out_b_ptr + (i - 1) * D + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    return v.to(hbuf_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _phase_in(FIRST: tl.constexpr, i, rows, m_b, s, x_ptr, up_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr,
              conv_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, out_b_ptr,
              eps, n_rows, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw,
              D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
              S: tl.constexpr, SG: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BLOCK_L: tl.constexpr,
              BLOCK_W: tl.constexpr, DOT: tl.constexpr, UP: tl.constexpr, RMSNORM: tl.constexpr,
              HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr, HAS_CONV_B: tl.constexpr,
              HAS_OUT_B: tl.constexpr):
    """Block i, slice s, rows ``rows``: input rows and norm, the slice's in_proj rows, conv, x_proj partial sums.
    Every load that depends on nothing computed (weights, the conv state) is issued first, with the block
    input's, so that the phase waits for one round of L2 reads."""
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    e = s * BE + tl.arange(0, BE)
    m_e = e < E
    # ---- in_proj rows of the slice: (BE, BLOCK_D) tiles of the u and z halves
    in_w = in_w_ptr + i * (2 * E * D)
    w_off = e[:, None] * D + offs_d[None, :]
    m_ed = m_e[:, None] & m_d[None, :]
    w_u = tl.load(in_w + w_off, mask=m_ed, other=0.0).to(tl.float32)
    w_z = tl.load(in_w + E * D + w_off, mask=m_ed, other=0.0).to(tl.float32)
    # ---- conv state (taps 0..W-2) and weights, x_proj columns of the slice (all R + 2N outputs in one tile)
    offs_w = tl.arange(0, BLOCK_W)
    m_ew = m_e[:, None] & (offs_w < W - 1)[None, :]
    m_bew = m_b[:, None, None] & m_ew[None, :, :]
    c_row = conv_ptr + i * s_ci + rows[:, None, None] * s_cb + e[None, :, None] * s_ce
    old = tl.load(c_row + offs_w[None, None, :] * s_cw, mask=m_bew, other=0.0).to(tl.float32)  # (BB, BE, BLOCK_W)
    nxt = tl.load(c_row + (offs_w + 1)[None, None, :] * s_cw, mask=m_bew & (offs_w < W - 2)[None, None, :],
                  other=0.0)
    cw = tl.load(conv_w_ptr + i * (E * W) + e[:, None] * W + offs_w[None, :], mask=m_ew, other=0.0).to(tl.float32)
    cw_last = tl.load(conv_w_ptr + i * (E * W) + e * W + (W - 1), mask=m_e, other=0.0).to(tl.float32)
    ll = tl.arange(0, BLOCK_L)
    m_l = ll < R + 2 * N
    w_x = tl.load(xp_w_ptr + i * ((R + 2 * N) * E) + ll[:, None] * E + e[None, :], mask=m_l[:, None] & m_e[None, :],
                  other=0.0).to(tl.float32)  # (BLOCK_L, BE)

    v = _block_input(FIRST, i, rows, m_b, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, hbuf_ptr, opart_ptr, out_b_ptr,
                     n_rows, offs_d, m_d, D, S, SG, UP, HAS_OUT_B)  # (BB, BLOCK_D)
    m_bd = m_b[:, None] & m_d[None, :]
    if s == 0:  # block i's input, for block i+1 and the stage output
        tl.store(hbuf_ptr + (i % 2) * n_rows * D + rows[:, None] * D + offs_d[None, :],
                 v.to(hbuf_ptr.dtype.element_ty), mask=m_bd)
    if RMSNORM:
        hn = v / tl.sqrt(tl.sum(v * v, axis=1) / D + eps)[:, None]
    else:
        xc = tl.where(m_bd, v - (tl.sum(v, axis=1) / D)[:, None], 0.0)
        hn = xc / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)[:, None]
    if HAS_NORM_W:
        hn = hn * tl.load(norm_w_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    if HAS_NORM_B:
        hn = hn + tl.load(norm_b_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    hn = tl.where(m_bd, hn, 0.0)
    u = _mv(hn, w_u, DOT)  # (BB, BE)
    z = _mv(hn, w_z, DOT)
    if HAS_IN_B:
        u += tl.load(in_b_ptr + i * (2 * E) + e, mask=m_e, other=0.0).to(tl.float32)[None, :]
        z += tl.load(in_b_ptr + i * (2 * E) + E + e, mask=m_e, other=0.0).to(tl.float32)[None, :]

    # ---- causal conv over [conv_state, u], then the x_proj partial sums over the slice (x_part[rows, s])
    u_r = u.to(conv_ptr.dtype.element_ty)  # the value the state will hold
    pre = tl.sum(cw[None, :, :] * old, axis=2) + cw_last[None, :] * u_r.to(tl.float32)
    if HAS_CONV_B:
        pre += tl.load(conv_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)[None, :]
    m_be = m_b[:, None] & m_e[None, :]
    c = tl.where(m_be, _silu(pre), 0.0)  # (BB, BE)
    tl.store(xpart_ptr + (rows[:, None] * S + s) * (R + 2 * N) + ll[None, :], _mv(c, w_x, DOT),
             mask=m_b[:, None] & m_l[None, :])
    cz = cz_ptr + rows[:, None] * (2 * E) + e[None, :]
    tl.store(cz, c, mask=m_be)
    tl.store(cz + E, z, mask=m_be)
    tl.debug_barrier()  # every thread has read the old conv state before any thread overwrites it
    tl.store(c_row + offs_w[None, None, :] * s_cw, tl.where((offs_w == W - 2)[None, None, :], u_r[:, :, None], nxt),
             mask=m_bew)


@triton.jit
def _phase_out(i, rows, m_b, s, opart_ptr, cz_ptr, xpart_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
               out_w_ptr, s_hi, s_hb, s_he, s_hn, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr,
               N: tl.constexpr, S: tl.constexpr, SG: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr,
               BLOCK_R: tl.constexpr, BN: tl.constexpr, DOT: tl.constexpr, HAS_D: tl.constexpr):
    """Block i, slice s, rows ``rows``: Δ, the state update and readout (over chunks of BN states, chunk k+1's
    state loaded before chunk k is updated), gate, out_proj partial sums."""
    e = s * BE + tl.arange(0, BE)
    m_e = e < E
    m_be = m_b[:, None] & m_e[None, :]
    rr = tl.arange(0, BLOCK_R)
    m_r = rr < R
    L: tl.constexpr = R + 2 * N
    # ---- loads that depend on nothing computed: weights of the slice, its first state chunk, c and z
    w_dt = tl.load(dt_w_ptr + i * (E * R) + e[:, None] * R + rr[None, :], mask=m_e[:, None] & m_r[None, :],
                   other=0.0).to(tl.float32)  # (BE, BLOCK_R)
    dt_b = tl.load(dt_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    w_o = tl.load(out_w_ptr + i * (D * E) + offs_d[:, None] * E + e[None, :], mask=m_d[:, None] & m_e[None, :],
                  other=0.0).to(tl.float32)  # (BLOCK_D, BE)
    h_rows = ssm_ptr + i * s_hi + rows[:, None, None] * s_hb + e[None, :, None] * s_he
    nn = tl.arange(0, BN)
    h_next = tl.load(h_rows + nn[None, None, :] * s_hn, mask=m_be[:, :, None] & (nn < N)[None, None, :], other=0.0)
    cz = cz_ptr + rows[:, None] * (2 * E) + e[None, :]
    c = tl.load(cz, mask=m_be, other=0.0, cache_modifier=".cg")  # (BB, BE)
    z = tl.load(cz + E, mask=m_be, other=0.0, cache_modifier=".cg")

    # ---- δ: the x_proj partials summed over the slices; Δ (BB, BE)
    delta = _row_sum(xpart_ptr, rows, m_b, rr, m_r, L, S, SG)  # (BB, BLOCK_R)
    dt = _mv(delta, w_dt, DOT) + dt_b[None, :]
    dt = tl.where(m_be, _softplus(dt), 0.0)
    dtc = dt * c
    if HAS_D:
        y = tl.load(d_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)[None, :] * c
    else:
        y = tl.zeros([rows.shape[0], BE], tl.float32)
    for n0 in tl.static_range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        m_n = nn < N
        m_ben = m_be[:, :, None] & m_n[None, None, :]
        h = h_next
        if n0 + BN < N:
            h_next = tl.load(h_rows + (nn + BN)[None, None, :] * s_hn,
                             mask=m_be[:, :, None] & (nn + BN < N)[None, None, :], other=0.0)
        a_l = tl.load(a_log_ptr + i * (E * N) + e[:, None] * N + nn[None, :], mask=m_e[:, None] & m_n[None, :],
                      other=0.0).to(tl.float32)  # (BE, BN)
        bv = _row_sum(xpart_ptr, rows, m_b, R + nn, m_n, L, S, SG)  # (BB, BN)
        cv = _row_sum(xpart_ptr, rows, m_b, R + N + nn, m_n, L, S, SG)
        h = tl.exp(dt[:, :, None] * -tl.exp(a_l)[None, :, :]) * h + dtc[:, :, None] * bv[:, None, :]
        y += tl.sum(h * cv[:, None, :], axis=2)
        tl.debug_barrier()  # the old state chunk is read everywhere before it is overwritten
        tl.store(h_rows + nn[None, None, :] * s_hn, h, mask=m_ben)
    y = tl.where(m_be, y * _silu(z), 0.0)
    tl.store(opart_ptr + (rows[:, None] * S + s) * D + offs_d[None, :], _mv(y, w_o, DOT),
             mask=m_b[:, None] & m_d[None, :])


@triton.jit
def _finish(i, rows, m_b, x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, hbuf_ptr, opart_ptr, out_b_ptr, n_rows,
            s_xb, s_xd, s_ub, s_ud, s_db, s_dp, s_dd, s_vb, s_vp, s_vd,
            D: tl.constexpr, P: tl.constexpr, S: tl.constexpr, SG: tl.constexpr, BLOCK_D: tl.constexpr,
            UP: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr, RESIDUAL: tl.constexpr,
            HAS_OUT_B: tl.constexpr):
    """Rows ``rows`` after the last block i: the stage output (block i's input + its partials (+ bias) (+ the
    stage input)), then the pool buffers: the down window takes x, the up buffer rotates by one."""
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    m_bd = m_b[:, None] & m_d[None, :]
    hv = tl.load(hbuf_ptr + (i % 2) * n_rows * D + rows[:, None] * D + offs_d[None, :], mask=m_bd, other=0.0,
                 cache_modifier=".cg").to(tl.float32)
    hv += _row_sum(opart_ptr, rows, m_b, offs_d, m_d, D, S, SG)
    if HAS_OUT_B:
        hv += tl.load(out_b_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    o = hv.to(out_ptr.dtype.element_ty)
    x0 = tl.load(x_ptr + rows[:, None] * s_xb + offs_d[None, :] * s_xd, mask=m_bd, other=0.0)
    if RESIDUAL:
        h0 = x0.to(tl.float32)
        if UP:
            h0 += tl.load(up_ptr + rows[:, None] * s_ub + offs_d[None, :] * s_ud, mask=m_bd, other=0.0).to(tl.float32)
            h0 = h0.to(out_ptr.dtype.element_ty).to(tl.float32)
        o = (o.to(tl.float32) + h0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * D + offs_d[None, :], o, mask=m_bd)
    if DOWN_PUSH:  # the window (P-1, D) takes the stage input (before the up-pool add): row p ← row p+1
        d_row = dbuf_ptr + rows[:, None] * s_db + offs_d[None, :] * s_dd
        for p in tl.static_range(P - 2):
            nxt = tl.load(d_row + (p + 1) * s_dp, mask=m_bd, other=0.0)
            tl.debug_barrier()
            tl.store(d_row + p * s_dp, nxt, mask=m_bd)
        tl.store(d_row + (P - 2) * s_dp, x0.to(dbuf_ptr.dtype.element_ty), mask=m_bd)
    if UP_ROTATE:  # rotate by one: the old row 0 (this step's up-pool output) lands in row P-1
        u_row = ubuf_ptr + rows[:, None] * s_vb + offs_d[None, :] * s_vd
        first = tl.load(u_row, mask=m_bd, other=0.0)
        for p in tl.static_range(P - 1):
            nxt = tl.load(u_row + (p + 1) * s_vp, mask=m_bd, other=0.0)
            tl.debug_barrier()
            tl.store(u_row + p * s_vp, nxt, mask=m_bd)
        tl.store(u_row + (P - 1) * s_vp, first, mask=m_bd)


@triton.jit(do_not_specialize=["i"])
def _split_kernel(
    x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr, conv_ptr, ssm_ptr,
    count_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr,
    d_ptr, out_w_ptr, out_b_ptr,
    i, eps, n_rows,
    s_xb, s_xd, s_ub, s_ud, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
    S: tl.constexpr, SG: tl.constexpr, BB: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, BN: tl.constexpr, BLOCK_W: tl.constexpr,
    DOT: tl.constexpr, MODE: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    UP: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr, RESIDUAL: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr,
):
    """Grid (S, ceil(B / BB)): slice s = program 0, BB rows = program 1. MODE 0: block i's ``in`` phase; MODE 1:
    its ``out`` phase (LAST: the last program of the row block to arrive finishes the stage and resets the row
    block's counter)."""
    s = tl.program_id(0)
    t = tl.program_id(1)
    rows = t * BB + tl.arange(0, BB)
    m_b = rows < n_rows
    rows = rows.to(tl.int64)
    if MODE == 0:
        _phase_in(FIRST, i, rows, m_b, s, x_ptr, up_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr, conv_ptr, norm_w_ptr,
                  norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, out_b_ptr, eps, n_rows,
                  s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, D, E, R, N, W, S, SG, BLOCK_D, BE, BLOCK_L,
                  BLOCK_W, DOT, UP, RMSNORM, HAS_NORM_W, HAS_NORM_B, HAS_IN_B, HAS_CONV_B, HAS_OUT_B)
    else:
        _phase_out(i, rows, m_b, s, opart_ptr, cz_ptr, xpart_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
                   out_w_ptr, s_hi, s_hb, s_he, s_hn, D, E, R, N, S, SG, BLOCK_D, BE, BLOCK_R, BN, DOT, HAS_D)
        if LAST:
            tl.debug_barrier()  # every thread's partials are written before the arrival is counted
            arrived = tl.atomic_add(count_ptr + t, 1)  # acq_rel: the earlier programs' partials are visible
            if arrived == S - 1:  # the row block's last program
                _finish(i, rows, m_b, x_ptr, up_ptr, dbuf_ptr, ubuf_ptr, out_ptr, hbuf_ptr, opart_ptr, out_b_ptr,
                        n_rows, s_xb, s_xd, s_ub, s_ud, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, D, P, S, SG, BLOCK_D,
                        UP, DOWN_PUSH, UP_ROTATE, RESIDUAL, HAS_OUT_B)
                tl.store(count_ptr + t, 0)  # every program of the row block has arrived: ready for the next step


def split_workspace(batch: int, d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int,
                    device, dtype: torch.dtype) -> dict:
    """Scratch of one stage for the split step (reusable across steps; keep one per stage for CUDA graphs):
    block inputs (2, B, D) in the activations' dtype, c and z (B, 2, E), x_proj and out_proj partial sums
    (B, S, R + 2N) and (B, S, D) float32, arrival counters per block of rows (B,) int32 (zero; the kernels
    leave them zero)."""
    slices = split_config(d_model, d_inner, d_state, dt_rank, d_conv, batch)["S"]
    f32 = torch.float32
    return {
        "h": torch.empty(2, batch, d_model, device=device, dtype=dtype),
        "cz": torch.empty(batch, 2, d_inner, device=device, dtype=f32),
        "x_part": torch.empty(batch, slices, dt_rank + 2 * d_state, device=device, dtype=f32),
        "out_part": torch.empty(batch, slices, d_model, device=device, dtype=f32),
        "count": torch.zeros(batch, device=device, dtype=torch.int32),  # one per row block (at most B)
        "slices": slices,
    }


def _strides(t: torch.Tensor | None, n: int) -> tuple[int, ...]:
    return t.stride() if t is not None else (0,) * n


def mamba1_stage_step_split_triton(x, conv_states, ssm_states, weights, norm="layernorm", eps=1e-5, *, up=None,
                                   down_buffer=None, up_buffer=None, residual=True, workspace=None):
    """One step of a stage of Mamba-1 blocks, each block split over slices of E (module docstring); states
    updated in place.

    Args:
        x: (B, D) stage input, any strides. conv_states: (n_blocks, B, E, W-1), ssm_states: (n_blocks, B, E, N)
            float32. weights: ``stack_block_weights`` output. norm, eps: the blocks' norm.
        up: (B, D) up-pool output added to x (any strides; with ``up_buffer``: its row P-1, read after the
            rotation, i.e. the buffer's row 0 before it).
        down_buffer: (B, P-1, D) down-pool window that takes x. up_buffer: (B, P, D) up-pool buffer, rotated by one.
        residual: add the stage input to the last block's output.
        workspace: ``split_workspace`` for these sizes (allocated here when None).

    Returns:
        (B, D) the stage output, in x's dtype.
    """
    ws = [_contig(weights[k]) for k in BLOCK_WEIGHTS]
    n_blocks, batch, d_inner, _ = conv_states.shape
    d_model = ws[2].shape[-1]
    width = ws[4].shape[-1]
    d_state = ws[9].shape[-1]
    dt_rank = ws[7].shape[-1]
    out = torch.empty(batch, d_model, device=x.device, dtype=x.dtype)
    if batch == 0:
        return out
    if workspace is None:
        workspace = split_workspace(batch, d_model, d_inner, d_state, dt_rank, width, x.device, x.dtype)
    cfg = split_config(d_model, d_inner, d_state, dt_rank, width, batch)
    warps = cfg.pop("num_warps")
    slices = cfg["S"]
    if workspace["slices"] != slices or workspace["h"].shape[1:] != (batch, d_model):
        raise ValueError(f"workspace: made for {workspace['h'].shape[1]} rows of width {workspace['h'].shape[2]} "
                         f"in {workspace['slices']} slices, this stage needs {batch} x {d_model} in {slices}")
    present = [t is not None for t in ws]
    ws = [t if t is not None else ws[2] for t in ws]  # unused pointers (their HAS_* flag is off)
    if up_buffer is not None:
        up = up_buffer[:, 0]  # the row that the rotation moves to P-1: read before the rotation (by the finish)
    n_pool = 0 if down_buffer is None and up_buffer is None else (
        up_buffer.shape[1] if up_buffer is not None else down_buffer.shape[1] + 1)
    args = (x, up if up is not None else x, down_buffer if down_buffer is not None else out,
            up_buffer if up_buffer is not None else out, out, workspace["h"], workspace["out_part"], workspace["cz"],
            workspace["x_part"], conv_states, ssm_states, workspace["count"], *ws)
    strides = (*x.stride(), *_strides(up, 2), *_strides(down_buffer, 3), *_strides(up_buffer, 3),
               *conv_states.stride(), *ssm_states.stride())
    flags = dict(
        D=d_model, E=d_inner, R=dt_rank, N=d_state, W=width, P=max(n_pool, 2), **cfg,
        UP=up is not None, DOWN_PUSH=down_buffer is not None, UP_ROTATE=up_buffer is not None, RESIDUAL=residual,
        RMSNORM=norm == "rmsnorm", HAS_NORM_W=present[0], HAS_NORM_B=present[1], HAS_IN_B=present[3],
        HAS_CONV_B=present[5], HAS_D=present[10], HAS_OUT_B=present[12], num_warps=warps,
    )
    grid = (slices, triton.cdiv(batch, cfg["BB"]))
    for i in range(n_blocks):
        for mode in (0, 1):
            _split_kernel[grid](*args, i, float(eps), batch, *strides, MODE=mode, FIRST=mode == 0 and i == 0,
                                LAST=mode == 1 and i == n_blocks - 1, **flags)
    return out


__all__ = ["mamba1_stage_step_split_triton", "split_config", "split_workspace", "uses_split"]
