"""mamba_ssm's Mamba-1 API on our kernels (``audiomamba.kernels.compat``) and the full selective-scan input space.

The cases are those of mamba_ssm's selective-scan test matrix (tests/ops/test_selective_scan.py), ported here,
at mamba_ssm's sizes (batch 2, 4 channels, N = 8) with short sequences, on fresh random inputs; forward, last
state and every gradient are compared with an oracle (this module's ``_oracle``: mamba_ssm's reference
semantics, written independently, in float64) within mamba_ssm's tolerances for the input precision:

* ``test_scan_matrix_cpu``: EVERY combination of wtype (real / complex A) × itype (float32 / float16 /
  bfloat16) × seqlen × return_last_state × has_D × has_z × has_delta_bias × delta_softplus × B / C kind
  (input-dependent, grouped with 2 groups, fixed), through ``compat.selective_scan_fn`` on CPU (the PyTorch
  backend: the chunked twin with autograd, and the loop twin for the gradient-free call).
* ``test_scan_matrix_triton``: the Triton kernels (``mamba1_scan`` and ``mamba1_scan_general``), run by Triton's
  interpreter on CPU (compiled on a GPU). Interpreted kernels take seconds per case, so this runs a covering
  subset: every PAIR of values of any two factors (the factors above plus an initial state and channel-last
  memory) appears in at least one case (pairwise coverage, built greedily and deterministically below).
  tests/test_kernels_gpu.py runs every combination on the GPU at real lengths.

Then ``selective_state_update`` (dt_bias None included, single- and multi-head shapes), ``causal_conv1d_fn`` /
``causal_conv1d_update`` against direct convolutions, and ``mamba_inner_fn`` against an unfused composition.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
import torch
import torch.nn.functional as F
from audiomamba.kernels import compat, selective_scan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_OK = DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"

# ---------------------------------------------------------------- the oracle and tolerances


def _oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, h0=None):
    """mamba_ssm's selective-scan semantics, step by step: h ← exp(Δ A) h + Δ u B_t; y = C_t·h (2 Re(·) for a
    complex A) + D u, times SiLU(z). A complex A takes input-dependent B / C as real (…, N, 2L) with (real,
    imaginary) pairs along time. Returns (y, last state)."""
    batch, channels, length = u.shape
    cplx = A.is_complex()
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(dt) if softplus else dt

    def per_step(M):  # -> (·, E, N, L) or a fixed (1, E, N, 1)
        if M.dim() == 2:
            return M[None, :, :, None]
        if cplx and not M.is_complex():
            M = torch.view_as_complex(M.contiguous().reshape(*M.shape[:-1], length, 2))
        M = M[:, None] if M.dim() == 3 else M
        return M.repeat_interleave(channels // M.shape[1], dim=1)

    Bs, Cs = per_step(B), per_step(C)
    h = torch.zeros(batch, channels, A.shape[1], dtype=A.dtype) if h0 is None else h0
    ys = []
    for t in range(length):
        tb, tc = min(t, Bs.shape[-1] - 1), min(t, Cs.shape[-1] - 1)
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bs[..., tb]
        y = (h * Cs[..., tc]).sum(-1)
        ys.append(2 * y.real if cplx else y)
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def _tolerances(itype, has_z):
    """mamba_ssm's test tolerances: (rtol, atol) of activations and (rtolw, atolw) of weights."""
    rtol, atol = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}[itype]
    rtolw, atolw = 1e-3, 1e-3
    if has_z:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    return rtol, atol, rtolw, atolw


def _assert_close(name, ours, ref, rtol, atol):
    ours = ours.detach().cpu().to(ref.dtype)
    ref = ref.detach()
    diff = (ours - ref).abs().max().item() if ref.numel() else 0.0
    assert torch.allclose(ours, ref, rtol=rtol, atol=atol), f"{name}: max |diff| {diff:.3g}"


