"""Generation steps of pre-norm residual blocks with a Mamba-1 mixer, fused into one Triton kernel per stage.

For one input row x (D,) per batch element, one block (glossary: B batch, D width, E inner width, N state size,
R rank of Δ, W conv width):

    h_in    = Norm(x)                                     LayerNorm (weight, bias) or RMSNorm (weight); eps
    (u, z)  = in_proj(h_in)                               (2E,) split in two (E,) halves
    c       = SiLU(conv_bias + Σ_k conv_w[:, k] · [conv_state, u][:, k])   conv_state ← last W-1 inputs
    (δ, Bv, Cv) = x_proj(c)                               (R,), (N,), (N,)
    Δ       = softplus(dt_proj.weight δ + dt_proj.bias)   (E,)
    ssm     ← exp(Δ A) ⊙ ssm + (Δ c) ⊗ Bv,  A = -exp(A_log)    (E, N) float32
    y       = (ssm Cv + D c) ⊙ SiLU(z)                    (E,)
    out     = x + out_proj(y)                             (D,)

One launch runs a whole stage of a multi-resolution backbone for one step: ``n_blocks`` such blocks in turn (their
weights stacked along a leading block dimension, their states (blocks, B, E, ·) updated in place), each program
owning ``BB`` batch rows. Optional parts of the same launch, for generation:

* prologue: the stage input is the summed embedding rows of the current tokens (``EMBED``), plus the up-pool
  output (``UP``); the down-pool window takes the stage input (``DOWN_PUSH``) and the up-pool buffer rotates by
  one step (``UP_ROTATE``; this step's output, its old row 0, lands in row P-1);
* the stage residual (``RESIDUAL``: output = blocks(h0) + h0, h0 the stage input);
* epilogue (``HEAD``): final norm, head, Gumbel-max draw, and the writes of the next token, the output token, the
  logits and the log-likelihood at the row's position counter, which it advances.

Every intermediate stays in registers except the block output, which passes to the next block through a (2, B, D)
scratch (ping-pong). The matrix-vector products loop over chunks so that no product tile exceeds the configured
number of elements (``block_step_config``): in_proj over chunks of its reduction dim D, x_proj + scan over chunks
of N, out_proj over chunks of its output dim D. The chunk loops are unrolled and double-buffered (chunk k+1's
tiles are loaded before chunk k is reduced), and the first chunks of the scan and of out_proj are loaded before the
conv / δ / Δ phase, so that the phases do not each wait for one L2 round trip.

States are read before a barrier and written after it: elements replicated over several threads are then never
read after another thread has already overwritten them. Weights and activations may be float32 or bfloat16
(float16 works too); all arithmetic and the SSM state are float32. Values that the unfused modules round to the
activations' dtype (the conv input, block outputs, pool sums, the norm and head outputs) are rounded here too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus

# Largest product tile per program (elements, rows of the program included), warps per program and prefetch depth
# (0: none, 1: chunk k+1's tiles loaded before chunk k's reduction, 2: also the first scan / out_proj chunks before
# the conv / δ / Δ phase). Offline sm_90 compiles (kernels/NOTES.md): 16384-element tiles at E = 512 leave ptxas at
# 64 registers with ~3 KB of spills, 8192 stays at 128; prefetch 1 keeps stage 0 free of spills.
_TILE = 8192
_WARPS = 16
_PREFETCH = 1
# Batch rows per program: 1. Sharing each weight tile's L2 read between rows was slower on the H200 (sc09_small
# generation at batch 64: 489 k samples/s with 1 row per program, 272 k with 2, 145 k with 4; kernels/NOTES.md).
_ROWS = 1
# Keyword overrides of ``block_step_config`` ("tile", "num_warps", "rows", "prefetch"), for the benchmark's sweep.
CONFIG_OVERRIDES: dict = {}


@triton.jit
def _silu(v):
    return v * tl.sigmoid(v)


@triton.jit
def _stage_input(x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows, dd, m2, out_ptr,
                 D: tl.constexpr, EMBED: tl.constexpr, UP: tl.constexpr):
    """(BB, BD) float32 rows of the stage input: x (or the summed embedding rows of the tokens ``tok`` (BB, BK))
    plus the up-pool output when UP, rounded to the activations' dtype as the unfused sum is."""
    if EMBED:
        e_off = tok[:, :, None] * D + dd[None, None, :]  # (BB, BK, BD)
        v = tl.sum(tl.load(emb_ptr + e_off, mask=m2[:, None, :] & m_k[None, :, None], other=0.0).to(tl.float32),
                   axis=1)
        v = v.to(emb_ptr.dtype.element_ty).to(tl.float32)
    else:
        v = tl.load(x_ptr + rows[:, None] * s_xb + dd[None, :] * s_xd, mask=m2, other=0.0).to(tl.float32)
    if UP:
        up = tl.load(up_ptr + rows[:, None] * s_ub + dd[None, :] * s_ud, mask=m2, other=0.0).to(tl.float32)
        v = (up + v).to(out_ptr.dtype.element_ty).to(tl.float32)
    return v


