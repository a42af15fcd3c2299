"""Mamba-2 SSD scan: forward in Triton (chunked state-space duality), backward by recomputation in PyTorch.

Per head h, with a_t = exp(Δ_t A_h) a scalar, the recurrence h_t = a_t h_{t-1} + Δ_t x_t ⊗ B_t,
y_t = h_t C_t is evaluated in chunks of Q steps (S_t = cumulative Δ A inside the chunk):

1. ``_ssd_chunk_state_kernel`` (per batch, head, chunk): Δ (bias, softplus), S, and the chunk's state from zero
   Σ_s exp(S_end - S_s) Δ_s x_s ⊗ B_s as a matrix product [P, Q] @ [Q, N] (tensor cores).
2. ``_ssd_state_pass_kernel`` (per batch, head, block of P·N): h_c+1 = exp(S_end,c) h_c + state_c, sequential
   over chunks, from ``initial_state``; writes each chunk's start state and the final state.
3. ``_ssd_chunk_scan_kernel`` (per batch, head, chunk, block of rows): y_t = exp(S_t) C_t h_start
   + Σ_{s≤t} (C_t·B_s) exp(S_t - S_s) Δ_s x_s, the second term as masked [T, T] blocks and two matrix products
   (the quadratic "attention" form inside the chunk), then + D x and × SiLU(z).

Backward: ``SSDScanFn.backward`` recomputes the forward with ``_ssd_torch`` (the same chunked algorithm in
plain PyTorch, vectorized over all chunks: no Python loop over time) under autograd and differentiates it:
exact gradients, initial and final state included, at PyTorch speed and with (B, H, L/Q, Q, Q) float32 blocks
in memory. A Triton backward is not written yet.

Shapes: x (B, L, H, P), dt (B, L, H), A (H,), B, C (B, L, G, N), D (H,) or (H, P), z (B, L, H, P),
dt_bias (H,), states (B, H, P, N) float32. Any strides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    e = tl.exp(x)
    one = 1.0 + e
    return tl.where(x > 20.0, x, tl.where(one == 1.0, e, tl.log(one) * (e / (one - 1.0))))


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


def _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                  initial_state=None):
    """Triton forward. Returns (y (B, L, H, P) in x's dtype, final_state (B, H, P, N) float32)."""
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
        return y, hT
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
    return y, hT


def _ssd_torch(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None):
    """The chunked SSD in PyTorch, vectorized over chunks (differentiable; float32 or float64 arithmetic).

    Same contract as ``ssd_scan_ref`` with return_final_state=True. The length is padded to a multiple of the
    chunk with Δ = 0 steps, which leave the state unchanged.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, length, heads, headdim = x.shape
    groups, n = B.shape[2], B.shape[3]
    Q = int(chunk_size)
    nc = max(1, -(-length // Q))
    pad = nc * Q - length
    d = dt.to(acc)
    if dt_bias is not None:
        d = d + dt_bias.to(acc)
    if dt_softplus:
        d = F.softplus(d)
    xa = x.to(acc)
    X = xa * d[..., None]  # (B, L, H, P) inputs Δ x
    Bh = B.to(acc).repeat_interleave(heads // groups, dim=2)  # (B, L, H, N)
    Ch = C.to(acc).repeat_interleave(heads // groups, dim=2)
    dA = d * A.to(acc)  # (B, L, H)
    if pad:
        X, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (X, Bh, Ch))
        dA = F.pad(dA, (0, 0, 0, pad))
    X = X.reshape(batch, nc, Q, heads, headdim)  # (B, c, Q, H, P)
    Bh = Bh.reshape(batch, nc, Q, heads, n)
    Ch = Ch.reshape(batch, nc, Q, heads, n)
    S = torch.cumsum(dA.reshape(batch, nc, Q, heads).permute(0, 3, 1, 2), dim=-1)  # (B, H, c, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((S[..., :, None] - S[..., None, :]).masked_fill(~causal, float("-inf")))  # (B, H, c, Q, Q)
    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, X)  # inside each chunk
    to_end = torch.exp(S[..., -1:] - S)  # (B, H, c, Q)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, to_end, X)  # (B, c, H, P, N) from zero
    h0 = (torch.zeros(batch, heads, headdim, n, dtype=acc, device=x.device) if initial_state is None
          else initial_state.to(acc))
    states = torch.cat([h0[:, None], states], dim=1)  # (B, c+1, H, P, N)
    ends = F.pad(S[..., -1], (1, 0))  # (B, H, c+1): log decay of each chunk (0 for the initial state)
    cum_end = torch.cumsum(ends, dim=-1)
    cmask = torch.ones(nc + 1, nc + 1, dtype=torch.bool, device=x.device).tril()
    chain = torch.exp((cum_end[..., :, None] - cum_end[..., None, :]).masked_fill(~cmask, float("-inf")))
    states = torch.einsum("bhzc,bchpn->bzhpn", chain, states)  # state after each chunk boundary
    entering, final = states[:, :-1], states[:, -1]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, entering, torch.exp(S))
    y = y.reshape(batch, nc * Q, heads, headdim)[:, :length]
    if D is not None:
        Df = D.to(acc)
        y = y + (Df[:, None] if Df.dim() == 1 else Df) * xa
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(x.dtype), final


class SSDScanFn(torch.autograd.Function):
    """Triton forward; backward by differentiating ``_ssd_torch`` (the forward recomputed in PyTorch)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state):
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state)
        ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus
        return _ssd_scan_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state)

    @staticmethod
    def backward(ctx, dy, dhT):
        saved = ctx.saved_tensors
        inputs = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in saved]
        x, dt, A, B, C, D, z, dt_bias, h0 = inputs
        with torch.enable_grad():
            y, hT = _ssd_torch(x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, ctx.dt_softplus, h0)
            outs, grads = [y], [dy if dy is not None else torch.zeros_like(y)]
            if dhT is not None:
                outs.append(hT)
                grads.append(dhT)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            got = torch.autograd.grad(outs, wanted, grads, allow_unused=True)
        it = iter(got)
        res = [next(it) if (t is not None and t.requires_grad) else None for t in inputs]
        x_g, dt_g, A_g, B_g, C_g, D_g, z_g, dtb_g, h0_g = res
        return x_g, dt_g, A_g, B_g, C_g, None, D_g, z_g, dtb_g, None, h0_g


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
