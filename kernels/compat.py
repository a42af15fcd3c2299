"""mamba_ssm's and causal-conv1d's public Mamba-1 functions, with their signatures and semantics, on our kernels
(Triton on CUDA tensors, PyTorch on CPU), so that code written for them runs after one changed import line:

    # from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, mamba_inner_fn
    # from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    # from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    from audiomamba.kernels.compat import (causal_conv1d_fn, causal_conv1d_update, mamba_inner_fn,
                                           selective_scan_fn, selective_state_update)

Beyond the originals: the last state returned by ``selective_scan_fn`` is differentiable, and
``selective_state_update`` works without ``dt_bias``. Not supported (clear errors): variable-length batches
(``cu_seqlens``, ``seq_idx``) and the serving-cache arguments (``cache_seqlens``, ``conv_state_indices``,
``state_batch_indices``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import causal_conv1d, mamba1_inner, selective_scan

__all__ = ["causal_conv1d_fn", "causal_conv1d_update", "mamba_inner_fn", "selective_scan_fn",
           "selective_state_update"]


def _unsupported(**kwargs) -> None:
    for name, value in kwargs.items():
        if value is not None:
            raise NotImplementedError(f"{name}: not supported by audiomamba.kernels.compat (pass None)")


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, cu_seqlens=None):
    """mamba_ssm's ``selective_scan_fn``: the Mamba-1 selective scan (``audiomamba.kernels.selective_scan``).

    Args:
        u, delta: (B, E, L); A: (E, N) float32 or complex64; B, C: (B, N, L), (B, G, N, L) or fixed (E, N);
            with a complex A an input-dependent B / C is real (B, [G,] N, 2L) with (real, imaginary) pairs along
            time, or complex (B, [G,] N, L); a fixed one complex (E, N). D: (E,); z: (B, E, L); delta_bias: (E,).
        return_last_state: also return the state after the last step, (B, E, N) float32 / complex64
            (differentiable here, unlike mamba_ssm's).

    Returns:
        out (B, E, L) in u's dtype, or (out, last_state).
    """
    _unsupported(cu_seqlens=cu_seqlens)
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          return_final_state=return_last_state)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension in float32 (float64 for float64 inputs), returned in x's dtype."""
    x32 = x if x.dtype == torch.float64 else x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x32.dtype)).to(x.dtype)


