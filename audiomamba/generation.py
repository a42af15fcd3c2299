"""Autoregressive sampling from an AudioLM by stepping its recurrence (SaShiMi's step mode, O(1) memory).

Each step feeds one token (one codec frame of K tokens) and samples the next. The pooled stages only run when
their coarse frame completes: at fine step t, stages 1..``step_depth(t)`` run, so there are len(pool) + 1
distinct step programs, and the pattern repeats every ``pool_product`` steps. A prompt is consumed by the
chunked forward (parallel scans, any length) and generation continues from its state.

Per-step work reuses preallocated buffers: the recurrent state, the current token, a block of Gumbel noise
(drawn from a seeded generator every ``rows`` steps, outside the step) and a block of output tokens. A step
computes the new state functionally and copies it back into the buffers with one ``torch._foreach_copy_``;
fused Mamba-1 blocks (one kernel per block and step) overwrite their state buffers in place instead.
On CUDA each step program is captured once as a CUDA graph (one per depth, plus one graph covering a whole
period of ``pool_product`` steps), so that a step costs one graph launch and no Python. On the CPU the same
step functions run eagerly.

Fused path (Triton backend, every block a fused-step Mamba-1 block, no top-k / top-p): each stage's blocks run
as one launch (``audiomamba.fused_step``; weights stacked once per call through each mixer's ``step_weights``,
block states as views of stacked buffers). A step at depth 0 (most steps) is then that one launch for stage 0: the
embedding, down-pool shift and up-pool rotation before the kernels' stage blocks, the final norm, head, Gumbel-max
draw (the sampler's scores, :mod:`audiomamba.sampling`) and the output writes after them, with a per-row position
counter. Stages below the first of width >= 128 (``FusedLaunch.split_from``) instead take two launches per
block, each block spread over slices of its inner width (one SM alone streaming their weights was the bound), and
one launch for their pool shifts. Deeper steps run the completed down-pool frames (the embedding, one cat, one
linear) and the up-pool unfolds (one linear into the buffer) as ATen ops between the stage launches. The pooling
phase counters are not kept on this path (no step reads them). The kernels' launch settings come from the
``launch`` argument of :func:`generate` (an ``audiomamba.fused_step.FusedLaunch``; None: its defaults).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .kernels import get_backend
from .sampling import Sampler, gumbel_noise_
from .state import flatten_state, map_state


@dataclass
class GenerationOutput:
    """tokens: (B, T) or (B, T, K) int64, the new tokens (prompt excluded).
    logits: (B, T[, K], V) float32, the logits each token was sampled from (``return_logits``), else None.
    log_likelihood: (B,) float32, mean log-probability per token under the model at temperature 1
    (``return_log_likelihood`` or ``likelihood_filter``), else None.
    kept: (B',) int64 rows of the batch kept by ``likelihood_filter`` (tokens etc. are already those rows)."""

    tokens: torch.Tensor
    logits: torch.Tensor | None = None
    log_likelihood: torch.Tensor | None = None
    kept: torch.Tensor | None = None


def filter_by_likelihood(
    log_likelihood: torch.Tensor, drop_low: float = 0.1, drop_high: float = 0.1
) -> torch.Tensor:
    """Rows to keep (sorted, int64) after dropping the ``drop_low`` least and ``drop_high`` most likely
    fractions of a batch: log_likelihood (B,) → (B',) indices."""
    if not (0 <= drop_low and 0 <= drop_high and drop_low + drop_high < 1):
        raise ValueError(f"likelihood_filter: need fractions >= 0 with sum < 1, got ({drop_low}, {drop_high})")
    n = log_likelihood.shape[0]
    order = log_likelihood.argsort()
    lo, hi = int(n * drop_low), n - int(n * drop_high)
    return order[lo:hi].sort().values


def tokens_to_waveform(tokens: torch.Tensor, tokenizer: Any = "mulaw", pattern: Any = None) -> torch.Tensor:
    """Decode generated tokens to audio.

    Args:
        tokens: (B, T) waveform tokens, or (B, T, K) codec tokens.
        tokenizer: "mulaw" / "linear" (8-bit), or an object with ``decode`` (e.g. the EnCodec adapter, which
            takes (B, K, T)).
        pattern: a ``CodebookPattern`` to deinterleave codec tokens first (None: parallel, no change).
    Returns:
        wave: (B, samples) float32.
    """
    if isinstance(tokenizer, str):
        from .tokenizers import build_tokenizer

        tokenizer = build_tokenizer(tokenizer, 8)
    if tokens.dim() == 3:
        codes = tokens.transpose(1, 2)  # (B, K, T)
        if pattern is not None:
            codes = pattern.deinterleave(codes)
        return tokenizer.decode(codes)
    return tokenizer.decode(tokens)


class _Stepper:
    """Preallocated buffers and the step programs of one generation run (see the module docstring)."""

    def __init__(self, model, state, token, rows: int, sampler: Sampler, generator, record_logits, record_ll,
                 period: list[int] | None, launch=None):
        cfg = model.config
        B, K, V = token.shape[0], cfg.n_codebooks, cfg.vocab_size
        device = token.device
        state = map_state(lambda t: t.detach().clone(memory_format=torch.contiguous_format), state)  # own buffers
        self.model, self.state, self.token = model, state, token  # token: (B, 1, K) int64
        self.sampler, self.generator = sampler, generator
        self.rows, self.period = rows, period
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # row of the block for the next step
        self.noise = None if sampler.greedy else torch.empty(rows, B, K, V, device=device)  # Gumbel noise
        self.out_tokens = torch.zeros(rows, B, K, dtype=torch.long, device=device)
        self.out_logits = torch.zeros(rows, B, K, V, device=device) if record_logits else None
        self.ll = torch.zeros(B, device=device) if record_ll else None
        self.row_pos = torch.zeros(B, dtype=torch.long, device=device)  # per-row position (fused path)
        self.fused = self.head = self.embed_row = None
        if not sampler.truncates and get_backend(token) == "triton":
            from .fused_step import HeadBuffers, fused_stages

            self.fused = fused_stages(model, state, B, launch)
            if self.fused is not None:
                self.head = HeadBuffers(sampler.temperature, self.noise, self.row_pos, self.out_tokens,
                                        self.out_logits, self.ll)
                dtype = model.embed.embedding.weight.dtype
                self.embed_row = torch.empty(B, model.d_model, device=device, dtype=dtype)  # stage 0's input
        self.state_leaves = list(flatten_state(state).values())
        self.graphs: dict[Any, torch.cuda.CUDAGraph] = {}
        # fused path on CUDA: one side stream per pooled stage (the stages of a deeper step run concurrently)
        levels = len(model.backbone.pools)
        self.streams = [torch.cuda.Stream(device) for _ in range(levels)] if (
            self.fused is not None and device.type == "cuda") else None

    def refill_noise(self) -> None:
        """Fresh Gumbel(0, 1) noise for the next ``rows`` steps (in place: the graphs read this buffer)."""
        self.pos.zero_()
        self.row_pos.zero_()
        if self.noise is not None:
            gumbel_noise_(self.noise, self.generator)

    def step(self, depth: int) -> None:
        """One step: read token and state buffers, write the next token, the new state and the outputs."""
        if self.fused is not None:
            self._step_fused(depth)
            return
        # fused Mamba-1 blocks update their state buffers in place; the other pieces return new tensors
        logits, new_state = self.model.step(self.token, self.state, depth, inplace=True)  # (B, 1, K, V)
        logits = logits[:, 0].float()  # (B, K, V)
        gumbel = None if self.noise is None else self.noise.index_select(0, self.pos)[0]  # (B, K, V)
        nxt = self.sampler(logits, gumbel)  # (B, K)
        dst, src = [self.token], [nxt[:, None]]
        for old, new in zip(self.state_leaves, flatten_state(new_state).values()):
            if new is not old:  # only the stages that ran changed
                dst.append(old)
                src.append(new)
        torch._foreach_copy_(dst, src)
        self.out_tokens.index_copy_(0, self.pos, nxt[None])
        if self.out_logits is not None:
            self.out_logits.index_copy_(0, self.pos, logits[None])
        if self.ll is not None:
            self.ll.add_(torch.log_softmax(logits, dim=-1).gather(-1, nxt[..., None]).sum(dim=(1, 2)))
        self.pos.add_(1)

    def _stage(self, s: int, x: torch.Tensor | None, up: torch.Tensor | None = None, push: bool = False,
               down: bool = False, embed: bool = False, head: bool = False) -> torch.Tensor:
        """Stage s's blocks: one launch with the parts named by the flags (``push`` shifts the down window and
        rotates the up buffer, ``down`` only shifts the window, ``embed``: the input is the tokens' embedding,
        ``head``: final norm, head and draw), or for a split stage two launches per block, whose pool buffers the
        caller moves (``_shift_split``): (B, D_s)."""
        from .fused_step import fused_stage_step
        from .kernels.block_step_split import mamba1_stage_step_split_triton

        stage, st = self.fused[s], self.state
        if stage.split is not None:  # a wide stage: each block over many programs
            if push:
                up = st.up[s].buffer[:, 0]  # the row that the rotation (after the stage) moves to P-1
            return mamba1_stage_step_split_triton(x, stage.conv, stage.ssm, stage.weights, stage.norm, stage.eps,
                                                  up=up, residual=True, workspace=stage.split, launch=stage.launch)
        kw: dict[str, Any] = {}
        if push:  # this stage's pools do not complete a frame: shift the down window, rotate the up buffer
            kw.update(down_buffer=st.down[s].buffer, up_buffer=st.up[s].buffer, up=st.up[s].buffer[:, -1])
        else:
            kw.update(up=up, down_buffer=st.down[s].buffer if down else None)
        if embed or head:
            kw["tokens"] = self.token
        return fused_stage_step(self.model, stage, self.embed_row if embed else x, embed=embed,
                                head=self.head if head else None, **kw)

    def _shift_split(self, s: int, x: torch.Tensor, rotate: bool) -> None:
        """A split stage's pool buffers, after the stage: the down window takes x, the up buffer rotates (``rotate``).
        """
        from .fused_step import shift_pools_

        if self.fused[s].split is not None:
            st = self.state
            shift_pools_(x, st.down[s].buffer, st.up[s].buffer if rotate else None)

    def _step_fused(self, depth: int) -> None:
        """The fused step (module docstring): one launch per stage that runs (two per block of a split stage);
        ATen only for the embedding and the pools' linears of completed frames.

        Within a deeper step the stages do not depend on each other: stage s adds the up-pool output of the
        previous coarse frame (its up buffer's row 0) and the new frame's outputs are only read from the next
        step on. So on CUDA, stage s < depth runs on side stream s, forked once the frame for stage s+1 has read
        the down window (which stage s then shifts); the deepest stage runs on the calling stream, and a split
        deepest stage's pool shift on its own side stream after it; the up-pool linear of stage s+1's output
        overwrites stage s's up buffer once stage s has read its row 0; the calling stream joins every side stream
        at the end. Without streams (CPU) the same order runs in sequence."""
        bb, st = self.model.backbone, self.state
        levels = len(bb.pools)
        if depth == 0:
            self._stage(0, None, push=levels > 0, embed=True, head=True)
            return
        xs = [self.model.embed(self.token)[:, 0]]  # stage inputs (B, D_s)
        main = torch.cuda.current_stream() if self.streams is not None else None
        outs, done = [], []  # stage s's output and the event after it (None without streams)
        for s in range(depth):  # the down-pool frames that complete at this step
            window = torch.cat([st.down[s].buffer, xs[s][:, None]], dim=1)  # (B, P, D_s), before stage s shifts it
            with self._on_side(s, main):
                outs.append(self._stage(s, xs[s], up=st.up[s].buffer[:, 0], down=True, head=s == 0))
                done.append(torch.cuda.current_stream().record_event() if main is not None else None)
                self._shift_split(s, xs[s], rotate=False)
            xs.append(bb.down[s].linear(window.flatten(1)))  # (B, D_{s+1})
        h = self._stage(depth, xs[depth], push=depth < levels)
        joined = depth
        if depth < levels and self.fused[depth].split is not None:
            with self._on_side(depth, main):  # after the stage has read its up row; beside the up-pool linears
                self._shift_split(depth, xs[depth], rotate=True)
            joined = depth + 1
        for s in reversed(range(depth)):  # on the stream that made h (stage s+1's)
            with self._on_side(s + 1 if s + 1 < depth else None, main, fork=False):
                if done[s] is not None:
                    torch.cuda.current_stream().wait_event(done[s])  # stage s has read this step's up row
                lin, buf = bb.up[s].linear, st.up[s].buffer
                if lin.bias is None:
                    torch.mm(h, lin.weight.t(), out=buf.view(buf.shape[0], -1))
                else:
                    torch.addmm(lin.bias, h, lin.weight.t(), out=buf.view(buf.shape[0], -1))
            h = outs[s]
        if main is not None:
            for side in self.streams[:joined]:
                main.wait_stream(side)

    def _on_side(self, s: int | None, main, fork: bool = True):
        """Context: side stream s (``fork``: after it waits for everything issued on ``main`` so far), or no change
        (s is None, or no streams)."""
        if main is None or s is None:
            return contextlib.nullcontext()
        side = self.streams[s]
        if fork:
            side.wait_stream(main)
        return torch.cuda.stream(side)

    def run_period(self) -> None:
        for depth in self.period:
            self.step(depth)

    def _buffers(self) -> list[torch.Tensor]:
        out = [self.token, self.pos, self.row_pos, self.out_tokens, *self.state_leaves]
        return out + [t for t in (self.out_logits, self.ll) if t is not None]

    def capture(self, depths: list[int]) -> None:
        """Record a CUDA graph per depth (and one for a whole period), after a warm-up on a side stream that
        compiles kernels and sets up cuBLAS; the buffers are restored after the warm-up."""
        saved = [t.clone() for t in self._buffers()]
        programs = {d: (lambda d=d: self.step(d)) for d in depths}
        if self.period is not None:
            programs["period"] = self.run_period
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for fn in programs.values():
                for _ in range(2):
                    self.pos.zero_()
                    fn()
        torch.cuda.current_stream().wait_stream(side)
        for buf, copy in zip(self._buffers(), saved):
            buf.copy_(copy)
        for key, fn in programs.items():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            self.graphs[key] = graph

    def run(self, key) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        elif key == "period":
            self.run_period()
        else:
            self.step(key)


@torch.no_grad()
def generate(
    model, batch_size: int = 1, num_steps: int = 16000, prompt: torch.Tensor | None = None,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    progress: bool = True, return_logits: bool = False, return_log_likelihood: bool = False,
    likelihood_filter: tuple[float, float] | None = None, cuda_graphs: bool | None = None,
    prompt_chunk: int = 8192, launch=None,
) -> torch.Tensor | GenerationOutput:
    """Sample ``num_steps`` tokens from an AudioLM.

    Args:
        model: an AudioLM (causal). Runs on its parameters' device and dtype, in eval mode.
        batch_size: B, rows sampled in parallel (a prompt with one row is repeated).
        num_steps: T, new tokens per row.
        prompt: (B, Lp) (one codebook) or (B, Lp, K) tokens to continue; None starts from
            ``config.first_token``.
        temperature: softmax temperature; 0 is greedy. top_k, top_p: optional truncation.
        seed: seeds the sampling noise (reproducible on a given device); None draws a random seed.
        progress: a tqdm progress bar.
        return_logits: also return the (B, T[, K], V) logits each token was sampled from (O(T) memory).
        return_log_likelihood: also return each row's mean log-probability per token (temperature 1).
        likelihood_filter: (drop_low, drop_high) fractions: keep only rows between the least and most likely.
        cuda_graphs: capture the steps as CUDA graphs (default: on for CUDA models).
        prompt_chunk: prompt tokens per chunked forward (bounds memory).
        launch: launch settings of the fused step's kernels (``audiomamba.fused_step.FusedLaunch``; None: its
            defaults); used on the Triton backend only.

    Returns:
        tokens (B, T) (one codebook) or (B, T, K) int64, or a :class:`GenerationOutput` when any of ``return_logits``,
        ``return_log_likelihood`` or ``likelihood_filter`` is set.
    """
    if not model.causal:
        raise ValueError("generate needs a causal model")
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size}, {num_steps}")
    sampler = Sampler(temperature, top_k, top_p)
    cfg = model.config
    K, V = cfg.n_codebooks, cfg.vocab_size
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    use_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    if use_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs=True needs a model on a CUDA device")
    backbone = model.backbone
    was_training = model.training
    model.eval()
    try:
        # ---- prompt: chunked forward over all but its last token, which is the first step's input
        state = model.init_state(batch_size, device, dtype)
        if prompt is None:
            token = torch.full((batch_size, 1, K), cfg.first_token, dtype=torch.long, device=device)
            t0 = 0
        else:
            prompt = prompt.to(device)
            if prompt.dim() == 2:
                prompt = prompt[..., None]  # (B, Lp, 1)
            if prompt.dim() != 3 or prompt.shape[-1] != K or prompt.shape[1] < 1:
                raise ValueError(f"prompt: expected (batch, length >= 1{', ' + str(K) if K > 1 else ''}), "
                                 f"got {tuple(prompt.shape)}")
            if prompt.shape[0] == 1:
                prompt = prompt.expand(batch_size, -1, -1)
            if prompt.shape[0] != batch_size:
                raise ValueError(f"prompt: batch {prompt.shape[0]} != batch_size {batch_size}")
            for start in range(0, prompt.shape[1] - 1, prompt_chunk):
                chunk = prompt[:, start : min(start + prompt_chunk, prompt.shape[1] - 1)]
                _, state = model.features(chunk, state)
            token = prompt[:, -1:].long().contiguous()  # (B, 1, K)
            t0 = prompt.shape[1] - 1
        # ---- buffers and step programs
        period_len = backbone.pool_product
        rows = max(1, min(256, 2**24 // (batch_size * K * V)))  # steps per block of noise and outputs
        if period_len <= rows:
            rows = (rows // period_len) * period_len  # the same noise schedule with or without graphs
        period = None
        if use_graphs and period_len <= rows and num_steps >= 2 * period_len:
            period = [backbone.step_depth(i) for i in range(period_len)]
        generator = torch.Generator(device=device)
        generator.manual_seed(int(torch.randint(0, 2**62, ()).item()) if seed is None else seed)
        record_ll = return_log_likelihood or likelihood_filter is not None
        stepper = _Stepper(model, state, token, rows, sampler, generator, return_logits, record_ll, period,
                           launch)
        stepper.refill_noise()
        if use_graphs:
            depths = sorted({backbone.step_depth(t) for t in range(t0, t0 + min(num_steps, period_len))})
            try:
                stepper.capture(depths)
            except RuntimeError as err:  # e.g. an op with a host sync inside a mixer: run the same steps eagerly
                torch.cuda.synchronize(device)
                stepper.graphs.clear()
                warnings.warn(f"generate: CUDA graph capture failed, stepping without graphs ({err})", stacklevel=2)
        tokens = torch.empty(batch_size, num_steps, K, dtype=torch.long, device=device)
        logits = torch.empty(batch_size, num_steps, K, V, device=device) if return_logits else None
        done = filled = 0  # steps run; rows of the current block used

        def flush() -> None:
            nonlocal done, filled
            tokens[:, done - filled : done] = stepper.out_tokens[:filled].transpose(0, 1)
            if logits is not None:
                logits[:, done - filled : done] = stepper.out_logits[:filled].transpose(0, 1)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_steps, desc="generate", unit="step", leave=False)
        while done < num_steps:
            if filled == rows:
                flush()
                stepper.refill_noise()
                filled = 0
            t = t0 + done
            n = 1
            if period is not None and t % period_len == 0 and min(num_steps - done, rows - filled) >= period_len:
                n = period_len
            stepper.run("period" if n > 1 else backbone.step_depth(t))
            done += n
            filled += n
            if bar is not None:
                bar.update(n)
        flush()
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)

    out = GenerationOutput(tokens[..., 0] if K == 1 else tokens)
    if logits is not None:
        out.logits = logits[:, :, 0] if out.tokens.dim() == 2 else logits
    if record_ll:
        out.log_likelihood = stepper.ll / (num_steps * K)
    if likelihood_filter is not None:
        out.kept = filter_by_likelihood(out.log_likelihood, *likelihood_filter)
        out = GenerationOutput(
            out.tokens[out.kept], None if out.logits is None else out.logits[out.kept],
            out.log_likelihood[out.kept], out.kept,
        )
    if not (return_logits or return_log_likelihood or likelihood_filter is not None):
        return out.tokens
    return out


__all__ = ["GenerationOutput", "filter_by_likelihood", "generate", "tokens_to_waveform"]
