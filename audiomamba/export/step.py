"""One streaming step of a causal model as a module of fixed-shape tensors: the thing that export traces.

``StreamStep(model, chunk)`` computes ``model(x, state)`` for one chunk of exactly ``chunk`` samples, with the
state passed as a flat list of tensors (``flatten_state`` order) and the new state returned the same way::

    step = StreamStep(model, 320)
    y, *new_flat = step(x, *flat)        # x (B, 320) → y (B, 320, C), every state tensor in and out

The layers run their own (reference, plain PyTorch) forward; only the pooling glue between the stages is
written here again, in a form whose shapes do not depend on the pooling phases. ``model.forward`` reads the
phases as Python numbers (the number of coarse frames a chunk completes depends on them), which a traced graph
cannot do. Here, for a stage of pooling factor P that gets L inputs, with q, rem = divmod(L, P):

- DownPool gathers its frames from (buffer ++ x) at indices computed from the phase tensor; the chunk completes
  q frames, plus one more when phase + rem >= P;
- the inner stage runs on the q frames it surely gets, then (when rem > 0) on the possible extra frame, and the
  state after the extra frame is kept only where the frame was real (``torch.where`` on the phase);
- UpPool gathers its outputs and its new buffer from (buffer ++ unfolded frames) at computed indices.

By the state contract (chunks of any lengths give the same outputs) this equals ``model(x, state)`` for any
phase, up to float rounding; the tests check it. The blocks of a stage run over pieces of at most
``SHORT_LENGTH`` steps (same result, by the same contract), so that no step unrolls a longer loop.

Three pieces are written in a form that ONNX Runtime runs faster, each the same function as the layer's own
forward up to float rounding (the tests compare them with the layers): a pre-norm residual block with a Mamba-1
mixer (``mamba1_block``), a causal mean-pooling classifier head (``mean_pool_head``), and a stage without blocks
(its output x + x written as 2·x, which ONNX Runtime does not fuse with the next LayerNorm into its slower
SkipLayerNormalization). ONNX Runtime runs every op as its own pass over its tensors, so these forms keep the
number of ops and of passes over (L, N, E) tensors small; the measurements behind each choice are in
``mamba1_block``'s docstring.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from audiomamba.backbone import BackboneState
from audiomamba.heads import ClassifierHead, MeanPoolState
from audiomamba.kernels import SHORT_LENGTH
from audiomamba.layers.block import ResidualBlock
from audiomamba.layers.mamba1 import Mamba1Mixer, Mamba1State
from audiomamba.layers.pool import DownPoolState, UpPoolState
from audiomamba.layers.s4d import S4DMixer
from audiomamba.state import flatten_state, map_state


class ExportError(ValueError):
    """A model or an argument that cannot be exported (one line, naming the reason)."""


def check_exportable(model: nn.Module, chunk: int, fmt: str | None = None) -> None:
    """ExportError unless ``model`` is a causal float32 AudioLM / AudioClassifier and ``chunk`` >= 1.

    ``fmt`` "onnx" also rejects chunks too long for the S4D mixers' matrix form (the form they are traced in,
    in real arithmetic; their longer-chunk form computes in complex numbers, which ONNX has no operators for)."""
    config = getattr(model, "config", None)
    if config is None or getattr(model, "backbone", None) is None or not hasattr(model, "init_state"):
        raise ExportError(f"cannot export a {type(model).__name__}: expected an audiomamba AudioLM or AudioClassifier")
    if not model.causal:
        raise ExportError("cannot export a bidirectional classifier: its reversed mixers read the whole clip, so it "
                          "cannot stream and has no streaming step; export a causal model (backbone.bidirectional: "
                          "false), e.g. the classifier_small preset")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ExportError(f"chunk must be a positive number of samples, got {chunk!r}")
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if dtypes != ["torch.float32"]:
        raise ExportError(f"export expects a float32 model, got parameters in {dtypes}")
    if fmt == "onnx":
        _check_s4d_chunk(model.backbone, chunk)


def _check_s4d_chunk(backbone: nn.Module, chunk: int) -> None:
    """ExportError if a chunk brings an S4D mixer more samples than its matrix form takes."""
    for s, (stage, frame) in enumerate(zip(backbone.stages, backbone.frame_sizes)):
        length = -(-chunk // frame)  # the most steps a chunk brings to stage s (at any pooling phase)
        for mixer in stage.modules():
            if isinstance(mixer, S4DMixer) and not mixer.matrix_fits(length):
                longest = frame * max(n for n in range(1, length) if mixer.matrix_fits(n))
                raise ExportError(f"cannot export to ONNX with chunks of {chunk}: the S4D mixers of stage {s} would "
                                  f"see {length} steps per chunk, more than their matrix form takes (chunks up to "
                                  f"{longest}; longer ones compute in complex numbers, which ONNX has no operators "
                                  "for); use a shorter --chunk, or --format torch-export")


class StreamStep(nn.Module):
    """(x, *state tensors) → (y, *new state tensors): one chunk of ``chunk`` samples through ``model``.

    Args:
        model: a causal AudioLM or AudioClassifier in float32 (put it in eval mode).
        chunk: N, the samples (or token frames) per call.

    ``forward`` takes x: (B, N) float waveform (a waveform classifier), (B, N) int64 tokens (one codebook) or
    (B, N, K) int64 tokens, then the state tensors in ``self.names`` order (``flatten_state`` of
    ``model.init_state(B)``). It returns y: running class logits (B, N, C) or LM logits (B, N, V) / (B, N, K, V),
    then the new state tensors in the same order. Token values are not range-checked here (the runners do).
    """

    def __init__(self, model: nn.Module, chunk: int):
        super().__init__()
        check_exportable(model, chunk)
        self.model, self.chunk = model, chunk
        self._template = model.init_state(1)
        self.names = list(flatten_state(self._template))

    def forward(self, x: torch.Tensor, *flat: torch.Tensor):
        if len(flat) != len(self.names):
            raise ValueError(f"StreamStep: expected {len(self.names)} state tensors, got {len(flat)}")
        if x.shape[1] != self.chunk:
            raise ValueError(f"x: expected {self.chunk} samples per chunk, got shape {tuple(x.shape)}")
        model = self.model
        it = iter(flat)
        state = map_state(lambda _: next(it), self._template)  # the tree, holding the given tensors
        bstate = state if isinstance(state, BackboneState) else state.backbone
        h = self._embed(x)  # (B, N, D)
        h, bnew = self._stage(0, h, bstate)
        h = model.backbone.norm(h)  # (B, N, D)
        if model.config.kind == "lm":
            y = model.head(h)  # (B, N, K, V)
            y = y[:, :, 0] if x.dim() == 2 else y  # one codebook: (B, N, V)
            new = bnew
        else:
            y, head_state = _head(model.head, h, state.head)  # (B, N, C)
            new = dataclasses.replace(state, backbone=bnew, head=head_state)
        return (y, *flatten_state(new).values())

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """x → (B, N, D): the model's input map (the token range check is left to the caller)."""
        model = self.model
        if model.config.kind == "classifier" and model.config.input == "waveform":
            return model._inputs(x)
        return model.embed(x[..., None] if x.dim() == 2 else x)  # tokens (B, N, K) → (B, N, D)

    def _stage(self, s: int, x: torch.Tensor, st: BackboneState) -> tuple[torch.Tensor, BackboneState]:
        """Stage s on x: (B, L, D_s) with L fixed → (B, L, D_s), and ``st`` with the entries of stages >= s
        replaced by their new values (entries of other stages are the given tensors)."""
        backbone = self.model.backbone
        if s < len(backbone.pools):
            up, st = self._pooled(s, x, st)
            x = up + x  # UpPool output + skip
        return self._blocks(s, x, st)

    def _pooled(self, s: int, x: torch.Tensor, st: BackboneState) -> tuple[torch.Tensor, BackboneState]:
        """DownPool s → stage s+1 → UpPool s on x (B, L, D_s) → (B, L, D_s), new state (stages >= s)."""
        backbone = self.model.backbone
        down, up = backbone.down[s], backbone.up[s]
        P, length = backbone.pools[s], int(x.shape[1])
        dstate, ustate = st.down[s], st.up[s]
        r = dstate.phase[:1]  # (1,) the phase, shared by all rows (DownPool and UpPool count the same steps)
        q, rem = divmod(length, P)
        n_frames = q + (rem > 0)  # frames this chunk may complete: q surely, one more when r + rem >= P
        # DownPool: frame j is (buffer ++ x)[P-1-r + jP : P-1-r + (j+1)P]; the last P-1 inputs stay
        full = torch.cat([dstate.buffer, x], dim=1)  # (B, P-1+L, D_s)
        idx = (P - 1 - r + torch.arange(n_frames * P, device=x.device)).clamp(max=P - 2 + length)  # (F·P,)
        frames = down.linear(full.index_select(1, idx).unflatten(1, (n_frames, P)).flatten(2))  # (B, F, D_{s+1})
        st = _replace_level(st, s, DownPoolState(full[:, length:], (dstate.phase + length) % P), None)
        # the inner stage: q frames, then the possible extra one, kept where it is real
        outs = []
        if q:
            coarse, st = self._stage(s + 1, frames[:, :q], st)
            outs.append(coarse)
        n_done = torch.full_like(r, q)  # (1,) frames completed
        if rem:
            real = r + rem >= P  # (1,) bool
            coarse, after = self._stage(s + 1, frames[:, q:], st)
            st = _select(real, after, st)
            outs.append(coarse)
            n_done = n_done + real.long()
        coarse = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, F, D_{s+1})
        # UpPool: seq = buffer ++ unfolded frames; output t reads seq[t] while the last frame's outputs are due
        # (t < P - r), then seq[t + r]; the new buffer is the newest real frame rotated by the new phase
        seq = torch.cat([ustate.buffer, up._unfold(coarse)], dim=1)  # (B, P + F·P, D_s)
        t = torch.arange(length, device=x.device)  # (L,)
        out = seq.index_select(1, t + r * (t >= P - r).long())  # (B, L, D_s)
        r1 = (r + length) % P
        i = torch.arange(P, device=x.device)  # (P,)
        buf_idx = torch.where(n_done == 0, (i + length) % P, n_done * P + (i + r1) % P)  # (P,)
        return out, _replace_level(st, s, None, UpPoolState(seq.index_select(1, buf_idx), (ustate.phase + length) % P))

    def _blocks(self, s: int, x: torch.Tensor, st: BackboneState) -> tuple[torch.Tensor, BackboneState]:
        """The blocks of stage s over pieces of at most SHORT_LENGTH steps, plus the stage's residual."""
        stage = self.model.backbone.stages[s]
        states = list(st.blocks[s])
        h = x
        for i, block in enumerate(stage):
            fast = _is_mamba1_block(block)
            ys = []
            for piece in h.split(SHORT_LENGTH, dim=1):
                y, states[i] = mamba1_block(block, piece, states[i]) if fast else block(piece, states[i])
                ys.append(y)
            h = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]  # (B, L, D_s)
        blocks = list(st.blocks)
        blocks[s] = states
        out = h + x if len(stage) else x * 2.0  # the same number; see the module docstring
        return out, BackboneState(list(st.down), list(st.up), blocks)


