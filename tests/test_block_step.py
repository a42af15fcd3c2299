"""The fused Mamba-1 block step: Triton kernel vs reference (states included), the residual block's in-place step
vs its forward on one sample, generation's fused stage step (embedding, pool shifts, head and draws around the
kernels' stage blocks) vs the unfused pieces and the sampler, and generation through it vs the teacher-forced forward.

Without CUDA the Triton kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py before
the kernel is defined), at small sizes; with CUDA it runs natively and bfloat16 is checked too.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
from audiomamba.kernels import mamba1_block_step, mamba1_block_step_ref  # noqa: E402
from helpers import rel_err  # noqa: E402

from audiomamba import build_model  # noqa: E402
from audiomamba.layers.block import ResidualBlock  # noqa: E402
from audiomamba.layers.mamba1 import Mamba1StepWeights  # noqa: E402
from audiomamba.sampling import Sampler, gumbel_noise_  # noqa: E402

torch.set_num_threads(1)

DEVICE = "cpu" if INTERPRET else "cuda"
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
needs_interpreter = pytest.mark.skipif(
    INTERPRET and os.environ.get("TRITON_INTERPRET") != "1",
    reason="TRITON_INTERPRET was set to something other than 1 before this module",
)


def _params(d, e, n, r, w, norm, biases, gen):
    def g(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen) * scale + shift

    return {
        "norm_weight": g(d, scale=0.2, shift=1.0),
        "norm_bias": g(d, scale=0.2) if norm == "layernorm" else None,
        "in_proj_weight": g(2 * e, d, scale=d**-0.5),
        "in_proj_bias": g(2 * e, scale=0.2) if biases else None,
        "conv_weight": g(e, w, scale=w**-0.5),
        "conv_bias": g(e, scale=0.2) if biases else None,
        "x_proj_weight": g(r + 2 * n, e, scale=e**-0.5),
        "dt_proj_weight": g(e, r, scale=r**-0.5),
        "dt_proj_bias": g(e, scale=1.5, shift=-4.0),  # Δ from ~1e-4 to ~0.5, as after the paper's init
        "A_log": torch.rand(e, n, generator=gen) * 3.0,
        "D": g(e) if biases else None,
        "out_proj_weight": g(d, e, scale=e**-0.5),
        "out_proj_bias": g(d, scale=0.2) if biases else None,
    }


# (B, D, E, N, R, W, norm, biases): E, N, R not powers of two; chunked loops over D and N (E·chunk > 4096)
SHAPES = [
    (3, 8, 16, 4, 2, 4, "layernorm", True),
    (2, 12, 24, 6, 3, 3, "rmsnorm", False),
    (2, 16, 48, 5, 1, 2, "layernorm", False),
    (1, 40, 160, 64, 3, 4, "rmsnorm", True),
]
# real sizes, on CUDA only: sc09_small's stages (D = 64, 128, 256), sc09_large's first stage (D = 96)
REAL = [
    (1, 64, 128, 64, 4, 4, "layernorm", False),
    (64, 64, 128, 64, 4, 4, "layernorm", False),
    (64, 128, 256, 64, 8, 4, "rmsnorm", True),
    (7, 256, 512, 64, 16, 4, "layernorm", False),
    (5, 96, 192, 64, 6, 4, "layernorm", True),
]


def _shape_id(shape):
    return "x".join(map(str, shape[:6])) + f"-{shape[6]}-{'bias' if shape[7] else 'nobias'}"


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32] if INTERPRET else [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + ([] if INTERPRET else REAL), ids=_shape_id)
def test_kernel_matches_reference(monkeypatch, shape, dtype):
    batch, d, e, n, r, w, norm, biases = shape
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    p = {k: None if v is None else v.to(DEVICE, dtype) for k, v in _params(d, e, n, r, w, norm, biases, gen).items()}
    p["A_log"] = p["A_log"].float()
    conv = torch.randn(batch, e, w - 1, generator=gen).to(DEVICE, dtype)
    ssm = torch.randn(batch, e, n, generator=gen).to(DEVICE)
    conv_ref, ssm_ref = conv.clone(), ssm.clone()
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    for step in range(3):  # chained steps: the in-place states feed the next step
        x = torch.randn(batch, d, generator=gen).to(DEVICE, dtype)
        out = mamba1_block_step(x, conv, ssm, *p.values(), norm=norm, eps=1e-5)
        ref = mamba1_block_step_ref(x, conv_ref, ssm_ref, *p.values(), norm=norm, eps=1e-5)
        assert out.shape == x.shape and out.dtype == dtype
        assert rel_err(out, ref) < TOL[dtype], step
        assert rel_err(conv, conv_ref) < TOL[dtype], step
        assert rel_err(ssm, ssm_ref) < TOL[dtype], step


def _random_block(norm, d=8, n=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    block = ResidualBlock(d, "mamba1", {"d_state": n}, norm=norm, **kwargs).to(DEVICE).eval()
    with torch.no_grad():  # move every parameter off its initial value (norm weight/bias, D, biases, ...)
        for prm in block.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    return block


@needs_interpreter
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_block_step_equals_forward_on_one_sample(monkeypatch, norm, backend):
    block = _random_block(norm, seed=1 if norm == "layernorm" else 2)
    assert block.fused_step
    batch = 3
    state = block.init_state(batch)
    state.ssm.normal_()
    state.conv.normal_()
    fused = block.init_state(batch)
    fused.conv.copy_(state.conv)
    fused.ssm.copy_(state.ssm)
    conv_buf, ssm_buf = fused.conv, fused.ssm
    with torch.no_grad():
        for step in range(4):
            x = torch.randn(batch, 1, 8, device=DEVICE)
            monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
            want, state = block(x, state)
            monkeypatch.setenv("AUDIOMAMBA_BACKEND", backend)
            got = block.step_(x, fused)
            assert got.shape == (batch, 1, 8)
            assert rel_err(got, want) < 1e-5, step
            assert rel_err(fused.ssm, state.ssm) < 1e-5 and rel_err(fused.conv, state.conv) < 1e-5, step
    assert fused.conv is conv_buf and fused.ssm is ssm_buf  # the same buffers, overwritten


def test_fused_step_only_where_it_is_exact():
    torch.manual_seed(0)
    assert not ResidualBlock(8, "mamba1", {"d_state": 4}, mlp_expand=2).fused_step
    assert not ResidualBlock(8, "s4d", {"d_state": 4}).fused_step
    dropping = ResidualBlock(8, "mamba1", {"d_state": 4}, dropout=0.1)
    assert not dropping.fused_step and dropping.eval().fused_step
    # the general in-place step (forward + copy into the buffers) for blocks without a fused kernel
    block = ResidualBlock(8, "s4d", {"d_state": 4}, mlp_expand=2).eval()
    x, buf = torch.randn(2, 1, 8), block.init_state(2)
    with torch.no_grad():
        want, new = block(x, block.init_state(2))
        got = block.step_(x, buf)
    assert rel_err(got, want) < 1e-6
    for a, b in zip(vars(buf).values(), vars(new).values()):
        assert rel_err(a, b) < 1e-6


def test_block_step_checks_arguments():
    p = _params(8, 16, 4, 1, 4, "layernorm", True, torch.Generator().manual_seed(0))
    x, conv, ssm = torch.randn(2, 8), torch.zeros(2, 16, 3), torch.zeros(2, 16, 4)
    with pytest.raises(ValueError, match="ssm_state"):
        mamba1_block_step(x, conv, ssm.double(), *p.values())
    with pytest.raises(ValueError, match="conv_state"):
        mamba1_block_step(x, conv[:, :, :2], ssm, *p.values())
    with pytest.raises(ValueError, match="out_proj_weight"):
        mamba1_block_step(x, conv, ssm, *list(p.values())[:-2], p["out_proj_weight"].t(), None)
    with pytest.raises(ValueError, match="norm_bias"):
        mamba1_block_step(x, conv, ssm, *p.values(), norm="rmsnorm")


TINY = {
    "vocab_size": 32,
    "backbone.d_model": 8,
    "backbone.n_blocks": [2],
    "backbone.pool": [2, 3],
    "backbone.mixer_options": {"mamba1": {"d_state": 4}},
}


@needs_interpreter
@pytest.mark.parametrize("graphs", [False] if INTERPRET else [False, True], ids=lambda g: f"graphs={g}")
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_generation_through_the_fused_kernel_equals_teacher_forcing(monkeypatch, norm, graphs):
    torch.manual_seed(0)
    model = build_model("sc09_small", **TINY, **{"backbone.norm": norm}).to(DEVICE)
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    out = model.generate(2, 14, seed=4, progress=False, return_logits=True, cuda_graphs=graphs)
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    inputs = torch.cat([torch.full((2, 1), model.config.first_token, device=DEVICE), out.tokens[:, :-1]], dim=1)
    with torch.no_grad():
        forced, _ = model(inputs)  # (2, 14, V), chunked forward with the reference ops
    assert rel_err(out.logits, forced) < 1e-5


@needs_interpreter
def test_inplace_backbone_step_equals_functional_step(monkeypatch):
    torch.manual_seed(1)
    model = build_model("sc09_small", **TINY).to(DEVICE).eval()
    bb = model.backbone
    ref_state, buf = model.init_state(2, DEVICE), model.init_state(2, DEVICE)
    block_states = [s for stage in buf.blocks for s in stage]
    with torch.no_grad():
        for t in range(7):  # every step depth, twice for depth 1
            tok = torch.randint(0, 32, (2, 1, 1), device=DEVICE)
            monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
            want, ref_state = model.step(tok, ref_state, bb.step_depth(t))
            monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
            got, buf = model.step(tok, buf, bb.step_depth(t), inplace=True)
            assert rel_err(got, want) < 1e-5, t
    assert [s for stage in buf.blocks for s in stage] == block_states  # the very state objects
    for a, b in zip([s for st in buf.blocks for s in st], [s for st in ref_state.blocks for s in st]):
        assert rel_err(a.ssm, b.ssm) < 1e-5 and rel_err(a.conv, b.conv) < 1e-5


# (n_blocks, B, D, E, N, R, W, norm, biases, rows per program): several blocks per launch, programs of several rows
STAGES = [
    (3, 3, 8, 16, 4, 2, 4, "layernorm", True, 2),
    (2, 2, 12, 24, 6, 3, 3, "rmsnorm", False, 1),
]
REAL_STAGES = [
    (8, 1, 64, 128, 64, 4, 4, "layernorm", False, 1),
    (8, 64, 64, 128, 64, 4, 4, "layernorm", False, 2),
    (8, 5, 128, 256, 64, 8, 4, "rmsnorm", True, 4),
    (8, 3, 256, 512, 64, 16, 4, "layernorm", False, 2),
]


def _stage_ref(x0, up, convs, ssms, blocks, norm):
    """The unfused stage: (x0 + up) → blocks in turn (reference steps) → + stage input."""
    h0 = x0 if up is None else up + x0
    h = h0
    for conv, ssm, p in zip(convs, ssms, blocks):
        h = mamba1_block_step_ref(h, conv, ssm, *p.values(), norm=norm, eps=1e-5)
    return h + h0


def _stage_weights(n_blocks, d, e, n, r, w, norm, biases, dtype, gen):
    """Random weights of n_blocks blocks (dicts of ``_params``) and their stack for the stage kernels."""
    blocks = []
    for _ in range(n_blocks):
        p = _params(d, e, n, r, w, norm, biases, gen)
        blocks.append({k: None if v is None else v.to(DEVICE, torch.float32 if k == "A_log" else dtype)
                       for k, v in p.items()})
    from audiomamba.kernels import block_step

    return blocks, block_step.stack_block_weights([Mamba1StepWeights(**p) for p in blocks])


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32] if INTERPRET else [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", STAGES + ([] if INTERPRET else REAL_STAGES), ids=lambda s: "x".join(map(str, s)))
def test_stage_kernel_matches_reference(shape, dtype):
    """One launch for a stage (stacked weights, stacked states in place, up-pool add, stage residual), against the
    reference blocks, with strided inputs."""
    from audiomamba.kernels import block_step

    n_blocks, batch, d, e, n, r, w, norm, biases, rows = shape
    gen = torch.Generator().manual_seed(sum(shape[:7]))
    blocks, weights = _stage_weights(n_blocks, d, e, n, r, w, norm, biases, dtype, gen)
    assert isinstance(weights, Mamba1StepWeights) and weights.in_proj_weight.shape == (n_blocks, 2 * e, d)
    conv = torch.randn(n_blocks, batch, e, w - 1, generator=gen).to(DEVICE, dtype)
    ssm = torch.randn(n_blocks, batch, e, n, generator=gen).to(DEVICE)
    convs, ssms = [c.clone() for c in conv], [s.clone() for s in ssm]
    launch = block_step.StageLaunch(rows=rows)
    for step in range(3):
        if step == 0:  # strided input, up-pool output added
            x = torch.randn(batch, 2 * d, generator=gen).to(DEVICE, dtype)[:, ::2]
            up = torch.randn(batch, d, generator=gen).to(DEVICE, dtype)
            out = block_step.mamba1_stage_step_triton(x, conv, ssm, weights, norm, up=up, launch=launch)
            want = _stage_ref(x, up, convs, ssms, blocks, norm)
        elif step == 1:  # no up-pool, no residual
            x = torch.randn(batch, d, generator=gen).to(DEVICE, dtype)
            out = block_step.mamba1_stage_step_triton(x, conv, ssm, weights, norm, residual=False, launch=launch)
            want = _stage_ref(x, None, convs, ssms, blocks, norm) - x
        else:  # up as a row of a pool buffer (batch stride P·D)
            x = torch.randn(batch, d, generator=gen).to(DEVICE, dtype)
            upb = torch.randn(batch, 3, d, generator=gen).to(DEVICE, dtype)
            out = block_step.mamba1_stage_step_triton(x, conv, ssm, weights, norm, up=upb[:, -1], launch=launch)
            want = _stage_ref(x, upb[:, -1], convs, ssms, blocks, norm)
        assert out.shape == (batch, d) and out.dtype == dtype
        assert rel_err(out, want) < (3 * TOL[dtype] if step == 1 else TOL[dtype]), step
        for i in range(n_blocks):
            assert rel_err(conv[i], convs[i]) < TOL[dtype] and rel_err(ssm[i], ssms[i]) < TOL[dtype], (step, i)


@needs_interpreter
@pytest.mark.parametrize("norm,codebooks,temperature,rows", [("layernorm", 2, 0.7, 2), ("rmsnorm", 1, 1.0, 1),
                                                             ("layernorm", 1, 0.0, 1)])
def test_fused_stage_step_matches_unfused_pieces_and_sampler(norm, codebooks, temperature, rows):
    """Generation's fused stage step: the embedding sum, down-window push and up-buffer rotation before the stage
    blocks, the final norm, head and Gumbel-max draw after them, against the model's own modules and the sampler:
    the drawn tokens are the sampler's draws from the recorded logits with the same noise (temperature 0: their
    argmax), the logits equal the unfused head's and the log-likelihood their log-softmax at the draws."""
    from audiomamba.kernels import block_step

    from audiomamba import fused_step

    torch.manual_seed(3)
    model = build_model("sc09_small", **TINY, n_codebooks=codebooks, **{"backbone.norm": norm}).to(DEVICE).eval()
    batch, steps, vocab = 3, 2, model.config.vocab_size
    state = model.init_state(batch, DEVICE)
    launch = fused_step.FusedLaunch(stage=block_step.StageLaunch(rows=rows))
    stages = fused_step.fused_stages(model, state, batch, launch)
    stage = stages[0]
    down, upb = state.down[0].buffer, state.up[0].buffer
    down.normal_()
    upb.normal_()
    gen = torch.Generator().manual_seed(5)
    noise = None if temperature == 0 else gumbel_noise_(torch.empty(steps, batch, codebooks, vocab), gen).to(DEVICE)
    head = fused_step.HeadBuffers(temperature, noise, torch.zeros(batch, dtype=torch.long, device=DEVICE),
                                  torch.zeros(steps, batch, codebooks, dtype=torch.long, device=DEVICE),
                                  torch.zeros(steps, batch, codebooks, vocab, device=DEVICE),
                                  torch.zeros(batch, device=DEVICE))
    tokens = torch.randint(0, vocab, (batch, 1, codebooks), device=DEVICE)
    scratch = torch.empty(batch, model.d_model, device=DEVICE)
    want_ll = torch.zeros(batch, device=DEVICE)
    for t in range(steps):
        conv, ssm = stage.conv.clone(), stage.ssm.clone()
        down_ref, up_ref, tok_ref = down.clone(), upb.clone(), tokens.clone()
        out = fused_step.fused_stage_step(model, stage, scratch, up=upb[:, -1], down_buffer=down, up_buffer=upb,
                                          tokens=tokens, embed=True, head=head)
        with torch.no_grad():
            x = model.embed(tok_ref)[:, 0]  # (B, D)
            blocks = [dict(zip(Mamba1StepWeights._fields, (None if wt is None else wt[i] for wt in stage.weights)))
                      for i in range(len(conv))]
            want = _stage_ref(x, up_ref[:, 0], list(conv), list(ssm), blocks, stage.norm)
            logits = model.head(model.backbone.norm(want)).float()  # (B, K, V)
        assert rel_err(out, want) < 1e-5, t
        assert torch.equal(down, torch.cat([down_ref[:, 1:], x[:, None]], dim=1))
        assert torch.equal(upb, torch.roll(up_ref, -1, dims=1))
        assert rel_err(head.out_logits[t], logits) < 1e-5, t
        drawn = Sampler(temperature)(head.out_logits[t], None if noise is None else noise[t])  # (B, K)
        assert torch.equal(head.out_tokens[t], drawn) and torch.equal(tokens[:, 0], drawn), t
        want_ll += torch.log_softmax(logits, -1).gather(-1, drawn[..., None]).sum((1, 2))
    assert torch.equal(head.pos, torch.full((batch,), steps, device=DEVICE))
    assert rel_err(head.ll, want_ll) < 1e-5


