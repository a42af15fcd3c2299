"""Mamba-1 mixer (S6): input-dependent Δ, B, C with a selective scan, as in Gu & Dao (arXiv 2312.00752)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from audiomamba.kernels import (
    SHORT_LENGTH,
    causal_conv1d,
    get_backend,
    mamba1_block_step,
    mamba1_inner,
    selective_scan,
)
from audiomamba.kernels.reference import causal_conv1d_time_major_, selective_scan_time_major_

_LOG2_E = 1.0 / math.log(2.0)


@dataclass
class Mamba1State:
    """Streaming state of a Mamba1Mixer.

    conv: (B, E, W-1) the last W-1 conv inputs, in the activations' dtype.
    ssm: (B, E, N) float32 SSM state.
    """

    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba1StepWeights(NamedTuple):
    """The weights of one step of a pre-norm residual block with a Mamba-1 mixer, in the order of
    ``mamba1_block_step``'s weight arguments; the optional ones may be None. Shapes (D width, E inner width,
    N state size, R rank of Δ, W conv width): norms (D,), in_proj (2E, D) and (2E,), conv (E, W) and (E,), x_proj
    (R + 2N, E), dt_proj (E, R) and (E,), A_log (E, N), D (E,), out_proj (D, E) and (D,)."""

    norm_weight: torch.Tensor | None
    norm_bias: torch.Tensor | None
    in_proj_weight: torch.Tensor
    in_proj_bias: torch.Tensor | None
    conv_weight: torch.Tensor
    conv_bias: torch.Tensor | None
    x_proj_weight: torch.Tensor
    dt_proj_weight: torch.Tensor
    dt_proj_bias: torch.Tensor
    A_log: torch.Tensor
    D: torch.Tensor | None
    out_proj_weight: torch.Tensor
    out_proj_bias: torch.Tensor | None


def norm_kind(norm: nn.Module, dtype: torch.dtype) -> tuple[str, float]:
    """("layernorm" | "rmsnorm", eps) of a pre-norm; an RMSNorm without eps uses ``dtype``'s machine epsilon, as
    torch does."""
    if isinstance(norm, nn.RMSNorm):
        return "rmsnorm", norm.eps if norm.eps is not None else torch.finfo(dtype).eps
    if isinstance(norm, nn.LayerNorm):
        return "layernorm", norm.eps
    raise ValueError(f"norm: expected an nn.LayerNorm or nn.RMSNorm, got {type(norm).__name__}")


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y such that softplus(y) == x (for x > 0)."""
    return x + torch.log(-torch.expm1(-x))