@triton.jit
def _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, offs_d, m_bd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P: tl.constexpr,
                BLOCK_P: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr):
    """Pool buffers of the rows ``rows`` (BB,) at columns ``offs_d``: the down-pool window (B, P-1, D) takes x0
    (BB, BLOCK_D) as its newest row (DOWN_PUSH), the up-pool buffer (B, P, D) rotates by one, its row 0 landing in
    row P-1 (UP_ROTATE). Everything is read before anything is written (barriers on both sides of the writes)."""
    offs_p = tl.arange(0, BLOCK_P)
    m_p3 = m_bd[:, None, :]
    if DOWN_PUSH:
        d_off = rows[:, None, None] * s_db + offs_d[None, None, :] * s_dd
        d_nxt = tl.load(dbuf_ptr + d_off + (offs_p + 1)[None, :, None] * s_dp,
                        mask=m_p3 & (offs_p < P - 2)[None, :, None], other=0.0)
        new_d = tl.where((offs_p == P - 2)[None, :, None], x0[:, None, :].to(dbuf_ptr.dtype.element_ty), d_nxt)
    if UP_ROTATE:
        v_off = rows[:, None, None] * s_vb + offs_d[None, None, :] * s_vd
        new_u = tl.load(ubuf_ptr + v_off + ((offs_p + 1) % P)[None, :, None] * s_vp,
                        mask=m_p3 & (offs_p < P)[None, :, None], other=0.0)
    tl.debug_barrier()
    if DOWN_PUSH:
        tl.store(dbuf_ptr + d_off + offs_p[None, :, None] * s_dp, new_d, mask=m_p3 & (offs_p < P - 1)[None, :, None])
    if UP_ROTATE:
        tl.store(ubuf_ptr + v_off + offs_p[None, :, None] * s_vp, new_u, mask=m_p3 & (offs_p < P)[None, :, None])
    tl.debug_barrier()


@triton.jit
def _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows, dd, m2,
                 out_ptr, D: tl.constexpr, EMBED: tl.constexpr, UP: tl.constexpr):
    """(BB, BD) float32: block i's input rows, the stage input for i = 0, else block i-1's output (scratch)."""
    first = i == 0
    v_in = _stage_input(x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows, dd, m2 & first, out_ptr,
                        D, EMBED, UP)
    src = buf_ptr + ((i + 1) % 2) * n_rows * D  # the slot block i-1 wrote
    v_buf = tl.load(src + rows[:, None] * D + dd[None, :], mask=m2 & (i > 0), other=0.0).to(tl.float32)
    return tl.where(first, v_in, v_buf)


@triton.jit
def _scan_chunk(xp_w, a_log, h_row, s_hn, nn, offs_e, m_e, m_b, R: tl.constexpr, N: tl.constexpr,
                E: tl.constexpr):
    """The scan's tiles for the states nn (BN,): x_proj's B and C rows (1, BN, BLOCK_E), A_log (1, BLOCK_E, BN)
    and the state slice (BB, BLOCK_E, BN) float32. Weight tiles are built 3D, in the layout of their products."""
    m_ne = (nn < N)[None, :, None] & m_e[None, None, :]
    w_b = tl.load(xp_w + (R + nn)[None, :, None] * E + offs_e[None, None, :], mask=m_ne, other=0.0).to(tl.float32)
    w_c = tl.load(xp_w + (R + N + nn)[None, :, None] * E + offs_e[None, None, :], mask=m_ne,
                  other=0.0).to(tl.float32)
    m_en = m_e[None, :, None] & (nn < N)[None, None, :]
    a_l = tl.load(a_log + offs_e[None, :, None] * N + nn[None, None, :], mask=m_en, other=0.0).to(tl.float32)
    h = tl.load(h_row + nn[None, None, :] * s_hn, mask=m_b[:, None, None] & m_en, other=0.0)
    return w_b, w_c, a_l, h


@triton.jit
def _in_chunk(in_w, dd, offs_e, m_e, D: tl.constexpr, E: tl.constexpr):
    """in_proj columns dd (BD_IN,) of the u and z halves: two (1, BLOCK_E, BD_IN) float32 tiles."""
    w_off = offs_e[None, :, None] * D + dd[None, None, :]  # in the (2E, D) weight
    m_w = m_e[None, :, None] & (dd < D)[None, None, :]
    w_u = tl.load(in_w + w_off, mask=m_w, other=0.0).to(tl.float32)
    w_z = tl.load(in_w + E * D + w_off, mask=m_w, other=0.0).to(tl.float32)
    return w_u, w_z


