"""Generation's fused step on the Triton backend: the model's parts of a step around the kernels' stage blocks.

``audiomamba.kernels.block_step`` runs a stage of Mamba-1 blocks (``mamba1_stage_rows``); this module adds, in the
same launch, what belongs to the model and to sampling (``_fused_stage_kernel``):

* prologue: the stage input as the summed embedding rows of the current tokens (``EMBED``; written to a (B, D)
  scratch row that the blocks then read as their input), the down-pool window taking the stage input
  (``DOWN_PUSH``) and the up-pool buffer rotating by one step (``UP_ROTATE``; this step's up-pool output, its old
  row 0, lands in row P-1, which the blocks read);
* epilogue (``HEAD``): final norm, LM head, the Gumbel-max draw of :mod:`audiomamba.sampling` (scores
  logits / temperature + noise, no truncation) and the writes of the next token, the output token, the logits and
  the log-likelihood at the row's position counter, which it advances.

A step at depth 0 (most steps) is then one launch. Stages whose blocks are split over many programs
(``block_step_split``) take their pool shifts from ``_pool_shift_kernel``, one more launch issued after the stage.
``FusedLaunch`` holds the launch settings: which stages are split, and each kernel's tiles, rows and warps.
Values that the unfused modules round to the activations' dtype (the embedding sum, the norm and head outputs)
are rounded here too, so the logits equal the step of the unfused model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import nn

from .kernels.block_step import DEFAULT_LAUNCH, StageLaunch, mamba1_stage_rows, stack_block_weights, stage_step_args
from .kernels.block_step_split import DEFAULT_SPLIT_LAUNCH, SplitLaunch, split_workspace
from .layers.mamba1 import norm_kind


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, offs_d, m_bd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P: tl.constexpr,
                BLOCK_P: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr):
    """Pool buffers of the rows ``rows`` (BB,) at columns ``offs_d``: the down-pool window (B, P-1, D) takes x0
    (BB, BLOCK_D) as its newest row (DOWN_PUSH), the up-pool buffer (B, P, D) rotates by one, its row 0 landing in
    row P-1 (UP_ROTATE). Everything is read before anything is written (barriers on both sides of the writes)."""
    offs_p = tl.arange(0, BLOCK_P)
    m_p3 = m_bd[:, None, :]
    if DOWN_PUSH:
        d_off = rows[:, None, None] * s_db + offs_d[None, None, :] * s_dd
        d_nxt = tl.load(dbuf_ptr + d_off + (offs_p + 1)[None, :, None] * s_dp,
                        mask=m_p3 & (offs_p < P - 2)[None, :, None], other=0.0)
        new_d = tl.where((offs_p == P - 2)[None, :, None], x0[:, None, :].to(dbuf_ptr.dtype.element_ty), d_nxt)
    if UP_ROTATE:
        v_off = rows[:, None, None] * s_vb + offs_d[None, None, :] * s_vd
        new_u = tl.load(ubuf_ptr + v_off + ((offs_p + 1) % P)[None, :, None] * s_vp,
                        mask=m_p3 & (offs_p < P)[None, :, None], other=0.0)
    tl.debug_barrier()
    if DOWN_PUSH:
        tl.store(dbuf_ptr + d_off + offs_p[None, :, None] * s_dp, new_d, mask=m_p3 & (offs_p < P - 1)[None, :, None])
    if UP_ROTATE:
        tl.store(ubuf_ptr + v_off + offs_p[None, :, None] * s_vp, new_u, mask=m_p3 & (offs_p < P)[None, :, None])
    tl.debug_barrier()


@triton.jit
def _head_sample(h_ptr, fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, tok_ptr, otok_ptr,
                 ologit_ptr, ll_ptr, eps, temperature, n_rows, s_tb, s_tk, rows, m_b, offs_d, m_d,
                 D: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BB: tl.constexpr, BV: tl.constexpr,
                 RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_HEAD_B: tl.constexpr,
                 SAMPLE: tl.constexpr, RECORD_LOGITS: tl.constexpr, RECORD_LL: tl.constexpr):
    """Final norm, head, Gumbel-max draw for the rows of this program; writes the next token, the output token
    (and logits, log-likelihood) at the row's position, then advances it."""
    m_bd = m_b[:, None] & m_d[None, :]
    hv = tl.load(h_ptr + rows[:, None] * D + offs_d[None, :], mask=m_bd, other=0.0).to(tl.float32)  # (BB, BLOCK_D)
    if RMS:
        hn = hv * (1.0 / tl.sqrt(tl.sum(hv * hv, axis=1) / D + eps))[:, None]
    else:
        mean = tl.sum(hv, axis=1) / D
        hc = tl.where(m_bd, hv - mean[:, None], 0.0)
        hn = hc * (1.0 / tl.sqrt(tl.sum(hc * hc, axis=1) / D + eps))[:, None]
    if HAS_W:
        hn = hn * tl.load(fn_w_ptr + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        hn = hn + tl.load(fn_b_ptr + offs_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    hn = tl.where(m_bd, hn.to(h_ptr.dtype.element_ty).to(tl.float32), 0.0)  # the norm's output dtype
    pos = tl.load(pos_ptr + rows, mask=m_b, other=0)  # (BB,) step index in the noise / output blocks
    row_kv = (pos * n_rows + rows) * (K * V)  # (BB,) offset of this row's (K, V) block
    ll = tl.zeros([BB], tl.float32)
    for k in tl.static_range(K):
        best = tl.full([BB], float("-inf"), tl.float32)
        best_i = tl.zeros([BB], tl.int32)
        best_l = tl.zeros([BB], tl.float32)
        run_m = tl.full([BB], float("-inf"), tl.float32)
        run_s = tl.zeros([BB], tl.float32)
        for v0 in tl.static_range(0, V, BV):
            vv = v0 + tl.arange(0, BV)
            m_v = vv < V
            w = tl.load(head_w_ptr + (k * V + vv)[None, :, None] * D + offs_d[None, None, :],
                        mask=m_v[None, :, None] & m_d[None, None, :], other=0.0).to(tl.float32)  # (1, BV, BLOCK_D)
            lg = tl.sum(w * hn[:, None, :], axis=2)  # (BB, BV)
            if HAS_HEAD_B:
                lg += tl.load(head_b_ptr + k * V + vv, mask=m_v, other=0.0).to(tl.float32)[None, :]
            lg = lg.to(h_ptr.dtype.element_ty).to(tl.float32)  # the head's output dtype
            m_bv = m_b[:, None] & m_v[None, :]
            kv = row_kv[:, None] + k * V + vv[None, :]
            if RECORD_LOGITS:
                tl.store(ologit_ptr + kv, lg, mask=m_bv)
            if SAMPLE:
                sc = tl.div_rn(lg, temperature) + tl.load(noise_ptr + kv, mask=m_bv, other=0.0)
            else:
                sc = lg
            sc = tl.where(m_v[None, :], sc, float("-inf"))
            c_max, c_i = tl.max(sc, axis=1, return_indices=True, return_indices_tie_break_left=True)
            upd = c_max > best  # strict: the first of equal maxima wins, as torch.argmax
            best_i = tl.where(upd, c_i + v0, best_i)
            best = tl.where(upd, c_max, best)
            if RECORD_LL:
                c_l = tl.sum(tl.where(vv[None, :] == (c_i + v0)[:, None], lg, 0.0), axis=1)
                best_l = tl.where(upd, c_l, best_l)
                lgm = tl.where(m_v[None, :], lg, float("-inf"))
                new_m = tl.maximum(run_m, tl.max(lgm, axis=1))
                run_s = run_s * tl.exp(run_m - new_m) + tl.sum(tl.exp(lgm - new_m[:, None]), axis=1)
                run_m = new_m
        if RECORD_LL:
            ll += best_l - (run_m + tl.log(run_s))
        nxt = best_i.to(tl.int64)
        tl.store(tok_ptr + rows * s_tb + k * s_tk, nxt, mask=m_b)
        tl.store(otok_ptr + (pos * n_rows + rows) * K + k, nxt, mask=m_b)
    if RECORD_LL:
        tl.store(ll_ptr + rows, tl.load(ll_ptr + rows, mask=m_b, other=0.0) + ll, mask=m_b)
    tl.store(pos_ptr + rows, pos + 1, mask=m_b)


@triton.jit
def _fused_stage_kernel(
    # tokens, embedding, pools, head and sampling
    tok_ptr, emb_ptr, dbuf_ptr, ubuf_ptr, fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, otok_ptr,
    ologit_ptr, ll_ptr, head_eps, temperature, s_tb, s_tk, s_db, s_dp, s_dd, s_vb, s_vp, s_vd,
    # the stage blocks' arguments (``stage_step_args``), in the order of ``mamba1_stage_rows``
    x_ptr, up_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr,
    norm_w_ptr, norm_b_ptr, in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr,
    a_log_ptr, d_ptr, out_w_ptr, out_b_ptr,
    eps, n_rows, n_blocks,
    s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw, s_hi, s_hb, s_he, s_hn,
    # sizes and options of the model's parts
    K: tl.constexpr, V: tl.constexpr, P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
    BV: tl.constexpr, EMBED: tl.constexpr, DOWN_PUSH: tl.constexpr, UP_ROTATE: tl.constexpr, HEAD: tl.constexpr,
    HEAD_RMS: tl.constexpr, HEAD_NORM_W: tl.constexpr, HEAD_NORM_B: tl.constexpr, HEAD_B: tl.constexpr,
    SAMPLE: tl.constexpr, RECORD_LOGITS: tl.constexpr, RECORD_LL: tl.constexpr,
    # sizes and options of the stage blocks
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, N: tl.constexpr, W: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, BB: tl.constexpr,
    BD_IN: tl.constexpr, BD_OUT: tl.constexpr, BN: tl.constexpr,
    RMSNORM: tl.constexpr, HAS_NORM_W: tl.constexpr, HAS_NORM_B: tl.constexpr, HAS_IN_B: tl.constexpr,
    HAS_CONV_B: tl.constexpr, HAS_D: tl.constexpr, HAS_OUT_B: tl.constexpr, UP: tl.constexpr, RESIDUAL: tl.constexpr,
):
    rows = tl.program_id(0) * BB + tl.arange(0, BB)  # (BB,) batch rows of this program
    m_b = rows < n_rows
    rows = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    m_bd = m_b[:, None] & m_d[None, :]  # (BB, BLOCK_D)
    x_off = rows[:, None] * s_xb + offs_d[None, :] * s_xd

    # ---- the stage input: the summed embedding rows of the K codebooks' tokens (into the x scratch), or x
    x0 = tl.zeros([BB, BLOCK_D], tl.float32)
    if EMBED:
        offs_k = tl.arange(0, BLOCK_K)
        m_k = offs_k < K
        tok = tl.load(tok_ptr + rows[:, None] * s_tb + offs_k[None, :] * s_tk, mask=m_b[:, None] & m_k[None, :],
                      other=0) + offs_k[None, :] * V  # (BB, BLOCK_K) rows of the summed table
        e_off = tok[:, :, None] * D + offs_d[None, None, :]  # (BB, BLOCK_K, BLOCK_D)
        x0 = tl.sum(tl.load(emb_ptr + e_off, mask=m_bd[:, None, :] & m_k[None, :, None], other=0.0).to(tl.float32),
                    axis=1)
        x0 = x0.to(emb_ptr.dtype.element_ty)
        tl.store(x_ptr + x_off, x0.to(x_ptr.dtype.element_ty), mask=m_bd)
        x0 = x0.to(tl.float32)
        tl.debug_barrier()  # the input row is visible to every thread before the blocks read it
    elif DOWN_PUSH:
        x0 = tl.load(x_ptr + x_off, mask=m_bd, other=0.0).to(tl.float32)

    # ---- pooling buffers: the down-pool window takes the stage input, the up-pool buffer rotates by one (its old
    # row 0, this step's up-pool output, lands in row P-1, where up_ptr points)
    if DOWN_PUSH or UP_ROTATE:
        _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, offs_d, m_bd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P, BLOCK_P,
                     DOWN_PUSH, UP_ROTATE)

    mamba1_stage_rows(rows, m_b, x_ptr, up_ptr, out_ptr, buf_ptr, conv_ptr, ssm_ptr, norm_w_ptr, norm_b_ptr,
                      in_w_ptr, in_b_ptr, conv_w_ptr, conv_b_ptr, xp_w_ptr, dt_w_ptr, dt_b_ptr, a_log_ptr, d_ptr,
                      out_w_ptr, out_b_ptr, eps, n_rows, n_blocks, s_xb, s_xd, s_ub, s_ud, s_ci, s_cb, s_ce, s_cw,
                      s_hi, s_hb, s_he, s_hn, D, E, R, N, W, BLOCK_D, BLOCK_E, BLOCK_R, BLOCK_W, BB, BD_IN, BD_OUT,
                      BN, RMSNORM, HAS_NORM_W, HAS_NORM_B, HAS_IN_B, HAS_CONV_B, HAS_D, HAS_OUT_B, UP, RESIDUAL)

    if HEAD:
        _head_sample(out_ptr, fn_w_ptr, fn_b_ptr, head_w_ptr, head_b_ptr, noise_ptr, pos_ptr, tok_ptr, otok_ptr,
                     ologit_ptr, ll_ptr, head_eps, temperature, n_rows, s_tb, s_tk, rows, m_b, offs_d, m_d,
                     D, K, V, BB, BV, HEAD_RMS, HEAD_NORM_W, HEAD_NORM_B, HEAD_B, SAMPLE, RECORD_LOGITS, RECORD_LL)


@triton.jit
def _pool_shift_kernel(x_ptr, dbuf_ptr, ubuf_ptr, s_xb, s_xd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, D: tl.constexpr,
                       P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, DOWN_PUSH: tl.constexpr,
                       UP_ROTATE: tl.constexpr):
    """One row per program: the down-pool window takes x, the up-pool buffer rotates by one."""
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)  # (1,)
    offs_d = tl.arange(0, BLOCK_D)
    m_bd = (offs_d < D)[None, :]  # (1, BLOCK_D)
    x0 = tl.load(x_ptr + rows[:, None] * s_xb + offs_d[None, :] * s_xd, mask=m_bd, other=0.0)
    _shift_pools(dbuf_ptr, ubuf_ptr, x0, rows, offs_d, m_bd, s_db, s_dp, s_dd, s_vb, s_vp, s_vd, P, BLOCK_P,
                 DOWN_PUSH, UP_ROTATE)


