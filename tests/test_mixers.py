"""Mixers follow the state contract: chunked / stepped calls equal one call; S4D's FFT path equals its recurrence."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import assert_same_grads, random_chunks, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from audiomamba.layers import MIXERS, S4DMixer
from audiomamba.state import flatten_state, load_state, save_state

TOL = 1e-5
SMALL = {
    "mamba1": dict(d_state=8),
    "mamba2": dict(d_state=8, headdim=8, chunk_size=16),
    "s4d": dict(d_state=16),
}


def make(name, d_model=16, seed=None):
    torch.manual_seed(seed if seed is not None else random.randrange(2**31))
    return MIXERS[name](d_model, **SMALL[name]).eval()


def run_chunks(mixer, x, sizes, state=None):
    ys, start = [], 0
    for n in sizes:
        y, state = mixer(x[:, start:start + n], state)
        ys.append(y)
        start += n
    return torch.cat(ys, 1), state


def assert_states_close(a, b, tol=TOL):
    fa, fb = flatten_state(a), flatten_state(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert rel_err(fa[k], fb[k]) < tol, k


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_chunked_calls_equal_one_call(name):
    mixer = make(name)
    x = torch.randn(2, 150, 16)
    with torch.no_grad():
        y, s = mixer(x)
        yc, sc = run_chunks(mixer, x, random_chunks(150, random.Random()))
    assert y.shape == x.shape
    assert rel_err(yc, y) < TOL
    assert_states_close(sc, s)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_stepping_one_sample_at_a_time_equals_full_call(name):
    mixer = make(name)
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        y, s = mixer(x)
        ys, ss = run_chunks(mixer, x, [1] * 40, mixer.init_state(2))
    assert rel_err(ys, y) < TOL
    assert_states_close(ss, s)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_zero_init_state_equals_no_state_and_gradients_reach_the_state(name):
    mixer = make(name)
    x = torch.randn(2, 20, 16)
    y0, _ = mixer(x)
    state = mixer.init_state(2)
    y1, _ = mixer(x, state)
    assert rel_err(y1, y0) < TOL
    # a nonzero start changes the output, and the loss is differentiable with respect to it
    _, s = mixer(torch.randn(2, 7, 16))
    leaves = {k: v.detach().requires_grad_() for k, v in flatten_state(s).items() if v.is_floating_point()}
    from audiomamba.state import unflatten_state

    y2, _ = mixer(x, unflatten_state(s, {**flatten_state(s), **leaves}))
    grads = torch.autograd.grad(y2.square().sum(), list(leaves.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_causal_through_gradients(name):
    mixer = make(name)
    x = torch.randn(1, 30, 16, requires_grad=True)
    y, _ = mixer(x)
    (g,) = torch.autograd.grad(y[:, 12].sum(), x)
    past = g[:, :13].abs().max()
    assert past > 0
    assert g[:, 13:].abs().max() <= 1e-6 * past  # zero up to rounding (FFT and in-chunk cancellation)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_state_save_restore_is_bit_exact(name, tmp_path):
    mixer = make(name)
    x = torch.randn(3, 25, 16)
    with torch.no_grad():
        _, s = mixer(x[:, :11])
        save_state(s, tmp_path / "s.safetensors")
        s2 = load_state(mixer.init_state(3), tmp_path / "s.safetensors")
        ya, _ = mixer(x[:, 11:], s)
        yb, _ = mixer(x[:, 11:], s2)
    assert torch.equal(ya, yb)


def test_s4d_fft_path_equals_recurrence():
    mixer = S4DMixer(8, d_state=16)
    u = torch.randn(2, 8, 300)
    h0 = torch.randn(2, 8, 8, dtype=torch.cdouble)
    y_fft, h_fft = mixer.ssm(u, h0, "fft")
    y_rec, h_rec = mixer.ssm(u, h0, "recurrent")
    assert rel_err(y_fft, y_rec) < TOL
    assert rel_err(torch.view_as_real(h_fft), torch.view_as_real(h_rec)) < TOL


@pytest.mark.parametrize("d_state", [8, 16])
def test_s4d_matrix_path_equals_recurrence(d_state):
    """Streaming chunks (lengths 1 and up, a carried state) through the matrix path: the recurrence's outputs and
    states, chunk by chunk."""
    torch.manual_seed(random.randrange(2**31))
    mixer = S4DMixer(12, d_state=d_state).eval()
    x = torch.randn(3, 90, 12)
    s_rec = s_mat = None
    start = 0
    with torch.no_grad():
        for n in random_chunks(90, random.Random()):
            y_rec, s_rec = mixer(x[:, start:start + n], s_rec, method="recurrent")
            y_mat, s_mat = mixer(x[:, start:start + n], s_mat, method="matrix")
            start += n
            assert rel_err(y_mat, y_rec) < TOL
            assert rel_err(s_mat.ssm, s_rec.ssm) < TOL
    assert s_mat.ssm.dtype == torch.float64


def test_s4d_auto_takes_the_matrix_path_only_without_gradients():
    mixer = S4DMixer(8, d_state=8).eval()
    x = torch.randn(2, 20, 8)
    with torch.no_grad():
        mixer(x)
    assert list(mixer._operators) == [20]  # cached for this chunk length
    y, _ = mixer(x)  # with gradients: the recurrence (20 < FFT_MIN_LENGTH)
    y.sum().backward()
    assert mixer.log_dt.grad is not None and mixer.C.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="matrix.*no gradients"):
        mixer(x, method="matrix")
    assert not mixer.matrix_fits(2048) and mixer.matrix_fits(64)


def test_s4d_matrix_operators_follow_weight_changes():
    """Operators kept from one call are recomputed after an optimizer step and after load_state_dict."""
    torch.manual_seed(random.randrange(2**31))
    mixer = S4DMixer(8, d_state=8).eval()
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        mixer(x)  # fills the cache
    loss = mixer(x, method="fft")[0].square().mean()
    loss.backward()
    torch.optim.SGD(mixer.parameters(), lr=0.5).step()
    with torch.no_grad():
        assert rel_err(mixer(x)[0], mixer(x, method="recurrent")[0]) < TOL
        other = S4DMixer(8, d_state=8)
        mixer.load_state_dict(other.state_dict())
        assert rel_err(mixer(x)[0], other(x, method="recurrent")[0]) < TOL


def test_wrong_input_shape_names_the_argument():
    for name in MIXERS:
        with pytest.raises(ValueError, match="x: expected"):
            make(name)(torch.randn(2, 10, 15))


def test_mamba1_init_follows_the_paper():
    m = MIXERS["mamba1"](32, d_state=16, dt_min=1e-3, dt_max=0.1)
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    A = -torch.exp(m.A_log)
    assert torch.allclose(A[0], -torch.arange(1, 17, dtype=torch.float32))


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(sorted(MIXERS)), length=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_property_any_length_any_chunking(name, length, seed):
    mixer = make(name, d_model=8, seed=seed)
    x = torch.randn(1, length, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y, s = mixer(x)
        yc, sc = run_chunks(mixer, x, random_chunks(length, random.Random(seed)))
    assert rel_err(yc, y) < TOL
    assert_states_close(sc, s)


def test_mamba1_cached_A_follows_weight_updates():
    """Without autograd A = -exp(A_log) is cached; an in-place update or a loaded state dict must show up."""
    mixer = make("mamba1")
    x = torch.randn(1, 7, 16)
    with torch.no_grad():
        y0, _ = mixer(x)
        mixer.A_log.add_(0.5)  # in place: bumps the version counter
        y1, _ = mixer(x)
    y1_grad, _ = mixer(x)  # autograd: A recomputed from A_log
    assert rel_err(y1, y1_grad) < TOL and rel_err(y1, y0) > 1e-4
    other = make("mamba1")
    with torch.inference_mode():
        mixer.load_state_dict(other.state_dict())
        y2, _ = mixer(x)
        y2_other, _ = other(x)
    assert rel_err(y2, y2_other) < TOL


def test_mamba1_short_chunk_path_equals_autograd_path(monkeypatch):
    """Streaming's path (no grad mode, chunks of 1..64 steps: Mamba1Mixer._forward_short) against the autograd
    path (chunked scan, library conv) over the same chunks, from a nonzero state, outputs and states."""
    from audiomamba.layers import Mamba1Mixer

    taken = []
    original = Mamba1Mixer._forward_short
    monkeypatch.setattr(Mamba1Mixer, "_forward_short", lambda self, x, s: taken.append(1) or original(self, x, s))
    mixer = make("mamba1")
    x = torch.randn(3, 160, 16)
    sizes = random_chunks(150, random.Random(), max_chunk=64)
    _, state = mixer(x[:, :10])  # autograd path: a nonzero start state
    y_ref, s_ref = run_chunks(mixer, x[:, 10:], sizes, state)
    assert not taken
    with torch.inference_mode():
        y, s = run_chunks(mixer, x[:, 10:], sizes, state)
    assert len(taken) == len(sizes)
    assert rel_err(y, y_ref) < TOL
    assert_states_close(s, s_ref)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_stateless_call_equals_call_from_init_state_outputs_and_gradients(name):
    """return_state=False (training): the output and every gradient (input, parameters) of a call from
    init_state, and None in place of the state; from a carried state it still continues the stream."""
    mixer = make(name).train()
    x = torch.randn(2, 90, 16, requires_grad=True)  # longer than the short-chunk path's limit
    y_state, s = mixer(x, mixer.init_state(2))
    y, none = mixer(x, return_state=False)
    assert none is None and s is not None
    assert rel_err(y, y_state) < TOL
    leaves = {"x": x, **dict(mixer.named_parameters())}
    assert_same_grads((y_state,), (y,), leaves, tol=TOL)
    with torch.no_grad():
        x2 = torch.randn(2, 33, 16)
        y2_state, _ = mixer(x2, s)
        y2, none = mixer(x2, s, return_state=False)
    assert none is None and rel_err(y2, y2_state) < TOL


def test_mamba1_stateless_call_asks_the_kernels_for_no_states(monkeypatch):
    """Without a state and with return_state=False, the mixer makes one ``mamba1_inner`` call (conv to gate, which
    takes no states and returns none: no zero start state, no final-state outputs in the graph); with a state the
    conv and the scan get it and return the final one."""
    import inspect

    from audiomamba import kernels
    from audiomamba.layers import mamba1

    calls = []

    def spy(name, fn):
        sig = inspect.signature(fn)

        def wrapped(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            calls.append((name, bound.arguments.get("initial_state"), bound.arguments.get("return_final_state")))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(mamba1, "selective_scan", spy("scan", kernels.selective_scan))
    monkeypatch.setattr(mamba1, "causal_conv1d", spy("conv", kernels.causal_conv1d))
    monkeypatch.setattr(mamba1, "mamba1_inner", spy("inner", kernels.mamba1_inner))
    mixer = make("mamba1").train()
    x = torch.randn(2, 80, 16, requires_grad=True)
    y, _ = mixer(x, return_state=False)
    y.square().sum().backward()
    assert calls == [("inner", None, None)]
    calls.clear()
    _, state = mixer(x, mixer.init_state(2))
    assert [n for n, _, _ in calls] == ["conv", "scan"] and state is not None
    assert all(s is not None and f is True for _, s, f in calls)


def test_mamba1_training_path_keeps_no_intermediates_on_the_triton_backend(monkeypatch):
    """Under autograd on the Triton backend, the stateless mixer keeps for its backward neither the conv output,
    x_proj's output nor Δ (mamba1_inner recomputes them): the tensors it saves are smaller than those of the same
    Triton ops composed under autograd by at least those three; the gradients are the same."""
    import os

    from audiomamba.kernels.mamba1_recompute import mamba1_inner_composed

    from audiomamba.layers import mamba1

    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("the Triton backend needs CUDA or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mixer = make("mamba1", d_model=16).train().to(device)
    batch, length = 2, 40
    x = torch.randn(batch, length, 16, device=device)

    monkeypatch.setenv("AUDIOMAMBA_BACKEND", "triton")

    def saved_bytes_and_grads(op):
        monkeypatch.setattr(mamba1, "mamba1_inner", op)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        xi = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, _ = mixer(xi, return_state=False)
        grads = torch.autograd.grad(y.square().sum(), [xi, *mixer.parameters()])
        return sum(storages.values()), grads

    kept, grads = saved_bytes_and_grads(mamba1.mamba1_inner)
    composed, grads_ref = saved_bytes_and_grads(mamba1_inner_composed)
    e, n, rank = mixer.d_inner, mixer.d_state, mixer.dt_rank
    intermediates = 4 * batch * length * (e + (rank + 2 * n) + e)  # conv output, x_proj output, Δ (float32)
    assert kept <= composed - intermediates, (kept, composed, intermediates)
    for a, b in zip(grads, grads_ref):
        assert rel_err(a, b) < 1e-4
