"""Mamba-2 mixer (SSD): scalar decay per head, multi-head state, gated RMSNorm (Dao & Gu, arXiv 2405.21060)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audiomamba.kernels import causal_conv1d, ssd_scan

from .mamba1 import inverse_softplus


@dataclass
class Mamba2State:
    """Streaming state of a Mamba2Mixer.

    conv: (B, E + 2·G·N, W-1) last conv inputs of the (x, B, C) stream.
    ssm: (B, H, P, N) float32.
    """

    conv: torch.Tensor
    ssm: torch.Tensor


class GatedRMSNorm(nn.Module):
    """y = RMSNorm(x · SiLU(z)) · weight, normalised over groups of ``group_size`` channels. x, z: (..., E)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"group_size: {group_size} does not divide dim {dim}")
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = (x.float() * F.silu(z.float())).unflatten(-1, (-1, self.group_size))  # (..., G, E/G)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h.flatten(-2) * self.weight.float()).to(x.dtype)


class Mamba2Mixer(nn.Module):
    """SSD mixer on (B, L, D).

    x → in_proj → (z (E), xBC (E + 2GN), dt (H)) → causal conv + SiLU on xBC → split x (B, L, H, P), B, C
    (B, L, G, N) → SSD scan with A = -exp(A_log) (H,), D skip → gated RMSNorm with z → out_proj.

    Args:
        d_model: D. d_state: N. d_conv: W. expand: E = expand · D. headdim: P (H = E / P).
        ngroups: G groups sharing B and C. chunk_size: the SSD chunk length.
        dt_min, dt_max: Δ initialised log-uniform through an inverse-softplus bias. A_init_range: A_h ~ U(range).
    """

    def __init__(
        self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
        ngroups: int = 1, chunk_size: int = 256, dt_min: float = 1e-3, dt_max: float = 0.1,
        dt_init_floor: float = 1e-4, A_init_range: tuple[float, float] = (1.0, 16.0), bias: bool = False,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"headdim: {headdim} does not divide the inner width {self.d_inner}")
        self.headdim, self.nheads, self.ngroups, self.chunk_size = headdim, self.d_inner // headdim, ngroups, chunk_size
        if self.nheads % ngroups:
            raise ValueError(f"ngroups: {ngroups} does not divide the {self.nheads} heads")
        E, N, H, G = self.d_inner, d_state, self.nheads, ngroups
        self.conv_dim = E + 2 * G * N

        self.in_proj = nn.Linear(d_model, 2 * E + 2 * G * N + H, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim))
        bound = 1.0 / math.sqrt(d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(inverse_softplus(dt.clamp(min=dt_init_floor)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(E, E // G)
        self.out_proj = nn.Linear(E, d_model, bias=bias)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """Zero state: conv (B, E + 2GN, W-1) in ``dtype``, ssm (B, H, P, N) float32."""
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.in_proj.weight.dtype
        return Mamba2State(
            conv=torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self, x: torch.Tensor, state: Mamba2State | None = None, return_state: bool = True
    ) -> tuple[torch.Tensor, Mamba2State | None]:
        """x: (B, L, D) → y: (B, L, D), new state. ``state=None`` starts a stream. ``return_state=False``: no
        final state is computed, None is returned in its place."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected (batch, length, {self.d_model}), got {tuple(x.shape)}")
        batch, length, _ = x.shape
        E, N, H, G, P = self.d_inner, self.d_state, self.nheads, self.ngroups, self.headdim
        zxbcdt = self.in_proj(x)  # (B, L, 2E + 2GN + H)
        z, xBC, dt = zxbcdt.split([E, self.conv_dim, H], dim=-1)
        conv_state = None if state is None else state.conv.to(xBC.dtype)
        xBC = causal_conv1d(
            xBC.transpose(1, 2), self.conv_weight, self.conv_bias, conv_state,
            return_final_state=return_state, activation="silu",
        )  # (B, E + 2GN, L), or with the final conv state
        if return_state:
            xBC, conv_state = xBC
        xs, Bm, Cm = xBC.transpose(1, 2).split([E, G * N, G * N], dim=-1)  # (B, L, ·)
        y = ssd_scan(
            xs.unflatten(-1, (H, P)), dt, -torch.exp(self.A_log.float()),
            Bm.unflatten(-1, (G, N)), Cm.unflatten(-1, (G, N)), self.chunk_size, D=self.D.float(),
            dt_bias=self.dt_bias.float(), dt_softplus=True,
            initial_state=None if state is None else state.ssm, return_final_state=return_state,
        )  # (B, L, H, P), or with the final state (B, H, P, N)
        if return_state:
            y, ssm_state = y
        y = self.out_proj(self.norm(y.flatten(-2), z))  # (B, L, E) → (B, L, D)
        return y, (Mamba2State(conv=conv_state, ssm=ssm_state) if return_state else None)