@dataclass(frozen=True)
class FusedLaunch:
    """Launch settings of generation's fused step.

    Attributes:
        stage: settings of the stages that run in one program per row: stage 0 (it carries the embedding and the
            head) and the stages narrower than ``split_from``.
        split: settings of the split stages.
        split_from: the stages below the first of at least this width are split, each block spread over slices of
            its inner width: from D = 128 on, one SM streaming a stage's weights alone was the bound; D = 64 stays
            one program per row.
    """

    stage: StageLaunch = DEFAULT_LAUNCH
    split: SplitLaunch = DEFAULT_SPLIT_LAUNCH
    split_from: int = 128


@dataclass
class FusedStage:
    """One stage of the fused step: stacked block weights, the blocks' states as stacked (blocks, B, ·, ·) buffers,
    the blocks' norm, the split kernel's workspace (split stages) or None, and the launch settings of the stage's
    kernel (a ``SplitLaunch`` for a split stage)."""

    weights: Any
    conv: torch.Tensor
    ssm: torch.Tensor
    norm: str
    eps: float
    split: dict | None
    launch: StageLaunch | SplitLaunch


@dataclass
class HeadBuffers:
    """The epilogue's inputs and outputs, preallocated by generation: ``noise`` (T, B, K, V) Gumbel noise or None
    (greedy), ``pos`` (B,) int64 row positions in the T blocks, ``out_tokens`` (T, B, K) int64, ``out_logits``
    (T, B, K, V) float32 or None, ``ll`` (B,) float32 summed log-probabilities or None, and ``temperature``."""

    temperature: float
    noise: torch.Tensor | None
    pos: torch.Tensor
    out_tokens: torch.Tensor
    out_logits: torch.Tensor | None
    ll: torch.Tensor | None