def test_fused_stage_step_needs_tokens():
    from audiomamba.kernels.block_step import StageLaunch

    from audiomamba import fused_step

    model = build_model("sc09_small", **TINY)
    stage = fused_step.FusedStage(None, torch.zeros(1, 2, 16, 3), torch.zeros(1, 2, 16, 4), "layernorm", 1e-5, None,
                                  StageLaunch())
    with pytest.raises(ValueError, match="tokens"):
        fused_step.fused_stage_step(model, stage, torch.zeros(2, 8), embed=True)


@needs_interpreter
@pytest.mark.parametrize("rotate", [False, True])
def test_shift_pools_moves_the_buffers(rotate):
    """The split stages' pool shift: the down window takes x as its newest row, the up buffer rotates by one."""
    from audiomamba import fused_step

    gen = torch.Generator().manual_seed(int(rotate))
    x = torch.randn(3, 2 * 12, generator=gen).to(DEVICE)[:, ::2]  # strided (B, D)
    down, upb = torch.randn(3, 3, 12, generator=gen).to(DEVICE), torch.randn(3, 4, 12, generator=gen).to(DEVICE)
    down_ref, up_ref = down.clone(), upb.clone()
    fused_step.shift_pools_(x, down, upb if rotate else None)
    assert torch.equal(down, torch.cat([down_ref[:, 1:], x[:, None]], dim=1))
    assert torch.equal(upb, torch.roll(up_ref, -1, dims=1) if rotate else up_ref)


