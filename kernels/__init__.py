"""audiomamba.kernels: the SSM ops every model calls. Argument checks and backend choice, nothing else.

Backends:
- ``reference``: plain PyTorch (``reference.py``), the default for CPU tensors.
- ``triton``: the Triton kernels, the default for CUDA tensors. With ``TRITON_INTERPRET=1`` they also run on
  CPU tensors (slowly), which is how CI tests the real kernel code.
``AUDIOMAMBA_BACKEND=reference|triton`` forces one for every call.
"""

from __future__ import annotations

import os

import torch

from .reference import (
    _needs_grad,
    causal_conv1d_ref,
    causal_conv1d_shift_ref,
    mamba1_block_step_ref,
    selective_scan_chunked_ref,
    selective_scan_loop_ref,
    selective_scan_ref,
    ssd_scan_chunked_ref,
    ssd_scan_ref,
)

__all__ = [
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_shift_ref",
    "get_backend",
    "mamba1_block_step",
    "mamba1_block_step_ref",
    "mamba1_inner",
    "selective_scan",
    "selective_scan_chunked_ref",
    "selective_scan_loop_ref",
    "selective_scan_ref",
    "ssd_scan",
    "ssd_scan_chunked_ref",
    "ssd_scan_ref",
]

_BACKENDS = ("reference", "triton")
# Reference backend: calls of at most this many steps without autograd (streaming chunks, pooled stages) take the
# loop / shift twins, which issue far fewer and cheaper ops there than the chunked scan and the library conv.
SHORT_LENGTH = 64
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_REALS = (torch.float32, torch.float64)  # state-precision dtypes (A, states)
_COMPLEXES = (torch.complex64, torch.complex128)  # a complex A (S4D-Lin style) and its states


def get_backend(t: torch.Tensor) -> str:
    """The backend used for tensors like ``t``: ``AUDIOMAMBA_BACKEND`` if set, else by device."""
    forced = os.environ.get("AUDIOMAMBA_BACKEND", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"AUDIOMAMBA_BACKEND: expected one of {_BACKENDS}, got {forced!r}")
        return forced
    return "triton" if t.is_cuda else "reference"


# ---------------------------------------------------------------- checks


def _check_tensor(name, t, shape, dtypes=_FLOATS, device=None, optional=False):
    """Raise a ValueError naming ``name`` unless ``t`` has ``shape`` (ints or None = any), dtype, device."""
    if t is None:
        if optional:
            return
        raise ValueError(f"{name}: required tensor is None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")


def _check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state):
    _check_tensor("u", u, (None, None, None))
    batch, channels, length = u.shape
    dev = u.device
    _check_tensor("delta", delta, (batch, channels, length), device=dev)
    _check_tensor("A", A, (channels, None), _REALS + _COMPLEXES, device=dev)
    n = A.shape[1]
    cplx = A.is_complex()
    groups = []
    for name, M in (("B", B), ("C", C)):
        if M is not None and M.dim() == 2:  # fixed (non-selective)
            _check_tensor(name, M, (channels, n), _FLOATS + (_COMPLEXES if cplx else ()), device=dev)
            continue
        dtypes, steps = _FLOATS, length
        if cplx and isinstance(M, torch.Tensor) and M.dim() in (3, 4):
            if M.is_complex():
                dtypes = _COMPLEXES
            elif M.shape[-1] != 2 * length:
                raise ValueError(f"{name}: with a complex A, an input-dependent {name} is complex (..., N, L) or "
                                 f"real (..., N, 2L) with (real, imaginary) pairs along time; got shape "
                                 f"{tuple(M.shape)} for L = {length}")
            else:
                steps = 2 * length
        if M is not None and M.dim() == 4:
            _check_tensor(name, M, (batch, None, n, steps), dtypes, device=dev)
            if channels % M.shape[1]:
                raise ValueError(f"{name}: {M.shape[1]} groups do not divide {channels} channels")
            groups.append(M.shape[1])
        else:
            _check_tensor(name, M, (batch, n, steps), dtypes, device=dev)
            groups.append(1)
    if len(groups) == 2 and groups[0] != groups[1]:
        raise ValueError(f"B, C: input-dependent B and C need the same number of groups, got {groups[0]} and "
                         f"{groups[1]}")
    _check_tensor("D", D, (channels,), device=dev, optional=True)
    _check_tensor("z", z, (batch, channels, length), device=dev, optional=True)
    _check_tensor("delta_bias", delta_bias, (channels,), device=dev, optional=True)
    _check_tensor("initial_state", initial_state, (batch, channels, n), _COMPLEXES if cplx else _REALS,
                  device=dev, optional=True)