def fused_stages(model, state, batch_size: int, launch: FusedLaunch | None = None) -> list[FusedStage] | None:
    """The stages of ``model`` for the fused step with the settings ``launch`` (None: ``FusedLaunch()``), or None
    where it does not apply (a block without a fused step, a stage without blocks, a final norm other than
    LayerNorm / RMSNorm). The blocks' states in ``state`` are replaced by views of the stacked (blocks, B, ·, ·)
    buffers."""
    launch = FusedLaunch() if launch is None else launch
    bb = model.backbone
    if not isinstance(bb.norm, (nn.LayerNorm, nn.RMSNorm)):
        return None
    if not all(len(stage) > 0 and all(b.fused_step for b in stage) for stage in bb.stages):
        return None
    stages = []
    for s, blocks in enumerate(bb.stages):
        block_states = state.blocks[s]
        conv = torch.stack([bs.conv for bs in block_states])  # (blocks, B, E, W-1)
        ssm = torch.stack([bs.ssm for bs in block_states])  # (blocks, B, E, N)
        state.blocks[s] = [type(bs)(conv=conv[i], ssm=ssm[i]) for i, bs in enumerate(block_states)]
        norm, eps = norm_kind(blocks[0].norm, conv.dtype)
        m = blocks[0].mixer
        split, stage_launch = None, launch.stage
        if s > 0 and m.d_model >= launch.split_from:  # (stage 0 carries the embedding and the head)
            stage_launch = launch.split
            split = split_workspace(batch_size, m.d_model, m.d_inner, m.d_state, m.dt_rank, m.d_conv, conv.device,
                                    conv.dtype, stage_launch)
        weights = stack_block_weights([b.mixer.step_weights(b.norm) for b in blocks])
        stages.append(FusedStage(weights, conv, ssm, norm, eps, split, stage_launch))
    return stages


