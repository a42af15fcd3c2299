"""Residual block of the backbone: x + Dropout(Mixer(Norm(x))) [then x + Dropout(GatedMLP(Norm(x)))].

The causal block carries its mixer's state (the norm and the MLP are pointwise). The bidirectional block runs a
forward mixer and a second mixer over the reversed sequence and sums them; it has no streaming state.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..state import flatten_state
from .mamba1 import Mamba1Mixer


def make_norm(kind: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    """"layernorm" or "rmsnorm" over the last dimension D."""
    if kind == "layernorm":
        return nn.LayerNorm(d_model, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', got {kind!r}")


def make_mixer(name: str, d_model: int, options: dict[str, Any] | None = None) -> nn.Module:
    """A mixer from ``audiomamba.layers.MIXERS`` with keyword ``options`` checked against its signature."""
    from . import MIXERS

    if name not in MIXERS:
        raise ValueError(f"mixer: unknown mixer {name!r}; choose from {sorted(MIXERS)}")
    cls = MIXERS[name]
    options = dict(options or {})
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "d_model"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"mixer_options.{name}: unknown option(s) {unknown}; {name} accepts {sorted(accepted)}")
    return cls(d_model, **options)


class GatedMLP(nn.Module):
    """(B, L, D) → (B, L, D): W_out(SiLU(W_gate x) ⊙ W_up x), hidden width ``expand`` · D."""

    def __init__(self, d_model: int, expand: int = 2):
        super().__init__()
        hidden = expand * d_model
        self.fc_in = nn.Linear(d_model, 2 * hidden)
        self.fc_out = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc_in(x).chunk(2, dim=-1)  # (B, L, hidden) each
        return self.fc_out(F.silu(gate) * up)


class ResidualBlock(nn.Module):
    """Pre-norm residual block on (B, L, D).

    Args:
        d_model: D. mixer: mixer name ("mamba1", "mamba2", "s4d"). mixer_options: its keyword arguments.
        mlp_expand: hidden width of the gated MLP as a multiple of D; 0 = no MLP.
        norm: "layernorm" or "rmsnorm". norm_eps: its epsilon. dropout: on each residual branch.
        bidirectional: add a second mixer over the reversed sequence (no streaming state then).
    """

    def __init__(
        self, d_model: int, mixer: str = "mamba1", mixer_options: dict[str, Any] | None = None,
        mlp_expand: int = 0, norm: str = "layernorm", norm_eps: float = 1e-5, dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.d_model, self.bidirectional = d_model, bidirectional
        self.norm = make_norm(norm, d_model, norm_eps)
        self.mixer = make_mixer(mixer, d_model, mixer_options)
        self.mixer_rev = make_mixer(mixer, d_model, mixer_options) if bidirectional else None
        self.mlp_norm = make_norm(norm, d_model, norm_eps) if mlp_expand > 0 else None
        self.mlp = GatedMLP(d_model, mlp_expand) if mlp_expand > 0 else None
        self.dropout = nn.Dropout(dropout)

    def init_state(self, batch_size: int, device=None, dtype=None):
        """The mixer's state (B-first tensors). A bidirectional block has none: ValueError."""
        if self.bidirectional:
            raise ValueError("a bidirectional block has no streaming state (its reversed mixer sees the future)")
        return self.mixer.init_state(batch_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: Any = None, return_state: bool = True) -> tuple[torch.Tensor, Any]:
        """x: (B, L, D) → (B, L, D), new mixer state (None when bidirectional). ``state=None`` starts a stream.
        ``return_state=False``: the mixer computes no new state and None is returned in its place."""
        h = self.norm(x)
        if self.bidirectional:
            if state is not None:
                raise ValueError("a bidirectional block takes no state (it is not streamable)")
            y_fwd, _ = self.mixer(h, return_state=False)
            y_rev, _ = self.mixer_rev(h.flip(1), return_state=False)
            y, state = y_fwd + y_rev.flip(1), None
        else:
            y, state = self.mixer(h, state, return_state=return_state)
        x = x + self._drop(y)
        if self.mlp is not None:
            x = x + self._drop(self.mlp(self.mlp_norm(x)))
        return x, state

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        """Dropout on a residual branch; no call at all when it is the identity (eval, or p = 0)."""
        return self.dropout(y) if self.training and self.dropout.p > 0 else y

    @property
    def fused_step(self) -> bool:
        """Whether ``step_`` runs as one fused kernel call: a causal Mamba-1 block without MLP or active dropout."""
        return (isinstance(self.mixer, Mamba1Mixer) and not self.bidirectional and self.mlp is None
                and not (self.training and self.dropout.p > 0))

    def step_(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """One step x: (B, 1, D) → (B, 1, D) that overwrites ``state`` (the mixer's) with the new state: fixed
        buffers, as CUDA graphs need. Equals ``forward`` on a chunk of length 1."""
        if self.fused_step:
            return self.mixer.residual_step_(x[:, 0], state, self.norm)[:, None]  # (B, 1, D)
        y, new = self(x, state)
        torch._foreach_copy_(list(flatten_state(state).values()), list(flatten_state(new).values()))
        return y