@triton.jit
def _out_chunk(out_w, dd, offs_e, m_e, D: tl.constexpr, E: tl.constexpr):
    """out_proj rows dd (BD_OUT,): (1, BD_OUT, BLOCK_E) float32."""
    return tl.load(out_w + dd[None, :, None] * E + offs_e[None, None, :],
                   mask=(dd < D)[None, :, None] & m_e[None, None, :], other=0.0).to(tl.float32)


@triton.jit
def _mamba1_stage_kernel(
    # activations, pools, scratch and states
    x_ptr, up_ptr, emb_ptr, tok_ptr, dbuf_ptr, ubuf_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr,
    # block weights, stacked over the blocks (block i at i * the size of one)
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr,
    a_log_ptr, d_ptr, out_w_ptr, out_b_ptr,
    # head and sampling
    fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, otok_ptr, ologit_ptr, ll_ptr,
    # scalars
    eps, head_eps, temperature, n_rows, n_blocks,
    # strides
    s_xb, s_xd, s_ub, s_ud, s_tb, s_tk, s_db, s_dp, s_dd, s_vb, s_vp, s_vd,
    s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    # sizes
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr, K: tl.constexpr,
    V: tl.constexpr, P: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BB: tl.constexpr, BD_IN: tl.constexpr, BD_OUT: tl.constexpr,
    BN: tl.constexpr, BV: tl.constexpr,
    # options
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr,
    EMBED: tl.constexpr, UP: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr,
    RESIDUAL: tl.constexpr, HEAD: tl.constexpr, HEAD_RMS: tl.constexpr, HEAD_NORM_W: tl.constexpr,
    HEAD_NORM_B: tl.constexpr, HEAD_B: tl.constexpr, SAMPLE: tl.constexpr, RECORD_LOGITS: tl.constexpr,
    RECORD_LL: tl.constexpr, PREFETCH: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)  # (BB,) batch rows of this program
    m_b = rows < n_rows
    rows = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    m_bd = m_b[:, None] & m_d[None, :]  # (BB, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    m_k = offs_k < K
    tok = tl.zeros([BB, BLOCK_K], tl.int64)
    if EMBED:  # token ids of the K codebooks, offset into the summed table
        tok = tl.load(tok_ptr + rows[:, None] * s_tb + offs_k[None, :] * s_tk, mask=m_b[:, None] & m_k[None, :],
                      other=0) + offs_k[None, :] * V

    # ---- pooling buffers: the down-pool window takes the stage input, the up-pool buffer rotates by one
    # (its old row 0, this step's up-pool output, lands in row P-1, where up_ptr points)
    if DOWN_PUSH or UP_ROTATE:
        x0 = tl.zeros([BB, BLOCK_D], tl.float32)
        if DOWN_PUSH:
            x0 = _stage_input(x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows, offs_d, m_bd, out_ptr,
                              D, EMBED, False)
        _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, offs_d, m_bd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P, BLOCK_P,
                    DOWN_PUSH, UP_ROTATE)

    offs_e = tl.arange(0, BLOCK_E)
    m_e = offs_e < E
    offs_r = tl.arange(0, BLOCK_R)
    m_r = offs_r < R
    offs_w = tl.arange(0, BLOCK_W)  # conv taps 0..W-2 come from the state
    m_w = offs_w < W - 1
    m_ew = m_e[:, None] & m_w[None, :]
    for i in range(n_blocks):
        last = i == n_blocks - 1
        nw = norm_w_ptr + i * D
        nb = norm_b_ptr + i * D
        in_w = in_w_ptr + i * (2 * E * D)
        xp_w = xp_w_ptr + i * ((R + 2 * N) * E)
        a_log = a_log_ptr + i * (E * N)
        out_w = out_w_ptr + i * (D * E)

        # ---- loads that depend on nothing computed: norm row, in_proj tiles, conv state and weights, δ and Δ
        # weights (issued together, so that their L2 round trips overlap)
        xv = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows,
                          offs_d, m_bd, out_ptr, D, EMBED, UP)  # (BB, BLOCK_D)
        # ---- norm statistics (BB,)
        if RMSNORM:
            mean = tl.zeros([BB], tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=1) / D + eps)
        else:
            mean = tl.sum(xv, axis=1) / D
            xc = tl.where(m_bd, xv - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)

        # ---- in_proj (BB, E) x 2, over chunks of the reduction dim D (PREFETCH >= 1: chunk k+1's tiles are loaded
        # before chunk k is reduced, carried by the loop)
        acc_u = tl.zeros([BB, BLOCK_E], tl.float32)
        acc_z = tl.zeros([BB, BLOCK_E], tl.float32)
        if PREFETCH >= 1 and BD_IN < D:
            wu_n, wz_n = _in_chunk(in_w, tl.arange(0, BD_IN), offs_e, m_e, D, E)
        for d0 in tl.range(0, D, BD_IN):
            dd = d0 + tl.arange(0, BD_IN)
            m_dd = dd < D
            if PREFETCH >= 1 and BD_IN < D:
                w_u, w_z = wu_n, wz_n
                wu_n, wz_n = _in_chunk(in_w, dd + BD_IN, offs_e, m_e, D, E)
            else:
                w_u, w_z = _in_chunk(in_w, dd, offs_e, m_e, D, E)
            m2 = m_b[:, None] & m_dd[None, :]
            xs = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows,
                              dd, m2, out_ptr, D, EMBED, UP)  # (BB, BD_IN)
            hn = (xs - mean[:, None]) * rstd[:, None]
            if HAS_NORM_W:
                hn = hn * tl.load(nw + dd, mask=m_dd, other=0.0).to(tl.float32)[None, :]
            if HAS_NORM_B:
                hn = hn + tl.load(nb + dd, mask=m_dd, other=0.0).to(tl.float32)[None, :]
            acc_u += tl.sum(w_u * hn[:, None, :], axis=2)
            acc_z += tl.sum(w_z * hn[:, None, :], axis=2)
        if HAS_IN_B:
            acc_u += tl.load(in_b_ptr + i * (2 * E) + offs_e, mask=m_e, other=0.0).to(tl.float32)[None, :]
            acc_z += tl.load(in_b_ptr + i * (2 * E) + E + offs_e, mask=m_e, other=0.0).to(tl.float32)[None, :]

        c_row = conv_ptr + i * s_ci + rows[:, None, None] * s_cb + offs_e[None, :, None] * s_ce
        m_bew = m_b[:, None, None] & m_ew[None, :, :]
        old = tl.load(c_row + offs_w[None, None, :] * s_cw, mask=m_bew, other=0.0).to(tl.float32)  # (BB, E, W-1)
        nxt = tl.load(c_row + (offs_w + 1)[None, None, :] * s_cw, mask=m_bew & (offs_w < W - 2)[None, None, :],
                      other=0.0)  # old shifted by one tap, the state's dtype
        cw = tl.load(conv_w_ptr + i * (E * W) + offs_e[None, :, None] * W + offs_w[None, None, :], mask=m_ew[None],
                     other=0.0).to(tl.float32)  # (1, BLOCK_E, BLOCK_W)
        cw_last = tl.load(conv_w_ptr + i * (E * W) + offs_e[None, :] * W + (W - 1), mask=m_e[None, :],
                          other=0.0).to(tl.float32)  # (1, BLOCK_E)
        w_r = tl.load(xp_w + offs_r[None, :, None] * E + offs_e[None, None, :],
                      mask=m_r[None, :, None] & m_e[None, None, :], other=0.0).to(tl.float32)  # (1, BLOCK_R, BLOCK_E)
        w_dt = tl.load(dt_w_ptr + i * (E * R) + offs_e[None, :, None] * R + offs_r[None, None, :],
                       mask=m_e[None, :, None] & m_r[None, None, :], other=0.0).to(tl.float32)  # (1, BLOCK_E, BLOCK_R)
        dt_b = tl.load(dt_b_ptr + i * E + offs_e[None, :], mask=m_e[None, :], other=0.0).to(tl.float32)

        h_row = ssm_ptr + i * s_hi + rows[:, None, None] * s_hb + offs_e[None, :, None] * s_he
        if PREFETCH >= 2:  # the scan's first chunk, loaded before the conv / δ / Δ phase
            sc_n = _scan_chunk(xp_w, a_log, h_row, s_hn, tl.arange(0, BN), offs_e, m_e, m_b, R, N, E)

        # ---- causal conv over [conv_state, u] and the state shift, in place
        u = acc_u.to(conv_ptr.dtype.element_ty).to(tl.float32)  # the value the state will hold
        pre = tl.sum(cw * old, axis=2) + cw_last * u  # (BB, BLOCK_E)
        if HAS_CONV_B:
            pre += tl.load(conv_b_ptr + i * E + offs_e, mask=m_e, other=0.0).to(tl.float32)[None, :]
        c = tl.where(m_b[:, None] & m_e[None, :], _silu(pre), 0.0)  # (BB, BLOCK_E)

        # ---- δ (BB, R) = x_proj[:R] c, then Δ (BB, E) = softplus(dt_proj δ + bias)
        dlow = tl.sum(w_r * c[:, None, :], axis=2)  # (BB, BLOCK_R)
        dt = tl.sum(w_dt * dlow[:, None, :], axis=2) + dt_b
        dt = tl.where(m_e[None, :], _softplus(dt), 0.0)  # (BB, BLOCK_E)
        dtc = dt * c
        if HAS_D:
            y = tl.load(d_ptr + i * E + offs_e, mask=m_e, other=0.0).to(tl.float32)[None, :] * c
        else:
            y = tl.zeros([BB, BLOCK_E], tl.float32)
        tl.debug_barrier()  # every thread has read the old conv state before any thread overwrites it
        new = tl.where((offs_w == W - 2)[None, None, :], u[:, :, None].to(conv_ptr.dtype.element_ty), nxt)
        tl.store(c_row + offs_w[None, None, :] * s_cw, new, mask=m_bew)

        if PREFETCH >= 2:  # the first out_proj chunk, loaded before the scan
            wo_n = _out_chunk(out_w, tl.arange(0, BD_OUT), offs_e, m_e, D, E)

        # ---- B, C chunks and the state update, in place; y += Σ_n ssm[:, n] C[n] (PREFETCH >= 1: chunk k+1
        # loaded before chunk k is reduced)
        for n0 in tl.static_range(0, N, BN):
            nn = n0 + tl.arange(0, BN)
            if PREFETCH >= 2 or (PREFETCH == 1 and n0 > 0):
                w_b, w_c, a_l, h = sc_n
            else:
                w_b, w_c, a_l, h = _scan_chunk(xp_w, a_log, h_row, s_hn, nn, offs_e, m_e, m_b, R, N, E)
            if PREFETCH >= 1 and n0 + BN < N:
                sc_n = _scan_chunk(xp_w, a_log, h_row, s_hn, nn + BN, offs_e, m_e, m_b, R, N, E)
            bv = tl.sum(w_b * c[:, None, :], axis=2)  # (BB, BN)
            cv = tl.sum(w_c * c[:, None, :], axis=2)
            m_en = m_b[:, None, None] & (m_e[:, None] & (nn < N)[None, :])
            tl.debug_barrier()  # the old state slice is read everywhere before it is overwritten
            h = tl.exp(dt[:, :, None] * -tl.exp(a_l)) * h + dtc[:, :, None] * bv[:, None, :]
            y += tl.sum(h * cv[:, None, :], axis=2)
            tl.store(h_row + nn[None, None, :] * s_hn, h, mask=m_en)
        y = y * _silu(acc_z)  # (BB, BLOCK_E)

        # ---- out_proj + residual over chunks of the output dim D (PREFETCH >= 1: chunk k+1 loaded before chunk
        # k's reduction); the last block adds the stage residual and writes the stage output, the others the
        # scratch slot that the next block reads
        dst = buf_ptr + (i % 2) * n_rows * D
        if PREFETCH == 1 and BD_OUT < D:
            wo_n = _out_chunk(out_w, tl.arange(0, BD_OUT), offs_e, m_e, D, E)
        for d0 in tl.range(0, D, BD_OUT):
            dd = d0 + tl.arange(0, BD_OUT)
            m_dd = dd < D
            if PREFETCH >= 2 or (PREFETCH == 1 and BD_OUT < D):
                w_o = wo_n
                if BD_OUT < D:
                    wo_n = _out_chunk(out_w, dd + BD_OUT, offs_e, m_e, D, E)
            else:
                w_o = _out_chunk(out_w, dd, offs_e, m_e, D, E)
            m2 = m_b[:, None] & m_dd[None, :]
            xr = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows,
                              dd, m2, out_ptr, D, EMBED, UP)
            o = tl.sum(w_o * y[:, None, :], axis=2) + xr  # (BB, BD_OUT)
            if HAS_OUT_B:
                o += tl.load(out_b_ptr + i * D + dd, mask=m_dd, other=0.0).to(tl.float32)[None, :]
            o = o.to(out_ptr.dtype.element_ty)
            if RESIDUAL:
                h0 = _stage_input(x_ptr, s_xb, s_xd, emb_ptr, tok, m_k, up_ptr, s_ub, s_ud, rows, dd, m2 & last,
                                  out_ptr, D, EMBED, UP)
                o = tl.where(last, (o.to(tl.float32) + h0).to(out_ptr.dtype.element_ty), o)
            o_off = rows[:, None] * D + dd[None, :]
            tl.store(out_ptr + o_off, o, mask=m2 & last)
            tl.store(dst + o_off, o, mask=m2 & (i < n_blocks - 1))
        tl.debug_barrier()  # the block's output is visible to every thread before the next block reads it

    if HEAD:
        _head_sample(out_ptr, fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, tok_ptr, otok_ptr,
                     ologit_ptr, ll_ptr, head_eps, temperature, n_rows, s_tb, s_tk, rows, m_b, offs_d, m_d,
                     D, K, V, BB, BV, HEAD_RMS, HEAD_NORM_W, HEAD_NORM_B, HEAD_B, SAMPLE, RECORD_LOGITS, RECORD_LL)