def _dot(t, g):
    """Σ t·g as a real number for real or complex tensors (a random real function of t)."""
    if t.is_complex():
        return (torch.view_as_real(t) * torch.view_as_real(g.to(t.dtype))).sum()
    return (t * g.to(t.dtype)).sum()


# ---------------------------------------------------------------- the parameter matrix

BC_KINDS = ("var", "var_fixed", "fixed_var", "fixed", "var_g2")  # B / C input-dependent or fixed; 2 groups
FACTORS = {
    "wtype": (torch.float32, torch.complex64),
    "itype": (torch.float32, torch.float16, torch.bfloat16),
    "seqlen": (7, 20),
    "return_last_state": (False, True),
    "has_D": (False, True),
    "has_z": (False, True),
    "has_delta_bias": (False, True),
    "delta_softplus": (False, True),
    "bc": BC_KINDS,
}


def _inputs(case, seed, device="cpu", h0=False, channel_last=False, batch=2, dim=4, dstate=8):
    """mamba_ssm's test inputs for a case: dict of leaves (itype activations, float32 / complex64 weights)."""
    g = torch.Generator().manual_seed(seed)
    wtype, itype, length = case["wtype"], case["itype"], case["seqlen"]
    cplx = wtype.is_complex
    kind = case["bc"]
    groups = 2 if kind == "var_g2" else 1
    var_b, var_c = kind in ("var", "var_fixed", "var_g2"), kind in ("var", "fixed_var", "var_g2")

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=g, dtype=dtype)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def act(draw=randn, scale=1.0):
        t = draw(batch, length, dim).transpose(1, 2) if channel_last else draw(batch, dim, length)
        return (scale * t).to(itype)

    def bc(var):
        if not var:
            return randn(dim, dstate, dtype=wtype)
        steps = length * (2 if cplx else 1)
        shape = (batch, dstate, steps) if groups == 1 else (batch, groups, dstate, steps)
        if channel_last:
            return randn(*shape[:-2], steps, dstate).transpose(-1, -2).to(itype)
        return randn(*shape).to(itype)

    leaves = {
        "u": act(), "delta": act(rand, 0.5), "A": -0.5 * rand(dim, dstate, dtype=wtype), "B": bc(var_b), "C": bc(var_c),
        "D": randn(dim) if case["has_D"] else None, "z": act() if case["has_z"] else None,
        "delta_bias": 0.5 * rand(dim) if case["has_delta_bias"] else None,
        "h0": randn(batch, dim, dstate, dtype=wtype) if h0 else None,
    }
    return {k: None if v is None else v.to(device).requires_grad_(True) for k, v in leaves.items()}


