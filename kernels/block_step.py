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

One launch runs a whole stage of blocks for one step: ``n_blocks`` such blocks in turn (their weights stacked along
a leading block dimension, their states (blocks, B, E, ·) updated in place), each program owning ``BB`` batch rows.
The stage input is x plus an optional second row ``up`` (``UP``), and the stage may add its input to the last
block's output (``RESIDUAL``).

The stage body is the device function ``mamba1_stage_rows``, which a caller's own kernel can surround with work of
its own in the same launch: ``stage_step_args`` returns the body's arguments in order, so that a kernel whose
parameters continue with the body's parameters can be launched with them. ``_mamba1_stage_kernel`` is the body
alone.

Every intermediate stays in registers except the block output, which passes to the next block through a (2, B, D)
scratch (ping-pong). The matrix-vector products loop over chunks so that no product tile exceeds the configured
number of elements (``StageLaunch.tile``): in_proj over chunks of its reduction dim D, x_proj + scan over chunks
of N, out_proj over chunks of its output dim D. The chunk loops are double-buffered: chunk k+1's tiles are loaded
before chunk k is reduced, so that each chunk does not wait for its own L2 round trip.

States are read before a barrier and written after it: elements replicated over several threads are then never
read after another thread has already overwritten them. Weights and activations may be float32 or bfloat16
(float16 works too); all arithmetic and the SSM state are float32. Values that the unfused modules round to the
activations' dtype (the conv input, block outputs, the sum of x and up) are rounded here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus


@dataclass(frozen=True)
class StageLaunch:
    """Launch settings of the stage kernel (benchmarks/notes/block_step.md has the sweeps behind the defaults).

    Attributes:
        tile: largest product tile per program, in elements (the program's rows included). Offline sm_90 compiles:
            16384-element tiles at E = 512 leave ptxas at 64 registers with ~3 KB of spills, 8192 stays at 128.
        num_warps: warps per program.
        rows: batch rows per program (``BB``). Sharing each weight tile's L2 read between rows was slower on the
            H200 (sc09_small generation at batch 64: 489 k samples/s with 1 row per program, 272 k with 2, 145 k
            with 4).
    """

    tile: int = 8192
    num_warps: int = 16
    rows: int = 1

    def __post_init__(self):
        if min(self.tile, self.num_warps, self.rows) < 1:
            raise ValueError(f"StageLaunch: tile, num_warps and rows must be >= 1, got {self}")


DEFAULT_LAUNCH = StageLaunch()


@triton.jit
def _silu(v):
    return v * tl.sigmoid(v)


@triton.jit
def _stage_input(x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows, dd, m2, out_ptr, UP: tl.constexpr):
    """(BB, BD) float32 rows of the stage input: x plus the up-pool output when UP, rounded to the activations'
    dtype as the unfused sum is."""
    v = tl.load(x_ptr + rows[:, None] * s_xb + dd[None, :] * s_xd, mask=m2, other=0.0).to(tl.float32)
    if UP:
        up = tl.load(up_ptr + rows[:, None] * s_ub + dd[None, :] * s_ud, mask=m2, other=0.0).to(tl.float32)
        v = (up + v).to(out_ptr.dtype.element_ty).to(tl.float32)
    return v


