"""Pooling layers, residual blocks and the multi-resolution backbone: chunked / stepped == full, causality."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import assert_same_grads, random_chunks, rel_err

from audiomamba.backbone import MultiResolutionBackbone
from audiomamba.config import BackboneConfig
from audiomamba.layers.block import ResidualBlock
from audiomamba.layers.pool import DownPool, UpPool
from audiomamba.state import cat_states, flatten_state, select_batch

torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they bring on a shared CPU

TOL = 1e-5  # float32, relative
TINY = {"mamba1": {"d_state": 4}, "mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 8}, "s4d": {"d_state": 8}}


def tiny_backbone(mixer, pool=(2, 3), n_blocks=(1,), mlp_expand=0, bidirectional=False, d_model=8):
    cfg = BackboneConfig(d_model=d_model, pool=list(pool), n_blocks=list(n_blocks), mixer=list(mixer),
                         mixer_options=TINY, mlp_expand=mlp_expand, bidirectional=bidirectional)
    return MultiResolutionBackbone(cfg)


def run_chunks(module, x, sizes):
    ys, state, start = [], None, 0
    for n in sizes:
        y, state = module(x[:, start : start + n], state)
        ys.append(y)
        start += n
    return torch.cat(ys, dim=1), state


def assert_states_close(a, b):
    fa, fb = flatten_state(a), flatten_state(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if fa[k].dtype == torch.long:
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert rel_err(fa[k], fb[k]) < TOL, k


# ---------------------------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("pool", [2, 3, 4])
def test_pool_pair_chunks_equal_full(pool):
    torch.manual_seed(pool)
    rng = random.Random(pool)
    down, up = DownPool(5, 7, pool), UpPool(7, 5, pool)
    length = 6 * pool + 1  # not a multiple of the pooling factor
    x = torch.randn(2, length, 5)

    def pair(x, ds=None, us=None):
        coarse, ds = down(x, ds)
        y, us = up(coarse * 2.0 + 1.0, x.shape[1], us)  # any per-frame map stands in for the inner stage
        return y, (ds, us)

    full, _ = pair(x)
    assert full.shape == x.shape
    ys, ds, us, start = [], None, None, 0
    for n in random_chunks(length, rng, max_chunk=2 * pool + 1):
        y, (ds, us) = pair(x[:, start : start + n], ds, us)
        ys.append(y)
        start += n
    assert rel_err(torch.cat(ys, 1), full) < TOL
    # stepping: `complete` is known from the time index
    ds, us = down.init_state(2), up.init_state(2)
    steps = []
    for t in range(length):
        coarse, ds = down.step(x[:, t : t + 1], ds, complete=(t + 1) % pool == 0)
        y, us = up.step(None if coarse is None else coarse * 2.0 + 1.0, us)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < TOL


def test_up_pool_is_shifted_by_one_coarse_step():
    torch.manual_seed(0)
    pool = 4
    down, up = DownPool(3, 6, pool), UpPool(6, 3, pool)
    x = torch.randn(1, 5 * pool, 3, requires_grad=True)
    y, _ = up(down(x)[0], x.shape[1])
    assert torch.equal(y[:, :pool], torch.zeros_like(y[:, :pool]))  # frame 0 reads zeros
    for t in (pool, 2 * pool + 1, 5 * pool - 1):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        frame_start = (t // pool) * pool
        assert grad[0, frame_start:].abs().max() == 0  # nothing from the current frame on
        assert grad[0, frame_start - pool : frame_start].abs().max() > 0  # the previous frame is used


def test_pool_rows_must_share_a_phase():
    down = DownPool(4, 4, 2)
    _, s1 = down(torch.randn(1, 1, 4))
    _, s2 = down(torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="share one phase"):
        down(torch.randn(2, 1, 4), cat_states([s1, s2]))


def test_up_pool_rejects_wrong_frame_count():
    up = UpPool(4, 4, 2)
    with pytest.raises(ValueError, match="expected 2 frames"):
        up(torch.randn(1, 1, 4), 4)


# ---------------------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2", "s4d"])
def test_block_chunks_equal_full(mixer):
    torch.manual_seed(1)
    block = ResidualBlock(8, mixer, TINY[mixer], mlp_expand=2, norm="rmsnorm")
    x = torch.randn(2, 13, 8)
    full, state = block(x)
    chunked, cstate = run_chunks(block, x, random_chunks(13, random.Random(1)))
    assert rel_err(chunked, full) < TOL
    assert_states_close(cstate, state)


def test_bidirectional_block_sees_the_future_and_has_no_state():
    torch.manual_seed(2)
    block = ResidualBlock(8, "mamba1", TINY["mamba1"], bidirectional=True)
    x = torch.randn(1, 9, 8, requires_grad=True)
    y, state = block(x)
    assert state is None
    (grad,) = torch.autograd.grad((y[0, 2] * torch.randn(8)).sum(), x)
    assert grad[0, 3:].abs().max() > 0
    with pytest.raises(ValueError, match="no streaming state"):
        block.init_state(1)
    with pytest.raises(ValueError, match="takes no state"):
        block(x, {"anything": x})


def test_unknown_mixer_option_is_named():
    with pytest.raises(ValueError, match="d_sate"):
        ResidualBlock(8, "mamba1", {"d_sate": 4})


# ---------------------------------------------------------------------------------------------- backbone

MIXER_SETS = [["mamba1"], ["mamba2"], ["s4d"], ["s4d", "mamba1", "mamba2"]]


@pytest.mark.parametrize("mixers", MIXER_SETS, ids=["mamba1", "mamba2", "s4d", "mixed"])
def test_backbone_chunks_and_steps_equal_full(mixers):
    torch.manual_seed(3)
    rng = random.Random(3)
    bb = tiny_backbone(mixers, pool=(2, 3), mlp_expand=1)
    length = 41  # not a multiple of 2, 3 or 6
    x = torch.randn(2, length, 8)
    full, state = bb(x)
    for trial in range(2):
        chunked, cstate = run_chunks(bb, x, random_chunks(length, rng, max_chunk=13))
        assert rel_err(chunked, full) < TOL, trial
        assert_states_close(cstate, state)
    st, ys = bb.init_state(2), []
    for t in range(length):
        y, st = bb.step(x[:, t : t + 1], st, bb.step_depth(t))
        ys.append(y)
    assert rel_err(torch.cat(ys, 1), full) < TOL
    assert_states_close(st, state)


def test_step_keeps_the_tensors_of_stages_that_do_not_run():
    torch.manual_seed(4)
    bb = tiny_backbone(["mamba1"], pool=(2, 2))
    st = bb.init_state(1)
    _, new = bb.step(torch.randn(1, 1, 8), st, depth=0)
    assert new.blocks[1][0] is st.blocks[1][0] and new.blocks[2][0] is st.blocks[2][0]
    assert new.blocks[0][0] is not st.blocks[0][0]
    _, new = bb.step(torch.randn(1, 1, 8), st, depth=2)
    assert new.blocks[2][0] is not st.blocks[2][0]
    assert [bb.step_depth(t) for t in range(8)] == [0, 1, 0, 2, 0, 1, 0, 2]


def test_backbone_is_causal_through_gradients():
    torch.manual_seed(5)
    bb = tiny_backbone(["mamba1", "s4d", "mamba2"], pool=(2, 2), n_blocks=(1, 1, 1))
    x = torch.randn(1, 24, 8, requires_grad=True)
    y, _ = bb(x)
    w = torch.randn(8)  # a random readout (the sum of a LayerNorm output has no gradient)
    for t in (0, 3, 4, 13, 22):
        (grad,) = torch.autograd.grad((y[0, t] * w).sum(), x, retain_graph=True)
        past = grad[0, : t + 1].abs().max()
        assert past > 0
        # zero up to float rounding of the chunked reference scan (~1e-12 relative seen)
        assert grad[0, t + 1 :].abs().max() <= 1e-9 * past, t
    # the inner stages reach back: output 13 depends on inputs of earlier coarse frames
    (grad,) = torch.autograd.grad((y[0, 13] * w).sum(), x, retain_graph=True)
    assert grad[0, :4].abs().max() > 0


def test_batched_state_rows_are_independent():
    torch.manual_seed(6)
    bb = tiny_backbone(["mamba1"], pool=(2, 2))
    x = torch.randn(3, 10, 8)
    _, state = bb(x[:, :7])
    y_all, _ = bb(x[:, 7:], state)
    y_one, _ = bb(x[1:2, 7:], select_batch(state, 1))
    assert rel_err(y_one, y_all[1:2]) < TOL
    y_cat, _ = bb(x[:, 7:], cat_states([select_batch(state, i) for i in range(3)]))
    assert torch.equal(y_cat, y_all)


def test_bidirectional_backbone():
    torch.manual_seed(7)
    bb = tiny_backbone(["mamba1"], pool=(2, 2), bidirectional=True)
    x = torch.randn(2, 11, 8, requires_grad=True)  # padded to 12 inside
    y, state = bb(x)
    assert y.shape == x.shape and state is None
    (grad,) = torch.autograd.grad((y[0, 1] * torch.randn(8)).sum(), x)
    assert grad[0, 5:].abs().max() > 0  # sees the future
    with pytest.raises(ValueError, match="no streaming state"):
        bb.init_state(1)


def test_widths_and_config_checks():
    bb = tiny_backbone(["mamba1"], pool=(2, 4), n_blocks=(0, 1, 2))
    assert bb.widths == [8, 16, 32] and bb.pool_product == 8
    assert [len(s) for s in bb.stages] == [0, 1, 2]
    with pytest.raises(ValueError, match="n_blocks needs 1 or 3"):
        BackboneConfig(pool=[2, 2], n_blocks=[1, 2])
    with pytest.raises(ValueError, match="unknown mixer 'mamba3'"):
        BackboneConfig(mixer=["mamba3"])
    with pytest.raises(ValueError, match="pool factors must be >= 2"):
        BackboneConfig(pool=[1])


# ---------------------------------------------------------------------------------------------- stateless path


@pytest.mark.parametrize("mixers", MIXER_SETS, ids=["mamba1", "mamba2", "s4d", "mixed"])
def test_stateless_backbone_equals_call_from_init_state(mixers):
    """return_state=False: the output and every gradient of a call from init_state, None for the state; from a
    carried state (pooling phases mid-frame) it continues the stream like a call that returns the state."""
    torch.manual_seed(8)
    bb = tiny_backbone(mixers, pool=(2, 3), mlp_expand=1).train()
    x = torch.randn(2, 70, 8, requires_grad=True)  # 70: not a multiple of 2, 3 or 6
    y_state, state = bb(x, bb.init_state(2))
    y, none = bb(x, return_state=False)
    assert none is None and state is not None
    assert rel_err(y, y_state) < TOL
    assert_same_grads((y_state,), (y,), {"x": x, **dict(bb.named_parameters())}, tol=TOL)
    with torch.no_grad():
        x2 = torch.randn(2, 17, 8)
        y2_state, _ = bb(x2, state)
        y2, none = bb(x2, state, return_state=False)
        assert bb(x2[:, :0], return_state=False)[1] is None
    assert none is None and rel_err(y2, y2_state) < TOL


@pytest.mark.parametrize("causal", [True, False])
def test_training_step_builds_no_state_and_asks_the_kernels_for_none(monkeypatch, causal):
    """The training tasks' forward (LM NLL; classifier loss, causal and bidirectional) builds no start state,
    reads no pooling phase (no host sync), and every Mamba-1 mixer makes one stateless ``mamba1_inner`` call (no
    conv or scan call of its own, which would take or return states); the loss and its gradients equal those of
    the same model run from init_state."""
    import inspect

    import torch.nn.functional as F

    from audiomamba import kernels
    from audiomamba.config import load_experiment_config
    from audiomamba.layers import mamba1, pool
    from audiomamba.training.tasks import build_task

    calls, built = [], []

    def spy(fn):
        sig = inspect.signature(fn)

        def wrapped(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            calls.append((fn.__name__, bound.arguments.get("initial_state"), bound.arguments.get("return_final_state")))
            return fn(*args, **kwargs)
        return wrapped

    tiny = ["model.backbone.d_model=8", "model.backbone.pool=[2, 2]", "model.backbone.n_blocks=[1]",
            "model.backbone.mixer=[mamba1]", "model.backbone.mixer_options={mamba1: {d_state: 4}}",
            f"model.backbone.bidirectional={str(not causal).lower()}"]
    torch.manual_seed(9)
    tasks = [build_task(load_experiment_config("quickstart_classifier", tiny)).train()]
    if causal:
        tasks.append(build_task(load_experiment_config("quickstart_lm", tiny)).train())
    for task in tasks:
        audio = torch.rand(2, 90) * 2 - 1
        batch = {"audio": audio, "label": torch.tensor([0, 1])}
        monkeypatch.setattr(mamba1, "selective_scan", spy(kernels.selective_scan))
        monkeypatch.setattr(mamba1, "causal_conv1d", spy(kernels.causal_conv1d))
        monkeypatch.setattr(mamba1, "mamba1_inner", spy(kernels.mamba1_inner))
        monkeypatch.setattr(MultiResolutionBackbone, "init_state", lambda *a, **k: built.append(1))
        monkeypatch.setattr(pool, "_phase_of", lambda *a, **k: built.append(2))
        if task.cfg.task == "lm":
            total, count = task.nll(task.model, batch)
            loss = total / count
        else:
            loss, _ = task._loss_acc(task.model, batch)
        params = dict(task.model.named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        mixers = sum(isinstance(m, mamba1.Mamba1Mixer) for m in task.model.modules())
        assert not built and mixers and calls == [("mamba1_inner", None, None)] * mixers
        calls.clear()
        monkeypatch.undo()
        if not causal:
            continue
        # the same loss and gradients from an explicit zero state
        model = task.model
        x = task.inputs(batch) if task.cfg.task == "classify" else task.sequence(batch)[0]
        out, state = model(x, model.init_state(2))
        assert state is not None
        if task.cfg.task == "lm":
            logits = out[:, :-1].float()
            ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        else:
            ref = F.cross_entropy(out[:, -1].float(), batch["label"])
        assert rel_err(ref, loss) < TOL
        ref_grads = torch.autograd.grad(ref, list(params.values()), allow_unused=True)
        for name, g, r in zip(params, grads, ref_grads):
            assert (g is None) == (r is None), name
            if g is not None:
                assert rel_err(g, r) < 1e-4, name