class Mamba1Mixer(nn.Module):
    """Selective SSM mixer on (B, L, D).

    x → in_proj → (x, z) each (B, L, E) → causal depthwise conv (width W) + SiLU → x_proj → (Δ_low, B, C)
    → Δ = softplus(dt_proj(Δ_low) + bias) → selective scan (A = -exp(A_log), D skip, SiLU(z) gate) → out_proj.

    Args:
        d_model: D. d_state: N. d_conv: W. expand: E = expand · D.
        dt_rank: rank of the Δ projection ("auto" = ceil(D / 16)).
        dt_min, dt_max, dt_init_floor: Δ is initialised log-uniform in [dt_min, dt_max] through an
            inverse-softplus bias (the paper's initialisation); A is S4D-real: A[e, n] = -(n + 1).
    """

    def __init__(
        self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
        dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, conv_bias: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        if d_conv < 2:
            raise ValueError(f"d_conv: expected >= 2, got {d_conv}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min/dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        E, N = self.d_inner, d_state

        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(E, d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(E)) if conv_bias else None
        bound = 1.0 / math.sqrt(d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus(dt.clamp(min=dt_init_floor)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self._cache: tuple | None = None  # (key, derived weights) for calls without autograd, see _derived

    def _derived(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights derived from A_log, for calls without autograd (streaming): A = -exp(A_log) (E, N) float32
        and (A·log2 e)ᵀ (N, E) contiguous. Computed once and reused until A_log changes (version counter,
        storage, device or dtype)."""
        A_log = self.A_log
        if torch.compiler.is_compiling():  # traced (compiled streaming): computed in the graph, no Python cache
            A = -torch.exp(A_log.float())
            return A, (A * _LOG2_E).t()
        key = (A_log._version, A_log.data_ptr(), A_log.device, A_log.dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
                A = -torch.exp(A_log.float())
                self._cache = (key, (A, (A * _LOG2_E).t().contiguous()))
        return self._cache[1]

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log): (E, N) float32; cached without autograd (see ``_derived``), recomputed with it."""
        if torch.is_grad_enabled() and self.A_log.requires_grad:
            return -torch.exp(self.A_log.float())
        return self._derived()[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba1State:
        """Zero state: conv (B, E, W-1) in ``dtype``, ssm (B, E, N) float32."""
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.in_proj.weight.dtype
        return Mamba1State(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self, x: torch.Tensor, state: Mamba1State | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, Mamba1State | None]:
        """x: (B, L, D) → y: (B, L, D), new state. ``state=None`` starts a stream.

        ``return_state=False`` (training, scoring): the new state is not computed and None is returned in its
        place; the conv and the scan then neither take a zero start state nor return a final one (no final-state
        outputs in the autograd graph). ``y`` is the same.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected (batch, length, {self.d_model}), got {tuple(x.shape)}")
        batch, length, _ = x.shape
        if (not torch.is_grad_enabled() and 0 < length <= SHORT_LENGTH and x.dtype == torch.float32
                and (state is None or state.conv.dtype == torch.float32) and get_backend(x) == "reference"):
            y, new = self._forward_short(x, state)
            return y, (new if return_state else None)
        xz = self.in_proj(x)  # (B, L, 2E)
        xs, z = xz.chunk(2, dim=-1)  # (B, L, E) each
        # (B, E, L) views of channel-last memory: the Triton conv and scan take any strides and give their outputs
        # their inputs' strides, so x_proj and out_proj below read (B, L, ·) rows without a copy
        xs, z = xs.transpose(1, 2), z.transpose(1, 2)
        D, dt_bias = self.D.float(), self.dt_proj.bias.float()  # the kernels take them in float32 (no copy if so)
        if state is None and not return_state:
            # training and scoring: one op from the conv to the gate, which under autograd on the GPU keeps only
            # xz and the scan's sparse states for the backward
            y = mamba1_inner(xs, z, self.conv_weight, self.conv_bias, self.x_proj.weight, self.dt_proj.weight,
                             dt_bias, self._A(), D)  # (B, E, L)
            return self.out_proj(y.transpose(1, 2)), None  # (B, L, D)
        conv_state = None if state is None else state.conv
        if conv_state is not None and conv_state.dtype != xs.dtype:
            conv_state = conv_state.to(xs.dtype)
        xs = causal_conv1d(
            xs, self.conv_weight, self.conv_bias, conv_state, return_final_state=return_state, activation="silu"
        )  # (B, E, L), or ((B, E, L), (B, E, W-1))
        if return_state:
            xs, conv_state = xs
        x_dbl = self.x_proj(xs.transpose(1, 2))  # (B, L, R + 2N)
        dt_low, Bm, Cm = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # Δ before its bias (B, E, L), channel-last; the bias and the softplus are applied inside the scan
        delta = F.linear(dt_low, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan(
            xs, delta, self._A(), Bm.transpose(1, 2), Cm.transpose(1, 2), D, z, dt_bias, True,
            None if state is None else state.ssm, return_state,
        )  # (B, E, L), or ((B, E, L), (B, E, N))
        if not return_state:
            return self.out_proj(y.transpose(1, 2)), None  # (B, L, D)
        y, ssm_state = y
        return self.out_proj(y.transpose(1, 2)), Mamba1State(conv=conv_state, ssm=ssm_state)

    def _forward_short(self, x: torch.Tensor, state: Mamba1State | None) -> tuple[torch.Tensor, Mamba1State]:
        """``forward`` for a short float32 chunk without autograd on the reference (CPU) backend: streaming's
        path. The same math, but time-major (B, L, ·) from in_proj to out_proj (no layout changes), the conv and
        the scan as the in-place cores of the loop twins (``causal_conv1d_shift_ref``, ``selective_scan_loop_ref``),
        derived weights cached. The returned states are views of fresh buffers."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        A2 = self._derived()[1]  # (N, E)
        xs, z = self.in_proj(x).split(self.d_inner, dim=-1)  # (B, L, E) each
        conv_in = state.conv.transpose(1, 2)  # (B, W-1, E)
        xs, conv_state = causal_conv1d_time_major_(xs, self.conv_weight, self.conv_bias, conv_in, True)
        dt_low, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(F.linear(dt_low, self.dt_proj.weight, self.dt_proj.bias))  # (B, L, E)
        y, ssm_state = selective_scan_time_major_(xs, dt, A2, Bm, Cm, self.D, z, state.ssm.transpose(1, 2))
        # states in the contract's shapes (B, E, W-1), (B, E, N): transposed views of the time-major buffers
        return self.out_proj(y), Mamba1State(conv=conv_state.transpose(1, 2), ssm=ssm_state.transpose(1, 2))

    def step_weights(self, norm: nn.Module) -> Mamba1StepWeights:
        """The weights of one step of the pre-norm residual block made of ``norm`` (its nn.LayerNorm or nn.RMSNorm)
        and this mixer, for the fused step kernels."""
        return Mamba1StepWeights(
            norm.weight, getattr(norm, "bias", None), self.in_proj.weight, self.in_proj.bias, self.conv_weight,
            self.conv_bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D,
            self.out_proj.weight, self.out_proj.bias,
        )

    def residual_step_(self, x: torch.Tensor, state: Mamba1State, norm: nn.Module) -> torch.Tensor:
        """x + self(norm(x)) for one step, fused (one kernel per step on CUDA); ``state`` updated in place.

        x: (B, D) → (B, D). norm: the block's nn.LayerNorm or nn.RMSNorm. Equals the pre-norm residual block's
        forward on a chunk of length 1.
        """
        kind, eps = norm_kind(norm, x.dtype)
        return mamba1_block_step(x, state.conv, state.ssm, *self.step_weights(norm), kind, eps)