@triton.jit
def _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows, dd, m2, out_ptr, D: tl.constexpr,
                 UP: tl.constexpr):
    """(BB, BD) float32: block i's input rows, the stage input for i = 0, else block i-1's output (scratch)."""
    first = i == 0
    v_in = _stage_input(x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows, dd, m2 & first, out_ptr, UP)
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
def mamba1_stage_rows(
    rows, m_b,
    # activations, scratch and states
    x_ptr, up_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr,
    a_log_ptr, d_ptr, out_w_ptr, out_b_ptr,
    eps, n_rows, n_blocks,
    s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    # sizes and options
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BB: tl.constexpr,
    BD_IN: tl.constexpr, BD_OUT: tl.constexpr, BN: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr, UP: tl.constexpr, RESIDUAL: tl.constexpr,
):
    """One step of a stage of blocks for the batch rows ``rows`` (BB,) int64 (mask ``m_b``): reads x (+ up), runs
    the blocks, writes the stage output rows to ``out_ptr`` (B, D) and updates the states in place. Ends with a
    barrier, so the caller's code after it sees the output rows of this program. Arguments: ``stage_step_args``."""
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    m_bd = m_b[:, None] & m_d[None, :]  # (BB, BLOCK_D)
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
        xv = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows,
                          offs_d, m_bd, out_ptr, D, UP)  # (BB, BLOCK_D)
        # ---- norm statistics (BB,)
        if RMSNORM:
            mean = tl.zeros([BB], tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=1) / D + eps)
        else:
            mean = tl.sum(xv, axis=1) / D
            xc = tl.where(m_bd, xv - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)

        # ---- in_proj (BB, E) x 2, over chunks of the reduction dim D (chunk k+1's tiles are loaded before chunk k
        # is reduced, carried by the loop)
        acc_u = tl.zeros([BB, BLOCK_E], tl.float32)
        acc_z = tl.zeros([BB, BLOCK_E], tl.float32)
        if BD_IN < D:
            wu_n, wz_n = _in_chunk(in_w, tl.arange(0, BD_IN), offs_e, m_e, D, E)
        for d0 in tl.range(0, D, BD_IN):
            dd = d0 + tl.arange(0, BD_IN)
            m_dd = dd < D
            if BD_IN < D:
                w_u, w_z = wu_n, wz_n
                wu_n, wz_n = _in_chunk(in_w, dd + BD_IN, offs_e, m_e, D, E)
            else:
                w_u, w_z = _in_chunk(in_w, dd, offs_e, m_e, D, E)
            m2 = m_b[:, None] & m_dd[None, :]
            xs = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows,
                              dd, m2, out_ptr, D, UP)  # (BB, BD_IN)
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

        # ---- B, C chunks and the state update, in place; y += Σ_n ssm[:, n] C[n] (chunk k+1 loaded before chunk k
        # is reduced)
        sc_n = _scan_chunk(xp_w, a_log, h_row, s_hn, tl.arange(0, BN), offs_e, m_e, m_b, R, N, E)
        for n0 in tl.static_range(0, N, BN):
            nn = n0 + tl.arange(0, BN)
            w_b, w_c, a_l, h = sc_n
            if n0 + BN < N:
                sc_n = _scan_chunk(xp_w, a_log, h_row, s_hn, nn + BN, offs_e, m_e, m_b, R, N, E)
            bv = tl.sum(w_b * c[:, None, :], axis=2)  # (BB, BN)
            cv = tl.sum(w_c * c[:, None, :], axis=2)
            m_en = m_b[:, None, None] & (m_e[:, None] & (nn < N)[None, :])
            tl.debug_barrier()  # the old state slice is read everywhere before it is overwritten
            h = tl.exp(dt[:, :, None] * -tl.exp(a_l)) * h + dtc[:, :, None] * bv[:, None, :]
            y += tl.sum(h * cv[:, None, :], axis=2)
            tl.store(h_row + nn[None, None, :] * s_hn, h, mask=m_en)
        y = y * _silu(acc_z)  # (BB, BLOCK_E)

        # ---- out_proj + residual over chunks of the output dim D (chunk k+1 loaded before chunk k's reduction); the
        # last block adds the stage residual and writes the stage output, the others the scratch slot that the next
        # block reads
        dst = buf_ptr + (i % 2) * n_rows * D
        if BD_OUT < D:
            wo_n = _out_chunk(out_w, tl.arange(0, BD_OUT), offs_e, m_e, D, E)
        for d0 in tl.range(0, D, BD_OUT):
            dd = d0 + tl.arange(0, BD_OUT)
            m_dd = dd < D
            if BD_OUT < D:
                w_o = wo_n
                wo_n = _out_chunk(out_w, dd + BD_OUT, offs_e, m_e, D, E)
            else:
                w_o = _out_chunk(out_w, dd, offs_e, m_e, D, E)
            m2 = m_b[:, None] & m_dd[None, :]
            xr = _block_input(i, buf_ptr, n_rows, x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows,
                              dd, m2, out_ptr, D, UP)
            o = tl.sum(w_o * y[:, None, :], axis=2) + xr  # (BB, BD_OUT)
            if HAS_OUT_B:
                o += tl.load(out_b_ptr + i * D + dd, mask=m_dd, other=0.0).to(tl.float32)[None, :]
            o = o.to(out_ptr.dtype.element_ty)
            if RESIDUAL:
                h0 = _stage_input(x_ptr, s_xb, s_xd, up_ptr, s_ub, s_ud, rows, dd, m2 & last, out_ptr, UP)
                o = tl.where(last, (o.to(tl.float32) + h0).to(out_ptr.dtype.element_ty), o)
            o_off = rows[:, None] * D + dd[None, :]
            tl.store(out_ptr + o_off, o, mask=m2 & last)
            tl.store(dst + o_off, o, mask=m2 & (i < n_blocks - 1))
        tl.debug_barrier()  # the block's output is visible to every thread before the next block reads it


