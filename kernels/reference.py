"""Plain-PyTorch reference ops: the obviously-correct twins of the Triton kernels.

This module imports only torch. Every function has the signature of its fast twin in ``audiomamba.kernels``
and is used (a) as the CPU backend and (b) as the ground truth in the tests. Shapes use the glossary:
B batch, E channels (inner width), L length, N state size, G groups of B/C, H heads, P head dim, W conv width.

All recurrences accumulate in float32 and return outputs in the input dtype. Every op takes an optional
``initial_state`` and can return its final state; gradients flow into and out of both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _expand_groups(M: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, E, N, L) view/expansion that pairs each channel with its group;
    a fixed (E, N) matrix -> a (1, E, N, 1) view."""
    if M.dim() == 2:
        return M[None, :, :, None]
    if M.dim() == 3:
        return M.unsqueeze(1).expand(-1, channels, -1, -1)
    groups = M.shape[1]
    return M.repeat_interleave(channels // groups, dim=1)


_ACC = {torch.float64: torch.float64, torch.float32: torch.float32, torch.bfloat16: torch.float32,
        torch.float16: torch.float32}
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32, or float64 for float64 inputs (gradcheck)."""
    acc = _ACC.get(dtype)  # a dict lookup: torch.promote_types is an op dispatch, and short calls count ops
    return acc if acc is not None else torch.promote_types(dtype, torch.float32)


def _state_dtype(u: torch.Tensor, A: torch.Tensor) -> torch.dtype:
    """dtype of the scan state: the accumulation dtype, or its complex twin for a complex ``A``."""
    acc = _acc(u.dtype)
    return _COMPLEX[acc] if A.is_complex() else acc


def _bc_values(M: torch.Tensor, A: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B or C as values of the state's dtype, same layout. With a complex ``A`` an input-dependent B/C is either a
    complex tensor (..., N, L) or mamba_ssm's real form (..., N, 2L): (real, imaginary) pairs interleaved along
    time; a fixed (E, N) one may be real or complex."""
    if A.is_complex() and M.dim() > 2 and not M.is_complex():
        M = torch.view_as_complex(M.to(_acc(M.dtype)).unflatten(-1, (-1, 2)).contiguous())
    return M.to(dtype)


def _readout(y: torch.Tensor) -> torch.Tensor:
    """C·h summed over states -> the real output: 2 Re(·) for a complex state (the conjugate-pair convention of
    S4D-Lin: each complex state stands for itself and its conjugate), the value itself for a real one."""
    return 2 * y.real if y.is_complex() else y


def _scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus, initial_state):
    """Shared preprocessing of the two selective-scan references, in the accumulation dtype."""
    batch, channels, _ = u.shape
    acc = _acc(u.dtype)
    sdt = _state_dtype(u, A)
    u32 = u.to(acc)
    delta32 = delta.to(acc)
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    B32 = _expand_groups(_bc_values(B, A, sdt), channels)  # (B, E, N, L) or (1, E, N, 1)
    C32 = _expand_groups(_bc_values(C, A, sdt), channels)  # (B, E, N, L) or (1, E, N, 1)
    if initial_state is None:
        h = u32.new_zeros(batch, channels, A.shape[1], dtype=sdt)
    else:
        h = initial_state.to(sdt)
    return u32, delta32, A.to(sdt), B32, C32, h


