"""One generation step of a pre-norm residual block with a Mamba-1 mixer, fused into one Triton kernel.

For one input row x (D,) per batch element (glossary: B batch, D width, E inner width, N state size,
R rank of Δ, W conv width):

    h_in    = Norm(x)                                     LayerNorm (weight, bias) or RMSNorm (weight); eps
    (u, z)  = in_proj(h_in)                               (2E,) split in two (E,) halves
    c       = SiLU(conv_bias + Σ_k conv_w[:, k] · [conv_state, u][:, k])   conv_state ← last W-1 inputs
    (δ, Bv, Cv) = x_proj(c)                               (R,), (N,), (N,)
    Δ       = softplus(dt_proj.weight δ + dt_proj.bias)   (E,)
    ssm     ← exp(Δ A) ⊙ ssm + (Δ c) ⊗ Bv,  A = -exp(A_log)    (E, N) float32
    y       = (ssm Cv + D c) ⊙ SiLU(z)                    (E,)
    out     = x + out_proj(y)                             (D,)

Design: one program per batch row does the whole block, so a step of a block is one launch and every
intermediate stays in registers; the two recurrent states are read and written in place (fixed buffers, no
allocation besides the output, no host sync: CUDA-graph friendly). Full-width vectors of E and D live in
registers; the three matrix-vector products loop over chunks of their *reduction* or *output* dimension so that
no tile exceeds the configured number of elements per program (``block_step_config``):

* in_proj: over chunks of D (the reduction); the normalised input chunk is recomputed from x (mean and
  1/std are scalars), the [E, BD] weight tiles are read row-contiguous.
* x_proj + scan: over chunks of N: each chunk reads its [BN, E] rows of x_proj (B and C rows), reduces them
  against c, then updates the [E, BN] slice of the state and accumulates its share of C·h. The [R, E] rows
  that give δ come first, before the loop.
* out_proj: over chunks of D (the output): [BD, E] tiles, residual added and stored per chunk.

States are read before a barrier and written after it: elements replicated over several threads are then never
read after another thread has already overwritten them. Weights and activations may be float32 or bfloat16
(float16 works too); all arithmetic and the SSM state are float32. The conv state keeps its own dtype: the new
input is rounded to it before it enters the convolution, so that the step is the same whether the input
arrives now or later from the state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import softplus as _softplus

# Largest register tile per program (elements) and warps per program, from the H200 sweep of block_step_bench
# (kernels/NOTES.md, µs per block step, float32, batch 1): 8192-element tiles over 16 warps are best up to
# E = 256 (6.5 µs at D = 64, 12.5 at D = 128, against 6.6 / 17.0 with the earlier 4096 x 8), 16384 from E = 512
# (32.9 µs at D = 256, against 37.3 with 8192 and 57.1 with 4096 x 8); 32 warps were slower everywhere.
_TILE_SMALL, _TILE_LARGE, _LARGE_E = 8192, 16384, 512
_WARPS = 16
# Keyword overrides of ``block_step_config`` ("tile", "num_warps"), for the benchmark's sweep.
CONFIG_OVERRIDES: dict = {}


@triton.jit
def _silu(v):
    return v * tl.sigmoid(v)


@triton.jit
def _mamba1_block_step_kernel(
    # pointers
    x_ptr, out_ptr, conv_ptr, ssm_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr,
    a_log_ptr, d_ptr, out_w_ptr, out_b_ptr,
    # scalars
    eps,
    # strides (weights are contiguous: their row strides are their widths)
    s_xb, s_xd, s_ob, s_od, s_cb, s_ce, s_cw, s_hb, s_he, s_hn,
    # sizes and options
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    BD_IN: tl.constexpr, BD_OUT: tl.constexpr, BN: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + b * s_xb

    # ---- norm statistics over the whole row (scalars)
    offs_d = tl.arange(0, BLOCK_D)
    xv = tl.load(x_row + offs_d * s_xd, mask=offs_d < D, other=0.0).to(tl.float32)  # (BLOCK_D,)
    if RMSNORM:
        mean = 0.0
        rstd = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=0) / D + eps)
    else:
        mean = tl.sum(xv, axis=0) / D
        xc = tl.where(offs_d < D, xv - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)

    # ---- in_proj: u, z (E,) = W_in[:E] h_in, W_in[E:] h_in, looping over chunks of the reduction dim D
    offs_e = tl.arange(0, BLOCK_E)
    m_e = offs_e < E
    acc_u2 = tl.zeros([BLOCK_E, BD_IN], tl.float32)  # products summed over chunks, reduced once at the end
    acc_z2 = tl.zeros([BLOCK_E, BD_IN], tl.float32)
    for d0 in tl.range(0, D, BD_IN):
        dd = d0 + tl.arange(0, BD_IN)
        m_dd = dd < D
        hn = (tl.load(x_row + dd * s_xd, mask=m_dd, other=0.0).to(tl.float32) - mean) * rstd  # (BD_IN,)
        if HAS_NORM_W:
            hn = hn * tl.load(norm_w_ptr + dd, mask=m_dd, other=0.0).to(tl.float32)
        if HAS_NORM_B:
            hn = hn + tl.load(norm_b_ptr + dd, mask=m_dd, other=0.0).to(tl.float32)
        m2 = m_e[:, None] & m_dd[None, :]
        w_off = offs_e[:, None] * D + dd[None, :]  # (BLOCK_E, BD_IN) in the (2E, D) weight
        w_u = tl.load(in_w_ptr + w_off, mask=m2, other=0.0).to(tl.float32)
        w_z = tl.load(in_w_ptr + E * D + w_off, mask=m2, other=0.0).to(tl.float32)
        acc_u2 += w_u * hn[None, :]
        acc_z2 += w_z * hn[None, :]
    acc_u = tl.sum(acc_u2, axis=1)  # (BLOCK_E,)
    acc_z = tl.sum(acc_z2, axis=1)
    if HAS_IN_B:
        acc_u += tl.load(in_b_ptr + offs_e, mask=m_e, other=0.0).to(tl.float32)
        acc_z += tl.load(in_b_ptr + E + offs_e, mask=m_e, other=0.0).to(tl.float32)

    # ---- causal conv over [conv_state, u] and the state shift, in place
    u = acc_u.to(conv_ptr.dtype.element_ty).to(tl.float32)  # the value the state will hold
    offs_w = tl.arange(0, BLOCK_W)  # taps 0..W-2 come from the state
    m_w = offs_w < W - 1
    m_ew = m_e[:, None] & m_w[None, :]
    c_row = conv_ptr + b * s_cb + offs_e[:, None] * s_ce
    old = tl.load(c_row + offs_w[None, :] * s_cw, mask=m_ew, other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_W)
    nxt = tl.load(c_row + (offs_w + 1)[None, :] * s_cw, mask=m_e[:, None] & (offs_w < W - 2)[None, :],
                  other=0.0)  # old shifted by one tap, the state's dtype
    cw = tl.load(conv_w_ptr + offs_e[:, None] * W + offs_w[None, :], mask=m_ew, other=0.0).to(tl.float32)
    cw_last = tl.load(conv_w_ptr + offs_e * W + (W - 1), mask=m_e, other=0.0).to(tl.float32)
    pre = tl.sum(cw * old, axis=1) + cw_last * u  # (BLOCK_E,)
    if HAS_CONV_B:
        pre += tl.load(conv_b_ptr + offs_e, mask=m_e, other=0.0).to(tl.float32)
    c = tl.where(m_e, _silu(pre), 0.0)  # (BLOCK_E,)
    tl.debug_barrier()  # every thread has read the old state before any thread overwrites it
    new = tl.where((offs_w == W - 2)[None, :], u[:, None].to(conv_ptr.dtype.element_ty), nxt)
    tl.store(c_row + offs_w[None, :] * s_cw, new, mask=m_ew)

    # ---- δ (R,) = x_proj[:R] c, then Δ (E,) = softplus(dt_proj δ + bias)
    offs_r = tl.arange(0, BLOCK_R)
    m_r = offs_r < R
    w_r = tl.load(xp_w_ptr + offs_r[:, None] * E + offs_e[None, :], mask=m_r[:, None] & m_e[None, :],
                  other=0.0).to(tl.float32)  # (BLOCK_R, BLOCK_E)
    dlow = tl.sum(w_r * c[None, :], axis=1)  # (BLOCK_R,)
    w_dt = tl.load(dt_w_ptr + offs_e[:, None] * R + offs_r[None, :], mask=m_e[:, None] & m_r[None, :],
                   other=0.0).to(tl.float32)  # (BLOCK_E, BLOCK_R)
    dt = tl.sum(w_dt * dlow[None, :], axis=1) + tl.load(dt_b_ptr + offs_e, mask=m_e, other=0.0).to(tl.float32)
    dt = tl.where(m_e, _softplus(dt), 0.0)  # (BLOCK_E,)
    dtc = dt * c
    if HAS_D:
        y = tl.load(d_ptr + offs_e, mask=m_e, other=0.0).to(tl.float32) * c
    else:
        y = tl.zeros([BLOCK_E], tl.float32)

    # ---- B, C chunks and the state update, in place; y += Σ_n ssm[:, n] C[n]
    h_row = ssm_ptr + b * s_hb + offs_e[:, None] * s_he
    for n0 in tl.static_range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        m_n = nn < N
        m_ne = m_n[:, None] & m_e[None, :]
        w_b = tl.load(xp_w_ptr + (R + nn)[:, None] * E + offs_e[None, :], mask=m_ne, other=0.0).to(tl.float32)
        w_c = tl.load(xp_w_ptr + (R + N + nn)[:, None] * E + offs_e[None, :], mask=m_ne,
                      other=0.0).to(tl.float32)  # (BN, BLOCK_E)
        bv = tl.sum(w_b * c[None, :], axis=1)  # (BN,)
        cv = tl.sum(w_c * c[None, :], axis=1)
        m_en = m_e[:, None] & m_n[None, :]
        a = -tl.exp(tl.load(a_log_ptr + offs_e[:, None] * N + nn[None, :], mask=m_en, other=0.0).to(tl.float32))
        h = tl.load(h_row + nn[None, :] * s_hn, mask=m_en, other=0.0)  # (BLOCK_E, BN) float32
        tl.debug_barrier()
        h = tl.exp(dt[:, None] * a) * h + dtc[:, None] * bv[None, :]
        y += tl.sum(h * cv[None, :], axis=1)
        tl.store(h_row + nn[None, :] * s_hn, h, mask=m_en)
    y = y * _silu(acc_z)  # (BLOCK_E,)

    # ---- out_proj + residual, over chunks of the output dim D
    out_row = out_ptr + b * s_ob
    for d0 in tl.range(0, D, BD_OUT):
        dd = d0 + tl.arange(0, BD_OUT)
        m_dd = dd < D
        w_o = tl.load(out_w_ptr + dd[:, None] * E + offs_e[None, :], mask=m_dd[:, None] & m_e[None, :],
                      other=0.0).to(tl.float32)  # (BD_OUT, BLOCK_E)
        o = tl.sum(w_o * y[None, :], axis=1) + tl.load(x_row + dd * s_xd, mask=m_dd, other=0.0).to(tl.float32)
        if HAS_OUT_B:
            o += tl.load(out_b_ptr + dd, mask=m_dd, other=0.0).to(tl.float32)
        tl.store(out_row + dd * s_od, o.to(out_ptr.dtype.element_ty), mask=m_dd)


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _contig(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def block_step_config(d_model: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int, tile: int | None = None,
                      num_warps: int | None = None) -> dict:
    """Block sizes and warps of the kernel for a block of these sizes: every tile holds at most ``tile``
    elements (default 8192, 16384 from E = 512; ``CONFIG_OVERRIDES`` may set ``tile`` and ``num_warps``)."""
    block_e = _p2(d_inner)
    tile = tile or CONFIG_OVERRIDES.get("tile", _TILE_LARGE if block_e >= _LARGE_E else _TILE_SMALL)
    chunk = max(1, tile // block_e)
    return {
        "BLOCK_D": _p2(d_model), "BLOCK_E": block_e, "BLOCK_R": _p2(dt_rank), "BLOCK_W": _p2(d_conv - 1),
        "BD_IN": min(_p2(d_model), chunk), "BD_OUT": min(_p2(d_model), chunk), "BN": min(_p2(d_state), chunk),
        "num_warps": num_warps or CONFIG_OVERRIDES.get("num_warps", _WARPS),
    }


def mamba1_block_step_triton(
    x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
    x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, norm="layernorm",
    eps=1e-5,
):
    """Triton launcher; contract of ``mamba1_block_step_ref`` (arguments checked by the public op).

    Args:
        x: (B, D) any strides. conv_state: (B, E, W-1), ssm_state: (B, E, N) float32, both updated in place.
        Weights as in ``mamba1_block_step_ref``.

    Returns:
        out: (B, D) in x's dtype, x + the block's mixer output.
    """
    batch, d_model = x.shape
    d_inner, width = conv_weight.shape
    d_state = A_log.shape[1]
    dt_rank = dt_proj_weight.shape[1]
    out = torch.empty(batch, d_model, device=x.device, dtype=x.dtype)
    if batch == 0:
        return out
    ws = [_contig(t) for t in (norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
                               x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
                               out_proj_bias)]
    present = [t is not None for t in ws]
    any_w = in_proj_weight
    ws = [t if t is not None else any_w for t in ws]  # unused pointers (their HAS_* flag is off)
    cfg = block_step_config(d_model, d_inner, d_state, dt_rank, width)
    warps = cfg.pop("num_warps")
    _mamba1_block_step_kernel[(batch,)](
        x, out, conv_state, ssm_state, *ws,
        float(eps),
        *x.stride(), *out.stride(), *conv_state.stride(), *ssm_state.stride(),
        D=d_model, E=d_inner, R=dt_rank, N=d_state, W=width, **cfg,
        RMSNORM=norm == "rmsnorm", HAS_NORM_W=present[0], HAS_NORM_B=present[1], HAS_IN_B=present[3],
        HAS_CONV_B=present[5], HAS_D=present[10], HAS_OUT_B=present[12],
        num_warps=warps,
    )
    return out


__all__ = ["block_step_config", "mamba1_block_step_triton"]