def _oracle_leaves(leaves):
    wide = {torch.complex64: torch.complex128}
    return {k: None if v is None else v.detach().cpu().to(wide.get(v.dtype, torch.float64)).requires_grad_(True)
            for k, v in leaves.items()}


ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _check_case(case, run, leaves, seed, oracle=_oracle):
    """Run ``run(leaves) -> (y, last_state or None)`` and ``oracle`` (signature of ``_oracle``) on the same inputs
    in float64; compare y, the last state and the gradients of a random function of both with mamba_ssm's
    tolerances."""
    ref_leaves = _oracle_leaves(leaves)
    y, state = run(leaves)
    y_ref, state_ref = oracle(*[ref_leaves[k] for k in ORDER], case["delta_softplus"], ref_leaves["h0"])
    y_ref_rounded = y_ref.to(case["itype"]).to(torch.float64)  # mamba_ssm compares with the reference in itype
    rtol, atol, rtolw, atolw = _tolerances(case["itype"], case["has_z"])
    assert y.dtype == case["itype"] and y.shape == y_ref.shape
    _assert_close("out", y, y_ref_rounded, rtol, atol)
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(y_ref.shape, generator=g).to(case["itype"]).double()  # representable in itype, as mamba_ssm's
    loss, loss_ref = _dot(y, gy.to(y.device)), _dot(y_ref, gy)
    if case["return_last_state"]:
        assert state.dtype == (torch.complex64 if case["wtype"].is_complex else torch.float32)
        _assert_close("last_state", state, state_ref, rtol, atol)
        gs = torch.randn(state_ref.shape, generator=g, dtype=state_ref.dtype)
        loss, loss_ref = loss + _dot(state, gs.to(state.device)), loss_ref + _dot(state_ref, gs)
    names = [k for k in leaves if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    grads_ref = torch.autograd.grad(loss_ref, [ref_leaves[k] for k in names])
    bounds = {
        "u": (rtol * 2, atol * 2), "delta": (rtol * 5, atol * 10), "A": (rtolw, atolw * 5),
        "B": (rtol, atol) if leaves["B"].dim() > 2 else (rtolw, atolw),
        "C": (rtol, atol) if leaves["C"].dim() > 2 else (rtolw, atolw),
        "D": (rtolw, atolw), "z": (rtolw, atolw), "delta_bias": (rtolw, atolw), "h0": (rtolw, atolw),
    }
    for name, gr, gr_ref in zip(names, grads, grads_ref):
        assert gr.dtype == leaves[name].dtype and gr.shape == leaves[name].shape, name
        # activation gradients are rounded to itype, as mamba_ssm's are
        gr_ref = gr_ref.to(gr.dtype).to(gr_ref.dtype) if name in ("u", "delta", "z") else gr_ref
        _assert_close(f"d{name}", gr, gr_ref, *bounds[name])


def _case_id(case):
    return "-".join(
        str(v).replace("torch.", "") if k in ("wtype", "itype", "bc", "seqlen") else (k if v else f"no_{k}")
        for k, v in case.items()
    )


MATRIX = [dict(zip(FACTORS, values)) for values in itertools.product(*FACTORS.values())]


@pytest.mark.parametrize("case", MATRIX, ids=[_case_id(c) for c in MATRIX])
def test_scan_matrix_cpu(case, monkeypatch):
    """Every combination through compat.selective_scan_fn on the PyTorch backend (CPU tensors)."""
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    seed = MATRIX.index(case)
    leaves = _inputs(case, seed)

    def run(lv):
        out = compat.selective_scan_fn(*[lv[k] for k in ORDER], delta_softplus=case["delta_softplus"],
                                       return_last_state=case["return_last_state"])
        return out if case["return_last_state"] else (out, None)

    _check_case(case, run, leaves, seed)
    with torch.no_grad():  # the gradient-free short call takes the loop twin
        y_loop = compat.selective_scan_fn(*[leaves[k] for k in ORDER], delta_softplus=case["delta_softplus"])
        y_chunked = run(leaves)[0]
    _assert_close("out (loop twin)", y_loop, y_chunked.double(), 1e-2 if case["itype"] != torch.float32 else 1e-5,
                  1e-2 if case["itype"] != torch.float32 else 1e-5)


def _pairwise(factors: dict) -> list[dict]:
    """A small list of cases in which every pair of values of any two factors occurs (greedy, deterministic)."""
    names = list(factors)
    todo = {((i, a), (j, b)) for i, j in itertools.combinations(range(len(names)), 2)
            for a in range(len(factors[names[i]])) for b in range(len(factors[names[j]]))}
    rng = random.Random(0)
    rows = []
    while todo:
        (i, a), (j, b) = min(todo)
        best, best_score = None, -1
        for _ in range(200):
            row = [rng.randrange(len(factors[n])) for n in names]
            row[i], row[j] = a, b
            score = sum(((p, row[p]), (q, row[q])) in todo for p, q in itertools.combinations(range(len(names)), 2))
            if score > best_score:
                best, best_score = row, score
        todo -= {((p, best[p]), (q, best[q])) for p, q in itertools.combinations(range(len(names)), 2)}
        rows.append({n: factors[n][v] for n, v in zip(names, best)})
    return rows


TRITON_FACTORS = {**FACTORS, "h0": (False, True), "channel_last": (False, True)}
PAIRWISE = _pairwise(TRITON_FACTORS)


@pytest.mark.skipif(not TRITON_OK, reason="no CUDA and TRITON_INTERPRET was set to something other than 1")
@pytest.mark.parametrize("case", PAIRWISE, ids=[_case_id(c) for c in PAIRWISE])
def test_scan_matrix_triton(case, monkeypatch):
    """Pairwise-covering cases on the Triton kernels (interpreted on CPU), initial state and layouts included."""
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    seed = 10_000 + PAIRWISE.index(case)
    leaves = _inputs(case, seed, DEVICE, h0=case["h0"], channel_last=case["channel_last"])

    def run(lv):
        y, state = selective_scan(*[lv[k] for k in ORDER], case["delta_softplus"], initial_state=lv["h0"],
                                  return_final_state=True)
        return y, state

    _check_case(case, run, leaves, seed)


def test_pairwise_cases_cover_every_pair():
    names = list(TRITON_FACTORS)
    for p, q in itertools.combinations(names, 2):
        seen = {(c[p], c[q]) for c in PAIRWISE}
        assert seen == set(itertools.product(TRITON_FACTORS[p], TRITON_FACTORS[q])), (p, q)
    assert len(PAIRWISE) < 40


@pytest.mark.skipif(not TRITON_OK, reason="no CUDA and TRITON_INTERPRET was set to something other than 1")
def test_general_kernel_several_checkpoint_intervals(monkeypatch):
    """Lengths over several recomputation intervals of the general backward (and a partial last one), channels
    over several programs (input-dependent dB summed atomically)."""
    from audiomamba.kernels import mamba1_scan_general

    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    monkeypatch.setattr(mamba1_scan_general, "_CK", 4)
    case = dict(wtype=torch.complex64, itype=torch.float32, seqlen=11, return_last_state=True, has_D=True,
                has_z=True, has_delta_bias=True, delta_softplus=True, bc="var_fixed")
    leaves = _inputs(case, 5, DEVICE, h0=True, batch=1, dim=6)  # two channel blocks, the second one partial
    _check_case(case, lambda lv: selective_scan(*[lv[k] for k in ORDER], True, initial_state=lv["h0"],
                                                return_final_state=True), leaves, 5)


# ---------------------------------------------------------------- argument errors


def test_scan_errors_name_the_argument():
    u = torch.randn(2, 4, 6)
    A = -torch.rand(4, 3, dtype=torch.complex64)
    with pytest.raises(ValueError, match="B: with a complex A"):
        compat.selective_scan_fn(u, u, A, torch.randn(2, 3, 6), torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="B, C: input-dependent B and C need the same number of groups"):
        compat.selective_scan_fn(u, u, A.real.contiguous(), torch.randn(2, 2, 3, 6), torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="initial_state: expected dtype"):
        selective_scan(u, u, A, torch.randn(4, 3, dtype=torch.complex64), torch.randn(2, 3, 12),
                       initial_state=torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="B: expected dtype"):
        compat.selective_scan_fn(u, u, A.real.contiguous(), torch.randn(4, 3, dtype=torch.complex64),
                                 torch.randn(2, 3, 6))
    with pytest.raises(NotImplementedError, match="cu_seqlens"):
        compat.selective_scan_fn(u, u, A.real.contiguous(), torch.randn(2, 3, 6), torch.randn(2, 3, 6),
                                 cu_seqlens=torch.tensor([0, 3, 6]))


# ---------------------------------------------------------------- selective_state_update


def _state_step(state, x, dt, A, B, C, D, z, dt_bias, softplus, groups_axis_heads):
    """One step of mamba_ssm's selective_state_update, written out (float64); returns (out, new state)."""
    d = dt + (dt_bias if dt_bias is not None else 0.0)
    d = F.softplus(d) if softplus else d
    if groups_axis_heads:  # (B, H, P, N) with B, C (B, G, N)
        heads = state.shape[1]
        Bh = B.repeat_interleave(heads // B.shape[1], dim=1)[:, :, None, :]
        Ch = C.repeat_interleave(heads // C.shape[1], dim=1)[:, :, None, :]
    else:  # (B, E, N) with B, C (B, N)
        Bh, Ch = B[:, None, :], C[:, None, :]
    new = torch.exp(d[..., None] * A) * state + (d * x)[..., None] * Bh
    out = (new * Ch).sum(-1)
    if D is not None:
        out = out + D * x
    if z is not None:
        out = out * F.silu(z)
    return out, new


@pytest.mark.parametrize("multi_head", [False, True])
@pytest.mark.parametrize("options", [dict(), dict(D=True, z=True, softplus=True), dict(bias=True, softplus=True),
                                     dict(D=True, bias=True)])
def test_selective_state_update(multi_head, options):
    g = torch.Generator().manual_seed(3)
    batch, n = 3, 5
    lead = (4, 2) if multi_head else (6,)  # (H, P) or (E,)
    state = torch.randn(batch, *lead, n, generator=g)
    x, dt, z = (torch.randn(batch, *lead, generator=g) for _ in range(3))
    A = -torch.rand(*lead, n, generator=g)
    bc_shape = (batch, 2, n) if multi_head else (batch, n)
    B, C = torch.randn(*bc_shape, generator=g), torch.randn(*bc_shape, generator=g)
    D = torch.randn(*lead, generator=g) if options.get("D") else None
    dt_bias = torch.randn(*lead, generator=g) if options.get("bias") else None
    z = z if options.get("z") else None
    softplus = options.get("softplus", False)
    want, want_state = _state_step(state.double(), x.double(), dt.double(), A.double(), B.double(), C.double(),
                                   None if D is None else D.double(), None if z is None else z.double(),
                                   None if dt_bias is None else dt_bias.double(), softplus, multi_head)
    out = compat.selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=softplus)
    assert out.shape == x.shape
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(state.double(), want_state, rtol=1e-5, atol=1e-5)  # updated in place


def test_selective_state_update_steps_equal_the_scan():
    """L calls of the in-place update (dt_bias None) give the scan's outputs and final state."""
    g = torch.Generator().manual_seed(4)
    batch, dim, n, length = 2, 6, 4, 9
    u, delta, z = (torch.randn(batch, dim, length, generator=g) for _ in range(3))
    A = -torch.rand(dim, n, generator=g)
    B, C = torch.randn(batch, n, length, generator=g), torch.randn(batch, n, length, generator=g)
    D = torch.randn(dim, generator=g)
    y, h = compat.selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True, return_last_state=True)
    state = torch.zeros(batch, dim, n)
    outs = [compat.selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                          dt_softplus=True) for t in range(length)]
    assert torch.allclose(torch.stack(outs, -1), y, rtol=1e-5, atol=1e-5)
    assert torch.allclose(state, h, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- causal conv1d


def _conv(x, weight, bias, init, silu):
    """Direct causal depthwise conv over [init, x] (float64)."""
    width = weight.shape[1]
    xp = torch.cat([init if init is not None else x.new_zeros(*x.shape[:2], width - 1), x], -1)
    y = F.conv1d(xp, weight[:, None, :], bias, groups=x.shape[1])
    return (F.silu(y) if silu else y), xp[..., xp.shape[-1] - (width - 1):]


@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("states", [False, True])
def test_causal_conv1d_fn(activation, states):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    init = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True) if states else None
    want, want_final = _conv(x, weight, bias, init, activation is not None)
    if states:
        out_buf = torch.empty(2, 6, 3, dtype=torch.float64)
        y, final = compat.causal_conv1d_fn(x, weight, bias, initial_states=init, return_final_states=True,
                                           final_states_out=out_buf, activation=activation)
        assert final is out_buf and torch.allclose(final, want_final)
    else:
        y = compat.causal_conv1d_fn(x, weight, bias, activation=activation)
    assert torch.allclose(y, want, rtol=1e-10, atol=1e-10)
    leaves = [t for t in (x, weight, bias, init) if t is not None]
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((y * cot).sum(), leaves), torch.autograd.grad((want * cot).sum(), leaves)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("keep", [3, 5])
def test_causal_conv1d_update_steps_equal_one_call(keep):
    """Single steps ((B, E) inputs) and chunks ((B, E, L)) through a conv_state of keep >= W-1 steps."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, 9, generator=g)
    weight, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    prefix = torch.randn(2, 6, keep, generator=g)
    want, _ = _conv(x, weight, bias, prefix[..., keep - 3:], True)
    conv_state = prefix.clone()
    outs = [compat.causal_conv1d_update(x[..., 0], conv_state, weight, bias, activation="silu")]
    outs.append(compat.causal_conv1d_update(x[..., 1:5], conv_state, weight, bias, activation="silu"))
    outs += [compat.causal_conv1d_update(x[..., t], conv_state, weight, bias, "silu") for t in range(5, 9)]
    assert outs[0].shape == (2, 6) and outs[1].shape == (2, 6, 4)
    got = torch.cat([o if o.dim() == 3 else o[..., None] for o in outs], -1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(conv_state, torch.cat([prefix, x], -1)[..., -keep:])


# ---------------------------------------------------------------- mamba_inner_fn


def _inner_unfused(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_w, out_b, A, B, C, D, dt_bias, B_bias, C_bias,
                   rms, eps):
    """mamba_ssm's mamba_inner_ref written out: conv + SiLU, projections, the oracle scan, out_proj."""
    batch, _, length = xz.shape
    rank = dt_proj_w.shape[1]
    cplx = A.is_complex()
    d_state = A.shape[1] * (2 if cplx else 1)
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(F.pad(x, (conv_w.shape[-1] - 1, 0)), conv_w, conv_b, groups=x.shape[1]))
    x_dbl = torch.einsum("bdl,rd->blr", x, x_proj_w)

    def norm(t, w):
        return t if w is None else t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w

    delta = norm(torch.einsum("blr,dr->bld", x_dbl[..., :rank], dt_proj_w), rms[2]).transpose(1, 2)

    def projected(cols, bias, w):
        cols = norm(cols if bias is None else cols + bias, w)  # (b, l, d_state)
        if not cplx:
            return cols.transpose(1, 2)
        return torch.stack([cols[..., 0::2], cols[..., 1::2]], -1).transpose(1, 2).reshape(batch, -1, 2 * length)

    if B is None:
        B = projected(x_dbl[..., rank:rank + d_state], B_bias, rms[0])
    if C is None:
        C = projected(x_dbl[..., -d_state:], C_bias, rms[1])
    y, _ = _oracle(x, delta, A, B, C, D, z, dt_bias, True)
    return torch.einsum("bdl,od->blo", y, out_w) + (0 if out_b is None else out_b)