def _check_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state):
    _check_tensor("x", x, (None, None, None, None))
    batch, length, heads, headdim = x.shape
    dev = x.device
    _check_tensor("dt", dt, (batch, length, heads), device=dev)
    _check_tensor("A", A, (heads,), (torch.float32, torch.float64), device=dev)
    _check_tensor("B", B, (batch, length, None, None), device=dev)
    _check_tensor("C", C, tuple(B.shape), device=dev)
    if heads % B.shape[2]:
        raise ValueError(f"B: {B.shape[2]} groups do not divide {heads} heads")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if D is not None:
        _check_tensor("D", D, (heads,) if D.dim() == 1 else (heads, headdim), device=dev)
    _check_tensor("z", z, (batch, length, heads, headdim), device=dev, optional=True)
    _check_tensor("dt_bias", dt_bias, (heads,), device=dev, optional=True)
    _check_tensor("initial_state", initial_state, (batch, heads, headdim, B.shape[3]),
                  (torch.float32, torch.float64), device=dev, optional=True)


def _check_conv(x, weight, bias, initial_state, activation):
    _check_tensor("x", x, (None, None, None))
    batch, channels, _ = x.shape
    _check_tensor("weight", weight, (channels, None), device=x.device)
    _check_tensor("bias", bias, (channels,), device=x.device, optional=True)
    _check_tensor("initial_state", initial_state, (batch, channels, weight.shape[1] - 1),
                  device=x.device, optional=True)
    if activation not in (None, "silu"):
        raise ValueError(f"activation: expected None or 'silu', got {activation!r}")


def _check_block_step(x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight,
                      conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
                      out_proj_bias, norm):
    _check_tensor("x", x, (None, None))
    (batch, width), dev = x.shape, x.device
    _check_tensor("conv_weight", conv_weight, (None, None), device=dev)
    inner, taps = conv_weight.shape
    if taps < 2:
        raise ValueError(f"conv_weight: expected a width W >= 2, got {taps}")
    _check_tensor("A_log", A_log, (inner, None), device=dev)
    _check_tensor("dt_proj_weight", dt_proj_weight, (inner, None), device=dev)
    n, rank = A_log.shape[1], dt_proj_weight.shape[1]
    _check_tensor("conv_state", conv_state, (batch, inner, taps - 1), device=dev)
    _check_tensor("ssm_state", ssm_state, (batch, inner, n), (torch.float32,), device=dev)
    for name, t, shape in (
        ("norm_weight", norm_weight, (width,)), ("norm_bias", norm_bias, (width,)),
        ("in_proj_weight", in_proj_weight, (2 * inner, width)), ("in_proj_bias", in_proj_bias, (2 * inner,)),
        ("conv_bias", conv_bias, (inner,)), ("x_proj_weight", x_proj_weight, (rank + 2 * n, inner)),
        ("dt_proj_bias", dt_proj_bias, (inner,)), ("D", D, (inner,)),
        ("out_proj_weight", out_proj_weight, (width, inner)), ("out_proj_bias", out_proj_bias, (width,)),
    ):
        optional = name in ("norm_weight", "norm_bias", "in_proj_bias", "conv_bias", "D", "out_proj_bias")
        _check_tensor(name, t, shape, device=dev, optional=optional)
    if norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', got {norm!r}")
    if norm == "rmsnorm" and norm_bias is not None:
        raise ValueError("norm_bias: an RMSNorm has no bias; pass None")


def _check_inner(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D):
    _check_tensor("x", x, (None, None, None))
    (batch, inner, length), dev = x.shape, x.device
    _check_tensor("z", z, (batch, inner, length), device=dev)
    _check_tensor("conv_weight", conv_weight, (inner, None), device=dev)
    _check_tensor("conv_bias", conv_bias, (inner,), device=dev, optional=True)
    _check_tensor("A", A, (inner, None), _REALS, device=dev)
    _check_tensor("dt_proj_weight", dt_proj_weight, (inner, None), device=dev)
    n, rank = A.shape[1], dt_proj_weight.shape[1]
    _check_tensor("x_proj_weight", x_proj_weight, (rank + 2 * n, inner), device=dev)
    _check_tensor("delta_bias", delta_bias, (inner,), device=dev, optional=True)
    _check_tensor("D", D, (inner,), device=dev, optional=True)