@needs_interpreter
@pytest.mark.parametrize("rows,split", [(1, False), (2, False), (1, True), (1, "once")],
                         ids=["rows1", "rows2", "split", "split-rows2-once"])
def test_fused_generation_equals_teacher_forcing(monkeypatch, rows, split):
    """The fused generation step (one launch per stage, embedding / pools / head / sampling around the stage
    blocks; with ``split`` the stages below the first through the split kernels and their pool shifts, "once": two
    rows per program and the partial sums reduced once per row) at every depth, two codebooks, a temperature and the
    log-likelihood; greedy decoding picks the forward's argmax (checked without ``split``: the split kernels run
    the stages below the first, and the draw happens in the first stage's launch)."""
    from audiomamba.kernels.block_step import StageLaunch
    from audiomamba.kernels.block_step_split import SplitLaunch

    import audiomamba.generation as generation
    from audiomamba import fused_step

    torch.manual_seed(0)
    model = build_model("sc09_small", **TINY, n_codebooks=2).to(DEVICE)
    depths = []
    fused = generation._Stepper._step_fused
    monkeypatch.setattr(generation._Stepper, "_step_fused", lambda self, d: (depths.append(d), fused(self, d)))
    once = split == "once"  # 3 rows: groups of 2 and 1
    launch = fused_step.FusedLaunch(
        stage=StageLaunch(rows=rows),
        split=SplitLaunch(tile=256, rows=2 if once else None, once=True if once else None),  # several slices
        split_from=1 if split else 10**9,
    )
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    stages = fused_step.fused_stages(model, model.init_state(3, DEVICE), 3, launch)
    assert [st.split is not None for st in stages] == [False] + [bool(split)] * (len(stages) - 1)
    assert all(st.split is None or st.split["slices"] > 1 for st in stages)
    out = model.generate(3, 13, seed=4, progress=False, return_logits=True, return_log_likelihood=True,
                         temperature=0.8, cuda_graphs=False, launch=launch)
    runs = [out]
    if not split:
        runs.append(model.generate(3, 13, progress=False, return_logits=True, temperature=0, cuda_graphs=False,
                                   launch=launch))
    assert sorted(set(depths)) == [0, 1, 2]
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    for res in runs:
        inputs = torch.cat([torch.full((3, 1, 2), model.config.first_token, device=DEVICE), res.tokens[:, :-1]], 1)
        with torch.no_grad():
            forced, _ = model(inputs)  # (3, 13, 2, V)
        assert rel_err(res.logits, forced) < 1e-5
    if not split:  # the last run was the greedy one
        assert torch.equal(forced.argmax(-1), runs[-1].tokens)
    with torch.no_grad():
        inputs = torch.cat([torch.full((3, 1, 2), model.config.first_token, device=DEVICE), out.tokens[:, :-1]], 1)
        forced, _ = model(inputs)
    logp = torch.log_softmax(forced, -1).gather(-1, out.tokens[..., None])[..., 0].mean((1, 2))
    assert rel_err(out.log_likelihood, logp) < 1e-5