@pytest.mark.parametrize("complex_a", [False, True])
@pytest.mark.parametrize("var_b, var_c", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("extras", [False, True])
def test_mamba_inner_fn_matches_unfused(complex_a, var_b, var_c, extras, monkeypatch):
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    g = torch.Generator().manual_seed(7)
    batch, dim, length, n, rank, width, out_dim = 2, 6, 9, 3, 2, 4, 5
    d_state = n * (2 if complex_a else 1)
    wtype = torch.complex128 if complex_a else torch.float64

    def leaf(*shape, scale=1.0, dtype=torch.float64):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_(True)

    p = {
        "xz": leaf(batch, 2 * dim, length), "conv_w": leaf(dim, 1, width, scale=0.5), "conv_b": leaf(dim),
        "x_proj_w": leaf(rank + (var_b + var_c) * d_state, dim, scale=0.5), "dt_proj_w": leaf(dim, rank, scale=0.5),
        "out_w": leaf(out_dim, dim), "out_b": leaf(out_dim) if extras else None,
        "A": (-0.5 * torch.rand(dim, n, generator=g, dtype=wtype)).requires_grad_(True),
        "B": None if var_b else leaf(dim, n, dtype=wtype), "C": None if var_c else leaf(dim, n, dtype=wtype),
        "D": leaf(dim), "dt_bias": leaf(dim, scale=0.3),
        "B_bias": leaf(d_state) if extras and var_b else None, "C_bias": leaf(d_state) if extras and var_c else None,
    }
    rms = (leaf(d_state) if extras and var_b else None, leaf(d_state) if extras and var_c else None,
           leaf(dim) if extras else None)
    out = compat.mamba_inner_fn(p["xz"], p["conv_w"], p["conv_b"], p["x_proj_w"], p["dt_proj_w"], p["out_w"],
                                p["out_b"], p["A"], p["B"], p["C"], p["D"], delta_bias=p["dt_bias"],
                                B_proj_bias=p["B_bias"], C_proj_bias=p["C_bias"], delta_softplus=True,
                                b_rms_weight=rms[0], c_rms_weight=rms[1], dt_rms_weight=rms[2], b_c_dt_rms_eps=1e-5)
    want = _inner_unfused(*p.values(), rms, 1e-5)
    assert out.shape == (batch, length, out_dim)
    assert torch.allclose(out, want, rtol=1e-8, atol=1e-8), (out - want).abs().max()
    leaves = {k: v for k, v in p.items() if v is not None}
    leaves.update({f"rms{i}": w for i, w in enumerate(rms) if w is not None})
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * cot).sum(), list(leaves.values()))
    grads_want = torch.autograd.grad((want * cot).sum(), list(leaves.values()))
    for name, a, b in zip(leaves, grads, grads_want):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-7), name