def _projected_bc(cols: torch.Tensor, bias, rms_weight, eps, complex_a: bool) -> torch.Tensor:
    """(B, L, d_state) columns of x_proj -> an input-dependent B / C: (B, N, L), or (B, N, 2L) with (real,
    imaginary) pairs along time for a complex A (the columns then hold the N pairs)."""
    if bias is not None:
        cols = cols + bias.to(cols.dtype)
    if rms_weight is not None:
        cols = _rms_norm(cols, rms_weight, eps)
    if not complex_a:
        return cols.transpose(1, 2)  # (B, N, L)
    batch, length, width = cols.shape
    return cols.reshape(batch, length, width // 2, 2).permute(0, 2, 1, 3).reshape(batch, width // 2, 2 * length)


def mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                   out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None,
                   b_c_dt_rms_eps=1e-6, *, cu_seqlens=None, seq_idx=None):
    """mamba_ssm's ``mamba_inner_fn``: a Mamba-1 mixer between in_proj and out_proj, as one differentiable call.

        x, z = xz;  x = SiLU(causal_conv1d(x));  (δ, B, C) = x_proj(x) (B / C from x_proj only when passed None)
        Δ = delta_proj(δ);  y = selective_scan(x, Δ, A, B, C, D, z, delta_bias, delta_softplus);  out_proj(y)

    With a complex A, x_proj's B / C columns hold (real, imaginary) pairs per state (2N columns each). The
    optional RMSNorm weights (b_rms_weight, c_rms_weight over N, dt_rms_weight over E) normalise B, C and Δ
    before the scan, as mamba_ssm does. ``checkpoint_lvl`` (0 or 1) is accepted for compatibility. The plain
    Mamba-1 case (real A, B and C from x_proj, softplus, no norms or projection biases) runs as
    ``audiomamba.kernels.mamba1_inner``, which keeps only xz and the scan's sparse states for the backward, as
    mamba_ssm does; the other cases keep autograd's intermediates.

    Args:
        xz: (B, 2E, L); conv1d_weight: (E, 1, W); conv1d_bias: (E,) or None; x_proj_weight: (R + [2N or 4N], E);
        delta_proj_weight: (E, R); out_proj_weight: (D_out, E); out_proj_bias: (D_out,) or None; A: (E, N);
        B, C: fixed (E, N) or None (input-dependent); D, delta_bias: (E,); B_proj_bias, C_proj_bias: (N',).

    Returns:
        (B, L, D_out).
    """
    _unsupported(cu_seqlens=cu_seqlens, seq_idx=seq_idx)
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"checkpoint_lvl: expected 0 or 1, got {checkpoint_lvl!r}")
    rank = delta_proj_weight.shape[1]
    complex_a = A.is_complex()
    d_state = A.shape[-1] * (2 if complex_a else 1)
    x, z = xz.chunk(2, dim=1)  # (B, E, L) each
    conv_weight = conv1d_weight.reshape(conv1d_weight.shape[0], -1)
    plain = (not complex_a and B is None and C is None and delta_softplus and x_proj_weight.shape[0] == rank + 2 *
             d_state and all(t is None for t in (B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight, dt_rms_weight)))
    if plain:
        y = mamba1_inner(x, z, conv_weight, conv1d_bias, x_proj_weight, delta_proj_weight, delta_bias, A, D)
        return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
    x = causal_conv1d(x, conv_weight, conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, R + ...)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight)  # (B, L, E)
    if dt_rms_weight is not None:
        delta = _rms_norm(delta, dt_rms_weight, b_c_dt_rms_eps)
    if B is None:
        B = _projected_bc(x_dbl[..., rank:rank + d_state], B_proj_bias, b_rms_weight, b_c_dt_rms_eps, complex_a)
    if C is None:
        C = _projected_bc(x_dbl[..., x_dbl.shape[-1] - d_state:], C_proj_bias, c_rms_weight, b_c_dt_rms_eps,
                          complex_a)
    y = selective_scan(x, delta.transpose(1, 2), A, B, C, D, z, delta_bias, delta_softplus)  # (B, E, L)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """mamba_ssm's ``selective_state_update``: one step of the scan, ``state`` updated in place.

        Δ = softplus(dt + dt_bias) (if dt_softplus);  state ← exp(Δ A) state + Δ x B;  out = (C·state + D x) SiLU(z)

    Single-head (Mamba-1) or multi-head (Mamba-2) shapes, heads H of P channels each:
        state: (B, E, N) or (B, H, P, N); x, dt, z: (B, E) or (B, H, P); A: (E, N) or (H, P, N);
        B, C: (B, N) or (B, G, N) with G dividing the heads (channels for single-head); D, dt_bias: (E,) or (H, P).
    ``dt_bias`` may be None.

    Returns:
        out: like x.
    """
    _unsupported(state_batch_indices=state_batch_indices)
    multi = state.dim() == 4
    if state.dim() not in (3, 4) or x.shape != state.shape[:-1]:
        raise ValueError(f"state, x: expected state (B, E, N) / (B, H, P, N) and x its first dimensions, got "
                         f"{tuple(state.shape)} and {tuple(x.shape)}")
    batch, n = state.shape[0], state.shape[-1]
    channels = x[0].numel()

    def flat(t):  # per-channel tensors: (..., H, P) -> (..., E)
        return None if t is None else (t.reshape(*t.shape[:-2], -1) if multi else t)

    Bm = B if B.dim() == 3 else B.unsqueeze(1)  # (B, G, N)
    Cm = C if C.dim() == 3 else C.unsqueeze(1)
    h0 = state.reshape(batch, channels, n)
    if h0.dtype in (torch.float16, torch.bfloat16):
        h0 = h0.float()  # the scan's state precision
    y, h = selective_scan(
        flat(x).unsqueeze(-1), flat(dt).unsqueeze(-1), A.reshape(channels, n), Bm.unsqueeze(-1), Cm.unsqueeze(-1),
        flat(D), None if z is None else flat(z).unsqueeze(-1), flat(dt_bias), dt_softplus,
        initial_state=h0, return_final_state=True,
    )
    state.copy_(h.reshape(state.shape))
    return y.reshape(x.shape)


def _activation(activation):
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")
    return None if activation is None else "silu"


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal-conv1d's ``causal_conv1d_fn``: causal depthwise conv1d (``audiomamba.kernels.causal_conv1d``).

    Args:
        x: (B, E, L); weight: (E, W); bias: (E,); initial_states: (B, E, W-1); final_states_out: (B, E, W-1)
        written with the final states when given; activation: None, "silu" or "swish".

    Returns:
        out (B, E, L), or (out, final_states) when ``return_final_states``.
    """
    _unsupported(seq_idx=seq_idx)
    act = _activation(activation)
    if not return_final_states:
        if final_states_out is not None:
            raise ValueError("final_states_out: only used with return_final_states=True")
        return causal_conv1d(x, weight, bias, initial_states, False, act)
    out, final = causal_conv1d(x, weight, bias, initial_states, True, act)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """causal-conv1d's ``causal_conv1d_update``: the conv for new steps with ``conv_state`` updated in place.

    Args:
        x: (B, E) or (B, E, L) new inputs; conv_state: (B, E, S) with S >= W-1, the last S inputs;
        weight: (E, W); bias: (E,); activation: None, "silu" or "swish".

    Returns:
        out: like x.
    """
    _unsupported(cache_seqlens=cache_seqlens, conv_state_indices=conv_state_indices)
    act = _activation(activation)
    width, keep = weight.shape[1], conv_state.shape[-1]
    if keep < width - 1:
        raise ValueError(f"conv_state: expected at least W-1 = {width - 1} steps, got {keep}")
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    out = causal_conv1d(x3, weight, bias, conv_state[..., keep - (width - 1):], False, act)
    conv_state.copy_(torch.cat([conv_state, x3.to(conv_state.dtype)], dim=-1)[..., x3.shape[-1]:])
    return out.reshape(x.shape)