# (n_blocks, B, D, E, N, R, W, norm, biases, launch settings): the split stage step; "tile" sets the slice width (BE =
# tile / BLOCK_D): 5 slices of E = 20 (the last one partial), 6 of 24, 1 of 16; "rows" rows per program (5 rows in
# groups of 2: the last group partial), "once": the partial sums reduced once per row by the group's last program
SPLIT_STAGES = [
    (3, 3, 8, 20, 4, 2, 4, "layernorm", True, {"tile": 32}),
    (2, 2, 12, 24, 6, 3, 3, "rmsnorm", False, {"tile": 64}),
    (2, 1, 16, 16, 5, 1, 2, "layernorm", False, {"tile": 4096}),
    (3, 5, 8, 20, 4, 2, 4, "layernorm", True, {"tile": 32, "rows": 2, "once": True}),
    (2, 3, 12, 24, 6, 3, 3, "rmsnorm", False, {"tile": 64, "rows": 3}),
    (2, 3, 12, 24, 6, 3, 3, "layernorm", True, {"tile": 64, "once": True}),
]
REAL_SPLIT_STAGES = [
    (8, 1, 128, 256, 64, 8, 4, "layernorm", False, {}),
    (8, 1, 256, 512, 64, 16, 4, "rmsnorm", True, {}),
    (8, 64, 256, 512, 64, 16, 4, "layernorm", False, {}),
    (8, 64, 128, 256, 64, 8, 4, "rmsnorm", True, {}),
    (8, 64, 256, 512, 64, 16, 4, "layernorm", False, {"rows": 1, "once": False}),
    (8, 30, 256, 512, 64, 16, 4, "layernorm", True, {"rows": 4, "once": True}),
    (8, 5, 96, 192, 64, 6, 4, "layernorm", True, {"tile": 2048}),
]