@pytest.mark.skipif(not TRITON_OK, reason="no CUDA and TRITON_INTERPRET was set to something other than 1")
@pytest.mark.parametrize("complex_a", [True, False])
def test_mamba_inner_fn_triton(monkeypatch, complex_a):
    """The Triton backend agrees with the PyTorch one: a complex-A mixer (conv kernel, general scan) and a real
    one (the low-memory mamba1_inner op, recomputing in its backward)."""
    g = torch.Generator().manual_seed(8)
    batch, dim, length, n, rank = 1, 4, 6, 2, 2
    A = -0.5 * torch.rand(dim, n, generator=g, dtype=torch.complex64 if complex_a else torch.float32)
    args = [torch.randn(batch, 2 * dim, length, generator=g), 0.5 * torch.randn(dim, 1, 3, generator=g),
            torch.randn(dim, generator=g), 0.5 * torch.randn(rank + (4 if complex_a else 2) * n, dim, generator=g),
            0.5 * torch.randn(dim, rank, generator=g), torch.randn(3, dim, generator=g), None,
            A, None, None, torch.randn(dim, generator=g), torch.rand(dim, generator=g)]
    leaves = [a.to(DEVICE).requires_grad_(True) if a is not None else None for a in args]
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    out = compat.mamba_inner_fn(*leaves)
    grads = torch.autograd.grad(out.sum(), [t for t in leaves if t is not None])
    ref_leaves = [a.clone().requires_grad_(True) if a is not None else None for a in args]
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "reference")
    want = compat.mamba_inner_fn(*ref_leaves)
    grads_want = torch.autograd.grad(want.sum(), [t for t in ref_leaves if t is not None])
    assert torch.allclose(out.cpu(), want, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads, grads_want):
        assert torch.allclose(a.cpu(), b, rtol=1e-4, atol=1e-4)