def _scan_output(y, u32, D, z, out_dtype):
    if D is not None:
        y = y + D.to(y.dtype)[None, :, None] * u32
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def _groups(B: torch.Tensor, C: torch.Tensor) -> int:
    """Number of B/C groups: G of a (B, G, N, L) B or C, else 1."""
    return B.shape[1] if B.dim() == 4 else C.shape[1] if C.dim() == 4 else 1


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Mamba-1 selective scan (S6), sequential over time.

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t ;  y_t = C_t · h_t + D u_t ;  y_t *= silu(z_t)
    with Δ = softplus(delta + delta_bias) when ``delta_softplus``. With a complex A the state is complex and
    y_t = 2 Re(C_t · h_t) + D u_t (S4D-Lin's conjugate pairs, as mamba_ssm).

    Args:
        u, delta: (B, E, L) input and step size (any float dtype, any strides).
        A: (E, N) state matrix (diagonal): real float32 (negative for stability) or complex64 (negative real part).
        B, C: each input-dependent (B, N, L), grouped (B, G, N, L) with E divisible by G, or fixed (E, N).
            With a complex A: an input-dependent B/C is complex, or real (B, [G,] N, 2L) with (real, imaginary)
            pairs interleaved along time (mamba_ssm's layout); a fixed one is complex (or real).
        D: (E,) skip; z: (B, E, L) gate; delta_bias: (E,).
        initial_state: (B, E, N) state before the first step (zeros when None): float32, complex64 for a complex A.
        return_final_state: also return the (B, E, N) state after the last step (float32 / complex64).

    Returns:
        y: (B, E, L) in u's dtype, or (y, final_state).
    """
    u32, delta32, A32, B32, C32, h = _scan_inputs(u, delta, A, B, C, delta_bias, delta_softplus, initial_state)
    fixed_B, fixed_C = B.dim() == 2, C.dim() == 2
    ys = []
    for t in range(u.shape[-1]):
        dt = delta32[:, :, t, None]  # (B, E, 1)
        Bt = B32[..., 0] if fixed_B else B32[..., t]
        Ct = C32[..., 0] if fixed_C else C32[..., t]
        h = torch.exp(dt * A32) * h + dt * Bt * u32[:, :, t, None]  # (B, E, N)
        ys.append(_readout((h * Ct).sum(-1)))  # (B, E)
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros(u.shape)  # (B, E, L)
    y = _scan_output(y, u32, D, z, u.dtype)
    return (y, h) if return_final_state else y


def selective_scan_chunked_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False, max_log_decay=60.0, max_chunk=64,
):
    """Selective scan, parallel within chunks and sequential across them (same contract as
    ``selective_scan_ref``; the fast CPU path).

    Within a chunk of T steps, with S_t = Σ_{r≤t} Δ_r A (cumulative log-decay from the chunk start):
        h_t = exp(S_t) h_0 + exp(S_t - S_T) · Σ_{s≤t} exp(S_T - S_s) Δ_s B_s u_s
    which is a cumulative sum instead of a loop. exp(S_t - S_T) grows with |S_T|, so the chunk length is
    chosen from the data such that |S_T| stays below ``max_log_decay`` (no overflow, and float32 rounding of
    S stays ~1e-6 relative); huge steps degrade gracefully to chunks of one step, which are exact.
    """
    batch, channels, length = u.shape
    acc = _acc(u.dtype)
    sdt = _state_dtype(u, A)
    groups = _groups(B, C)
    u32, delta32 = u.to(acc), delta.to(acc)
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.to(acc)[None, :, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    h = u32.new_zeros(batch, channels, A.shape[1], dtype=sdt) if initial_state is None else initial_state.to(sdt)
    if length == 0:
        y = _scan_output(u32.new_zeros(u.shape), u32, D, z, u.dtype)
        return (y, h) if return_final_state else y
    A32 = A.to(sdt).unflatten(0, (groups, -1))  # (G, E/G, N)
    # Largest per-step |ΔA| bounds the log-decay growth inside a chunk.
    with torch.no_grad():
        step = (delta32.abs().amax(dim=(0, 2)) * A.abs().amax(dim=1)).max().item()
    chunk = max_chunk if step <= 0 else int(min(max_chunk, max(1, math.floor(max_log_decay / step))))
    n_chunks = -(-length // chunk)

    def bc_chunks(M):  # [(B, G, 1, T, N)] per chunk, or the fixed (1, G, E/G, 1, N) for every chunk
        M = _bc_values(M, A, sdt)
        if M.dim() == 2:
            return [M.reshape(1, groups, channels // groups, 1, -1)] * n_chunks
        return M.reshape(batch, groups if M.dim() == 4 else 1, 1, -1, length).transpose(-1, -2).split(chunk, dim=-2)

    # Grouped layouts; split (not slice) along time so that autograd's backward is a cat, not a zero-fill.
    dts = delta32.unflatten(1, (groups, -1)).split(chunk, dim=-1)  # [(B, G, E/G, T)]
    xs = (delta32 * u32).unflatten(1, (groups, -1)).split(chunk, dim=-1)  # [(B, G, E/G, T)]
    Bs, Cs = bc_chunks(B), bc_chunks(C)
    h = h.unflatten(1, (groups, -1))  # (B, G, E/G, N)
    ys = []
    for dt, x, Bc, Cc in zip(dts, xs, Bs, Cs):
        S = torch.cumsum(dt.unsqueeze(-1) * A32[:, :, None, :], dim=3)  # (B, G, E/G, T, N)
        back = torch.exp(S[..., -1:, :] - S)  # decay from each step to the chunk end, |.| <= 1
        hs = torch.exp(S) * h.unsqueeze(3) + torch.cumsum(back * (x.unsqueeze(-1) * Bc), dim=3) / back
        ys.append(_readout((hs * Cc).sum(-1)))  # (B, G, E/G, T)
        h = hs[..., -1, :]  # (B, G, E/G, N)
    y = torch.cat(ys, dim=-1).flatten(1, 2)  # (B, E, L)
    y = _scan_output(y, u32, D, z, u.dtype)
    return (y, h.flatten(1, 2)) if return_final_state else y


def _needs_grad(*tensors) -> bool:
    """Whether autograd records an op on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_LOG2_E = 1.0 / math.log(2.0)


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without a dispatch when it already has that dtype (the short-call twins count ops)."""
    return t if t.dtype == dtype else t.to(dtype)


def selective_scan_loop_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Selective scan, sequential over time with one fused multiply-add per step (same contract as
    ``selective_scan_ref``): the fast CPU path for a few steps per call (streaming chunks, pooled stages).

    Everything that does not depend on the previous state is computed for all L steps at once, in time-major
    layouts (B, L, G, E/G, N) that are free views of the mixers' channel-last inputs:
        dA_t = exp(Δ_t A) (as exp2(Δ_t · A log2 e), ~3x cheaper than exp on CPUs; exp for a complex A),
        dBu_t = Δ_t u_t B_t
    and then per step only h_t = dA_t h_{t-1} + dBu_t; y_t = C_t · h_t is one batched matmul over all steps (a
    product and sum for a fixed C; 2 Re(·) of it for a complex A).
    Without autograd (grad mode off, or no input requires grad) the steps overwrite the dBu buffer in place;
    with it they build a list (out-of-place, differentiable). Costs O(L) small ops, so for long L
    ``selective_scan_chunked_ref`` is faster.
    """
    batch, channels, length = u.shape
    acc = _acc(u.dtype)
    sdt = _state_dtype(u, A)
    groups = _groups(B, C)
    n = A.shape[1]
    grad = _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_t = _to(u.transpose(1, 2), acc)  # (B, L, E)
    dt = _to(delta.transpose(1, 2), acc)  # (B, L, E)
    if delta_bias is not None:
        dt = dt + _to(delta_bias, acc)
    if delta_softplus:
        dt = F.softplus(dt)

    def time_major(M):  # (B, N, L) or (B, G, N, L) -> (B, L, G, 1, N); fixed (E, N) -> (G, E/G, N)
        M = _bc_values(M, A, sdt) if sdt != acc else _to(M, acc)
        if M.dim() == 2:
            return M.reshape(groups, channels // groups, n)
        return (M.unsqueeze(1) if M.dim() == 3 else M).permute(0, 3, 1, 2).unsqueeze(3)

    Bt, Ct = time_major(B), time_major(C)
    dtg = dt.reshape(batch, length, groups, channels // groups, 1)  # (B, L, G, E/G, 1)
    if sdt == acc:
        dA = dtg * (_to(A, acc) * _LOG2_E).reshape(groups, channels // groups, n)  # (B, L, G, E/G, N) log2 decays
        dA = torch.exp2(dA) if grad else dA.exp2_()
    else:  # complex decays
        dA = torch.exp(dtg * A.to(sdt).reshape(groups, channels // groups, n))
    dBu = (dt * u_t).reshape(batch, length, groups, channels // groups, 1) * Bt  # (B, L, G, E/G, N)
    if initial_state is None:
        h = u_t.new_zeros(batch, groups, channels // groups, n, dtype=sdt)
    else:
        h = _to(initial_state, sdt).reshape(batch, groups, channels // groups, n)  # (B, G, E/G, N)
    if grad:
        hs = []
        for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
            h = torch.addcmul(dBu_t, dA_t, h)
            hs.append(h)
        hs = torch.stack(hs, dim=1) if hs else dBu  # (B, L, G, E/G, N)
    else:
        for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
            h = dBu_t.addcmul_(dA_t, h)  # dBu[:, t] now holds h_t
        hs = dBu
    if Ct.dim() == 3:  # fixed C
        y = _readout((hs * Ct).sum(-1)).reshape(batch, length, channels)
    else:  # y_t = C_t · h_t: (B·L·G, E/G, N) @ (B·L·G, N, 1) -> (B, L, E)
        rows = batch * length * groups
        Ct = Ct.expand(batch, length, groups, 1, n) if Ct.shape[2] != groups else Ct
        y = torch.bmm(hs.reshape(rows, channels // groups, n), Ct.reshape(rows, n, 1))
        y = _readout(y).view(batch, length, channels)
    if D is not None:
        y = torch.addcmul(y, u_t, _to(D, acc)) if grad else y.addcmul_(u_t, _to(D, acc))
    if z is not None:
        gate = F.silu(_to(z.transpose(1, 2), acc))  # (B, L, E)
        y = y * gate if grad else y.mul_(gate)
    y = _to(y, u.dtype).transpose(1, 2)  # (B, E, L), channel-last memory
    if not return_final_state:
        return y
    h_final = h.reshape(batch, channels, n)  # (B, E, N)
    if length and not grad:
        h_final = h_final.clone()  # not a view into the (B, L, E, N) buffer
    return y, h_final


# ---------------------------------------------------------------- time-major cores (no autograd)


def causal_conv1d_time_major_(x, weight, bias, state, silu):
    """The causal depthwise conv1d of ``causal_conv1d_ref`` on time-major tensors, without autograd (buffers
    updated in place): what a Mamba-1 mixer's short-chunk CPU path calls between its projections, with no
    layout changes. The W taps are one dot product over a sliding-window view (one op, not W).

    Args:
        x: (B, L, E). weight: (E, W). bias: (E,) or None. state: (B, W-1, E) the last W-1 inputs (any strides).
        silu: apply SiLU.

    Returns:
        y: (B, L, E) and the new state (B, W-1, E) (a view of a fresh buffer), in x's dtype (float32/64).
    """
    length = x.shape[1]
    xp = torch.cat([state, x], dim=1)  # (B, W-1+L, E)
    y = torch.linalg.vecdot(xp.unfold(1, weight.shape[1], 1), weight)  # windows (B, L, E, W) · (E, W) -> (B, L, E)
    if bias is not None:
        y.add_(bias)
    if silu:
        F.silu(y, inplace=True)
    return y, xp[:, length:]


def selective_scan_time_major_(u, dt, A2, B, C, D, z, h):
    """The selective scan of ``selective_scan_loop_ref`` on time-major tensors (one group), without autograd:
    for each step h_t = exp2(Δ_t A2) h_{t-1} + Δ_t u_t B_t, y_t = (C_t · h_t + D u_t) SiLU(z_t).

    The state is laid out (N, E) per step, so that every op, the readout y_t = C_t · h_t included (a (1, N) @
    (N, E) product per step), runs along the contiguous E.

    Args:
        u: (B, L, E). dt: (B, L, E) the step sizes Δ (bias and softplus applied). A2: (N, E) = (A · log2 e)ᵀ.
        B, C: (B, L, N) (any strides). D: (E,) or None. z: (B, L, E) or None. h: (B, N, E) the initial state
        (any strides). All in one float dtype (float32 or float64).

    Returns:
        y: (B, L, E) and the final state (B, N, E) (a view of a fresh buffer).
    """
    batch, length, channels = u.shape
    n = A2.shape[0]
    dA = (dt.unsqueeze(2) * A2).exp2_()  # (B, L, N, E)
    dBu = (dt * u).unsqueeze(2) * B.unsqueeze(-1)  # (B, L, N, E)
    if torch.compiler.is_compiling():
        # traced (compiled streaming): out of place, since a write into a slice of dBu per step functionalizes
        # into a copy of all of dBu per step; inductor fuses the steps into one loop
        hs = []
        for t in range(length):
            h = dBu[:, t] + dA[:, t] * h  # (B, N, E)
            hs.append(h)
        y = (C.unsqueeze(-1) * torch.stack(hs, 1)).sum(2)  # (B, L, N, 1) · (B, L, N, E) summed over N
    else:
        for dA_t, dBu_t in zip(dA.unbind(1), dBu.unbind(1)):
            h = dBu_t.addcmul_(dA_t, h)  # dBu[:, t] now holds h_t
        rows = batch * length
        y = torch.bmm(C.reshape(rows, 1, n), dBu.view(rows, n, channels)).view(batch, length, channels)  # C_t·h_t
    if D is not None:
        y.addcmul_(u, D)
    if z is not None:
        y.mul_(F.silu(z))
    return y, h


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Causal depthwise 1-D convolution with a carried input window.

    y[b, e, t] = act(bias[e] + Σ_k weight[e, k] · x̃[b, e, t + k]) where x̃ is x prefixed by the W-1
    previous inputs (``initial_state``, zeros when None).

    Args:
        x: (B, E, L); weight: (E, W); bias: (E,); initial_state: (B, E, W-1) in x's dtype.
        activation: None or "silu".

    Returns:
        y: (B, E, L) in x's dtype, or (y, final_state (B, E, W-1)): the last W-1 inputs seen.
    """
    batch, channels, _ = x.shape
    width = weight.shape[1]
    if initial_state is None:
        initial_state = x.new_zeros(batch, channels, width - 1)
    xp = torch.cat([initial_state.to(x.dtype), x], dim=-1)  # (B, E, W-1+L)
    acc = _acc(x.dtype)
    y = F.conv1d(xp.to(acc), weight.to(acc).unsqueeze(1), None if bias is None else bias.to(acc), groups=channels)
    if activation == "silu":
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    y = y.to(x.dtype)
    if return_final_state:
        return y, xp[:, :, xp.shape[-1] - (width - 1):]
    return y


def causal_conv1d_shift_ref(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Causal depthwise conv1d as W shifted multiply-adds over time-major (B, L, E) views (same contract as
    ``causal_conv1d_ref``): the fast CPU path for short L, where a library convolution call costs far more
    than its few multiply-adds. Each multiply-add runs along E, contiguous for the mixers' channel-last inputs.
    Without autograd the accumulator is updated in place.

    Returns y (B, E, L) (a view with channel-last memory), or (y, final_state (B, E, W-1)).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")
    batch, channels, length = x.shape
    width = weight.shape[1]
    acc = _acc(x.dtype)
    grad = _needs_grad(x, weight, bias, initial_state)
    if initial_state is None:
        initial_state = x.new_zeros(batch, channels, width - 1)
    xp = torch.cat([_to(initial_state, x.dtype).transpose(1, 2), x.transpose(1, 2)], dim=1)  # (B, W-1+L, E)
    xa = _to(xp, acc)
    taps = _to(weight, acc).t().contiguous().unbind(0)  # W of (E,)
    if bias is None:
        y = xa[:, :length] * taps[0]  # (B, L, E)
    else:
        y = torch.addcmul(_to(bias, acc), xa[:, :length], taps[0])
    for k in range(1, width):
        if grad:
            y = torch.addcmul(y, xa[:, k : k + length], taps[k])
        else:
            y.addcmul_(xa[:, k : k + length], taps[k])
    if activation == "silu":
        y = F.silu(y, inplace=not grad)
    y = _to(y, x.dtype).transpose(1, 2)  # (B, E, L)
    if return_final_state:
        return y, xp[:, length:].transpose(1, 2)  # (B, E, W-1): the last W-1 inputs
    return y


def _ssd_inputs(x, dt, A, dt_bias, dt_softplus, initial_state, ngroups_from):
    batch, _, heads, headdim = x.shape
    acc = _acc(x.dtype)
    dt32 = dt.to(acc)
    if dt_bias is not None:
        dt32 = dt32 + dt_bias.to(acc)
    if dt_softplus:
        dt32 = F.softplus(dt32)
    n = ngroups_from.shape[-1]
    if initial_state is None:
        h = x.new_zeros(batch, heads, headdim, n, dtype=acc)
    else:
        h = initial_state.to(acc)
    return dt32, A.to(acc), h


def _heads_of_groups(M: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, G, N) -> (B, L, H, N) in the accumulation dtype."""
    return M.to(_acc(M.dtype)).repeat_interleave(heads // M.shape[2], dim=2)


def _ssd_output(y, x, D, z, out_dtype):
    if D is not None:
        Df = D.to(y.dtype)
        y = y + (Df[:, None] if Df.dim() == 1 else Df) * x.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def ssd_scan_ref(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Mamba-2 state space dual (SSD) scan, sequential over time (``chunk_size`` only matters to the
    chunked twins; it is accepted so that all SSD ops share one signature).

    h_t = exp(Δ_t A_h) h_{t-1} + Δ_t x_t ⊗ B_t ;  y_t = h_t C_t + D x_t ;  y_t *= silu(z_t)

    Args:
        x: (B, L, H, P); dt: (B, L, H); A: (H,) float32 (negative); B, C: (B, L, G, N), H divisible by G.
        D: (H,) or (H, P); z: (B, L, H, P); dt_bias: (H,); initial_state: (B, H, P, N) float32.

    Returns:
        y: (B, L, H, P) in x's dtype, or (y, final_state (B, H, P, N) float32).
    """
    heads = x.shape[2]
    dt32, A32, h = _ssd_inputs(x, dt, A, dt_bias, dt_softplus, initial_state, B)
    B32, C32, x32 = _heads_of_groups(B, heads), _heads_of_groups(C, heads), x.to(dt32.dtype)
    ys = []
    for t in range(x.shape[1]):
        d = dt32[:, t]  # (B, H)
        h = torch.exp(d * A32)[..., None, None] * h + (d[..., None] * x32[:, t])[..., None] * B32[:, t, :, None, :]
        ys.append((h * C32[:, t, :, None, :]).sum(-1))  # (B, H, P)
    y = torch.stack(ys, dim=1) if ys else x32.new_zeros(x.shape)  # (B, L, H, P)
    y = _ssd_output(y, x, D, z, x.dtype)
    return (y, h) if return_final_state else y


def ssd_scan_chunked_ref(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
    initial_state=None, return_final_state=False,
):
    """SSD in its chunked (quadratic-within-chunk) form, same contract as ``ssd_scan_ref``.

    Inside a chunk of T steps the decay between steps s ≤ t is exp(S_t - S_s) with S the cumulative Δ·A
    (a scalar per head, so the (T, T) decay matrix is cheap and never overflows: S_t - S_s ≤ 0); the state
    is carried between chunks.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    heads, length = x.shape[2], x.shape[1]
    dt32, A32, h = _ssd_inputs(x, dt, A, dt_bias, dt_softplus, initial_state, B)
    B32, C32, x32 = _heads_of_groups(B, heads), _heads_of_groups(C, heads), x.to(dt32.dtype)
    ys = []
    for start in range(0, length, chunk_size):
        sl = slice(start, min(start + chunk_size, length))
        S = torch.cumsum(dt32[:, sl] * A32, dim=1)  # (B, T, H)
        T = S.shape[1]
        seg = S[:, :, None, :] - S[:, None, :, :]  # (B, T_t, T_s, H)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        decay = torch.exp(seg.masked_fill(~causal[None, :, :, None], float("-inf")))  # (B, T, T, H)
        scores = torch.einsum("bthn,bshn->btsh", C32[:, sl], B32[:, sl]) * decay  # (B, T, T, H)
        xdt = x32[:, sl] * dt32[:, sl, :, None]  # (B, T, H, P)
        y_in = torch.einsum("btsh,bshp->bthp", scores, xdt)  # (B, T, H, P)
        y_state = torch.einsum("bthn,bhpn->bthp", C32[:, sl], h) * torch.exp(S)[..., None]  # (B, T, H, P)
        ys.append(y_in + y_state)
        to_end = torch.exp(S[:, -1:, :] - S)  # (B, T, H) decay from step s to the chunk end
        h = torch.exp(S[:, -1])[..., None, None] * h + torch.einsum(
            "bsh,bshp,bshn->bhpn", to_end, xdt, B32[:, sl]
        )  # (B, H, P, N)
    y = torch.cat(ys, dim=1) if ys else x32.new_zeros(x.shape)  # (B, L, H, P)
    y = _ssd_output(y, x, D, z, x.dtype)
    return (y, h) if return_final_state else y


def mamba1_block_step_ref(
    x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
    x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, norm="layernorm",
    eps=1e-5,
):
    """One step of a pre-norm residual block with a Mamba-1 mixer: out = x + Mamba1(Norm(x)), states in place.

        h = Norm(x);  (u, z) = in_proj(h);  c = SiLU(conv(conv_state, u));  (δ, B, C) = x_proj(c)
        Δ = softplus(dt_proj_weight δ + dt_proj_bias);  ssm = exp(Δ A) ssm + Δ c B  (A = -exp(A_log))
        out = x + out_proj((C · ssm + D c) SiLU(z))
    The new conv input u is rounded to conv_state's dtype before the convolution (the value the state keeps).

    Args:
        x: (B, D). conv_state: (B, E, W-1) last W-1 conv inputs; ssm_state: (B, E, N) float32. Both are
            updated in place.
        norm_weight, norm_bias: (D,) or None (an RMSNorm has no bias). in_proj_weight: (2E, D),
        in_proj_bias: (2E,) or None. conv_weight: (E, W), conv_bias: (E,) or None. x_proj_weight: (R + 2N, E).
        dt_proj_weight: (E, R), dt_proj_bias: (E,). A_log: (E, N). D: (E,) or None. out_proj_weight: (D, E),
        out_proj_bias: (D,) or None.
        norm: "layernorm" or "rmsnorm". eps: the norm's epsilon.

    Returns:
        out: (B, D) in x's dtype. All arithmetic in float32 (float64 for float64 inputs).
    """
    acc = _acc(x.dtype)

    def f(t):
        return None if t is None else t.to(acc)

    x32 = x.to(acc)
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    if norm == "layernorm":
        h = F.layer_norm(x32, x32.shape[-1:], f(norm_weight), f(norm_bias), eps)
    elif norm == "rmsnorm":
        h = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        h = h if norm_weight is None else h * f(norm_weight)
    else:
        raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', got {norm!r}")
    u, z = F.linear(h, f(in_proj_weight), f(in_proj_bias)).chunk(2, dim=-1)  # (B, E) each
    u = u.to(conv_state.dtype)
    window = torch.cat([conv_state, u[:, :, None]], dim=-1)  # (B, E, W)
    c = (window.to(acc) * f(conv_weight)).sum(-1)
    c = F.silu(c if conv_bias is None else c + f(conv_bias))  # (B, E)
    dlow, Bv, Cv = F.linear(c, f(x_proj_weight)).split([rank, n, n], dim=-1)  # (B, R), (B, N), (B, N)
    dt = F.softplus(F.linear(dlow, f(dt_proj_weight), f(dt_proj_bias)))  # (B, E)
    A = -torch.exp(A_log.to(acc))  # (E, N)
    ssm = torch.exp(dt[:, :, None] * A) * ssm_state.to(acc) + (dt * c)[:, :, None] * Bv[:, None, :]  # (B, E, N)
    y = (ssm * Cv[:, None, :]).sum(-1)  # (B, E)
    if D is not None:
        y = y + f(D) * c
    y = y * F.silu(z)
    out = x32 + F.linear(y, f(out_proj_weight), f(out_proj_bias))  # (B, D)
    conv_state.copy_(window[:, :, 1:])
    ssm_state.copy_(ssm)
    return out.to(x.dtype)
