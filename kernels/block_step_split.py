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
stage residual and writes the stage output.

Many rows (batch 64: every row reads every weight, and every program of a row reads all S partial sums of its row,
so the stage is bound by L2 traffic, benchmarks/notes/block_step.md): a program takes ``RB`` consecutive rows (grid
(S, B / RB)), loads its weight slices once and runs the rows one after the other with them; with ``ONCE`` the
partial sums are reduced once per row rather than once per program: the last program of a row group to arrive
(arrival counters) sums the x_proj partials into a (B, R + 2N) scratch after ``in``, and after ``out`` sums the
out_proj partials into the next block's input in the h scratch, so the programs of the next phase read one row
instead of S.

Same contract as ``mamba1_stage_step_triton``; float32 arithmetic and SSM state, float32 / bfloat16 weights and
activations, values rounded to the activations' dtype where the unfused modules round them. Partial sums go through
float32 scratch, so the sums differ from the one-program kernel only in their order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus
from .block_step import _A_LOG, _CONV_W, _DT_W, _IN_W, _OPTIONAL, _contig, _p2, _silu

# The rules behind ``SplitLaunch``'s defaults (H200 sweeps, benchmarks/notes/block_step.md): warps per program 4, or
# 2 from ``_MANY_ROWS`` rows on (at batch 64 every row reads every weight and the stage is L2-bound); from
# ``_MANY_ROWS`` rows on the partial sums are reduced once per row, and a program takes up to ``_ROWS_MANY`` rows as
# long as the launch keeps ``_MIN_PROGRAMS`` programs (batch 64, version 5: D = 256, 32 slices: 4 rows 251 µs per
# stage against 311 for one; D = 128, 8 slices: one row, 100 µs, 2 rows 135).
_WARPS, _WARPS_MANY, _MANY_ROWS = 4, 2, 16
_ROWS_MANY, _MIN_PROGRAMS = 4, 512


@dataclass(frozen=True)
class SplitLaunch:
    """Launch settings of the split stage step; those left None follow the number of rows (``split_config``).

    Attributes:
        tile: largest in_proj tile (BE, D) per program, in elements; sets BE, the channels per slice (D = 256:
            BE = 16, 32 slices of E = 512; D = 128: BE = 32, 8 slices).
        rows: rows per program (RB). Default: 1 below 16 rows, else the largest power of two up to 4 that keeps
            512 programs per launch.
        once: reduce the partial sums once per row (``ONCE``). Default: from 16 rows on.
        num_warps: warps per program. Default: 4 below 16 rows, else 2.
    """

    tile: int = 4096
    rows: int | None = None
    once: bool | None = None
    num_warps: int | None = None

    def __post_init__(self):
        if self.tile < 1 or (self.rows is not None and self.rows < 1) or (
                self.num_warps is not None and self.num_warps < 1):
            raise ValueError(f"SplitLaunch: tile, rows and num_warps must be >= 1, got {self}")


DEFAULT_SPLIT_LAUNCH = SplitLaunch()