def test_bench_general_inputs():
    """The kernel bench's inputs for the general paths have mamba_ssm's layouts and run through selective_scan_fn
    (here on the PyTorch backend) to the oracle's output."""
    from audiomamba.bench.kernels import GENERAL_KINDS, general_scan_inputs

    for label, complex_a, variable_bc in GENERAL_KINDS:
        i = general_scan_inputs(2, 4, 6, 3, complex_a, variable_bc, torch.float32, device="cpu")
        assert i["A"].is_complex() == complex_a, label
        assert i["B"].shape == ((2, 3, 6 * (1 + complex_a)) if variable_bc else (4, 3)), label
        y = compat.selective_scan_fn(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"], i["delta_bias"],
                                     delta_softplus=True)
        leaves = _oracle_leaves({k: i[k] for k in ORDER})
        want, _ = _oracle(*[leaves[k] for k in ORDER], True)
        _assert_close(label, y, want, 1e-5, 1e-5)


_COMPILE_SM90 = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from audiomamba.kernels import mamba1_scan_general as gen

for complex_a, var_b, var_c in ((True, True, True), (False, False, False)):
    be, npad, warps = gen._config(8, 1536, 1, 16)
    meta = dict(N=16, NP=npad, BE=be, CK=gen._CK, NC=2 if complex_a else 1, CPLX=complex_a, VAR_B=var_b,
                VAR_C=var_c, B_IM=complex_a, C_IM=complex_a)
    half = ("u_ptr", "dt_ptr", "z_ptr", "y_ptr", "dy_ptr", "du_ptr", "ddt_ptr", "dz_ptr") + \\
        (("B_ptr",) if var_b else ()) + (("C_ptr",) if var_c else ())
    for kernel in (gen._gen_fwd_kernel, gen._gen_bwd_kernel):
        signature = {a: "constexpr" if a in meta else ("*bf16" if a in half else "*fp32") if a.endswith("_ptr")
                     else "i32" for a in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=meta), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps})
        assert compiled.asm["cubin"], kernel.__name__
