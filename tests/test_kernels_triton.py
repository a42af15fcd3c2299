"""Triton kernels against the PyTorch references, on CPU through Triton's interpreter (small sizes).

Every case draws fresh random inputs and compares the forward output, the final state and every gradient
(initial state included) with relative error <= 1e-4 in float32. Shapes include lengths that are not multiples
of any block, grouped B/C, channel-last memory, N = 16 and N = 64, and launch configurations that reach each code
path (one time segment or several, channel blocks and chunks of several sizes, saved states every few steps so
that the backward regenerates interval starts across several blocks). On a CUDA machine these run compiled on the
GPU instead (tests/test_kernels_gpu.py has the real-size cases).
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="no CUDA and TRITON_INTERPRET was set to something other than 1 before this module",
)
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _ss():
    return importlib.import_module("audiomamba.kernels.mamba1_scan")


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _scan_case(batch, channels, length, n, groups=None, z=True, D=True, bias=True, softplus=True, h0=True,
               channel_last=False, dtype=torch.float32, config=None, seed=0):
    """Run ours and the sequential reference on the same fresh inputs; return {name: rel err}."""
    from audiomamba.kernels.reference import selective_scan_ref

    ss = _ss()
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float()

    def act(scale=1.0):
        t = rnd(batch, length, channels, scale=scale).transpose(1, 2) if channel_last else \
            rnd(batch, channels, length, scale=scale)
        return t.to(dtype)

    def bc():
        shape = (batch, n, length) if groups is None else (batch, groups, n, length)
        if channel_last:
            t = rnd(*shape[:-2], length, n).transpose(-1, -2)
        else:
            t = rnd(*shape)
        return t.to(dtype)

    inputs = {
        "u": act(), "delta": act(0.5), "A": -(torch.rand(channels, n, generator=g) * 2 + 0.1),
        "B": bc(), "C": bc(), "D": rnd(channels) if D else None, "z": act() if z else None,
        "delta_bias": rnd(channels, scale=0.3) if bias else None, "h0": rnd(batch, channels, n) if h0 else None,
    }
    ours = {k: None if v is None else v.to(DEVICE).clone().requires_grad_(True) for k, v in inputs.items()}
    ref = {k: None if v is None else v.detach().double().clone().requires_grad_(True) for k, v in inputs.items()}
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    cfg = ss.scan_config(batch, channels, groups or 1, length, n, channel_first=not channel_last, **(config or {}))
    y, hT = ss.selective_scan_triton(*[ours[k] for k in order], softplus, ours["h0"], True, config=cfg)
    yr, hTr = selective_scan_ref(*[ref[k] for k in order], softplus, ref["h0"], True)
    gy = torch.randn(yr.shape, generator=g, dtype=torch.float64)
    gh = torch.randn(hTr.shape, generator=g, dtype=torch.float64)
    ((y.double().cpu() * gy).sum() + (hT.double().cpu() * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    errs = {"y": _rel(y.cpu(), yr), "final_state": _rel(hT.cpu(), hTr)}
    for k in ours:
        if ours[k] is not None:
            errs["d" + k] = _rel(ours[k].grad.cpu(), ref[k].grad)
    return errs


def _assert_close(errs, tol):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


ONE_SEG = {"fwd_target": 1, "bwd_target": 1}
MANY_SEG = {"fwd_target": 10**6, "bwd_target": 10**6}


@pytest.mark.parametrize(
    "shape, kwargs, config",
    [
        ((2, 6, 37, 5), {}, ONE_SEG),
        ((2, 6, 37, 5), {}, MANY_SEG),
        ((1, 8, 70, 4), {"groups": 2, "channel_last": True}, MANY_SEG),
        ((1, 8, 29, 3), {"groups": 2, "z": False, "D": False, "bias": False, "softplus": False, "h0": False}, ONE_SEG),
        ((1, 5, 33, 4), {"z": False, "h0": False}, {**MANY_SEG, "fwd_chunk": 2, "bwd_block": 4}),
        ((1, 4, 1, 4), {}, ONE_SEG),
        ((1, 3, 64, 2), {"channel_last": True}, {**ONE_SEG, "fwd_chunk": 1, "fwd_block": 2}),
        ((1, 6, 40, 4), {"groups": 3}, {**MANY_SEG, "ck": 16}),
        # states saved every 16 / 8 steps: the backward regenerates interval starts in several blocks, with one
        # segment and several (segments start on saved states), a partial channel block, a register cap
        ((1, 5, 45, 4), {"z": False, "h0": False}, {**MANY_SEG, "bwd_block": 4, "ck_save": 16}),
        ((1, 6, 53, 4), {}, {**ONE_SEG, "ck_save": 16, "fwd_chunk": 8}),
        ((1, 6, 29, 4), {"D": False, "bias": False}, {**ONE_SEG, "bwd_block": 4, "ck_save": 8, "bwd_maxnreg": 128}),
        # N = 16 and N = 64 (the presets' state sizes; N = 64 takes the "step" forward), odd lengths, L = 1
        ((1, 4, 23, 16), {}, {**ONE_SEG, "ck_save": 16}),
        ((1, 4, 19, 64), {"groups": 2}, {**ONE_SEG, "ck_save": 8}),
        ((1, 3, 21, 64), {"channel_last": True}, {**MANY_SEG, "ck_save": 8, "fwd_block": 2, "bwd_block": 2}),
        ((1, 4, 1, 64), {}, ONE_SEG),
        # each forward kernel at the other's state sizes: "step" at small N (partial channel blocks, segments,
        # groups, channel-last), "tile" at N = 64
        ((2, 6, 37, 5), {}, {**MANY_SEG, "fwd_kernel": "step", "fwd_chunk": 4, "ck_save": 16}),
        ((1, 8, 45, 4), {"groups": 2, "channel_last": True}, {**ONE_SEG, "fwd_kernel": "step", "fwd_block": 2,
                                                                "ck_save": 16}),
        ((1, 3, 17, 64), {}, {**ONE_SEG, "fwd_kernel": "tile", "fwd_block": 4, "fwd_chunk": 2, "ck_save": 8}),
        # each backward kernel at the other's state sizes, and the "grid" backward's layouts: two channels per
        # thread, one and several warps, 16 lanes along the states, a partial channel block, 4-step intervals
        ((2, 6, 37, 5), {}, {**MANY_SEG, "bwd_kernel": "grid", "ck_save": 16}),
        ((1, 8, 45, 4), {"groups": 2, "channel_last": True}, {**ONE_SEG, "bwd_kernel": "grid", "ck_save": 16}),
        ((1, 12, 29, 32), {"z": False, "h0": False}, {**MANY_SEG, "bwd_kernel": "grid", "bwd_block": 8,
                                                       "bwd_warps": 1, "ck_save": 16}),
        ((1, 6, 23, 64), {"channel_last": True}, {**ONE_SEG, "bwd_kernel": "grid", "bwd_lanes_n": 16, "ck": 4,
                                                  "ck_save": 8}),
        ((1, 4, 19, 64), {}, {**ONE_SEG, "bwd_kernel": "lanes", "ck_save": 8}),
    ],
)
def test_selective_scan_matches_reference(shape, kwargs, config):
    _assert_close(_scan_case(*shape, config=config, **kwargs), TOL[torch.float32])


@pytest.mark.parametrize("n", [4, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_half_inputs(dtype, n):
    _assert_close(_scan_case(1, 4, 19, n, dtype=dtype, config={**MANY_SEG, "ck_save": 8}), TOL[dtype])


def test_scan_config_rejects_bad_settings():
    ss = _ss()
    with pytest.raises(ValueError, match="ck_save"):
        ss.scan_config(1, 4, 1, 32, 16, ck=8, ck_save=12)
    with pytest.raises(ValueError, match="fwd_kernel"):
        ss.scan_config(1, 4, 1, 32, 16, fwd_kernel="scan")
    with pytest.raises(ValueError, match="fwd_chunk"):
        ss.scan_config(1, 4, 1, 32, 16, fwd_chunk=3)
    with pytest.raises(ValueError, match="bwd_kernel"):
        ss.scan_config(1, 4, 1, 32, 64, bwd_kernel="seq")
    with pytest.raises(ValueError, match="bwd_block"):
        ss.scan_config(1, 64, 1, 32, 64, bwd_kernel="grid", bwd_block=16, bwd_warps=3)
    with pytest.raises(ValueError, match="ck"):
        ss.scan_config(1, 64, 1, 32, 64, bwd_kernel="grid", ck=2, ck_save=8)


def test_selective_scan_chunked_calls_equal_one_call():
    """Passing the final state into the next call equals one call over the whole sequence."""
    ss = _ss()
    torch.manual_seed(1)
    b, e, length, n = 1, 4, 29, 3
    u, delta = torch.randn(b, e, length, device=DEVICE), torch.randn(b, e, length, device=DEVICE) * 0.5
    A = -torch.rand(e, n, device=DEVICE) - 0.1
    B, C, z = (torch.randn(b, n, length, device=DEVICE), torch.randn(b, n, length, device=DEVICE),
               torch.randn(b, e, length, device=DEVICE))
    y_all, h_all = ss.selective_scan_triton(u, delta, A, B, C, None, z, None, True, None, True)
    cut = 11
    y1, h1 = ss.selective_scan_triton(u[..., :cut], delta[..., :cut], A, B[..., :cut], C[..., :cut], None,
                                      z[..., :cut], None, True, None, True)
    y2, h2 = ss.selective_scan_triton(u[..., cut:], delta[..., cut:], A, B[..., cut:], C[..., cut:], None,
                                      z[..., cut:], None, True, h1, True)
    assert _rel(torch.cat([y1, y2], -1), y_all) <= 1e-5 and _rel(h2, h_all) <= 1e-5


@pytest.mark.parametrize("n, channels, length, conv_bias, D", [(8, 6, 37, True, True), (64, 8, 23, False, False)])
def test_mamba1_inner_recomputing_backward_matches_composed_ops(monkeypatch, n, channels, length, conv_bias, D):
    """The low-memory mixer op (Triton, recomputing the conv and projections in its backward) equals the composed
    reference ops: output and the gradient of every input, x and z as views of one in_proj output."""
    from audiomamba.kernels import mamba1_inner

    g = torch.Generator().manual_seed(n + length)
    rank, width = 3, 4

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    leaves = {"xz": rnd(2, length, 2 * channels), "conv_weight": rnd(channels, width, scale=0.5),
              "conv_bias": rnd(channels, scale=0.1) if conv_bias else None,
              "x_proj_weight": rnd(rank + 2 * n, channels, scale=0.3),
              "dt_proj_weight": rnd(channels, rank, scale=0.5), "delta_bias": rnd(channels, scale=0.3) - 1.0,
              "A": -(torch.rand(channels, n, generator=g) + 0.2).to(DEVICE), "D": rnd(channels) if D else None}
    dy = rnd(2, channels, length)
    results = []
    for backend in ("triton", "reference"):
        monkeypatch.setenv("AUDIOMAMBA_BACKEND", backend)
        lv = {k: None if v is None else v.clone().requires_grad_(True) for k, v in leaves.items()}
        x, z = lv["xz"].transpose(1, 2).chunk(2, dim=1)
        y = mamba1_inner(x, z, *[lv[k] for k in list(leaves)[1:]])
        assert (y.grad_fn.name() == "Mamba1InnerFnBackward") == (backend == "triton")
        (y * dy).sum().backward()
        results.append((y.detach(), {k: v.grad for k, v in lv.items() if v is not None}))
    (y_t, g_t), (y_r, g_r) = results
    assert _rel(y_t, y_r) <= 1e-5
    for k in g_r:
        assert _rel(g_t[k], g_r[k]) <= 1e-4, k


def test_dispatcher_uses_triton_when_forced(monkeypatch):
    from audiomamba.kernels import selective_scan
    from audiomamba.kernels.reference import selective_scan_ref

    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    torch.manual_seed(2)
    u, delta = torch.randn(1, 4, 21, device=DEVICE), torch.randn(1, 4, 21, device=DEVICE)
    A = -torch.rand(4, 3, device=DEVICE)
    B, C = torch.randn(1, 3, 21, device=DEVICE), torch.randn(1, 3, 21, device=DEVICE)
    y = selective_scan(u, delta, A, B, C, delta_softplus=True)
    assert _rel(y, selective_scan_ref(u, delta, A, B, C, delta_softplus=True)) <= 1e-4


@pytest.mark.parametrize(
    "batch, channels, length, width, activation, bias, state, channel_last",
    [
        (2, 5, 37, 4, "silu", True, True, False),
        (2, 70, 300, 4, None, False, False, True),
        (1, 3, 2, 4, "silu", True, True, False),
        (2, 9, 5, 3, None, True, True, True),
    ],
)
def test_causal_conv1d_matches_reference(batch, channels, length, width, activation, bias, state, channel_last):
    from audiomamba.kernels.conv1d import causal_conv1d_triton
    from audiomamba.kernels.reference import causal_conv1d_ref

    g = torch.Generator().manual_seed(length + channels)
    x = (torch.randn(batch, length, channels, generator=g).transpose(1, 2) if channel_last
         else torch.randn(batch, channels, length, generator=g))
    inputs = [x, torch.randn(channels, width, generator=g), torch.randn(channels, generator=g) if bias else None,
              torch.randn(batch, channels, width - 1, generator=g) if state else None]
    ours = [None if t is None else t.to(DEVICE).clone().requires_grad_(True) for t in inputs]
    ref = [None if t is None else t.double().clone().requires_grad_(True) for t in inputs]
    y, s = causal_conv1d_triton(*ours, True, activation)
    yr, sr = causal_conv1d_ref(*ref, True, activation)
    gy, gs = torch.randn(yr.shape, dtype=torch.float64), torch.randn(sr.shape, dtype=torch.float64)
    ((y.double().cpu() * gy).sum() + (s.double().cpu() * gs).sum()).backward()
    ((yr * gy).sum() + (sr * gs).sum()).backward()
    errs = {"y": _rel(y.cpu(), yr), "final_state": _rel(s.cpu(), sr)}
    for name, a, r in zip(("x", "weight", "bias", "initial_state"), ours, ref):
        if a is not None:
            errs["d" + name] = _rel(a.grad.cpu(), r.grad)
    _assert_close(errs, TOL[torch.float32])


SSD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def _ssd_case(batch, length, heads, headdim, groups, n, chunk, D="head", z=True, bias=True,
              softplus=True, h0=True, strided=False, outputs=("y", "final_state"), frozen=(), seed=0,
              dtype=torch.float32, launch=None):
    """Triton SSD (Triton forward and backward) against the sequential reference on fresh inputs: {name: rel err}.

    ``D``: "head" (H,), "channel" (H, P) or None; ``strided``: x, z and B are views of transposed storage;
    ``outputs``: which outputs the loss uses (the reference leaves None for inputs the loss does not reach);
    ``frozen``: inputs that do not require grad; ``dtype``: of x, dt, B, C, z (the reference gets the same
    rounded values in float64); ``launch``: an ``SSDLaunch`` (default: the tuned one).
    """
    from audiomamba.kernels.reference import ssd_scan_ref
    from audiomamba.kernels.ssd import ssd_scan_triton

    g = torch.Generator().manual_seed(seed * 1000 + length + heads)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def act(*shape):  # (B, L, H, P) or (B, L, G, N), from (B, H, L, P) storage when strided
        if strided:
            return rnd(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2)
        return rnd(*shape)

    inputs = [act(batch, length, heads, headdim), rnd(batch, length, heads, scale=0.5),
              -torch.rand(heads, generator=g) - 0.1,
              act(batch, length, groups, n), rnd(batch, length, groups, n),
              {"head": rnd(heads), "channel": rnd(heads, headdim), None: None}[D],
              act(batch, length, heads, headdim) if z else None,
              rnd(heads, scale=0.3) if bias else None, rnd(batch, heads, headdim, n) if h0 else None]
    ours, ref = [], []
    for name, t in zip(SSD_NAMES, inputs):
        if t is None:
            ours.append(None)
            ref.append(None)
            continue
        if name in ("x", "dt", "B", "C", "z"):
            t = t.to(dtype)
        o = t.to(DEVICE)
        o = o.clone() if not strided or o.dim() != 4 else o.transpose(1, 2).clone().transpose(1, 2)
        ours.append(o.requires_grad_(name not in frozen))
        ref.append(t.double().clone().requires_grad_(name not in frozen))
    if strided:
        assert not ours[0].is_contiguous()
    y, hT = ssd_scan_triton(*ours[:5], chunk, *ours[5:8], softplus, ours[8], True, launch=launch)
    yr, hTr = ssd_scan_ref(*ref[:5], chunk, *ref[5:8], softplus, ref[8], True)
    gy, gh = torch.randn(yr.shape, dtype=torch.float64), torch.randn(hTr.shape, dtype=torch.float64)
    loss = sum((a.double().cpu() * w).sum() for name, a, w in (("y", y, gy), ("final_state", hT, gh))
               if name in outputs)
    loss_ref = sum((a * w).sum() for name, a, w in (("y", yr, gy), ("final_state", hTr, gh)) if name in outputs)
    loss.backward()
    loss_ref.backward()
    errs = {"y": _rel(y.cpu(), yr), "final_state": _rel(hT.cpu(), hTr)}
    for name, a, r in zip(SSD_NAMES, ours, ref):
        if a is None:
            continue
        if name in frozen:
            assert a.grad is None
        else:
            assert a.grad.shape == a.shape and a.grad.dtype == a.dtype
            errs["d" + name] = _rel(a.grad.cpu(), r.grad if r.grad is not None else torch.zeros_like(r))
    return errs


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((1, 37, 2, 4, 1, 4, 16), {}),  # 3 chunks, the last one partial
        ((1, 77, 4, 3, 2, 5, 64), {"D": "channel"}),  # 4 row blocks per chunk, groups of 2 heads
        ((2, 50, 4, 3, 2, 5, 8), {"D": None, "z": False, "bias": False, "softplus": False, "h0": False}),
        ((1, 20, 2, 4, 1, 4, 32), {"h0": False, "bias": False}),  # L < chunk
        ((1, 45, 6, 5, 3, 3, 16), {"strided": True, "D": "channel"}),  # 3 groups, transposed storage
        ((1, 1, 2, 4, 2, 4, 16), {}),
        ((1, 110, 2, 4, 1, 4, 48), {}),  # a chunk that is not a power of two (partial row and column blocks)
        ((1, 256, 2, 16, 1, 16, 128), {}),  # every row and column in range: the unmasked (EVEN) forward, 4 row blocks
    ],
)
def test_ssd_matches_reference(shape, kwargs):
    _assert_close(_ssd_case(*shape, **kwargs), TOL[torch.float32])


@pytest.mark.parametrize(
    "outputs, frozen",
    [(("y",), ()), (("final_state",), ()), (("y", "final_state"), ("x", "A", "C", "D", "initial_state"))],
)
def test_ssd_gradients_of_one_output_and_frozen_inputs(outputs, frozen):
    _assert_close(_ssd_case(1, 30, 2, 4, 1, 4, 16, outputs=outputs, frozen=frozen, seed=1), TOL[torch.float32])


@pytest.mark.parametrize("launch", [
    dict(bwd_rows=16, bwd_cols=16, bwd_split=False, bwd_min_programs=1),
    dict(bwd_rows=32, bwd_cols=32, bwd_split=True, bwd_min_programs=None, bwd_min_programs_source=None),
    dict(bwd_rows=32, bwd_cols=16, bwd_split=True, bwd_min_programs=1, bwd_min_programs_source=1),
])
def test_ssd_backward_launch_variants(launch):
    """The [T, T] backward kernel in one launch (both phases), with square blocks, with both heads of a group in
    one program (min_programs 1) or one head per program: the same gradients."""
    from audiomamba.kernels.ssd import default_launch

    cfg = dataclasses.replace(default_launch(True), **launch)
    _assert_close(_ssd_case(1, 77, 4, 3, 2, 5, 64, seed=2, launch=cfg), TOL[torch.float32])


@pytest.mark.parametrize("launch", [dict(fwd_rows=16, dstate_bk=32), dict(fwd_rows=64, dstate_bk=16)])
@pytest.mark.parametrize("length", [77, 128])
def test_ssd_forward_and_dstate_launch_variants(launch, length):
    """The forward chunk scan with other row blocks (4 or 1 per chunk) and the backward's chunk-dstate kernel with
    other step blocks: the same results, masked (77) and unmasked (128)."""
    from audiomamba.kernels.ssd import default_launch

    cfg = dataclasses.replace(default_launch(True), **launch)
    _assert_close(_ssd_case(1, length, 2, 16, 1, 16, 64, seed=4, launch=cfg), TOL[torch.float32])


def test_ssd_float16_matches_reference():
    """The 16-bit path (tensor-core operands in the input dtype, float32 accumulation) on float16 inputs (the
    interpreter's bfloat16 is unusable) against float64 on the same rounded inputs. 2e-3: float16 rounds 8x finer
    than bfloat16 (whose GPU test allows 1e-2); observed <= 5e-4. A chunk of 128 steps gives two 64-row blocks.
    With the two sides of dS formed from differently rounded products, dA was off by 1.1e-2 in such a case."""
    _assert_close(_ssd_case(1, 150, 2, 16, 1, 16, 128, dtype=torch.float16, seed=3), 2e-3)
    _assert_close(_ssd_case(1, 256, 2, 16, 1, 16, 128, dtype=torch.float16, seed=5), 2e-3)  # unmasked (EVEN)


def test_ssd_chunked_calls_gradients_equal_one_call():
    """Two calls passing the state along give the output, final state and every gradient of one call."""
    from audiomamba.kernels.ssd import ssd_scan_triton

    g = torch.Generator().manual_seed(7)
    batch, length, heads, headdim, groups, n, cut = 1, 40, 2, 4, 1, 4, 23

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    base = [rnd(batch, length, heads, headdim), rnd(batch, length, heads, scale=0.5),
            -torch.rand(heads, generator=g).to(DEVICE) - 0.1, rnd(batch, length, groups, n),
            rnd(batch, length, groups, n), rnd(heads), rnd(batch, length, heads, headdim), rnd(heads, scale=0.3),
            rnd(batch, heads, headdim, n)]
    gy, gh = rnd(batch, length, heads, headdim), rnd(batch, heads, headdim, n)
    one = [t.clone().requires_grad_(True) for t in base]
    y, hT = ssd_scan_triton(*one[:5], 16, *one[5:8], True, one[8], True)
    ((y * gy).sum() + (hT * gh).sum()).backward()
    two = [t.clone().requires_grad_(True) for t in base]
    x, dt, A, B, C, D, z, dtb, h0 = two
    y1, h1 = ssd_scan_triton(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], 16, D, z[:, :cut], dtb, True, h0,
                             True)
    y2, h2 = ssd_scan_triton(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], 16, D, z[:, cut:], dtb, True, h1,
                             True)
    ((torch.cat([y1, y2], 1) * gy).sum() + (h2 * gh).sum()).backward()
    errs = {"y": _rel(torch.cat([y1, y2], 1).detach(), y.detach()), "final_state": _rel(h2.detach(), hT.detach())}
    for name, a, b in zip(SSD_NAMES, two, one):
        errs["d" + name] = _rel(a.grad, b.grad)
    _assert_close(errs, 1e-5)