def fused_stage_step(model, stage: FusedStage, x: torch.Tensor, *, up=None, down_buffer=None, up_buffer=None,
                     tokens=None, embed: bool = False, head: HeadBuffers | None = None) -> torch.Tensor:
    """One step of a (not split) stage in one launch with the stage's launch settings: the blocks with the stage
    residual, and the model's parts named by the arguments (module docstring); states, pool buffers, tokens and head
    buffers updated in place.

    Args:
        model: the AudioLM (its embedding table, final norm and head).
        x: (B, D) stage input; with ``embed``, a (B, D) scratch row that receives the summed embedding.
        up: (B, D) up-pool output added to x (with ``up_buffer``: its row P-1, read after the rotation).
        down_buffer: (B, P-1, D) down-pool window that takes the stage input.
        up_buffer: (B, P, D) up-pool buffer, rotated by one step before ``up`` is read.
        tokens: (B, 1, K) int64 current tokens (for ``embed`` and ``head``), overwritten with the drawn tokens.
        embed: the stage input is the summed embedding Σ_k table[tokens[:, 0, k] + k V] (written into x).
        head: the epilogue's buffers (final norm, head and Gumbel-max draw).

    Returns:
        (B, D) the stage output.
    """
    if (embed or head is not None) and tokens is None:
        raise ValueError("fused_stage_step: embed and head need the tokens")
    out, args, meta = stage_step_args(x, stage.conv, stage.ssm, stage.weights, stage.norm, stage.eps, up=up,
                                      residual=True, launch=stage.launch)
    batch = out.shape[0]
    if batch == 0:
        return out
    n_codebooks, vocab = model.config.n_codebooks, model.config.vocab_size
    n_pool = 2 if down_buffer is None and up_buffer is None else (
        up_buffer.shape[1] if up_buffer is not None else down_buffer.shape[1] + 1)
    tok = tokens.view(batch, -1) if tokens is not None else None  # a view: the head writes the next tokens
    fnorm, fnorm_b, hlin = model.backbone.norm, getattr(model.backbone.norm, "bias", None), model.head.linear
    head_kind, head_eps = norm_kind(fnorm, out.dtype)
    hb = head if head is not None else HeadBuffers(1.0, None, None, None, None, None)

    def ptr(t: torch.Tensor | None) -> torch.Tensor:
        return t if t is not None else out  # an unused pointer (its flag is off)

    own = (ptr(tok), model.embed.embedding.weight, ptr(down_buffer), ptr(up_buffer), ptr(fnorm.weight), ptr(fnorm_b),
           hlin.weight, ptr(hlin.bias), ptr(hb.noise), ptr(hb.pos), ptr(hb.out_tokens), ptr(hb.out_logits),
           ptr(hb.ll), float(head_eps), float(hb.temperature or 1.0), *(tok.stride() if tok is not None else (0, 0)),
           *(down_buffer.stride() if down_buffer is not None else (0, 0, 0)),
           *(up_buffer.stride() if up_buffer is not None else (0, 0, 0)))
    own_meta = dict(
        K=n_codebooks, V=vocab, P=n_pool, BLOCK_K=_p2(n_codebooks), BLOCK_P=_p2(n_pool),
        BV=min(_p2(vocab), max(1, stage.launch.tile // (meta["BB"] * meta["BLOCK_D"]))), EMBED=embed,
        DOWN_PUSH=down_buffer is not None, UP_ROTATE=up_buffer is not None, HEAD=head is not None,
        HEAD_RMS=head_kind == "rmsnorm", HEAD_NORM_W=fnorm.weight is not None, HEAD_NORM_B=fnorm_b is not None,
        HEAD_B=hlin.bias is not None, SAMPLE=hb.noise is not None, RECORD_LOGITS=hb.out_logits is not None,
        RECORD_LL=hb.ll is not None,
    )
    _fused_stage_kernel[(triton.cdiv(batch, meta["BB"]),)](*own, *args, **own_meta, **meta)
    return out


def shift_pools_(x: torch.Tensor, down_buffer: torch.Tensor, up_buffer: torch.Tensor | None = None) -> None:
    """In place: the down-pool window (B, P-1, D) takes x (B, D) as its newest row; the up-pool buffer (B, P, D),
    if given, rotates by one step (row 0 to row P-1). One launch."""
    batch, d_model = x.shape
    if batch == 0:
        return
    n_pool = up_buffer.shape[1] if up_buffer is not None else down_buffer.shape[1] + 1
    _pool_shift_kernel[(batch,)](
        x, down_buffer, up_buffer if up_buffer is not None else down_buffer, *x.stride(), *down_buffer.stride(),
        *(up_buffer.stride() if up_buffer is not None else (0, 0, 0)), D=d_model, P=n_pool, BLOCK_D=_p2(d_model),
        BLOCK_P=_p2(n_pool), DOWN_PUSH=True, UP_ROTATE=up_buffer is not None, num_warps=4,
    )


__all__ = ["FusedLaunch", "FusedStage", "HeadBuffers", "fused_stage_step", "fused_stages", "shift_pools_"]