def _split_id(shape):
    return "x".join(map(str, shape[:9])) + "".join(f"-{k}{v}" for k, v in shape[9].items())


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32] if INTERPRET else [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SPLIT_STAGES + ([] if INTERPRET else REAL_SPLIT_STAGES), ids=_split_id)
def test_split_stage_kernel_matches_reference(shape, dtype):
    """The stage step with every block split over slices of E (two launches per block, partial sums, the last
    program of a row finishing; several rows per program, partial sums reduced once per row): against the reference
    blocks, with the up-pool add (also as a row of a pool buffer) and without the residual; three steps on one
    workspace (its arrival counters must come back to zero)."""
    from audiomamba.kernels import block_step_split

    n_blocks, batch, d, e, n, r, w, norm, biases, settings = shape
    gen = torch.Generator().manual_seed(sum(shape[:7]) + 1)
    blocks, weights = _stage_weights(n_blocks, d, e, n, r, w, norm, biases, dtype, gen)
    conv = torch.randn(n_blocks, batch, e, w - 1, generator=gen).to(DEVICE, dtype)
    ssm = torch.randn(n_blocks, batch, e, n, generator=gen).to(DEVICE)
    convs, ssms = [c.clone() for c in conv], [s.clone() for s in ssm]
    launch = block_step_split.SplitLaunch(**settings)
    ws = block_step_split.split_workspace(batch, d, e, n, r, w, DEVICE, dtype, launch)
    cfg = block_step_split.split_config(d, e, n, r, w, batch, launch)
    assert (cfg["RB"], cfg["ONCE"]) == (settings.get("rows", cfg["RB"]), settings.get("once", cfg["ONCE"]))
    if settings.get("tile", 4096) < 4096:
        assert ws["slices"] > 1

    def step_split(x, **kw):
        return block_step_split.mamba1_stage_step_split_triton(x, conv, ssm, weights, norm, workspace=ws,
                                                               launch=launch, **kw)

    for step in range(3):
        x = torch.randn(batch, 2 * d, generator=gen).to(DEVICE, dtype)[:, ::2]  # strided
        if step == 0:  # up-pool output added
            up = torch.randn(batch, d, generator=gen).to(DEVICE, dtype)
            out = step_split(x, up=up)
            want = _stage_ref(x, up, convs, ssms, blocks, norm)
        elif step == 1:  # no up-pool, no residual
            out = step_split(x, residual=False)
            want = _stage_ref(x, None, convs, ssms, blocks, norm) - x
        else:  # up as a row of a pool buffer (batch stride P·D)
            upb = torch.randn(batch, 3, d, generator=gen).to(DEVICE, dtype)
            out = step_split(x, up=upb[:, 0])
            want = _stage_ref(x, upb[:, 0], convs, ssms, blocks, norm)
        assert out.shape == (batch, d) and out.dtype == dtype
        assert rel_err(out, want) < (3 * TOL[dtype] if step == 1 else TOL[dtype]), step
        assert not ws["count"].any(), step
        for i in range(n_blocks):
            assert rel_err(conv[i], convs[i]) < TOL[dtype] and rel_err(ssm[i], ssms[i]) < TOL[dtype], (step, i)


