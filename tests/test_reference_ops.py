"""Reference ops: sequential vs chunked twins, chunked calls vs one call, gradients, gradcheck, bad input."""

from __future__ import annotations

import random

import audiomamba.kernels as kernels
import pytest
import torch
from audiomamba.kernels import (
    causal_conv1d,
    causal_conv1d_ref,
    causal_conv1d_shift_ref,
    selective_scan,
    selective_scan_chunked_ref,
    selective_scan_loop_ref,
    selective_scan_ref,
    ssd_scan,
    ssd_scan_chunked_ref,
    ssd_scan_ref,
)
from audiomamba.kernels.reference import causal_conv1d_time_major_, selective_scan_time_major_
from helpers import assert_same_grads, random_chunks, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

TOL = 1e-5  # float32, relative


def scan_inputs(b, e, L, n, groups=None, dtype=torch.float32, seed=None, requires_grad=False):
    g = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**31))
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    bc = (b, n, L) if groups is None else (b, groups, n, L)
    t = dict(
        u=r(b, e, L), delta=r(b, e, L) * 0.5, A=-torch.rand(e, n, generator=g, dtype=torch.float32) * 4,
        B=r(*bc), C=r(*bc), D=r(e).float(), z=r(b, e, L), delta_bias=r(e).float(),
        initial_state=r(b, e, n).float(),
    )
    if dtype == torch.float64:
        t["A"], t["D"], t["delta_bias"], t["initial_state"] = (
            t["A"].double(), t["D"].double(), t["delta_bias"].double(), t["initial_state"].double()
        )
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def split_scan(fn, t, sizes, **kw):
    """Run a selective scan chunk by chunk, passing the state; returns (y, final_state)."""
    ys, h, start = [], t["initial_state"], 0
    for n in sizes:
        sl = slice(start, start + n)
        Bs = t["B"][..., sl]
        y, h = fn(t["u"][..., sl], t["delta"][..., sl], t["A"], Bs, t["C"][..., sl], t["D"], t["z"][..., sl],
                  t["delta_bias"], True, h, True)
        ys.append(y)
        start += n
    return torch.cat(ys, -1), h


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked_ref])
def test_selective_scan_chunked_calls_equal_one_call(fn, groups):
    t = scan_inputs(2, 4, 97, 5, groups)
    y, h = fn(**{k: t[k] for k in t}, delta_softplus=True, return_final_state=True)
    yc, hc = split_scan(fn, t, random_chunks(97, random.Random()))
    assert rel_err(yc, y) < TOL and rel_err(hc, h) < TOL


def test_selective_scan_one_step_at_a_time_equals_full():
    t = scan_inputs(2, 3, 20, 4)
    y, h = selective_scan_chunked_ref(**t, delta_softplus=True, return_final_state=True)
    ys, hs = split_scan(selective_scan_chunked_ref, t, [1] * 20)
    assert rel_err(ys, y) < TOL and rel_err(hs, h) < TOL


@pytest.mark.parametrize("optional", [(), ("D", "z", "delta_bias", "initial_state")])
def test_selective_scan_chunked_matches_sequential_forward_and_grads(optional):
    t = scan_inputs(2, 6, 150, 8, groups=3, requires_grad=True)
    for k in optional:
        t[k] = None
    leaves = {k: v for k, v in t.items() if v is not None}
    y1, h1 = selective_scan_ref(**t, delta_softplus=True, return_final_state=True)
    y2, h2 = selective_scan_chunked_ref(**t, delta_softplus=True, return_final_state=True)
    assert rel_err(y2, y1) < TOL and rel_err(h2, h1) < TOL
    assert_same_grads((y1, h1), (y2, h2), leaves)  # through y and the final state


def test_selective_scan_chunked_handles_large_steps():
    """Large Δ·A forces short chunks; the result must still match the sequential scan (no overflow)."""
    t = scan_inputs(1, 4, 64, 4)
    t["delta"] = t["delta"].abs() * 20
    y1, h1 = selective_scan_ref(**t, return_final_state=True)
    y2, h2 = selective_scan_chunked_ref(**t, return_final_state=True)
    assert torch.isfinite(y2).all() and rel_err(y2, y1) < TOL and rel_err(h2, h1) < TOL


def test_selective_scan_gradcheck_float64_with_initial_state():
    t = scan_inputs(1, 2, 6, 3, groups=None, dtype=torch.float64, requires_grad=True)
    names = list(t)

    def f(*args):
        return selective_scan_ref(**dict(zip(names, args)), delta_softplus=True, return_final_state=True)

    assert torch.autograd.gradcheck(f, tuple(t.values()))

    def g(*args):
        return selective_scan_chunked_ref(**dict(zip(names, args)), delta_softplus=True, return_final_state=True)

    assert torch.autograd.gradcheck(g, tuple(t.values()))