print("compiled")
"""


def test_general_kernels_compile_for_sm90():
    """The general kernels (complex A with input-dependent B / C; real A with fixed B / C) compile to sm_90
    binaries: Triton's code generator and ptxas, no GPU needed, in a process without the interpreter. The
    interpreter runs the kernels' Python; this catches what only the compiler rejects."""
    pytest.importorskip("triton.backends.nvidia")
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


@pytest.mark.skipif(not TRITON_OK, reason="no CUDA and TRITON_INTERPRET was set to something other than 1")
def test_general_kernel_complex_tensors_and_conjugate_views(monkeypatch):
    """Complex B / C given as complex (B, N, L) tensors, lazily conjugated inputs (A.conj(), ...) and a loss that
    conjugates the final state: the Triton path matches the oracle (values and gradients)."""
    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")
    g = torch.Generator().manual_seed(9)
    batch, dim, length, n = 1, 4, 6, 3
    leaves = {"u": torch.randn(batch, dim, length, generator=g), "delta": torch.rand(batch, dim, length, generator=g),
              "A": -0.5 * torch.rand(dim, n, generator=g, dtype=torch.complex64),
              "B": torch.randn(batch, n, length, generator=g, dtype=torch.complex64),
              "C": torch.randn(dim, n, generator=g, dtype=torch.complex64)}
    ours = {k: v.to(DEVICE).requires_grad_(True) for k, v in leaves.items()}
    ref = {k: v.to(torch.complex128 if v.is_complex() else torch.float64).requires_grad_(True)
           for k, v in leaves.items()}
    results = []
    for lv, fn in ((ours, selective_scan), (ref, _oracle)):
        args = [lv["u"], lv["delta"], lv["A"].conj(), lv["B"].conj(), lv["C"].conj()]
        y, h = fn(*args, initial_state=None, return_final_state=True) if fn is selective_scan else fn(*args)
        loss = (h.conj() * h).real.sum() + (y * torch.arange(length, device=y.device)).sum()
        results.append([y, h, *torch.autograd.grad(loss, list(lv.values()))])
    for name, a, b in zip(["y", "h", *leaves], *results):
        _assert_close(name, a, b, 1e-4, 1e-5)
