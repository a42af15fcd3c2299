"""The compiled stream (``model.stream(B, compile=True)``, torch.compile with inductor's C++ backend) against the
eager stream: chunk lengths that are multiples of the pooling product and ones that are not, bit-exact
save/restore and reset on the compiled path, clear errors where it is not supported.

A compile takes tens of seconds on a small CPU with a cold inductor cache, so the always-on test uses one tiny
model and few distinct chunk patterns (each pattern is one compile); the ragged-length and LM tests run only with
AUDIOMAMBA_SLOW_TESTS=1.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import rel_err, tiny_model

from audiomamba.layers import S4DMixer

torch.set_num_threads(1)

TOL = 1e-5
SLOW = pytest.mark.skipif(not os.environ.get("AUDIOMAMBA_SLOW_TESTS"),
                          reason="several compiles (minutes on a small CPU): set AUDIOMAMBA_SLOW_TESTS=1")


def tiny(spec, **overrides):
    """The streaming tests' tiny model with its one block at the innermost stage (short chunks there, as in
    streaming); pooling product 8."""
    return tiny_model(spec, **{"backbone.n_blocks": [0, 0, 1], **overrides})


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def push_both(eager, compiled, x, sizes):
    """Push the same chunks into both streams; the compiled outputs, after checking them against the eager ones."""
    outs, start = [], 0
    for n in sizes:
        want, got = eager.push(x[:, start : start + n]), compiled.push(x[:, start : start + n])
        assert got.shape == want.shape
        assert rel_err(got, want) < TOL, (n, start)
        outs.append(got)
        start += n
    assert compiled.position == eager.position
    return outs


def test_compiled_stream_equals_eager_and_restores_bit_exactly():
    torch._dynamo.reset()
    model = tiny("classifier_small")
    x = torch.randn(1, 64)  # batch 1, as benchmarked (size-1 dimensions keep odd strides unless normalised)
    eager, compiled = model.stream(1), model.stream(1, compile=True)
    before = graphs_compiled()
    # 8, 8: one graph (phases stay 0); 5: a length that is not a multiple of the pooling (a second graph)
    push_both(eager, compiled, x, [8, 8, 5])
    assert graphs_compiled() - before == 2  # the compiled path ran, one graph per pattern, no recompiles
    assert compiled.compile_seconds > 0 and compiled.compiled_patterns == 2
    saved = compiled.state_dict()
    assert torch.equal(saved["stream.position"], eager.state_dict()["stream.position"])
    expected = push_both(eager, compiled, x[:, 21:], [5])  # phases (1, 2): compiled once more
    other = model.stream(1, compile=True)
    other.load_state_dict(saved)
    assert torch.equal(other.push(x[:, 21:26]), expected[0])  # the restored compiled stream, bit-exact
    assert compiled.push(x[:, :0]).shape[:2] == (1, 0)  # an empty chunk changes nothing (no compile)
    compiled.reset()
    eager.reset()
    push_both(eager, compiled, x, [8])  # from silence again: the first graph, reused
    assert graphs_compiled() - before == 3


def test_compile_where_unsupported_is_a_clear_error():
    model = tiny("classifier_small")
    with pytest.raises(ValueError, match="compile=True: .* float32"):
        model.stream(1, dtype=torch.float64, compile=True)
    with pytest.raises(ValueError, match="compile=True: .* CPU"):
        model.stream(1, device="meta", compile=True)
    with pytest.raises(ValueError, match="cannot stream a bidirectional model"):
        tiny("classifier_bidirectional").stream(1, compile=True)
    stream = model.stream(1, compile=True)
    model.double()  # the graphs run without guards: the stream notices a moved model itself
    with pytest.raises(ValueError, match="model moved from torch.float32 on cpu to torch.float64"):
        stream.push(torch.randn(1, 8, dtype=torch.float64))


def test_compiled_graphs_are_per_model():
    """Graphs run without guards, so two models with the same chunk pattern must not share one: a model of
    another structure streams compiled, equal to its own eager stream."""
    first, second = tiny("classifier_small"), tiny("classifier_small", **{"backbone.n_blocks": [1, 0, 1]})
    x = torch.randn(1, 16) * 0.1
    push_both(first.stream(1), first.stream(1, compile=True), x, [8])
    before = graphs_compiled()
    push_both(second.stream(1), second.stream(1, compile=True), x, [8, 8])
    assert graphs_compiled() - before == 1


def test_compiled_s4d_stream_reads_the_kept_operators_and_follows_weight_changes():
    """An S4D stage streams compiled through its matrix operators, which the graph takes as inputs: equal to the
    eager stream; after new weights are loaded in place the next compiled push uses operators made from them."""
    model = tiny("classifier_small", **{"backbone.mixer": ["s4d"], "backbone.n_blocks": [1, 0, 1]})
    mixers = [m for m in model.modules() if isinstance(m, S4DMixer)]
    x = torch.randn(1, 40) * 0.3
    eager, compiled = model.stream(1), model.stream(1, compile=True)
    before = graphs_compiled()
    push_both(eager, compiled, x, [8, 8])
    assert graphs_compiled() - before == 1
    ops = mixers[0]._operators  # the full-rate stage's: 8 steps per chunk (the innermost one steps once per chunk)
    assert list(ops) == [8]
    length, kept = 8, ops[8]
    ops[length] = tuple(torch.zeros_like(t) for t in kept)  # the graph reads what is kept, not a copy of it
    got = compiled.push(x[:, 16:24])
    ops[length] = kept
    assert rel_err(got, eager.push(x[:, 16:24])) > 1e-3
    other = tiny("classifier_small", **{"backbone.mixer": ["s4d"], "backbone.n_blocks": [1, 0, 1]})
    torch.manual_seed(3)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.load_state_dict(other.state_dict())  # in place: the kept operators are recomputed before the next push
    eager.load_state_dict(compiled.state_dict())
    push_both(eager, compiled, x[:, 24:], [8, 8])
    assert graphs_compiled() - before == 1  # no recompile


@SLOW
def test_compiled_stream_ragged_lengths():
    model = tiny("classifier_small", **{"backbone.n_blocks": [1]})
    x = torch.randn(2, 80)
    push_both(model.stream(2), model.stream(2, compile=True), x, [1, 7, 8, 3, 13, 16, 32])


@SLOW
@pytest.mark.parametrize("spec", ["sc09_small", "sc09_mixed"])
def test_compiled_lm_stream(spec):
    model = tiny(spec, **{"backbone.n_blocks": [1]})
    x = torch.randint(0, 256, (2, 40))
    push_both(model.stream(2), model.stream(2, compile=True), x, [8, 8, 3, 5, 16])


def test_compiled_bfloat16_stream():
    """weights="bfloat16" compiled: the stream's private low-precision copy, frozen into the graph (weights
    prepacked by inductor), follows the eager bfloat16 stream and approximates the float32 model."""
    model = tiny("classifier_small")
    x = torch.randn(1, 16) * 0.3
    eager, compiled = model.stream(1, weights="bfloat16"), model.stream(1, compile=True, weights="bfloat16")
    got = torch.cat([compiled.push(x[:, :8]), compiled.push(x[:, 8:])], 1)
    want = torch.cat([eager.push(x[:, :8]), eager.push(x[:, 8:])], 1)
    with torch.no_grad():
        exact, _ = model(x)
    assert compiled.compiled_patterns == 1
    assert rel_err(got, want) < 1e-2  # both bfloat16 products; the compiled one fuses and orders them differently
    assert rel_err(got, exact) < 3e-2