def test_selective_scan_bf16_returns_input_dtype():
    t = scan_inputs(1, 2, 10, 3)
    for k in ("u", "delta", "z", "B", "C"):
        t[k] = t[k].bfloat16()
    y, h = selective_scan(**t, delta_softplus=True, return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), e=st.integers(1, 5), L=st.integers(1, 40), n=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), grouped=st.booleans())
def test_selective_scan_property_any_shape_any_chunking(b, e, L, n, seed, grouped):
    groups = 1 if grouped else None
    t = scan_inputs(b, e, L, n, groups, seed=seed)
    y, h = selective_scan_ref(**t, delta_softplus=True, return_final_state=True)
    yc, hc = split_scan(selective_scan_chunked_ref, t, random_chunks(L, random.Random(seed)))
    assert rel_err(yc, y) < TOL and rel_err(hc, h) < TOL


def channel_last(t: torch.Tensor) -> torch.Tensor:
    """(B, X, L) with the memory of (B, L, X), as the mixers pass their activations."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("L", [0, 1, 5, 20, 64])
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("grad", [False, True])
def test_selective_scan_loop_matches_sequential_forward_and_grads(L, groups, grad):
    """The loop twin against the sequential reference: y, final state and (through its out-of-place branch)
    every gradient; without autograd its in-place branch, on channel-last inputs as the mixer passes them."""
    t = scan_inputs(2, 6, L, 5, groups)
    for k in ("u", "delta", "z", "initial_state"):
        t[k] = channel_last(t[k])
    t["A"] = t["A"].t().contiguous().t()  # strides must not matter
    if grad:
        for v in t.values():
            v.requires_grad_(True)
    y1, h1 = selective_scan_ref(**t, delta_softplus=True, return_final_state=True)
    if grad:
        y2, h2 = selective_scan_loop_ref(**t, delta_softplus=True, return_final_state=True)
    else:
        with torch.inference_mode():
            y2, h2 = selective_scan_loop_ref(**t, delta_softplus=True, return_final_state=True)
    assert y2.shape == y1.shape and h2.shape == h1.shape
    assert (L == 0 or rel_err(y2, y1) < TOL) and rel_err(h2, h1) < TOL
    if grad and L:
        assert_same_grads((y1, h1), (y2, h2), t)


@pytest.mark.parametrize("optional", [("D", "z", "delta_bias", "initial_state")])
def test_selective_scan_loop_without_optional_inputs(optional):
    t = scan_inputs(1, 4, 9, 3)
    for k in optional:
        t[k] = None
    with torch.no_grad():
        y1, h1 = selective_scan_ref(**t, return_final_state=True)
        y2, h2 = selective_scan_loop_ref(**t, return_final_state=True)
        assert rel_err(selective_scan_loop_ref(**t), y1) < TOL
    assert rel_err(y2, y1) < TOL and rel_err(h2, h1) < TOL


def test_selective_scan_loop_gradcheck_and_dtypes():
    t = scan_inputs(1, 2, 4, 3, groups=1, dtype=torch.float64, requires_grad=True)
    names = list(t)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_loop_ref(**dict(zip(names, a)), delta_softplus=True, return_final_state=True),
        tuple(t.values()))
    t = scan_inputs(1, 2, 7, 3)
    for k in ("u", "delta", "z", "B", "C"):
        t[k] = t[k].bfloat16()
    with torch.no_grad():
        y, h = selective_scan_loop_ref(**t, delta_softplus=True, return_final_state=True)
        y_ref, h_ref = selective_scan_ref(**t, delta_softplus=True, return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert rel_err(h, h_ref) < TOL and rel_err(y, y_ref) < 1e-2


def test_selective_scan_loop_chunked_calls_equal_one_call():
    t = scan_inputs(2, 4, 40, 5, groups=2)
    with torch.no_grad():
        y, h = selective_scan_ref(**t, delta_softplus=True, return_final_state=True)
        yc, hc = split_scan(selective_scan_loop_ref, t, random_chunks(40, random.Random()))
    assert rel_err(yc, y) < TOL and rel_err(hc, h) < TOL


def test_short_calls_without_autograd_take_the_loop_and_shift_twins(monkeypatch):
    """The reference backend picks the twins for L <= SHORT_LENGTH without autograd, and only then."""
    calls = []
    for name in ("selective_scan_loop_ref", "causal_conv1d_shift_ref"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _fn=fn, _n=name: calls.append(_n) or _fn(*a))
    short, long = scan_inputs(1, 3, 7, 2), scan_inputs(1, 3, kernels.SHORT_LENGTH + 1, 2)
    w = torch.randn(3, 4)
    with torch.no_grad():
        selective_scan(**short)
        causal_conv1d(short["u"], w)
        assert calls == ["selective_scan_loop_ref", "causal_conv1d_shift_ref"]
        selective_scan(**long)
        causal_conv1d(long["u"], w)
    selective_scan(**dict(short, u=short["u"].requires_grad_()))
    causal_conv1d(short["u"], w)
    assert len(calls) == 2


@pytest.mark.parametrize("L", [1, 5, 20])
def test_time_major_cores_match_the_references(L):
    """The no-autograd time-major cores the Mamba-1 streaming path calls, against the (B, E, L) references:
    conv (output and final state) and scan (output and final state), with strided inputs as the mixer has."""
    b, e, n, w = 2, 6, 5, 4
    xz = torch.randn(b, L, 2 * e)  # the mixer's in_proj output: x and z are strided halves of it
    x, z = xz[..., :e], xz[..., e:]
    weight, bias, s0 = torch.randn(e, w), torch.randn(e), torch.randn(b, e, w - 1)
    y_ref, f_ref = causal_conv1d_ref(x.transpose(1, 2), weight, bias, s0, True, "silu")
    with torch.inference_mode():
        y, f = causal_conv1d_time_major_(x, weight, bias, s0.transpose(1, 2), True)
    assert rel_err(y.transpose(1, 2), y_ref) < TOL and torch.equal(f.transpose(1, 2), f_ref)

    xd = torch.randn(b, L, 3 + 2 * n)  # x_proj output: B and C are strided slices of it
    Bm, Cm = xd[..., 3 : 3 + n], xd[..., 3 + n :]
    u, dt = torch.randn(b, L, e), torch.rand(b, L, e) * 0.5
    A, D, h0 = -torch.rand(e, n) * 4, torch.randn(e), torch.randn(b, e, n)
    y_ref, h_ref = selective_scan_ref(u.transpose(1, 2), dt.transpose(1, 2), A, Bm.transpose(1, 2),
                                      Cm.transpose(1, 2), D, z.transpose(1, 2), None, False, h0, True)
    with torch.inference_mode():
        A2 = (A * 1.4426950408889634).t().contiguous()  # (N, E) = (A log2 e)^T
        y, h = selective_scan_time_major_(u, dt, A2, Bm, Cm, D, z, h0.transpose(1, 2))
    assert rel_err(y.transpose(1, 2), y_ref) < TOL and rel_err(h.transpose(1, 2), h_ref) < TOL


# ---------------------------------------------------------------- causal conv1d


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_chunked_equals_full(width, activation):
    x, w, bias, s0 = torch.randn(2, 5, 33), torch.randn(5, width), torch.randn(5), torch.randn(2, 5, width - 1)
    y, s = causal_conv1d_ref(x, w, bias, s0, True, activation)
    ys, st_, start = [], s0, 0
    for n in random_chunks(33, random.Random()):
        yy, st_ = causal_conv1d(x[..., start:start + n], w, bias, st_, True, activation)
        ys.append(yy)
        start += n
    assert rel_err(torch.cat(ys, -1), y) < TOL and rel_err(st_, s) == 0.0


def test_causal_conv1d_matches_direct_sum_and_gradcheck():
    x, w, s0 = torch.randn(1, 3, 7, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64), \
        torch.randn(1, 3, 2, dtype=torch.float64)
    y = causal_conv1d_ref(x, w, None, s0)
    xp = torch.cat([s0, x], -1)
    direct = torch.stack([(xp[..., t:t + 3] * w).sum(-1) for t in range(7)], -1)
    assert rel_err(y, direct) < 1e-12
    args = tuple(a.requires_grad_() for a in (x, w, torch.randn(3, dtype=torch.float64), s0))
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_ref(*a, True, "silu"), args)


@pytest.mark.parametrize("L", [1, 2, 9, 64])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [False, True])
def test_causal_conv1d_shift_matches_reference(L, width, bias, grad):
    x = channel_last(torch.randn(2, 6, L))
    w, b, s0 = torch.randn(6, width), torch.randn(6) if bias else None, torch.randn(2, 6, width - 1)
    leaves = [t for t in (x, w, b, s0) if t is not None]
    if grad:
        for t in leaves:
            t.requires_grad_(True)
    for activation in (None, "silu"):
        y1, f1 = causal_conv1d_ref(x, w, b, s0, True, activation)
        with torch.set_grad_enabled(grad):
            y2, f2 = causal_conv1d_shift_ref(x, w, b, s0, True, activation)
        assert rel_err(y2, y1) < TOL and torch.equal(f2, f1)
        assert rel_err(causal_conv1d_shift_ref(x, w, b, None, False, activation), causal_conv1d_ref(
            x, w, b, None, False, activation)) < TOL
        if grad:
            gy, gf = torch.randn_like(y1), torch.randn_like(f1)
            g1 = torch.autograd.grad((y1 * gy).sum() + (f1 * gf).sum(), leaves)
            g2 = torch.autograd.grad((y2 * gy).sum() + (f2 * gf).sum(), leaves)
            for a, c in zip(g1, g2):
                assert rel_err(c, a) < 1e-5
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_shift_ref(x, w, activation="relu")


# ---------------------------------------------------------------- SSD


def ssd_inputs(b=2, L=45, h=4, p=3, g=2, n=5, dtype=torch.float32, requires_grad=False):
    t = dict(x=torch.randn(b, L, h, p, dtype=dtype), dt=torch.randn(b, L, h, dtype=dtype),
             A=-torch.rand(h, dtype=dtype) * 2, B=torch.randn(b, L, g, n, dtype=dtype),
             C=torch.randn(b, L, g, n, dtype=dtype), D=torch.randn(h, dtype=dtype),
             z=torch.randn(b, L, h, p, dtype=dtype), dt_bias=torch.randn(h, dtype=dtype),
             initial_state=torch.randn(b, h, p, n, dtype=dtype))
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_ssd_chunked_matches_sequential_forward_and_grads(chunk_size):
    t = ssd_inputs(requires_grad=True)
    y1, h1 = ssd_scan_ref(**t, chunk_size=chunk_size, dt_softplus=True, return_final_state=True)
    y2, h2 = ssd_scan_chunked_ref(**t, chunk_size=chunk_size, dt_softplus=True, return_final_state=True)
    assert rel_err(y2, y1) < TOL and rel_err(h2, h1) < TOL
    assert_same_grads((y1, h1), (y2, h2), t)


def test_ssd_chunked_calls_equal_one_call():
    t = ssd_inputs(L=61)
    y, h = ssd_scan(**t, chunk_size=16, dt_softplus=True, return_final_state=True)
    ys, st_, start = [], t["initial_state"], 0
    for n in random_chunks(61, random.Random()):
        sl = slice(start, start + n)
        yy, st_ = ssd_scan(t["x"][:, sl], t["dt"][:, sl], t["A"], t["B"][:, sl], t["C"][:, sl], 16, t["D"],
                           t["z"][:, sl], t["dt_bias"], True, st_, True)
        ys.append(yy)
        start += n
    assert rel_err(torch.cat(ys, 1), y) < TOL and rel_err(st_, h) < TOL


def test_ssd_gradcheck_float64_with_initial_state():
    t = ssd_inputs(b=1, L=5, h=2, p=2, g=1, n=2, dtype=torch.float64, requires_grad=True)
    names = list(t)
    assert torch.autograd.gradcheck(
        lambda *a: ssd_scan_chunked_ref(**dict(zip(names, a)), chunk_size=2, dt_softplus=True,
                                        return_final_state=True), tuple(t.values()))


# ---------------------------------------------------------------- bad input


def test_bad_shapes_and_dtypes_name_the_argument():
    t = scan_inputs(2, 4, 10, 3)
    bad = dict(t, delta=t["delta"][..., :9])
    with pytest.raises(ValueError, match="delta"):
        selective_scan(**bad)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**dict(t, initial_state=t["initial_state"][:, :, :2]))
    with pytest.raises(ValueError, match="A"):
        selective_scan(**dict(t, A=t["A"].half()))
    with pytest.raises(ValueError, match="u"):
        selective_scan(**dict(t, u=t["u"].long()))
    with pytest.raises(ValueError, match="B"):
        selective_scan(**dict(t, B=torch.randn(2, 3, 3, 10)))  # 3 groups do not divide 4 channels
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(torch.randn(1, 4, 5), torch.randn(3, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 4), activation="relu")
    s = ssd_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(**s, chunk_size=0)
    with pytest.raises(ValueError, match="dt"):
        ssd_scan(**dict(s, dt=s["dt"][:, :3]), chunk_size=8)


def test_forced_backend_is_validated(monkeypatch):
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "cuda-magic")
    t = scan_inputs(1, 2, 4, 2)
    with pytest.raises(ValueError, match="AUDIOMAMBA_BACKEND"):
        selective_scan(**t)
