"""MultiResolutionBackbone: SaShiMi's U-Net (Goel et al., arXiv 2202.09729) with Mamba / S4D blocks, as used for
the audio models of the Mamba paper (arXiv 2312.00752, §4.4).

Stage s runs at rate L / (p_1 ⋯ p_s) with width D_s = d_model · e_1 ⋯ e_s. The down path only pools; each
stage's blocks run on the way up (SaShiMi's default, non-U-Net layout)::

    x ─┬─ DownPool_0 ─┬─ DownPool_1 ─ … ─ [center blocks] (+ residual) ─ …
       │              └───────────── UpPool_1 (+ skip) ─ [stage-1 blocks] (+ residual) ─┐
       └──────────────────────────── UpPool_0 (+ skip) ─ [stage-0 blocks] (+ residual) ─ Norm ─ y

Causal mode: every piece is causal (UpPool shifted by one coarse step) and carries state, so the backbone
follows the state contract: chunks of any length, passing the state along, equal one call. Pooled stages run
only on the frames that complete inside a chunk. ``step`` runs one sample with the pattern of stages that run
given by the caller (no host sync: CUDA-graph safe). Bidirectional mode: blocks with forward and reversed
mixers, no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import BackboneConfig
from .layers.block import ResidualBlock, make_norm
from .layers.pool import DownPool, DownPoolState, UpPool, UpPoolState, _phase_of


@dataclass
class BackboneState:
    """down[s], up[s]: pooling states between stage s and s+1; blocks[s][i]: mixer state of block i of stage s."""

    down: list[DownPoolState]
    up: list[UpPoolState]
    blocks: list[list[Any]]


class MultiResolutionBackbone(nn.Module):
    """(B, L, D) → (B, L, D) multi-resolution stack; see the module docstring.

    Args:
        config: a :class:`BackboneConfig` (or its fields as keyword arguments).
    """

    def __init__(self, config: BackboneConfig | None = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = BackboneConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a BackboneConfig or keyword arguments, not both")
        self.config = config
        widths, blocks, mixers = config.stage_widths(), config.stage_blocks(), config.stage_mixers()
        self.d_model, self.widths, self.pools = config.d_model, widths, list(config.pool)
        self.bidirectional = config.bidirectional
        self.down = nn.ModuleList(DownPool(widths[s], widths[s + 1], p) for s, p in enumerate(self.pools))
        self.up = nn.ModuleList(UpPool(widths[s + 1], widths[s], p) for s, p in enumerate(self.pools))
        self.stages = nn.ModuleList(
            nn.ModuleList(
                ResidualBlock(
                    widths[s], mixers[s], config.mixer_options.get(mixers[s]), config.mlp_expand, config.norm,
                    config.norm_eps, config.dropout, config.bidirectional,
                )
                for _ in range(blocks[s])
            )
            for s in range(config.num_stages)
        )
        self.norm = make_norm(config.norm, widths[0], config.norm_eps)
        # frame_sizes[s]: fine samples per step of stage s (1, p1, p1 p2, ...)
        self.frame_sizes = [1]
        for p in self.pools:
            self.frame_sizes.append(self.frame_sizes[-1] * p)

    @property
    def pool_product(self) -> int:
        """Samples per innermost frame."""
        return self.frame_sizes[-1]

    def init_state(self, batch_size: int, device=None, dtype=None) -> BackboneState:
        """Start-of-stream state. ValueError for a bidirectional backbone (it has none)."""
        if self.bidirectional:
            raise ValueError("a bidirectional backbone has no streaming state: build it with bidirectional=false")
        return BackboneState(
            down=[m.init_state(batch_size, device, dtype) for m in self.down],
            up=[m.init_state(batch_size, device, dtype) for m in self.up],
            blocks=[[b.init_state(batch_size, device, dtype) for b in stage] for stage in self.stages],
        )

    def step_depth(self, t: int) -> int:
        """How many pooling levels complete a frame at fine step ``t`` (0-based): the stages 1..depth run."""
        depth = 0
        while depth < len(self.pools) and (t + 1) % self.frame_sizes[depth + 1] == 0:
            depth += 1
        return depth

    # ------------------------------------------------------------------ causal, any chunk length

    def forward(
        self, x: torch.Tensor, state: BackboneState | None = None, phases: list[int] | None = None,
        return_state: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """x: (B, L, D) → y: (B, L, D), new state (None when bidirectional). ``state=None`` starts a stream.

        Bidirectional: any L (padded with zeros to a multiple of the pooling product inside, then cropped).
        ``phases``: the pooling phases of ``state`` (``pool_phases``) when the caller knows them (no host sync:
        the compiled streaming path). ``return_state=False`` (training, scoring): no new state is built and None
        is returned in its place; from ``state=None`` no start state is built either (every layer starts from
        zeros without one, the conv and scan kernels included). ``y`` is the same.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: expected (batch, length, {self.d_model}), got {tuple(x.shape)}")
        if self.bidirectional:
            if state is not None:
                raise ValueError("a bidirectional backbone takes no state (it is not streamable)")
            length = x.shape[1]
            pad = -length % self.pool_product
            if pad:
                x = torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], dim=1)  # (B, L + pad, D)
            return self.norm(self._full_stage(0, x)[:, :length]), None
        if state is None and return_state:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if x.shape[1] == 0:  # nothing new: the state stays
            return self.norm(x), state
        new = BackboneState(list(state.down), list(state.up), [list(b) for b in state.blocks]) if return_state else None
        y = self._chunk_stage(0, x, state, new, phases)
        return self.norm(y), new

    def pool_phases(self, state: BackboneState) -> list[int]:
        """The phase of each pooling level of a stream's state (one host sync per level)."""
        return [_phase_of(s.phase, f"state.down[{i}].phase") for i, s in enumerate(state.down)]

    def _run_blocks(self, s: int, h0: torch.Tensor, state: BackboneState | None, new: BackboneState | None,
                    inplace: bool = False):
        """Stage s's blocks from ``state`` (None: from zeros), their new states into ``new`` (None: not built)."""
        h = h0
        for i, block in enumerate(self.stages[s]):
            if inplace and block.fused_step:  # one step, the block's state tensors overwritten
                h = block.step_(h, state.blocks[s][i])
                continue
            h, block_state = block(h, None if state is None else state.blocks[s][i], return_state=new is not None)
            if new is not None:
                new.blocks[s][i] = block_state
        return h + h0  # (B, L_s, D_s): the stage's residual around its blocks

    def _chunk_stage(self, s: int, x: torch.Tensor, state: BackboneState | None, new: BackboneState | None,
                     phases: list[int] | None = None) -> torch.Tensor:
        """Stage s on a chunk x: (B, L_s, D_s) → (B, L_s, D_s) from ``state`` (None: from zeros), filling
        ``new`` (None: no new state)."""
        if s < len(self.pools):
            phase = None if phases is None else phases[s]  # a DownPool and its UpPool count the same steps
            keep = new is not None
            coarse, down_state = self.down[s](x, None if state is None else state.down[s], phase, keep)  # (B, M, ·)
            if coarse.shape[1] > 0:  # M possibly 0
                coarse = self._chunk_stage(s + 1, coarse, state, new, phases)
            up, up_state = self.up[s](coarse, x.shape[1], None if state is None else state.up[s], phase, keep)
            if keep:
                new.down[s], new.up[s] = down_state, up_state
            x = up + x  # (B, L_s, D_s)
        return self._run_blocks(s, x, state, new)

    def _full_stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """Bidirectional stage s on a whole sequence (L_s a multiple of the remaining pooling)."""
        if s < len(self.pools):
            x = self.up[s].forward_full(self._full_stage(s + 1, self.down[s].forward_full(x))) + x
        return self._run_blocks(s, x, None, None)

    # ------------------------------------------------------------------ causal, one step

    def step(
        self, x: torch.Tensor, state: BackboneState, depth: int, inplace: bool = False
    ) -> tuple[torch.Tensor, BackboneState]:
        """One fine step x: (B, 1, D) → (B, 1, D), new state.

        ``depth`` = ``step_depth(t)`` for the step's time index t: stages 1..depth complete a frame and run,
        deeper ones only read their buffers. Entries of the returned state that did not change are the very
        tensors of ``state``. Equals ``forward`` on a chunk of length 1; makes no host sync.
        ``inplace``: blocks with a fused step (``ResidualBlock.fused_step``: causal Mamba-1 blocks without MLP)
        overwrite their state tensors in ``state`` (generation's fixed buffers) and keep them in the result.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional backbone cannot step (it is not causal)")
        new = BackboneState(list(state.down), list(state.up), [list(b) for b in state.blocks])
        return self.norm(self._step_stage(0, x, state, new, depth, inplace)), new

    def _step_stage(self, s: int, x: torch.Tensor, state: BackboneState, new: BackboneState, depth: int,
                    inplace: bool = False):
        if s < len(self.pools):
            complete = s < depth
            coarse, new.down[s] = self.down[s].step(x, state.down[s], complete)  # (B, 1, D_{s+1}) or None
            if complete:
                coarse = self._step_stage(s + 1, coarse, state, new, depth, inplace)
            up, new.up[s] = self.up[s].step(coarse, state.up[s])  # (B, 1, D_s)
            x = up + x
        return self._run_blocks(s, x, state, new, inplace)