def split_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, batch: int = 1,
                 launch: SplitLaunch = DEFAULT_SPLIT_LAUNCH) -> dict:
    """Block sizes of the kernel for ``batch`` rows: BE channels per slice (every (BE, D) tile at most
    ``launch.tile`` elements), S = ceil(E / BE) slices, RB rows per program, ONCE (partial sums reduced once per
    row), warps; the settings ``launch`` leaves None by the rules of ``SplitLaunch``."""
    many = batch >= _MANY_ROWS
    block_d = _p2(d_model)
    block_e = min(_p2(d_inner), max(1, launch.tile // block_d))
    slices = triton.cdiv(d_inner, block_e)
    rows = launch.rows if launch.rows is not None else (_rows_per_program(slices, batch) if many else 1)
    return {"BLOCK_D": block_d, "BE": block_e, "S": slices, "BLOCK_S": _p2(slices), "BLOCK_R": _p2(dt_rank),
            "BLOCK_N": _p2(d_state), "BLOCK_W": _p2(d_conv - 1), "BLOCK_L": _p2(dt_rank + 2 * d_state),
            "RB": rows, "ONCE": launch.once if launch.once is not None else many,
            "num_warps": launch.num_warps if launch.num_warps is not None else (_WARPS_MANY if many else _WARPS)}


def _rows_per_program(slices: int, batch: int) -> int:
    """Rows per program for many rows: the largest power of two up to ``_ROWS_MANY`` that keeps ``_MIN_PROGRAMS``
    programs per launch (at least 1)."""
    rows = 1
    while rows < _ROWS_MANY and slices * batch // (2 * rows) >= _MIN_PROGRAMS:
        rows *= 2
    return rows


@triton.jit
def _block_sum(part_ptr, b, cols, m_cols, L: tl.constexpr, S: tl.constexpr, BLOCK_S: tl.constexpr):
    """Σ_s part[b, s, cols] of a (B, S, L) float32 partial-sum scratch, in slice order: (len(cols),)."""
    ss = tl.arange(0, BLOCK_S)
    v = tl.load(part_ptr + (b * S + ss[:, None]) * L + cols[None, :], mask=(ss < S)[:, None] & m_cols[None, :],
                other=0.0, cache_modifier=".cg")
    return tl.sum(v, axis=0)


@triton.jit
def _h_row(hbuf_ptr, i, b, n_rows, D: tl.constexpr):
    """Row b of block i's input in the (2, B, D) ping-pong h scratch."""
    return hbuf_ptr + (i % 2) * n_rows * D + b * D


@triton.jit
def _block_input(FIRST: tl.constexpr, i, b, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, hbuf_ptr, opart_ptr, out_b_ptr,
                 n_rows, offs_d, m_d, D: tl.constexpr, S: tl.constexpr, BLOCK_S: tl.constexpr, UP: tl.constexpr,
                 HAS_OUT_B: tl.constexpr):
    """(BLOCK_D,) float32 input row of block i, rounded to the activations' dtype: the stage input x (+ up) for the
    first block, else block i-1's input (scratch) + its out_proj partials (+ bias)."""
    if FIRST:
        v = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=m_d, other=0.0).to(tl.float32)
        if UP:
            v += tl.load(up_ptr + b * s_ub + offs_d * s_ud, mask=m_d, other=0.0).to(tl.float32)
    else:
        prev = _h_row(hbuf_ptr, i - 1, b, n_rows, D)
        v = tl.load(prev + offs_d, mask=m_d, other=0.0, cache_modifier=".cg").to(tl.float32)
        # partials (B, S, D): slice s of row b at (b * S + s) * D
        v += _block_sum(opart_ptr, b, offs_d, m_d, D, S, BLOCK_S)
        if HAS_OUT_B:
            v += tl.load(out_b_ptr + (i - 1) * D + offs_d, mask=m_d, other=0.0).to(tl.float32)
    return v.to(hbuf_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _arrive(count_ptr, S: tl.constexpr):
    """Count this program's arrival (after every thread's stores); True for the last of the S programs, which then
    sees the others' stores (acq_rel atomic) and must reset the counter."""
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1) == S - 1


@triton.jit
def _phase_in(FIRST: tl.constexpr, i, g, s, x_ptr, up_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr, xsum_ptr,
              count_ptr, conv_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr,
              out_b_ptr, eps, n_rows, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw,
              D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
              S: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BLOCK_S: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_L: tl.constexpr,
              RB: tl.constexpr, ONCE: tl.constexpr,
              UP: tl.constexpr, RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr,
              HAS_IN_B: tl.constexpr, HAS_CONV_B: tl.constexpr, HAS_OUT_B: tl.constexpr):
    """Block i, slice s, rows g·RB ... g·RB + RB - 1: input row and norm, the slice's in_proj rows, conv, x_proj
    partial sums (with ONCE, the group's last program sums them per row). The weight slices are loaded once, first,
    for all the rows; each row's conv state and input are loaded together, so that a row waits for one round of L2
    reads."""
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
    # ---- conv weights, x_proj columns of the slice
    offs_w = tl.arange(0, BLOCK_W)
    m_ew = m_e[:, None] & (offs_w < W - 1)[None, :]
    cw = tl.load(conv_w_ptr + i * (E * W) + e[:, None] * W + offs_w[None, :], mask=m_ew, other=0.0).to(tl.float32)
    cw_last = tl.load(conv_w_ptr + i * (E * W) + e * W + (W - 1), mask=m_e, other=0.0).to(tl.float32)
    xp_w = xp_w_ptr + i * ((R + 2 * N) * E)
    rr = tl.arange(0, BLOCK_R)
    m_r = rr < R
    nn = tl.arange(0, BLOCK_N)
    m_n = nn < N
    m_ne = m_n[:, None] & m_e[None, :]
    w_r = tl.load(xp_w + rr[:, None] * E + e[None, :], mask=m_r[:, None] & m_e[None, :], other=0.0).to(tl.float32)
    w_b = tl.load(xp_w + (R + nn)[:, None] * E + e[None, :], mask=m_ne, other=0.0).to(tl.float32)
    w_c = tl.load(xp_w + (R + N + nn)[:, None] * E + e[None, :], mask=m_ne, other=0.0).to(tl.float32)

    for r in tl.static_range(RB):
        b = g * RB + r
        if b < n_rows:
            # ---- conv state (taps 0..W-2) of the row
            c_row = conv_ptr + i * s_ci + b * s_cb + e[:, None] * s_ce
            old = tl.load(c_row + offs_w[None, :] * s_cw, mask=m_ew, other=0.0).to(tl.float32)  # (BE, BLOCK_W)
            nxt = tl.load(c_row + (offs_w + 1)[None, :] * s_cw, mask=m_ew & (offs_w < W - 2)[None, :], other=0.0)
            if ONCE and not FIRST:  # block i's input, summed by block i-1's last program
                v = tl.load(_h_row(hbuf_ptr, i, b, n_rows, D) + offs_d, mask=m_d, other=0.0,
                            cache_modifier=".cg").to(tl.float32)
            else:
                v = _block_input(FIRST, i, b, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, hbuf_ptr, opart_ptr, out_b_ptr,
                                 n_rows, offs_d, m_d, D, S, BLOCK_S, UP, HAS_OUT_B)  # (BLOCK_D,)
                if s == 0:  # block i's input, for block i+1 and the stage output
                    tl.store(_h_row(hbuf_ptr, i, b, n_rows, D) + offs_d, v.to(hbuf_ptr.dtype.element_ty), mask=m_d)
            if RMSNORM:
                hn = v / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
            else:
                xc = tl.where(m_d, v - tl.sum(v, axis=0) / D, 0.0)
                hn = xc / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
            if HAS_NORM_W:
                hn = hn * tl.load(norm_w_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)
            if HAS_NORM_B:
                hn = hn + tl.load(norm_b_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)
            hn = tl.where(m_d, hn, 0.0)
            u = tl.sum(w_u * hn[None, :], axis=1)  # (BE,)
            z = tl.sum(w_z * hn[None, :], axis=1)
            if HAS_IN_B:
                u += tl.load(in_b_ptr + i * (2 * E) + e, mask=m_e, other=0.0).to(tl.float32)
                z += tl.load(in_b_ptr + i * (2 * E) + E + e, mask=m_e, other=0.0).to(tl.float32)

            # ---- causal conv over [conv_state, u] and the state shift, in place
            u_r = u.to(conv_ptr.dtype.element_ty)  # the value the state will hold
            pre = tl.sum(cw * old, axis=1) + cw_last * u_r.to(tl.float32)
            if HAS_CONV_B:
                pre += tl.load(conv_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)
            c = tl.where(m_e, _silu(pre), 0.0)  # (BE,)

            # ---- x_proj partial sums over the slice: (R + 2N,) at x_part[b, s]
            dst = xpart_ptr + (b * S + s) * (R + 2 * N)
            tl.store(dst + rr, tl.sum(w_r * c[None, :], axis=1), mask=m_r)
            tl.store(dst + R + nn, tl.sum(w_b * c[None, :], axis=1), mask=m_n)
            tl.store(dst + R + N + nn, tl.sum(w_c * c[None, :], axis=1), mask=m_n)
            tl.store(cz_ptr + b * (2 * E) + e, c, mask=m_e)
            tl.store(cz_ptr + b * (2 * E) + E + e, z, mask=m_e)
            tl.debug_barrier()  # every thread has read the old conv state before any thread overwrites it
            tl.store(c_row + offs_w[None, :] * s_cw, tl.where((offs_w == W - 2)[None, :], u_r[:, None], nxt),
                     mask=m_ew)
    if ONCE:
        if _arrive(count_ptr + g, S):  # the group's last program: x_part summed once per row
            cols = tl.arange(0, BLOCK_L)
            m_l = cols < R + 2 * N
            for r in tl.static_range(RB):
                b = g * RB + r
                if b < n_rows:
                    tl.store(xsum_ptr + b * (R + 2 * N) + cols,
                             _block_sum(xpart_ptr, b, cols, m_l, R + 2 * N, S, BLOCK_S), mask=m_l)
            tl.store(count_ptr + g, 0)


@triton.jit
def _phase_out(i, g, s, opart_ptr, cz_ptr, xpart_ptr, xsum_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
               out_w_ptr, n_rows, s_hi, s_hb, s_he, s_hn, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr,
               N: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BLOCK_S: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, RB: tl.constexpr, ONCE: tl.constexpr,
               HAS_D: tl.constexpr):
    """Block i, slice s, rows g·RB ... g·RB + RB - 1: Δ, the state update and readout, gate, out_proj partial
    sums."""
    e = s * BE + tl.arange(0, BE)
    m_e = e < E
    rr = tl.arange(0, BLOCK_R)
    m_r = rr < R
    nn = tl.arange(0, BLOCK_N)
    m_n = nn < N
    L: tl.constexpr = R + 2 * N
    # ---- loads that depend on nothing computed: weights of the slice, once for the rows
    w_dt = tl.load(dt_w_ptr + i * (E * R) + e[:, None] * R + rr[None, :], mask=m_e[:, None] & m_r[None, :],
                   other=0.0).to(tl.float32)  # (BE, BLOCK_R)
    dt_b = tl.load(dt_b_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)
    m_en = m_e[:, None] & m_n[None, :]
    a_l = tl.load(a_log_ptr + i * (E * N) + e[:, None] * N + nn[None, :], mask=m_en, other=0.0).to(tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    w_o = tl.load(out_w_ptr + i * (D * E) + offs_d[:, None] * E + e[None, :], mask=m_d[:, None] & m_e[None, :],
                  other=0.0).to(tl.float32)  # (BLOCK_D, BE)
    if HAS_D:
        d_skip = tl.load(d_ptr + i * E + e, mask=m_e, other=0.0).to(tl.float32)
    for r in tl.static_range(RB):
        b = g * RB + r
        if b < n_rows:
            h_row = ssm_ptr + i * s_hi + b * s_hb + e[:, None] * s_he + nn[None, :] * s_hn
            h = tl.load(h_row, mask=m_en, other=0.0)  # (BE, BLOCK_N) float32
            c = tl.load(cz_ptr + b * (2 * E) + e, mask=m_e, other=0.0, cache_modifier=".cg")
            z = tl.load(cz_ptr + b * (2 * E) + E + e, mask=m_e, other=0.0, cache_modifier=".cg")
            # ---- δ, B, C: the x_proj partials summed over the slices
            if ONCE:  # summed once, by the ``in`` phase's last program
                delta = tl.load(xsum_ptr + b * L + rr, mask=m_r, other=0.0, cache_modifier=".cg")
                bv = tl.load(xsum_ptr + b * L + R + nn, mask=m_n, other=0.0, cache_modifier=".cg")
                cv = tl.load(xsum_ptr + b * L + R + N + nn, mask=m_n, other=0.0, cache_modifier=".cg")
            else:
                delta = _block_sum(xpart_ptr, b, rr, m_r, L, S, BLOCK_S)  # (BLOCK_R,)
                bv = _block_sum(xpart_ptr, b, R + nn, m_n, L, S, BLOCK_S)  # (BLOCK_N,)
                cv = _block_sum(xpart_ptr, b, R + N + nn, m_n, L, S, BLOCK_S)
            dt = tl.sum(w_dt * delta[None, :], axis=1) + dt_b
            dt = tl.where(m_e, _softplus(dt), 0.0)  # (BE,)
            if HAS_D:
                y = d_skip * c
            else:
                y = tl.zeros([BE], tl.float32)
            h = tl.exp(dt[:, None] * -tl.exp(a_l)) * h + (dt * c)[:, None] * bv[None, :]
            y += tl.sum(h * cv[None, :], axis=1)
            tl.debug_barrier()  # the old state is read everywhere before it is overwritten
            tl.store(h_row, h, mask=m_en)
            y = tl.where(m_e, y * _silu(z), 0.0)
            tl.store(opart_ptr + (b * S + s) * D + offs_d, tl.sum(w_o * y[None, :], axis=1), mask=m_d)


@triton.jit
def _finish(i, b, x_ptr, up_ptr, out_ptr, hbuf_ptr, opart_ptr, out_b_ptr, n_rows, s_xb, s_xd, s_ub, s_ud,
            D: tl.constexpr, S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, UP: tl.constexpr,
            RESIDUAL: tl.constexpr, HAS_OUT_B: tl.constexpr):
    """Row b after the last block i: the stage output, block i's input + its partials (+ bias) (+ the stage
    input)."""
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    hv = tl.load(_h_row(hbuf_ptr, i, b, n_rows, D) + offs_d, mask=m_d, other=0.0,
                 cache_modifier=".cg").to(tl.float32)
    hv += _block_sum(opart_ptr, b, offs_d, m_d, D, S, BLOCK_S)
    if HAS_OUT_B:
        hv += tl.load(out_b_ptr + i * D + offs_d, mask=m_d, other=0.0).to(tl.float32)
    o = hv.to(out_ptr.dtype.element_ty)
    if RESIDUAL:
        h0 = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=m_d, other=0.0).to(tl.float32)
        if UP:
            h0 = (h0 + tl.load(up_ptr + b * s_ub + offs_d * s_ud, mask=m_d, other=0.0).to(tl.float32))
            h0 = h0.to(out_ptr.dtype.element_ty).to(tl.float32)
        o = (o.to(tl.float32) + h0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + b * D + offs_d, o, mask=m_d)


@triton.jit(do_not_specialize=["i"])
def _split_kernel(
    x_ptr, up_ptr, out_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr, xsum_ptr, conv_ptr, ssm_ptr,
    count_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr,
    d_ptr, out_w_ptr, out_b_ptr,
    i, eps, n_rows,
    s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
    S: tl.constexpr, BLOCK_D: tl.constexpr, BE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_L: tl.constexpr,
    RB: tl.constexpr, ONCE: tl.constexpr, MODE: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    UP: tl.constexpr, RESIDUAL: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr,
):
    """Grid (S, B / RB): slice s = program 0, row group g = program 1. MODE 0: block i's ``in`` phase; MODE 1: its
    ``out`` phase, after which the group's last program to arrive finishes the stage (LAST) or, with ONCE, writes
    the next block's input rows; it resets the group's counter. Counters: (2, B) int32, row 0 for ``in``, row 1
    for ``out``."""
    s = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    if MODE == 0:
        _phase_in(FIRST, i, g, s, x_ptr, up_ptr, hbuf_ptr, opart_ptr, cz_ptr, xpart_ptr, xsum_ptr, count_ptr,
                  conv_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, out_b_ptr,
                  eps, n_rows, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, D, E, R, N, W, S, BLOCK_D, BE,
                  BLOCK_S, BLOCK_R, BLOCK_N, BLOCK_W, BLOCK_L, RB, ONCE, UP, RMSNORM, HAS_NORM_W, HAS_NORM_B,
                  HAS_IN_B, HAS_CONV_B, HAS_OUT_B)
    else:
        _phase_out(i, g, s, opart_ptr, cz_ptr, xpart_ptr, xsum_ptr, ssm_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
                   out_w_ptr, n_rows, s_hi, s_hb, s_he, s_hn, D, E, R, N, S, BLOCK_D, BE, BLOCK_S, BLOCK_R, BLOCK_N,
                   RB, ONCE, HAS_D)
        if LAST or ONCE:
            cnt = count_ptr + n_rows + g
            if _arrive(cnt, S):  # the group's last program: the partials of every slice are visible
                offs_d = tl.arange(0, BLOCK_D)
                m_d = offs_d < D
                for r in tl.static_range(RB):
                    b = g * RB + r
                    if b < n_rows:
                        if LAST:
                            _finish(i, b, x_ptr, up_ptr, out_ptr, hbuf_ptr, opart_ptr, out_b_ptr, n_rows, s_xb,
                                    s_xd, s_ub, s_ud, D, S, BLOCK_D, BLOCK_S, UP, RESIDUAL, HAS_OUT_B)
                        else:  # block i+1's input row, summed once
                            v = _block_input(False, i + 1, b, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, hbuf_ptr,
                                             opart_ptr, out_b_ptr, n_rows, offs_d, m_d, D, S, BLOCK_S, UP, HAS_OUT_B)
                            tl.store(_h_row(hbuf_ptr, i + 1, b, n_rows, D) + offs_d,
                                     v.to(hbuf_ptr.dtype.element_ty), mask=m_d)
                tl.store(cnt, 0)  # every program of the group has arrived: ready for the next launch


def split_workspace(batch: int, d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int,
                    device, dtype: torch.dtype, launch: SplitLaunch = DEFAULT_SPLIT_LAUNCH) -> dict:
    """Scratch of one stage for the split step with the settings ``launch`` (reusable across steps; keep one per
    stage for CUDA graphs): block inputs (2, B, D) in the activations' dtype, c and z (B, 2, E), x_proj and out_proj
    partial sums (B, S, R + 2N) and (B, S, D) float32 and the x_proj sums (B, R + 2N) float32, arrival counters
    (2, B) int32 (zero; the kernels leave them zero)."""
    slices = split_config(d_model, d_inner, d_state, dt_rank, d_conv, batch, launch)["S"]
    f32 = torch.float32
    return {
        "h": torch.empty(2, batch, d_model, device=device, dtype=dtype),
        "cz": torch.empty(batch, 2, d_inner, device=device, dtype=f32),
        "x_part": torch.empty(batch, slices, dt_rank + 2 * d_state, device=device, dtype=f32),
        "x_sum": torch.empty(batch, dt_rank + 2 * d_state, device=device, dtype=f32),
        "out_part": torch.empty(batch, slices, d_model, device=device, dtype=f32),
        "count": torch.zeros(2, batch, device=device, dtype=torch.int32),
        "slices": slices,
    }


def mamba1_stage_step_split_triton(x, conv_states, ssm_states, weights, norm="layernorm", eps=1e-5, *, up=None,
                                   residual=True, workspace=None, launch: SplitLaunch = DEFAULT_SPLIT_LAUNCH):
    """One step of a stage of Mamba-1 blocks, each block split over slices of E (module docstring); states
    updated in place.

    Args:
        x: (B, D) stage input, any strides. conv_states: (n_blocks, B, E, W-1), ssm_states: (n_blocks, B, E, N)
            float32. weights: ``stack_block_weights`` output. norm, eps: the blocks' norm.
        up: (B, D) a second input row added to x (the up-pool output), any strides.
        residual: add the stage input (x + up) to the last block's output.
        workspace: ``split_workspace`` for these sizes and settings (allocated here when None).
        launch: tile size, rows per program, once-per-row sums and warps.

    Returns:
        (B, D) the stage output, in x's dtype.
    """
    ws = [_contig(w) for w in weights]
    n_blocks, batch, d_inner, _ = conv_states.shape
    d_model = ws[_IN_W].shape[-1]
    width = ws[_CONV_W].shape[-1]
    d_state = ws[_A_LOG].shape[-1]
    dt_rank = ws[_DT_W].shape[-1]
    out = torch.empty(batch, d_model, device=x.device, dtype=x.dtype)
    if batch == 0:
        return out
    if workspace is None:
        workspace = split_workspace(batch, d_model, d_inner, d_state, dt_rank, width, x.device, x.dtype, launch)
    cfg = split_config(d_model, d_inner, d_state, dt_rank, width, batch, launch)
    warps = cfg.pop("num_warps")
    slices = cfg["S"]
    if workspace["slices"] != slices or workspace["h"].shape[1:] != (batch, d_model):
        raise ValueError(f"workspace: made for {workspace['h'].shape[1]} rows of width {workspace['h'].shape[2]} "
                         f"in {workspace['slices']} slices, this stage needs {batch} x {d_model} in {slices}")
    flags = {name: ws[k] is not None for name, k in _OPTIONAL.items()}
    ws = [t if t is not None else ws[_IN_W] for t in ws]  # unused pointers (their HAS_* flag is off)
    args = (x, up if up is not None else x, out, workspace["h"], workspace["out_part"], workspace["cz"],
            workspace["x_part"], workspace["x_sum"], conv_states, ssm_states, workspace["count"], *ws)
    strides = (*x.stride(), *(up.stride() if up is not None else (0, 0)), *conv_states.stride(),
               *ssm_states.stride())
    flags.update(D=d_model, E=d_inner, R=dt_rank, N=d_state, W=width, **cfg, UP=up is not None, RESIDUAL=residual,
                 RMSNORM=norm == "rmsnorm", num_warps=warps)
    grid = (slices, triton.cdiv(batch, cfg["RB"]))
    for i in range(n_blocks):
        for mode in (0, 1):
            _split_kernel[grid](*args, i, float(eps), batch, *strides, MODE=mode, FIRST=mode == 0 and i == 0,
                                LAST=mode == 1 and i == n_blocks - 1, **flags)
    return out


__all__ = ["DEFAULT_SPLIT_LAUNCH", "SplitLaunch", "mamba1_stage_step_split_triton", "split_config",
           "split_workspace"]
