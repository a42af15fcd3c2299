"""Streams: any chunking equals the offline forward, batched streams, bit-exact save/restore (also in a new
process), reset, and a clear error for bidirectional models."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import random_chunks, rel_err, tiny_model
from safetensors.torch import load_file, save_file

from audiomamba import Stream, build_model

torch.set_num_threads(1)

TOL = 1e-5
tiny = tiny_model


@pytest.mark.parametrize("spec", ["classifier_small", "sc09_mixed"])
def test_stream_equals_offline(spec):
    model = tiny(spec)
    lm = spec.startswith("sc09")
    x = torch.randint(0, 256, (2, 53)) if lm else torch.randn(2, 53)
    with torch.no_grad():
        full, _ = model(x)
    stream = model.stream(2)
    outs, start = [], 0
    for n in random_chunks(53, random.Random(0), max_chunk=12):
        out = stream.push(x[:, start : start + n])
        assert out.shape[:2] == (2, n)
        outs.append(out)
        start += n
    assert stream.position == 53
    assert rel_err(torch.cat(outs, 1), full) < TOL
    assert stream.push(x[:, :0]).shape[:2] == (2, 0)  # an empty chunk changes nothing
    stream.reset()
    assert stream.position == 0
    assert rel_err(stream.push(x[:, :9]), full[:, :9]) < TOL


def test_classifier_small_preset_in_20_ms_chunks_equals_offline():
    """The benchmarked configuration (the full classifier_small preset, 320-sample chunks at 16 kHz, which run
    the short-call CPU paths), then ragged chunks, against the offline forward (the chunked scan path)."""
    torch.manual_seed(0)
    model = build_model("classifier_small").eval()
    x = torch.randn(2, 12 * 320 + 1000) * 0.1
    with torch.no_grad():
        full, _ = model(x)
    stream = model.stream(2)
    sizes = [320] * 12 + random_chunks(1000, random.Random(1), max_chunk=400)
    outs, start = [], 0
    for n in sizes:
        outs.append(stream.push(x[:, start : start + n]))
        start += n
    assert rel_err(torch.cat(outs, 1), full) < TOL


def test_batched_streams_match_single_streams():
    model = tiny("classifier_small")
    x = torch.randn(3, 30)
    batched = model.stream(3)
    singles = [model.stream(1) for _ in range(3)]
    for a, b in ((0, 7), (7, 8), (8, 30)):
        out = batched.push(x[:, a:b])
        for i, s in enumerate(singles):
            assert rel_err(s.push(x[i : i + 1, a:b]), out[i : i + 1]) < TOL


def test_state_dict_round_trip_is_bit_exact():
    model = tiny("sc09_small")
    x = torch.randint(0, 256, (2, 40))
    stream = model.stream(2)
    stream.push(x[:, :13])
    saved = stream.state_dict()
    expected = stream.push(x[:, 13:])
    other = Stream(model, 2)
    other.push(x[:, :5])  # some other history, overwritten by the load
    other.load_state_dict(saved)
    assert other.position == 13
    assert torch.equal(other.push(x[:, 13:]), expected)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "stream.position"})


def test_stream_restored_in_a_new_process(tmp_path):
    model = tiny("classifier_small")
    x = torch.randn(2, 61)
    stream = model.stream(2)
    stream.push(x[:, :21])
    model.save(tmp_path / "model")
    stream.save(tmp_path / "stream.safetensors")
    save_file({"x": x[:, 21:].contiguous()}, str(tmp_path / "chunk.safetensors"))
    expected = stream.push(x[:, 21:])
    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import load_file, save_file
        from audiomamba import load_model
        torch.set_num_threads(1)
        model = load_model({str(tmp_path / "model")!r}).eval()
        stream = model.stream(1)
        stream.load({str(tmp_path / "stream.safetensors")!r})
        out = stream.push(load_file({str(tmp_path / "chunk.safetensors")!r})["x"])
        save_file({{"out": out.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["out"], expected)


def test_bidirectional_model_cannot_stream():
    model = tiny("classifier_bidirectional")
    with pytest.raises(ValueError, match="cannot stream a bidirectional model"):
        model.stream(1)


def test_wrong_batch_is_named():
    stream = tiny("classifier_small").stream(2)
    with pytest.raises(ValueError, match="expected batch 2"):
        stream.push(torch.randn(3, 5))


# bfloat16 weights (opt-in): an approximation of the float32 model. Its outputs deviate by the rounding of the
# weights and of the products' inputs and outputs to 8 significant bits (2^-8 relative each), accumulated
# through the layers: measured ~5e-3 of the largest logit on classifier_small; this bound leaves room for seeds.
BF16_TOL = 3e-2


@pytest.mark.parametrize("spec", ["classifier_small", "sc09_small"])
def test_bfloat16_stream_approximates_the_float32_model(spec):
    model = tiny(spec, **({"backbone.n_blocks": [1, 0, 1]} if spec == "classifier_small" else {}))
    rng = random.Random(3)
    x = torch.randn(2, 45) * 0.3 if spec == "classifier_small" else torch.randint(0, 256, (2, 45))
    stream = model.stream(2, weights="bfloat16")
    assert stream.weights == "bfloat16" and stream.model is not model
    outs, start = [], 0
    for n in random_chunks(45, rng, max_chunk=12):
        outs.append(stream.push(x[:, start : start + n]))
        start += n
    got = torch.cat(outs, 1)
    with torch.no_grad():
        want, _ = model(x)  # the float32 model, offline
        low, _ = stream.model(x)  # the bfloat16 copy, offline: the stream follows it up to float rounding
    assert got.dtype == torch.float32
    assert 0 < rel_err(got, want) < BF16_TOL  # an approximation, not the float32 model itself
    assert rel_err(got, low) < BF16_TOL / 10
    lows = [m for m in stream.model.modules() if type(m).__name__ == "LowPrecisionLinear"]
    assert lows and all(m.weight_low.dtype == torch.bfloat16 for m in lows)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is untouched


def test_weights_option_errors_are_clear(tmp_path):
    model = tiny("classifier_small")
    with pytest.raises(ValueError, match=r"weights: expected one of \['bfloat16', 'float32'\], got 'int8'"):
        model.stream(1, weights="int8")
    with pytest.raises(ValueError, match="weights='bfloat16': the stream's state stays float32"):
        model.stream(1, dtype=torch.float64, weights="bfloat16")
    with pytest.raises(ValueError, match="low_precision_copy: expects a float32 model"):
        tiny("classifier_small").double().low_precision_copy()
    with pytest.raises(ValueError, match="save: this is a low_precision_copy"):
        model.low_precision_copy().save(tmp_path / "m")
    exact = model.stream(1, weights="float32")  # the default, spelled out: the model itself
    assert exact.model is model and exact.weights == "float32"
