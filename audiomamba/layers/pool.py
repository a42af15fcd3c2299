"""Pooling between the stages of the multi-resolution backbone (SaShiMi's DownPool / UpPool), with exact
streaming state.

DownPool(P) folds P consecutive steps into channels and maps them to the coarse width: coarse frame j sees
fine steps jP … jP+P-1. UpPool(P) maps a coarse step back to P fine steps; in causal mode its output is shifted
by one coarse step, so fine step t = jP + r reads coarse frame j-1 (frame 0 reads zeros) and the backbone stays
causal: frame j-1 only saw fine steps up to jP-1 < t.

Streaming: a causal pool carries a fixed-shape state, so that chunks of any length (also not multiples of P)
give the same outputs as one call over the concatenated input. Rows of a batch share one time axis: the phase
is stored per row (batch-first), and all rows must hold the same phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DownPoolState:
    """buffer: (B, P-1, D) the last P-1 inputs (oldest first; the last ``phase`` of them are the partial
    frame). phase: (B,) int64, inputs seen modulo P."""

    buffer: torch.Tensor
    phase: torch.Tensor


@dataclass
class UpPoolState:
    """buffer: (B, P, D) outputs still due from the last coarse frame, rotated so that entry 0 is the next
    one (the first ``P - phase`` entries are due in the current frame). phase: (B,) int64, outputs emitted
    modulo P."""

    buffer: torch.Tensor
    phase: torch.Tensor


def _phase_of(phase: torch.Tensor, name: str) -> int:
    """The common phase of a batch of streams as a Python int (one host sync)."""
    if phase.numel() == 1:
        return int(phase.item())
    values = phase.tolist()
    lo, hi = min(values), max(values)
    if lo != hi:
        raise ValueError(f"{name}: rows of a batch must share one phase (one time axis), got phases {lo}..{hi}")
    return lo


class DownPool(nn.Module):
    """(B, L, D) → (B, L // P, D_out): fold P steps into channels, then a linear map.

    Args:
        d_model: D, the fine width. d_out: the coarse width. pool: P (>= 2).
    """

    def __init__(self, d_model: int, d_out: int, pool: int):
        super().__init__()
        if pool < 2:
            raise ValueError(f"pool: expected >= 2, got {pool}")
        self.d_model, self.d_out, self.pool = d_model, d_out, pool
        self.linear = nn.Linear(d_model * pool, d_out)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DownPoolState:
        device = device if device is not None else self.linear.weight.device
        dtype = dtype if dtype is not None else self.linear.weight.dtype
        return DownPoolState(
            buffer=torch.zeros(batch_size, self.pool - 1, self.d_model, device=device, dtype=dtype),
            phase=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, M·P, D) → (B, M, D_out)."""
        return self.linear(x.reshape(x.shape[0], -1, self.pool * self.d_model))  # (B, M, P·D) → (B, M, D_out)

    def forward(
        self, x: torch.Tensor, state: DownPoolState | None = None, phase: int | None = None,
        return_state: bool = True,
    ) -> tuple[torch.Tensor, DownPoolState | None]:
        """x: (B, L, D) → frames completed by these inputs (B, M, D_out), new state.

        M = (phase + L) // P, possibly 0. ``state=None`` starts a stream (phase 0, no host sync). ``phase``: the
        state's phase when the caller knows it (no host sync; the compiled streaming path, which specialises on
        it). ``return_state=False``: None in place of the new state.
        """
        batch, length, _ = x.shape
        P = self.pool
        if phase is not None:
            r0 = phase
        else:
            r0 = 0 if state is None else _phase_of(state.phase, "DownPool state.phase")
        full = torch.cat([state.buffer[:, P - 1 - r0 :], x], dim=1) if r0 else x  # (B, r0 + L, D)
        m = (r0 + length) // P
        frames = self._frames(full if m * P == full.shape[1] else full[:, : m * P])  # (B, M, D_out)
        if not return_state:
            return frames, None
        if state is None:
            state = self.init_state(batch, x.device, x.dtype)
        if length >= P - 1:
            window = x[:, length - (P - 1) :]  # (B, P-1, D): the last P-1 inputs
        else:
            window = torch.cat([state.buffer[:, length:], x], dim=1)
        # every row has phase r0 (checked above), so the new phase is one number
        return frames, DownPoolState(buffer=window, phase=torch.full_like(state.phase, (r0 + length) % P))

    def step(self, x: torch.Tensor, state: DownPoolState, complete: bool):
        """One input x: (B, 1, D). ``complete`` (known to the caller: phase == P-1) says that this input ends a
        frame; then returns the frame (B, 1, D_out), else None. No host sync (CUDA-graph safe)."""
        window = torch.cat([state.buffer, x], dim=1)  # (B, P, D)
        if complete:
            return self._frames(window), DownPoolState(window[:, 1:], torch.zeros_like(state.phase))
        return None, DownPoolState(window[:, 1:], state.phase + 1)

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """Non-causal whole sequence: x (B, L, D) with L a multiple of P → (B, L / P, D_out)."""
        if x.shape[1] % self.pool:
            raise ValueError(f"x: length {x.shape[1]} is not a multiple of the pooling factor {self.pool}")
        return self._frames(x)


class UpPool(nn.Module):
    """(B, M, D_in) → (B, L, D): a linear map to P·D channels unfolded into P fine steps.

    Causal: fine step t = jP + r reads coarse frame j-1 (shifted by one coarse step, zeros for j = 0).

    Args:
        d_in: the coarse width. d_model: D, the fine width. pool: P (>= 2).
    """

    def __init__(self, d_in: int, d_model: int, pool: int):
        super().__init__()
        if pool < 2:
            raise ValueError(f"pool: expected >= 2, got {pool}")
        self.d_in, self.d_model, self.pool = d_in, d_model, pool
        self.linear = nn.Linear(d_in, d_model * pool)

    def init_state(self, batch_size: int, device=None, dtype=None) -> UpPoolState:
        device = device if device is not None else self.linear.weight.device
        dtype = dtype if dtype is not None else self.linear.weight.dtype
        return UpPoolState(
            buffer=torch.zeros(batch_size, self.pool, self.d_model, device=device, dtype=dtype),
            phase=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def _unfold(self, coarse: torch.Tensor) -> torch.Tensor:
        """coarse: (B, M, D_in) → (B, M·P, D)."""
        return self.linear(coarse).reshape(coarse.shape[0], -1, self.d_model)  # (B, M, P·D) → (B, M·P, D)

    def forward(
        self, coarse: torch.Tensor, length: int, state: UpPoolState | None = None, phase: int | None = None,
        return_state: bool = True,
    ) -> tuple[torch.Tensor, UpPoolState | None]:
        """Causal: ``length`` fine outputs (B, L, D), new state.

        ``coarse`` (B, M, D_in) holds the frames the paired DownPool completed during these L steps:
        M = (phase + L) // P. ``state=None`` starts a stream (phase 0, no host sync). ``phase``: as in
        ``DownPool.forward``. ``return_state=False``: None in place of the new state.
        """
        batch = coarse.shape[0]
        P = self.pool
        if phase is not None:
            r0 = phase
        else:
            r0 = 0 if state is None else _phase_of(state.phase, "UpPool state.phase")
        if state is None:
            state = self.init_state(batch, coarse.device, coarse.dtype)
        m = (r0 + length) // P
        if coarse.shape[1] != m:
            raise ValueError(f"coarse: expected {m} frames for {length} steps at phase {r0}, got {coarse.shape[1]}")
        r1 = (r0 + length) % P
        if m == 0:
            out = state.buffer[:, :length]  # (B, L, D)
            buffer = torch.cat([state.buffer[:, length:], out], dim=1)  # rotate by L
        else:
            fine = self._unfold(coarse)  # (B, M·P, D)
            # (B, L, D): what is due from the previous frame, then the new frames' outputs (all but the r1 ... P
            # steps of the newest frame that fall after this chunk)
            out = torch.cat([state.buffer[:, : P - r0], fine[:, : length - (P - r0)]], dim=1)
            last = fine[:, -P:]  # (B, P, D): the newest frame's outputs, r1 of them already due
            buffer = torch.cat([last[:, r1:], last[:, :r1]], dim=1) if r1 else last
        if not return_state:
            return out, None
        # every row has phase r0 (checked above), so the new phase is one number
        return out, UpPoolState(buffer=buffer, phase=torch.full_like(state.phase, r1))

    def step(self, coarse: torch.Tensor | None, state: UpPoolState):
        """One fine output (B, 1, D). ``coarse`` (B, 1, D_in) is the frame the paired DownPool completed at
        this step, else None. No host sync (CUDA-graph safe)."""
        out = state.buffer[:, :1]  # (B, 1, D)
        if coarse is None:
            buffer = torch.cat([state.buffer[:, 1:], out], dim=1)
            return out, UpPoolState(buffer, state.phase + 1)
        return out, UpPoolState(self._unfold(coarse), torch.zeros_like(state.phase))

    def forward_full(self, coarse: torch.Tensor) -> torch.Tensor:
        """Non-causal (no shift): coarse (B, M, D_in) → (B, M·P, D)."""
        return self._unfold(coarse)