# ---------------------------------------------------------------- public ops


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Mamba-1 selective scan; the one entry point every model calls.

    Same contract as ``selective_scan_ref`` (see there for the recurrence), and mamba_ssm's input space:
    u, delta, z: (B, E, L); A: (E, N) float32 or complex64; B, C: each (B, N, L), (B, G, N, L) or fixed (E, N)
    (with a complex A: complex, or real (B, [G,] N, 2L) with (real, imaginary) pairs along time); D, delta_bias:
    (E,); initial_state: (B, E, N) float32 (complex64 for a complex A). Returns y (B, E, L) in u's dtype, or
    (y, final_state (B, E, N)). On the Triton backend real A with input-dependent B and C takes the fast kernels
    (``mamba1_scan``), everything else the general ones (``mamba1_scan_general``).
    """
    _check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)
    if get_backend(u) == "triton":
        if A.is_complex() or B.dim() == 2 or C.dim() == 2:
            from .mamba1_scan_general import selective_scan_general_triton

            return selective_scan_general_triton(*args)
        from .mamba1_scan import selective_scan_triton

        return selective_scan_triton(*args)
    if u.shape[-1] <= SHORT_LENGTH and not _needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return selective_scan_loop_ref(*args)
    return selective_scan_chunked_ref(*args)


def causal_conv1d(x, weight, bias=None, initial_state=None, return_final_state=False, activation=None):
    """Causal depthwise conv1d with conv state in and out; contract of ``causal_conv1d_ref``.

    x: (B, E, L); weight: (E, W); bias: (E,); initial_state: (B, E, W-1).
    Returns y (B, E, L) or (y, final_state (B, E, W-1)).
    """
    _check_conv(x, weight, bias, initial_state, activation)
    args = (x, weight, bias, initial_state, return_final_state, activation)
    if get_backend(x) == "triton":
        from .conv1d import causal_conv1d_triton

        return causal_conv1d_triton(*args)
    if x.shape[-1] <= SHORT_LENGTH and not _needs_grad(x, weight, bias, initial_state):
        return causal_conv1d_shift_ref(*args)
    return causal_conv1d_ref(*args)


def ssd_scan(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
    initial_state=None, return_final_state=False,
):
    """Mamba-2 SSD scan; contract of ``ssd_scan_ref``.

    x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); D: (H,) or (H, P); z: (B, L, H, P);
    dt_bias: (H,); initial_state: (B, H, P, N) float32. Returns y (B, L, H, P) or (y, final_state).
    """
    _check_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state)
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_state, return_final_state)
    if get_backend(x) == "triton":
        from .ssd import ssd_scan_triton

        return ssd_scan_triton(*args)
    return ssd_scan_chunked_ref(*args)


def mamba1_inner(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D=None):
    """A Mamba-1 mixer between in_proj and out_proj (mamba_ssm's ``mamba_inner_fn`` without the projections):

        u = SiLU(causal_conv1d(x));  (δ, B, C) = x_proj(u);  y = selective_scan(u, dt_proj(δ), A, B, C, D, z,
        delta_bias, delta_softplus=True)

    x, z: (B, E, L), any strides (views of in_proj's output); conv_weight: (E, W); conv_bias: (E,) or None;
    x_proj_weight: (R + 2N, E); dt_proj_weight: (E, R); delta_bias: (E,); A: (E, N) float32; D: (E,).
    Returns y (B, E, L). On the Triton backend, under autograd, it keeps only x, z and the scan's sparse states
    for the backward and recomputes the conv and the projections there (``mamba1_recompute.py``).
    """
    args = (x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, delta_bias, A, D)
    _check_inner(*args)
    if get_backend(x) == "triton" and _needs_grad(*args):
        from .mamba1_recompute import mamba1_inner_triton

        return mamba1_inner_triton(*args)
    from .mamba1_recompute import mamba1_inner_composed

    return mamba1_inner_composed(*args)


def mamba1_block_step(
    x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
    x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, norm="layernorm",
    eps=1e-5,
):
    """One generation step of a pre-norm residual block with a Mamba-1 mixer, states updated in place;
    contract of ``mamba1_block_step_ref`` (one fused kernel per block on the Triton backend).

    x: (B, D); conv_state: (B, E, W-1); ssm_state: (B, E, N) float32; weights of the norm, in_proj, conv,
    x_proj, dt_proj, A_log, D and out_proj (optional ones may be None). Returns out (B, D) = x + mixer output.
    """
    args = (x, conv_state, ssm_state, norm_weight, norm_bias, in_proj_weight, in_proj_bias, conv_weight, conv_bias,
            x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, out_proj_bias, norm)
    _check_block_step(*args)
    if get_backend(x) == "triton":
        from .block_step import mamba1_block_step_triton

        return mamba1_block_step_triton(*args, eps)
    return mamba1_block_step_ref(*args, eps)