def test_launch_settings_defaults_and_checks():
    """The default launch settings (H200 sweeps, benchmarks/notes/block_step.md): the stage kernel one row per
    program, 8192-element tiles, 16 warps; the split step at sc09_small's wide stages one row, 4 warps and sums read
    by every program below 16 rows, else sums reduced once per row, 2 warps and as many rows per program (up to 4)
    as keep 512 programs; a workspace made for other settings is refused; bad settings fail at construction."""
    from audiomamba.kernels import block_step, block_step_split

    from audiomamba import fused_step

    cfg = block_step.block_step_config(256, 512, 64, 16, 4)
    assert (cfg["BB"], cfg["num_warps"], cfg["BD_IN"], cfg["BD_OUT"], cfg["BN"]) == (1, 16, 16, 16, 16)
    assert block_step.block_step_config(256, 512, 64, 16, 4, block_step.StageLaunch(rows=2))["BD_IN"] == 8

    def split(d, batch, **kw):
        c = block_step_split.split_config(d, 2 * d, 64, d // 16, 4, batch, block_step_split.SplitLaunch(**kw))
        return c["S"], c["RB"], c["ONCE"], c["num_warps"]

    assert split(256, 1) == (32, 1, False, 4) and split(256, 15) == (32, 1, False, 4)
    assert split(256, 64) == (32, 4, True, 2) and split(256, 16) == (32, 1, True, 2)
    assert split(128, 64) == (8, 1, True, 2) and split(128, 256) == (8, 4, True, 2)
    assert split(256, 64, rows=1, once=False, num_warps=8, tile=2048) == (64, 1, False, 8)
    assert fused_step.FusedLaunch().split_from == 128
    ws = block_step_split.split_workspace(2, 8, 16, 4, 1, 4, "cpu", torch.float32,
                                          block_step_split.SplitLaunch(tile=32))
    conv, ssm = torch.zeros(1, 2, 16, 3), torch.zeros(1, 2, 16, 4)
    weights = _stage_weights(1, 8, 16, 4, 1, 4, "layernorm", False, torch.float32, torch.Generator())[1]
    with pytest.raises(ValueError, match="workspace"):
        block_step_split.mamba1_stage_step_split_triton(torch.zeros(2, 8), conv, ssm, weights, workspace=ws)
    with pytest.raises(ValueError, match="rows"):
        block_step.StageLaunch(rows=0)
    with pytest.raises(ValueError, match="num_warps"):
        block_step_split.SplitLaunch(num_warps=0)