@triton.jit
def _mamba1_stage_kernel(
    x_ptr, up_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr,
    a_log_ptr, d_ptr, out_w_ptr, out_b_ptr,
    eps, n_rows, n_blocks,
    s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BB: tl.constexpr,
    BD_IN: tl.constexpr, BD_OUT: tl.constexpr, BN: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr, UP: tl.constexpr, RESIDUAL: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)  # (BB,) batch rows of this program
    m_b = rows < n_rows
    rows = rows.to(tl.int64)
    mamba1_stage_rows(rows, m_b, x_ptr, up_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr, norm_w_ptr, norm_b_ptr,
                      in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
                      out_w_ptr, out_b_ptr, eps, n_rows, n_blocks, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw,
                      s_hi, s_hb, s_he, s_hn, D, E, R, N, W, BLOCK_D, BLOCK_E, BLOCK_R, BLOCK_W, BB, BD_IN, BD_OUT,
                      BN, RMSNORM, HAS_NORM_W, HAS_NORM_B, HAS_IN_B, HAS_CONV_B, HAS_D, HAS_OUT_B, UP, RESIDUAL)


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def block_step_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int,
                      launch: StageLaunch = DEFAULT_LAUNCH) -> dict:
    """Block sizes and warps of the kernel for blocks of these sizes: ``launch.rows`` batch rows per program
    (``BB``), every product tile at most ``launch.tile`` elements."""
    block_e, block_d = _p2(d_inner), _p2(d_model)
    chunk = max(1, launch.tile // (launch.rows * block_e))
    return {
        "BLOCK_D": block_d, "BLOCK_E": block_e, "BLOCK_R": _p2(dt_rank), "BLOCK_W": _p2(d_conv - 1),
        "BB": launch.rows, "BD_IN": min(block_d, chunk), "BD_OUT": min(block_d, chunk),
        "BN": min(_p2(d_state), chunk), "num_warps": launch.num_warps,
    }


# positions of the weights in a block's weight sequence (the order of mamba1_block_step's weight arguments:
# norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
# dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias)
N_WEIGHTS = 13
_IN_W, _CONV_W, _DT_W, _A_LOG = 2, 4, 7, 9
_OPTIONAL = {"HAS_NORM_W": 0, "HAS_NORM_B": 1, "HAS_IN_B": 3, "HAS_CONV_B": 5, "HAS_D": 10, "HAS_OUT_B": 12}


def stack_block_weights(blocks: Sequence[Sequence[torch.Tensor | None]]) -> Sequence[torch.Tensor | None]:
    """The weights of a stage's blocks, each a sequence of ``N_WEIGHTS`` tensors in the order of
    ``mamba1_block_step``'s weight arguments (optional ones None), stacked along a new leading block dimension
    (contiguous, detached). Returns a sequence of the type of ``blocks[0]`` (a NamedTuple stays one); an optional
    weight must be present in all blocks or in none."""
    if not blocks or any(len(b) != N_WEIGHTS for b in blocks):
        raise ValueError(f"stack_block_weights: expected one or more blocks of {N_WEIGHTS} weights each")
    names = getattr(blocks[0], "_fields", range(N_WEIGHTS))
    out = []
    for k, name in enumerate(names):
        present = [b[k] is not None for b in blocks]
        if any(present) and not all(present):
            raise ValueError(f"stack_block_weights: weight {name} is present in some blocks only")
        out.append(torch.stack([b[k].detach() for b in blocks]).contiguous() if all(present) else None)
    kind = type(blocks[0])
    return kind(*out) if hasattr(kind, "_fields") else tuple(out)


def _block_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a (blocks, B, ·, ·) state; a single block's (B, ·, ·) state gets block stride 0."""
    return t.stride() if t.dim() == 4 else (0, *t.stride())


def stage_step_args(x, conv_states, ssm_states, weights, norm="layernorm", eps=1e-5, *, up=None, residual=True,
                    launch: StageLaunch = DEFAULT_LAUNCH):
    """The output tensor and the arguments of ``mamba1_stage_rows`` for one stage step (see
    ``mamba1_stage_step_triton`` for the arguments): (out (B, D), args: the runtime arguments in the order of the
    body's parameters after ``rows, m_b``, meta: its constexpr arguments and ``num_warps``), for a launch with
    ``triton.cdiv(B, meta["BB"])`` programs."""
    ws = [_contig(w) for w in weights]
    n_blocks = conv_states.shape[0] if conv_states.dim() == 4 else 1
    batch = conv_states.shape[-3]
    d_model = ws[_IN_W].shape[-1]
    d_inner, width = ws[_CONV_W].shape[-2:]
    d_state = ws[_A_LOG].shape[-1]
    dt_rank = ws[_DT_W].shape[-1]
    out = torch.empty(batch, d_model, device=conv_states.device, dtype=x.dtype)
    scratch = torch.empty(2 if n_blocks > 1 else 1, batch, d_model, device=out.device, dtype=x.dtype)
    meta = {name: ws[k] is not None for name, k in _OPTIONAL.items()}
    ws = [t if t is not None else ws[_IN_W] for t in ws]  # unused pointers (their HAS_* flag is off)
    args = (x, up if up is not None else x, out, scratch, conv_states, ssm_states, *ws, float(eps), batch, n_blocks,
            *x.stride(), *(up.stride() if up is not None else (0, 0)), *_block_strides(conv_states),
            *_block_strides(ssm_states))
    meta.update(D=d_model, E=d_inner, R=dt_rank, N=d_state, W=width, RMSNORM=norm == "rmsnorm", UP=up is not None,
                RESIDUAL=residual, **block_step_config(d_model, d_inner, d_state, dt_rank, width, launch))
    return out, args, meta


def _launch(x, conv_states, ssm_states, weights, norm, eps, up=None, residual=False,
            launch: StageLaunch = DEFAULT_LAUNCH) -> torch.Tensor:
    out, args, meta = stage_step_args(x, conv_states, ssm_states, weights, norm, eps, up=up, residual=residual,
                                      launch=launch)
    if out.shape[0] > 0:
        _mamba1_stage_kernel[(triton.cdiv(out.shape[0], meta["BB"]),)](*args, **meta)
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
    weights = (norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias, x_proj_weight,
               dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias)
    return _launch(x, conv_state, ssm_state, weights, norm, eps)


def mamba1_stage_step_triton(x, conv_states, ssm_states, weights, norm="layernorm", eps=1e-5, *, up=None,
                             residual=True, launch: StageLaunch = DEFAULT_LAUNCH):
    """One step of a stage of Mamba-1 blocks in one launch (see the module docstring); states updated in place.

    Args:
        x: (B, D) stage input, any strides.
        conv_states: (n_blocks, B, E, W-1), ssm_states: (n_blocks, B, E, N) float32, batch strides as a contiguous
            tensor's slices (any).
        weights: ``stack_block_weights`` output (n_blocks, ...) tensors. norm, eps: the blocks' norm.
        up: (B, D) a second input row added to x (the up-pool output), any strides.
        residual: add the stage input (x + up) to the last block's output.
        launch: rows per program, tile size and warps.

    Returns:
        (B, D) the stage output, in x's dtype.
    """
    return _launch(x, conv_states, ssm_states, weights, norm, eps, up=up, residual=residual, launch=launch)


__all__ = ["DEFAULT_LAUNCH", "N_WEIGHTS", "StageLaunch", "block_step_config", "mamba1_block_step_triton",
           "mamba1_stage_rows", "mamba1_stage_step_triton", "stack_block_weights", "stage_step_args"]