def _replace_level(st: BackboneState, s: int, down: DownPoolState | None, up: UpPoolState | None) -> BackboneState:
    """``st`` with down[s] and / or up[s] replaced (None keeps the entry)."""
    downs, ups = list(st.down), list(st.up)
    if down is not None:
        downs[s] = down
    if up is not None:
        ups[s] = up
    return BackboneState(downs, ups, list(st.blocks))


def _select(cond: torch.Tensor, a: BackboneState, b: BackboneState) -> BackboneState:
    """Entry by entry, ``a`` where ``cond`` (a (1,) bool tensor) holds, else ``b``; entries that are the same
    tensor in both are kept as they are."""
    fa, fb = flatten_state(a), flatten_state(b)
    picked = iter([x if x is y else torch.where(cond.reshape((1,) * x.dim()), x, y) for x, y in
                   zip(fa.values(), fb.values())])
    return map_state(lambda _: next(picked), a)


def _is_mamba1_block(block: nn.Module) -> bool:
    """Whether ``mamba1_block`` computes ``block``'s forward: a causal ResidualBlock with a Mamba-1 mixer, in eval
    mode (its dropout the identity)."""
    return (isinstance(block, ResidualBlock) and isinstance(block.mixer, Mamba1Mixer) and not block.bidirectional
            and not (block.training and block.dropout.p > 0))


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus(x)`` (beta 1, threshold 20) as max(x, log(1 + exp(min(x, 20)))): ONNX Runtime's Softplus
    takes ~20 ns per element on a CPU, these five ops ~3. Equal up to float rounding; where exp(x) < 6e-8 the
    result is 0 instead of exp(x) (an absolute difference below 6e-8)."""
    return torch.maximum(x, torch.log(1.0 + torch.exp(torch.clamp(x, max=20.0))))


def mamba1_block(block: ResidualBlock, x: torch.Tensor, state: Mamba1State) -> tuple[torch.Tensor, Mamba1State]:
    """``block(x, state)`` for a causal pre-norm residual block with a Mamba-1 mixer (``_is_mamba1_block``), in
    the form the exported graph runs fastest; the same math as the mixer's short-chunk path, up to float rounding.

    x: (B, L, D) → (B, L, D), and the new Mamba1State (conv (B, E, W-1), ssm (B, E, N)).

    The scan: dA = exp(Δ ⊗ A) and dBu = (Δ u) ⊗ B as two (B, L, N, E) tensors, each split once into its L
    steps, h_t = dA_t h_{t-1} + dBu_t, then one batched product y_t = C_t · h_t over the stacked states. The
    state stays (N, E) per step, E innermost (ONNX Runtime broadcasts along a long inner axis much faster: (E, N)
    runs the step ~30% slower), and A = -exp(A_log) is a constant of the graph. Alternatives measured on
    classifier_small (2-core VM, ONNX Runtime 1.32, one thread) and not taken, each no faster or slower: the decays
    and inputs computed step by step from (B, 1, E) slices (fewer big tensors, more ops); the readout per step; a
    log-depth (Hillis-Steele) scan (+30%: each level copies the whole tensor); a closed form through cumulative
    sums (no faster, and it overflows for long decays).
    """
    m = block.mixer
    length = x.shape[1]
    E, N, W = m.d_inner, m.d_state, m.d_conv
    xs, z = m.in_proj(block.norm(x)).split(E, dim=-1)  # (B, L, E) each
    xp = torch.cat([state.conv.transpose(1, 2), xs], dim=1)  # (B, W-1+L, E): the conv's inputs, time-major
    windows = torch.arange(length, device=x.device)[:, None] + torch.arange(W, device=x.device)  # (L, W)
    c = (xp[:, windows] * m.conv_weight.t()).sum(2)  # (B, L, W, E) · (W, E), summed over W → (B, L, E)
    if m.conv_bias is not None:
        c = c + m.conv_bias
    u = F.silu(c)  # (B, L, E)
    dt_low, Bm, Cm = m.x_proj(u).split([m.dt_rank, N, N], dim=-1)  # (B, L, R), (B, L, N), (B, L, N)
    dt = softplus(m.dt_proj(dt_low))  # Δ (B, L, E)
    A = -torch.exp(m.A_log.float()).t()  # (N, E)
    dA = torch.exp(dt[:, :, None, :] * A).split(1, dim=1)  # L × (B, 1, N, E)
    dBu = ((dt * u)[:, :, None, :] * Bm[..., None]).split(1, dim=1)  # L × (B, 1, N, E)
    h = state.ssm.transpose(1, 2)[:, None]  # (B, 1, N, E)
    hs = []
    for dA_t, dBu_t in zip(dA, dBu):
        h = dA_t * h + dBu_t
        hs.append(h)
    y = torch.matmul(Cm[:, :, None, :], torch.cat(hs, dim=1))[:, :, 0]  # (B, L, 1, N) @ (B, L, N, E) → (B, L, E)
    if m.D is not None:
        y = y + u * m.D
    y = y * F.silu(z)
    x = x + m.out_proj(y)  # (B, L, D)
    if block.mlp is not None:
        x = x + block.mlp(block.mlp_norm(x))
    return x, Mamba1State(conv=xp[:, length:].transpose(1, 2), ssm=h[:, 0].transpose(1, 2))


def mean_pool_head(head: ClassifierHead, h: torch.Tensor, state: MeanPoolState) -> tuple[torch.Tensor, MeanPoolState]:
    """``head(h, state)`` for a causal mean-pooling ClassifierHead, through the linearity of its map: the running
    logits W·(T + Σ_{s≤t} h_s)/n_t + b are (W·T + Σ_{s≤t} W·h_s)/n_t + b, so that the running sum runs over the
    C logits, in float32, instead of the D features in float64. The state (the float64 sum T of the features and
    the count n) is the head's. Equal up to float rounding.

    h: (B, L, D) → running logits (B, L, C), new MeanPoolState."""
    length = h.shape[1]
    weight = head.linear.weight  # (C, D)
    counts = state.count[:, None] + torch.arange(1, length + 1, device=h.device)  # (B, L) int64
    running = F.linear(state.total.float(), weight)[:, None] + torch.cumsum(F.linear(h, weight), dim=1)  # (B, L, C)
    logits = running / counts[..., None].float() + head.linear.bias
    new = MeanPoolState(total=state.total + h.sum(1).double(), count=state.count + length)
    return logits, new


def _head(head: nn.Module, h: torch.Tensor, state):
    """The classifier head on h (B, L, D) → (B, L, C), new state: ``mean_pool_head`` for a mean-pooling head."""
    if isinstance(head, ClassifierHead) and head.causal and head.pooling == "mean":
        return mean_pool_head(head, h, state)
    return head(h, state)
