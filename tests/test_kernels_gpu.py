"""Triton kernels on the GPU at real sizes against the PyTorch references (skipped without CUDA).

float32 within 1e-4 relative, bf16 within 1e-2 relative (against the float32 reference on the same bf16 inputs);
forward, final state and every gradient, initial state included; both physical layouts; the scan at N = 8, 16
and 64, with its default launch and with states saved every 32 steps and two channel blocks per program size.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _act(shape_bel, channel_last, dtype, scale=1.0):
    b, e, length = shape_bel
    t = torch.randn(b, length, e, device="cuda").transpose(1, 2) if channel_last else \
        torch.randn(b, e, length, device="cuda")
    return (t * scale).to(dtype)


def _bc(b, groups, n, length, channel_last, dtype):
    if channel_last:
        t = torch.randn(b, length, groups, n, device="cuda").permute(0, 2, 3, 1)
    else:
        t = torch.randn(b, groups, n, length, device="cuda")
    t = t.to(dtype)
    return t


@pytest.mark.parametrize("launch", [{}, {"ck_save": 32, "fwd_block": 4, "bwd_block": 8},
                                    {"bwd_kernel": "lanes", "ck_save": 64}, {"bwd_kernel": "grid", "bwd_warps": 2}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 192, 1000, 16, 1), (4, 768, 2048, 16, 1), (2, 128, 3000, 8, 2),
                                   (2, 128, 2000, 64, 1)])
def test_selective_scan_gpu(dtype, channel_last, shape, launch):
    from audiomamba.kernels.mamba1_scan import scan_config, selective_scan_triton
    from audiomamba.kernels.reference import selective_scan_chunked_ref

    torch.manual_seed(0)
    b, e, length, n, groups = shape
    u = _act((b, e, length), channel_last, dtype)
    delta = _act((b, e, length), channel_last, dtype, 0.5)
    z = _act((b, e, length), channel_last, dtype)
    A = -torch.exp(torch.randn(e, n, device="cuda") * 0.5)
    if groups == 1:
        B = _bc(b, 1, n, length, channel_last, dtype)[:, 0]
        C = _bc(b, 1, n, length, channel_last, dtype)[:, 0]
    else:
        B = _bc(b, groups, n, length, channel_last, dtype)
        C = _bc(b, groups, n, length, channel_last, dtype)
    D = torch.randn(e, device="cuda")
    bias = torch.randn(e, device="cuda") * 0.5 - 2.0
    h0 = torch.randn(b, e, n, device="cuda")
    ins = [u, delta, A, B, C, D, z, bias, h0]
    ours = [t.clone().requires_grad_(True) for t in ins]
    ref = [t.detach().float().clone().requires_grad_(True) for t in ins]
    cfg = scan_config(b, e, groups, length, n, channel_first=not channel_last, **launch)
    y, hT = selective_scan_triton(*ours[:8], True, ours[8], True, config=cfg)
    yr, hTr = selective_scan_chunked_ref(*ref[:8], True, ref[8], True)
    gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
    ((y.float() * gy).sum() + (hT * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    tol = TOL[dtype]
    assert _rel(y, yr) <= tol and _rel(hT, hTr) <= tol
    for name, a, r in zip("u delta A B C D z bias h0".split(), ours, ref):
        err = _rel(a.grad, r.grad)
        assert err <= tol, f"d{name}: rel err {err:.2e} > {tol}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba1_inner_gpu(dtype, monkeypatch):
    """The low-memory mixer op (sc09_small's stage-0 widths, channel-last views of one in_proj output) against
    the composed PyTorch reference ops in float32 on the same (rounded) inputs: output and every gradient. In
    bf16 it runs under autocast, as in training (the projections then round to bf16 too: 3e-2)."""
    import contextlib

    from audiomamba.kernels import mamba1_inner

    torch.manual_seed(1)
    b, e, length, n, rank, width = 2, 128, 3000, 64, 4, 4
    leaves = {"xz": torch.randn(b, length, 2 * e, device="cuda"),
              "conv_weight": torch.randn(e, width, device="cuda") * 0.5, "conv_bias": torch.randn(e, device="cuda"),
              "x_proj_weight": torch.randn(rank + 2 * n, e, device="cuda") * e**-0.5,
              "dt_proj_weight": torch.randn(e, rank, device="cuda") * 0.5,
              "delta_bias": torch.randn(e, device="cuda") * 0.5 - 2.0,
              "A": -torch.exp(torch.randn(e, n, device="cuda") * 0.5), "D": torch.randn(e, device="cuda")}
    dy = torch.randn(b, e, length, device="cuda")
    outs = []
    for backend, cast in (("triton", dtype), ("reference", torch.float32)):
        monkeypatch.setenv("AUDIOMAMBA_BACKEND", backend)
        lv = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
        x, z = lv["xz"].to(dtype).to(cast).transpose(1, 2).chunk(2, dim=1)
        amp = torch.autocast("cuda", dtype=dtype) if cast != torch.float32 else contextlib.nullcontext()
        with amp:
            y = mamba1_inner(x, z, *[lv[k] for k in list(leaves)[1:]])
        (y.float() * dy).sum().backward()
        outs.append((y.float().detach(), {k: v.grad for k, v in lv.items()}))
    (y, grads), (yr, grads_ref) = outs
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    assert _rel(y, yr) <= tol
    for k in grads_ref:
        assert _rel(grads[k], grads_ref[k]) <= tol, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_gpu(dtype, activation):
    from audiomamba.kernels.conv1d import causal_conv1d_triton
    from audiomamba.kernels.reference import causal_conv1d_ref

    torch.manual_seed(0)
    b, e, length, w = 4, 768, 2048, 4
    x = _act((b, e, length), True, dtype)
    weight = torch.randn(e, w, device="cuda", dtype=dtype) * 0.5
    bias = torch.randn(e, device="cuda", dtype=dtype)
    s0 = torch.randn(b, e, w - 1, device="cuda", dtype=dtype)
    ours = [t.clone().requires_grad_(True) for t in (x, weight, bias, s0)]
    ref = [t.detach().float().clone().requires_grad_(True) for t in (x, weight, bias, s0)]
    y, sT = causal_conv1d_triton(*ours, True, activation)
    yr, sTr = causal_conv1d_ref(*ref, True, activation)
    gy, gs = torch.randn_like(yr), torch.randn_like(sTr)
    ((y.float() * gy).sum() + (sT.float() * gs).sum()).backward()
    ((yr * gy).sum() + (sTr * gs).sum()).backward()
    tol = TOL[dtype]
    assert _rel(y, yr) <= tol and _rel(sT, sTr) <= tol
    for name, a, r in zip(("x", "weight", "bias", "state"), ours, ref):
        err = _rel(a.grad, r.grad)
        assert err <= tol, f"d{name}: rel err {err:.2e} > {tol}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd_gpu(dtype):
    from audiomamba.kernels.reference import ssd_scan_chunked_ref
    from audiomamba.kernels.ssd import ssd_scan_triton

    torch.manual_seed(0)
    b, length, heads, headdim, groups, n, chunk = 2, 1000, 8, 64, 2, 64, 256
    x = torch.randn(b, length, heads, headdim, device="cuda").to(dtype)
    dt = (torch.randn(b, length, heads, device="cuda") * 0.5).to(dtype)
    A = -torch.exp(torch.randn(heads, device="cuda") * 0.5)
    B = torch.randn(b, length, groups, n, device="cuda").to(dtype)
    C = torch.randn(b, length, groups, n, device="cuda").to(dtype)
    D = torch.randn(heads, device="cuda")
    z = torch.randn(b, length, heads, headdim, device="cuda").to(dtype)
    bias = torch.randn(heads, device="cuda") * 0.5 - 2.0
    h0 = torch.randn(b, heads, headdim, n, device="cuda")
    ins = [x, dt, A, B, C, D, z, bias, h0]
    ours = [t.clone().requires_grad_(True) for t in ins]
    ref = [t.detach().float().clone().requires_grad_(True) for t in ins]
    y, hT = ssd_scan_triton(*ours[:5], chunk, *ours[5:8], True, ours[8], True)
    yr, hTr = ssd_scan_chunked_ref(*ref[:5], chunk, *ref[5:8], True, ref[8], True)
    gy, gh = torch.randn_like(yr), torch.randn_like(hTr)
    ((y.float() * gy).sum() + (hT * gh).sum()).backward()
    ((yr * gy).sum() + (hTr * gh).sum()).backward()
    tol = TOL[dtype]
    assert _rel(y, yr) <= tol and _rel(hT, hTr) <= tol
    for name, a, r in zip("x dt A B C D z bias h0".split(), ours, ref):
        err = _rel(a.grad, r.grad)
        assert err <= tol, f"d{name}: rel err {err:.2e} > {tol}"


# ---------------------------------------------------------------- compat: mamba_ssm's input space on the GPU
# Every combination of mamba_ssm's selective-scan test matrix (tests/test_compat.py runs the same cases on CPU),
# at mamba_ssm's sizes (batch 2, 4 channels, N = 8) and sequence lengths 128 and 2048, through
# audiomamba.kernels.compat.selective_scan_fn's kernel (the Triton backend); the oracle is the chunked PyTorch
# reference in float64 (checked against a step-by-step oracle in tests/test_compat.py). Cases with a final state
# also start from a random initial state; every second case uses channel-last memory. Then real sizes for the
# general kernel (complex A, fixed B / C) against the float32 reference. The first run compiles the kernel
# variants (the fast kernel's options are compile-time, so a few hundred); Triton caches them for later runs.
# Test ids name the case, so the matrix splits with -k (e.g. -k "compat and complex64", -k "compat and bfloat16").

_COMPAT_FACTORS = {
    "wtype": (torch.float32, torch.complex64),
    "itype": (torch.float32, torch.float16, torch.bfloat16),
    "seqlen": (128, 2048),
    "return_last_state": (False, True),
    "has_D": (False, True),
    "has_z": (False, True),
    "has_delta_bias": (False, True),
    "delta_softplus": (False, True),
    "bc": ("var", "var_fixed", "fixed_var", "fixed", "var_g2"),
}
_COMPAT_MATRIX = [dict(zip(_COMPAT_FACTORS, v)) for v in itertools.product(*_COMPAT_FACTORS.values())]


def _chunked_oracle(u, delta, A, B, C, D, z, delta_bias, softplus, h0):
    from audiomamba.kernels.reference import selective_scan_chunked_ref

    return selective_scan_chunked_ref(u, delta, A, B, C, D, z, delta_bias, softplus, h0, True)


def _compat_id(case):
    return "-".join(str(v).replace("torch.", "") if not isinstance(v, bool) else (k if v else f"no_{k}")
                    for k, v in case.items())


@pytest.mark.parametrize("index", range(len(_COMPAT_MATRIX)), ids=[_compat_id(c) for c in _COMPAT_MATRIX])
def test_compat_scan_matrix_gpu(index, monkeypatch):
    import test_compat
    from audiomamba.kernels import selective_scan

    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    case = _COMPAT_MATRIX[index]
    leaves = test_compat._inputs(case, 20_000 + index, "cuda", h0=case["return_last_state"],
                                 channel_last=index % 2 == 1)

    def run(lv):
        return selective_scan(*[lv[k] for k in test_compat.ORDER], case["delta_softplus"], initial_state=lv["h0"],
                              return_final_state=True)

    test_compat._check_case(case, run, leaves, 20_000 + index, oracle=_chunked_oracle)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["complex_var", "complex_fixed", "real_fixed_B", "real_fixed_C"])
@pytest.mark.parametrize("shape", [(2, 768, 2048, 16), (1, 256, 4000, 8)])
def test_compat_general_scan_real_sizes_gpu(kind, dtype, shape):
    """The general kernel at model sizes (several channel blocks and recomputation intervals) against the float32
    chunked reference: forward, final state and every gradient within TOL (relative norm)."""
    from audiomamba.kernels.mamba1_scan_general import selective_scan_general_triton
    from audiomamba.kernels.reference import selective_scan_chunked_ref

    torch.manual_seed(0)
    b, e, length, n = shape
    cplx = kind.startswith("complex")
    wtype = torch.complex64 if cplx else torch.float32
    A = -0.5 * torch.rand(e, n, device="cuda", dtype=wtype)
    A = A - 0.1 if not cplx else torch.complex(A.real - 0.1, A.imag * 6.28)

    def bc(fixed):
        if fixed:
            return torch.randn(e, n, device="cuda", dtype=wtype) * 0.5
        return torch.randn(b, n, length * (2 if cplx else 1), device="cuda").to(dtype)

    ins = {"u": _act((b, e, length), True, dtype), "delta": _act((b, e, length), False, dtype, 0.5),
           "A": A, "B": bc(kind in ("complex_fixed", "real_fixed_B")),
           "C": bc(kind in ("complex_fixed", "real_fixed_C")),
           "D": torch.randn(e, device="cuda"), "z": _act((b, e, length), False, dtype),
           "delta_bias": torch.rand(e, device="cuda") * 0.5 - 3.0,
           "h0": torch.randn(b, e, n, device="cuda", dtype=wtype)}
    ours = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    ref = {k: (v.detach() if v.is_complex() else v.detach().float()).clone().requires_grad_(True)
           for k, v in ins.items()}
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    y, hT = selective_scan_general_triton(*[ours[k] for k in order], True, ours["h0"], True)
    yr, hTr = selective_scan_chunked_ref(*[ref[k] for k in order], True, ref["h0"], True)

    def real(t):  # complex tensors as (..., 2) real views
        return torch.view_as_real(t) if t.is_complex() else t

    gy, gh = torch.randn_like(yr), torch.randn_like(real(hTr))
    ((y.float() * gy).sum() + (real(hT) * gh).sum()).backward()
    ((yr * gy).sum() + (real(hTr) * gh).sum()).backward()
    tol = TOL[dtype]
    assert _rel(y, yr) <= tol and _rel(real(hT), real(hTr)) <= tol
    for k in ours:
        err = _rel(real(ours[k].grad), real(ref[k].grad))
        assert err <= tol, f"d{k}: rel err {err:.2e} > {tol}"


@pytest.mark.parametrize("complex_a", [False, True])
@pytest.mark.parametrize("var_b, var_c", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compat_mamba_inner_fn_gpu(complex_a, var_b, var_c, dtype, monkeypatch):
    """mamba_inner_fn at mamba_ssm's test sizes (E = 768, R = 48, N = 8, L = 128) on the Triton kernels against
    the PyTorch backend in float64 on the same (rounded) inputs: output and every gradient."""
    from audiomamba.kernels import compat

    torch.manual_seed(0)
    batch, dim, length, n, rank = 2, 768, 128, 8, 48
    d_state = n * (2 if complex_a else 1)
    wtype = torch.complex64 if complex_a else torch.float32
    args = [torch.randn(batch, 2 * dim, length), torch.randn(dim, 1, 3) * 0.5, torch.randn(dim),
            torch.randn(rank + (var_b + var_c) * d_state, dim) / dim ** 0.5, torch.randn(dim, rank) / rank ** 0.5,
            torch.randn(dim // 2, dim) / dim ** 0.5, None, -0.5 * torch.rand(dim, n, dtype=wtype),
            None if var_b else torch.randn(dim, n, dtype=wtype), None if var_c else torch.randn(dim, n, dtype=wtype),
            torch.randn(dim), 0.5 * torch.rand(dim)]
    ours = [None if a is None else (a.to(dtype) if i < 6 else a).cuda().requires_grad_(True)
            for i, a in enumerate(args)]
    ref = [None if a is None else (a.to(dtype) if i < 6 else a).to(
        torch.complex128 if a.is_complex() else torch.float64).requires_grad_(True) for i, a in enumerate(args)]
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    out = compat.mamba_inner_fn(*ours[:10], ours[10], delta_bias=ours[11], delta_softplus=True)
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    want = compat.mamba_inner_fn(*ref[:10], ref[10], delta_bias=ref[11], delta_softplus=True)
    cot = torch.randn(want.shape, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * cot.cuda()).sum(), [t for t in ours if t is not None])
    grads_want = torch.autograd.grad((want * cot).sum(), [t for t in ref if t is not None])
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # bfloat16: mamba_ssm's tolerance (rounded intermediates)
    assert _rel(out.cpu(), want) <= tol
    for i, (a, r) in enumerate(zip(grads, grads_want)):
        a, r = (torch.view_as_real(a), torch.view_as_real(r)) if a.is_complex() else (a, r)
        assert _rel(a.cpu(), r) <= tol, f"gradient {i}: rel err {_rel(a.cpu(), r):.2e}"


@pytest.mark.parametrize("multi_head", [False, True])
def test_compat_selective_state_update_gpu(multi_head):
    """selective_state_update (dt_bias None, then given) on the GPU against the same call on CPU, state in place."""
    from audiomamba.kernels import compat

    torch.manual_seed(0)
    batch, n = 4, 16
    lead = (24, 64) if multi_head else (1536,)
    state = torch.randn(batch, *lead, n)
    x, dt, z = (torch.randn(batch, *lead) for _ in range(3))
    A = -torch.rand(*lead, n)
    bc = (batch, 2, n) if multi_head else (batch, n)
    B, C, D, bias = torch.randn(*bc), torch.randn(*bc), torch.randn(*lead), torch.randn(*lead)
    for dt_bias in (None, bias):
        s_gpu, s_cpu = state.cuda(), state.clone()
        y = compat.selective_state_update(s_gpu, x.cuda(), dt.cuda(), A.cuda(), B.cuda(), C.cuda(), D.cuda(),
                                          z.cuda(), None if dt_bias is None else dt_bias.cuda(), dt_softplus=True)
        y_ref = compat.selective_state_update(s_cpu, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)
        assert _rel(y.cpu(), y_ref) <= 1e-5 and _rel(s_gpu.cpu(), s_cpu) <= 1e-5