@triton.jit
def _head_sample(h_ptr, fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, tok_ptr, otok_ptr,
                 ologit_ptr, ll_ptr, eps, temperature, n_rows, s_tb, s_tk, rows, m_b, offs_d, m_d,
                 D: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BB: tl.constexpr, BV: tl.constexpr,
                 RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_HEAD_B: tl.constexpr,
                 SAMPLE: tl.constexpr, RECORD_LOGITS: tl.constexpr, RECORD_LL: tl.constexpr):
    """Final norm, head, Gumbel-max draw for the rows of this program; writes the next token, the output token
    (and logits, log-likelihood) at the row's position, then advances it."""
    m_bd = m_b[:, None] & m_d[None, :]
    hv = tl.load(h_ptr + rows[:, None] * D + offs_d[None, :], mask=m_bd, other=0.0).to(tl.float32)  # (BB, BLOCK_D)
    if RMS:
        hn = hv * (1.0 / tl.sqrt(tl.sum(hv * hv, axis=1) / D + eps))[:, None]
    else:
        mean = tl.sum(hv, axis=1) / D
        hc = tl.where(m_bd, hv - mean[:, None], 0.0)
        hn = hc * (1.0 / tl.sqrt(tl.sum(hc * hc, axis=1) / D + eps))[:, None]
    if HAS_W:
        hn = hn * tl.load(fn_w_ptr + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        hn = hn + tl.load(fn_b_ptr + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    hn = tl.where(m_bd, hn.to(h_ptr.dtype.element_ty).to(tl.float32), 0.0)  # the norm's output dtype
    pos = tl.load(pos_ptr + rows, mask=m_b, other=0)  # (BB,) step index in the noise / output blocks
    row_kv = (pos * n_rows + rows) * (K * V)  # (BB,) offset of this row's (K, V) block
    ll = tl.zeros([BB], tl.float32)
    for k in tl.static_range(K):
        best = tl.full([BB], float("-inf"), tl.float32)
        best_i = tl.zeros([BB], tl.int32)
        best_l = tl.zeros([BB], tl.float32)
        run_m = tl.full([BB], float("-inf"), tl.float32)
        run_s = tl.zeros([BB], tl.float32)
        for v0 in tl.static_range(0, V, BV):
            vv = v0 + tl.arange(0, BV)
            m_v = vv < V
            w = tl.load(head_w_ptr + (k * V + vv)[None, :, None] * D + offs_d[None, None, :],
                        mask=m_v[None, :, None] & m_d[None, None, :], other=0.0).to(tl.float32)  # (1, BV, BLOCK_D)
            lg = tl.sum(w * hn[:, None, :], axis=2)  # (BB, BV)
            if HAS_HEAD_B:
                lg += tl.load(head_b_ptr + k * V + vv, mask=m_v, other=0.0).to(tl.float32)[None, :]
            lg = lg.to(h_ptr.dtype.element_ty).to(tl.float32)  # the head's output dtype
            m_bv = m_b[:, None] & m_v[None, :]
            kv = row_kv[:, None] + k * V + vv[None, :]
            if RECORD_LOGITS:
                tl.store(ologit_ptr + kv, lg, mask=m_bv)
            if SAMPLE:
                sc = lg / temperature + tl.load(noise_ptr + kv, mask=m_bv, other=0.0)
            else:
                sc = lg
            sc = tl.where(m_v[None, :], sc, float("-inf"))
            c_max, c_i = tl.max(sc, axis=1, return_indices=True, return_indices_tie_break_left=True)
            upd = c_max > best  # strict: the first of equal maxima wins, as torch.argmax
            best_i = tl.where(upd, c_i + v0, best_i)
            best = tl.where(upd, c_max, best)
            if RECORD_LL:
                c_l = tl.sum(tl.where(vv[None, :] == (c_i + v0)[:, None], lg, 0.0), axis=1)
                best_l = tl.where(upd, c_l, best_l)
                lgm = tl.where(m_v[None, :], lg, float("-inf"))
                new_m = tl.maximum(run_m, tl.max(lgm, axis=1))
                run_s = run_s * tl.exp(run_m - new_m) + tl.sum(tl.exp(lgm - new_m[:, None]), axis=1)
                run_m = new_m
        if RECORD_LL:
            ll += best_l - (run_m + tl.log(run_s))
        nxt = best_i.to(tl.int64)
        tl.store(tok_ptr + rows * s_tb + k * s_tk, nxt, mask=m_b)
        tl.store(otok_ptr + (pos * n_rows + rows) * K + k, nxt, mask=m_b)
    if RECORD_LL:
        tl.store(ll_ptr + rows, tl.load(ll_ptr + rows, mask=m_b, other=0.0) + ll, mask=m_b)
    tl.store(pos_ptr + rows, pos + 1, mask=m_b)


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def block_step_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, rows: int | None = None,
                      tile: int | None = None, num_warps: int | None = None, vocab: int = 1) -> dict:
    """Block sizes and warps of the kernel for blocks of these sizes and ``rows`` batch rows per program (``BB``,
    default 1): every product tile holds at most ``tile`` elements (default 8192; ``CONFIG_OVERRIDES`` may set
    ``rows``, ``tile``, ``num_warps`` and ``prefetch``). ``vocab``: V of a fused head (its logits are computed in
    chunks BV)."""
    block_e, block_d = _p2(d_inner), _p2(d_model)
    rows = int(rows or CONFIG_OVERRIDES.get("rows", _ROWS))
    tile = tile or CONFIG_OVERRIDES.get("tile", _TILE)
    chunk = max(1, tile // (rows * block_e))
    return {
        "BLOCK_D": block_d, "BLOCK_E": block_e, "BLOCK_R": _p2(dt_rank), "BLOCK_W": _p2(d_conv - 1), "BB": rows,
        "BD_IN": min(block_d, chunk), "BD_OUT": min(block_d, chunk), "BN": min(_p2(d_state), chunk),
        "BV": min(_p2(vocab), max(1, tile // (rows * block_d))),
        "PREFETCH": CONFIG_OVERRIDES.get("prefetch", _PREFETCH),
        "num_warps": num_warps or CONFIG_OVERRIDES.get("num_warps", _WARPS),
    }


# the block's weights in the order of mamba1_block_step's arguments; the optional ones may be None
BLOCK_WEIGHTS = ("norm_weight", "norm_bias", "in_proj_weight", "in_proj_bias", "conv_weight", "conv_bias",
                 "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D", "out_proj_weight",
                 "out_proj_bias")


def stack_block_weights(blocks: list[dict]) -> dict:
    """The weights of a stage's blocks (one dict per block, keys ``BLOCK_WEIGHTS``), stacked along a new leading
    block dimension (contiguous); an optional weight must be present in all blocks or in none."""
    out = {}
    for name in BLOCK_WEIGHTS:
        present = [b[name] is not None for b in blocks]
        if any(present) and not all(present):
            raise ValueError(f"stack_block_weights: {name} is present in some blocks only")
        out[name] = torch.stack([b[name].detach() for b in blocks]).contiguous() if all(present) else None
    return out


def _block_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a (blocks, B, ·, ·) state; a single block's (B, ·, ·) state gets block stride 0."""
    return t.stride() if t.dim() == 4 else (0, *t.stride())


def _launch(x, conv_state, ssm_state, weights, norm, eps, n_blocks, *, up=None, embed=None, tokens=None,
            down_buffer=None, up_buffer=None, residual=False, head=None):
    """One launch of the stage kernel; see ``mamba1_stage_step_triton``. Returns the stage output (B, D)."""
    ws = [_contig(weights[k]) for k in BLOCK_WEIGHTS]
    batch = conv_state.shape[-3]
    d_model = ws[2].shape[-1]
    d_inner, width = ws[4].shape[-2:]
    d_state = ws[9].shape[-1]
    dt_rank = ws[7].shape[-1]
    act = embed.dtype if embed is not None else x.dtype
    out = torch.empty(batch, d_model, device=conv_state.device, dtype=act)
    if batch == 0:
        return out
    scratch = torch.empty(2 if n_blocks > 1 else 1, batch, d_model, device=out.device, dtype=act)
    present = [t is not None for t in ws]
    any_w = ws[2]
    ws = [t if t is not None else any_w for t in ws]  # unused pointers (their HAS_* flag is off)
    n_codebooks = tokens.shape[-1] if tokens is not None else 1
    vocab = head["weight"].shape[0] // n_codebooks if head is not None else (
        embed.shape[0] // n_codebooks if embed is not None else 1)
    cfg = block_step_config(d_model, d_inner, d_state, dt_rank, width, vocab=vocab)
    rows = cfg["BB"]
    warps = cfg.pop("num_warps")
    pool = (up_buffer if up_buffer is not None else down_buffer)
    n_pool = 0 if pool is None else (up_buffer.shape[1] if up_buffer is not None else down_buffer.shape[1] + 1)
    zero3 = (0, 0, 0)
    h = head or {}
    hw = [h.get(k) for k in ("norm_weight", "norm_bias", "weight", "bias")]
    dummy = out
    tok = tokens.view(batch, -1) if tokens is not None else None  # a view: the head writes the next tokens
    _mamba1_stage_kernel[(triton.cdiv(batch, rows),)](
        x if x is not None else dummy, up if up is not None else dummy, embed if embed is not None else dummy,
        tok if tok is not None else dummy, down_buffer if down_buffer is not None else dummy,
        up_buffer if up_buffer is not None else dummy, out, scratch, conv_state, ssm_state, *ws,
        *[t if t is not None else dummy for t in hw],
        *[h[k] if h.get(k) is not None else dummy for k in ("noise", "pos", "out_tokens", "out_logits", "ll")],
        float(eps), float(h.get("eps", 0.0)), float(h.get("temperature", 1.0) or 1.0), batch, n_blocks,
        *(x.stride() if x is not None else (0, 0)), *(up.stride() if up is not None else (0, 0)),
        *(tok.stride() if tok is not None else (0, 0)),
        *(down_buffer.stride() if down_buffer is not None else zero3),
        *(up_buffer.stride() if up_buffer is not None else zero3),
        *_block_strides(conv_state), *_block_strides(ssm_state),
        D=d_model, E=d_inner, R=dt_rank, N=d_state, W=width, K=n_codebooks, V=vocab, P=max(n_pool, 2),
        BLOCK_K=_p2(n_codebooks), BLOCK_P=_p2(max(n_pool, 2)), **cfg,
        RMSNORM=norm == "rmsnorm", HAS_NORM_W=present[0], HAS_NORM_B=present[1], HAS_IN_B=present[3],
        HAS_CONV_B=present[5], HAS_D=present[10], HAS_OUT_B=present[12],
        EMBED=embed is not None, UP=up is not None, DOWN_PUSH=down_buffer is not None,
        UP_ROTATE=up_buffer is not None, RESIDUAL=residual, HEAD=head is not None,
        HEAD_RMS=h.get("norm") == "rmsnorm", HEAD_NORM_W=hw[0] is not None, HEAD_NORM_B=hw[1] is not None,
        HEAD_B=hw[3] is not None, SAMPLE=h.get("noise") is not None, RECORD_LOGITS=h.get("out_logits") is not None,
        RECORD_LL=h.get("ll") is not None,
        num_warps=warps,
    )
    return out


def mamba1_block_step_triton(
    x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
    x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, norm="layernorm",
    eps=1e-5,
):
    """Triton launcher of one block; contract of ``mamba1_block_step_ref`` (arguments checked by the public op).

    Args:
        x: (B, D) any strides. conv_state: (B, E, W-1), ssm_state: (B, E, N) float32, both updated in place.
        Weights as in ``mamba1_block_step_ref``.

    Returns:
        out: (B, D) in x's dtype, x + the block's mixer output.
    """
    weights = dict(zip(BLOCK_WEIGHTS, (norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
                                       x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
                                       out_proj_bias)))
    return _launch(x, conv_state, ssm_state, weights, norm, eps, 1)


def mamba1_stage_step_triton(x, conv_states, ssm_states, weights, norm="layernorm", eps=1e-5, *, up=None,
                             embed=None, tokens=None, down_buffer=None, up_buffer=None, residual=True, head=None):
    """One step of a stage of Mamba-1 blocks in one launch (see the module docstring); states updated in place.

    Args:
        x: (B, D) stage input, any strides; None with ``embed``.
        conv_states: (n_blocks, B, E, W-1), ssm_states: (n_blocks, B, E, N) float32, batch strides as a contiguous
            tensor's slices (any).
        weights: ``stack_block_weights`` output (n_blocks, ...) tensors. norm, eps: the blocks' norm.
        up: (B, D) up-pool output added to x (any strides; with ``up_buffer``: its row P-1, read after the
            rotation).
        embed: (K·V, D) summed-codebook embedding table; the stage input is then Σ_k embed[tokens[:, k] + k V].
        tokens: (B, 1, K) or (B, K) int64 current tokens (read with ``embed``, written with ``head``).
        down_buffer: (B, P-1, D) down-pool window that takes the stage input (before the up-pool add).
        up_buffer: (B, P, D) up-pool buffer, rotated by one step before ``up`` is read.
        residual: add the stage input to the last block's output.
        head: dict for the fused epilogue: ``norm`` ("layernorm"/"rmsnorm"), ``norm_weight``, ``norm_bias``, ``eps``
            (the final norm), ``weight`` (K·V, D), ``bias``, ``temperature`` (0: greedy), ``noise`` (T, B, K, V)
            Gumbel noise or None (greedy), ``pos`` (B,) int64 row positions in the blocks of ``noise`` /
            ``out_tokens`` (T, B, K) int64 / ``out_logits`` (T, B, K, V) float32 or None / ``ll`` (B,) float32 or
            None (summed log-probabilities).

    Returns:
        (B, D) the stage output.
    """
    return _launch(x, conv_states, ssm_states, weights, norm, eps, conv_states.shape[0], up=up, embed=embed,
                   tokens=tokens, down_buffer=down_buffer, up_buffer=up_buffer, residual=residual, head=head)


__all__ = ["BLOCK_WEIGHTS", "block_step_config", "mamba1_block_step_triton", "mamba1_stage_step_triton",
           "stack_block_weights"]
