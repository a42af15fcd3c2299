"""Streaming export: the traced step, ONNX (OnnxStream) and torch.export (ProgramStream) against model.stream
over 100 chunks of fresh audio, ends of streams shorter than a chunk, state_dict / reset round trips (also with
Stream), the layout file, the standalone onnxruntime + numpy recipe, clear errors, and the command line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from helpers import random_chunks, rel_err, tiny_model

from audiomamba import AudioContract, build_model
from audiomamba.export import (
    ExportError,
    OnnxStream,
    ProgramStream,
    StreamStep,
    check_exportable,
    export_stream,
    read_layout,
)
from audiomamba.export.step import mamba1_block, mean_pool_head, softplus
from audiomamba.heads import ClassifierHead, MeanPoolState
from audiomamba.layers.block import ResidualBlock
from audiomamba.state import flatten_state

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

torch.set_num_threads(1)
TOL = 1e-4
N_CHUNKS = 100

# classifier_small's structure (waveform input, pooling x16 then x4, no blocks at the full rate, Mamba-1 blocks
# at 1 kHz and 250 Hz, running mean head), shrunk in width
CLASSIFIER = ("classifier_small", {"backbone.pool": [16, 4], "backbone.n_blocks": [0, 1, 2],
                                   "backbone.expand": [2, 4]}, 320)
LM = ("sc09_small", {}, 16)  # an LM preset (pooling [4, 4]): next-token logits of token chunks
# pooling 2 and 3 with chunks of 5 samples: every chunk meets other pooling phases (six patterns), Mamba-2 blocks
POOLED = ("sc09_mamba2", {"backbone.pool": [2, 3]}, 5)
# S4D at the full rate and Mamba-1 inside (pooling 2 and 4), chunks of 12: S4D stages export as matrix products
S4D = ("sc09_mixed", {}, 12)
CASES = {"classifier_small": CLASSIFIER, "lm": LM, "pooled": POOLED, "s4d": S4D}
LABELS = tuple(f"class{i}" for i in range(10))


def _model(case: str):
    spec, overrides, _ = CASES[case]
    model = tiny_model(spec, **overrides)
    if case == "classifier_small":
        model.audio = AudioContract(sample_rate=16000, input="waveform", labels=LABELS)
    return model


def _inputs(model, batch: int, length: int) -> torch.Tensor:
    """Fresh random audio: waveform samples, or tokens for an LM."""
    if model.config.kind == "lm":
        return torch.randint(0, model.config.vocab_size, (batch, length))
    return torch.randn(batch, length) * 0.5


# (format, batch the graphs are exported for (None: dynamic), batch streamed, with the one-sample graph)
EXPORTS = {
    ("onnx", "classifier_small"): (2, 2, True), ("onnx", "lm"): (1, 1, False), ("onnx", "pooled"): (1, 1, False),
    ("torch-export", "classifier_small"): (2, 2, True), ("torch-export", "lm"): (None, 2, False),
    ("torch-export", "pooled"): (3, 3, False), ("onnx", "s4d"): (1, 1, True),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(format, case): (model, directory, batch streamed)}, each exported once, when first asked for."""
    cache = {}

    def get(fmt: str, case: str):
        if (fmt, case) not in cache:
            model = _model(case)
            export_batch, batch, sample = EXPORTS[(fmt, case)]
            directory = tmp_path_factory.mktemp(f"{fmt}_{case}")
            export_stream(model, directory, fmt, CASES[case][2], batch_size=export_batch, sample_graph=sample)
            cache[(fmt, case)] = (model, directory, batch)
        return cache[(fmt, case)]

    return get


RUNNERS = {"onnx": OnnxStream, "torch-export": ProgramStream}


def _assert_state_equal(runner, stream):
    ours = runner.state_dict()
    for key, ref in stream.state_dict().items():
        assert rel_err(torch.from_numpy(np.asarray(ours[key])), ref) < TOL, key


def test_step_equals_forward_at_every_pooling_phase():
    """The traced module itself (before any export): from a state at each pooling phase, one step equals the
    model's forward, outputs and every state tensor."""
    model = _model("pooled")
    step = StreamStep(model, 5)
    for offset in range(6):  # pooling product 6: every phase pattern
        state = model.init_state(2)
        with torch.no_grad():
            _, state = model(_inputs(model, 2, offset), state) if offset else (None, state)
            x = _inputs(model, 2, 5)
            ref, ref_state = model(x, state)
            y, *flat = step(x, *flatten_state(state).values())
        assert rel_err(y, ref) < 1e-5
        for (name, a), b in zip(flatten_state(ref_state).items(), flat):
            assert rel_err(b, a) < 1e-5, name


@pytest.mark.parametrize("length", [1, 5, 20])
@pytest.mark.parametrize("mlp", [0, 2])
def test_export_form_of_the_mamba1_block_equals_the_block(length, mlp):
    """mamba1_block (the form the graphs run) against the block's own forward, from a random state, with decays
    and step sizes spread over a trained model's range: the outputs and both state tensors."""
    torch.manual_seed(length + 10 * mlp)
    block = ResidualBlock(16, "mamba1", {"d_state": 8, "d_conv": 4}, mlp_expand=mlp).eval()
    with torch.no_grad():
        block.mixer.A_log.copy_(torch.randn_like(block.mixer.A_log) * 2)  # A from -e^-6 to -e^6
        block.mixer.dt_proj.bias.copy_(torch.randn_like(block.mixer.dt_proj.bias) * 4)  # Δ from ~0 to ~10
        state = block.init_state(2)
        state.conv.normal_()
        state.ssm.normal_()
        x = torch.randn(2, length, 16)
        ref, ref_state = block(x, state)
        y, new = mamba1_block(block, x, state)
    assert rel_err(y, ref) < 1e-5
    assert rel_err(new.conv, ref_state.conv) < 1e-6 and rel_err(new.ssm, ref_state.ssm) < 1e-5


def test_export_forms_of_the_head_and_softplus():
    """mean_pool_head against ClassifierHead (a stream far along: a large count and sum), softplus against
    F.softplus over (-40, 40)."""
    torch.manual_seed(1)
    head = ClassifierHead(12, 5).eval()
    state = MeanPoolState(torch.randn(3, 12, dtype=torch.float64) * 1e5, torch.tensor([10**6, 7, 0]))
    h = torch.randn(3, 40, 12)
    with torch.no_grad():
        ref, ref_state = head(h, state)
        y, new = mean_pool_head(head, h, state)
    assert rel_err(y, ref) < 1e-5
    assert rel_err(new.total, ref_state.total) < 1e-6 and torch.equal(new.count, ref_state.count)
    v = torch.rand(10_000) * 80 - 40
    ref = torch.nn.functional.softplus(v)
    assert ((softplus(v) - ref).abs() / ref.clamp(min=1)).max() < 1e-6


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("case", ["classifier_small", "lm", "pooled"])
def test_exported_stream_equals_model_stream(exported, fmt, case):
    """100 chunks of fresh random audio through the export and through model.stream: the same outputs for every
    chunk, the same state at the end."""
    model, directory, batch = exported(fmt, case)
    runner = RUNNERS[fmt](directory, batch_size=batch)
    stream = model.stream(batch)
    chunk = runner.chunk
    for _ in range(N_CHUNKS):
        x = _inputs(model, batch, chunk)
        y = runner.push(x.numpy())
        ref = stream.push(x)
        assert y.shape == tuple(ref.shape)
        assert rel_err(torch.from_numpy(y), ref) < TOL
    assert runner.position == stream.position == N_CHUNKS * chunk
    _assert_state_equal(runner, stream)


def test_s4d_stages_export_to_onnx(exported):
    """A model with an S4D stage (exported as real matrix products): 100 chunks of fresh tokens, then a stream
    end shorter than a chunk (through the one-sample graph), equal to model.stream, state included."""
    model, directory, batch = exported("onnx", "s4d")
    runner, stream = OnnxStream(directory, batch_size=batch), model.stream(batch)
    for n in [runner.chunk] * N_CHUNKS + [5]:
        x = _inputs(model, batch, n)
        assert rel_err(torch.from_numpy(runner.push(x.numpy())), stream.push(x)) < TOL
    _assert_state_equal(runner, stream)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_any_chunking_and_stream_ends(exported, fmt):
    """Chunks of random lengths (shorter than N at the end of a stream, longer, not multiples): the remainder
    runs through the one-sample graph and the stream goes on, equal to model.stream throughout."""
    model, directory, batch = exported(fmt, "classifier_small")
    runner = RUNNERS[fmt](directory, batch_size=batch)
    stream = model.stream(batch)
    sizes = random_chunks(3 * 320 + 77, random.Random(3), max_chunk=700) + [319, 1, 0, 320]
    for n in sizes:
        x = _inputs(model, batch, n)
        y = runner.push(x)  # a torch tensor works too
        ref = stream.push(x)
        assert y.shape == tuple(ref.shape)
        if n:
            assert rel_err(torch.from_numpy(y), ref) < TOL
    _assert_state_equal(runner, stream)


def test_state_dict_and_reset_round_trips(exported, tmp_path):
    """state_dict → load_state_dict continues bit-exactly; the state moves between Stream and OnnxStream both
    ways, as dicts and as safetensors files; reset starts again from silence."""
    model, directory, batch = exported("onnx", "classifier_small")
    runner = OnnxStream(directory, batch_size=batch)
    for _ in range(3):
        runner.push(_inputs(model, batch, 320))
    runner.push(_inputs(model, batch, 5))  # a phase inside a pooling frame
    saved = runner.state_dict()
    assert int(saved["stream.position"][0]) == 965
    x = _inputs(model, batch, 320)
    y = runner.push(x)
    again = OnnxStream(directory, batch_size=batch)
    again.load_state_dict(saved)
    assert np.array_equal(again.push(x), y)
    # OnnxStream → Stream, and Stream → OnnxStream
    stream = model.stream(batch)
    stream.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()})
    assert rel_err(torch.from_numpy(y), stream.push(x)) < TOL
    x2 = _inputs(model, batch, 320)
    ref = stream.push(x2)
    back = OnnxStream(directory, batch_size=batch)
    back.load_state_dict(stream.state_dict())
    assert back.position == stream.position
    x3 = _inputs(model, batch, 320)
    assert rel_err(torch.from_numpy(back.push(x3)), stream.push(x3)) < TOL
    assert not np.allclose(ref.numpy(), back.push(x2))  # the state matters: the same chunk later differs
    # files: OnnxStream.save → Stream.load and Stream.save → OnnxStream.load, bit-exact
    back.save(tmp_path / "onnx_stream.safetensors")
    moved = model.stream(batch)
    moved.load(tmp_path / "onnx_stream.safetensors")
    for key, value in moved.state_dict().items():
        assert np.array_equal(value.numpy(), back.state_dict()[key]), key
    moved.save(tmp_path / "stream.safetensors")
    back.reset()
    back.load(tmp_path / "stream.safetensors")
    assert back.position == moved.position
    x4 = _inputs(model, batch, 320)
    assert rel_err(torch.from_numpy(back.push(x4)), moved.push(x4)) < TOL
    # reset: a fresh stream again
    back.reset()
    assert back.position == 0
    fresh = model.stream(batch)
    assert rel_err(torch.from_numpy(back.push(x3)), fresh.push(x3)) < TOL
    with pytest.raises(ValueError, match="missing"):
        back.load_state_dict({"stream.position": np.array([0])})
    bad = dict(saved)
    bad["state.head.total"] = saved["state.head.total"].astype(np.float32)
    with pytest.raises(ValueError, match="head.total"):
        back.load_state_dict(bad)


def test_layout_file_describes_the_graphs(exported):
    """stream.json: the graphs' input and output names in order, every state tensor's shape, dtype and initial
    value as model.init_state has them, the chunk, and the model's audio contract."""
    import onnx

    model, directory, batch = exported("onnx", "classifier_small")
    layout = read_layout(directory)
    assert json.loads((directory / "stream.json").read_text()) == layout
    assert layout["chunk"] == 320 and layout["batch"] == 2 and layout["backend"] == "onnx"
    init = flatten_state(model.init_state(batch))
    assert [s["name"] for s in layout["state"]] == list(init)
    for s in layout["state"]:
        ref = init[s["name"]]
        assert s["shape"] == list(ref.shape) and s["dtype"] == str(ref.dtype).removeprefix("torch.")
        assert torch.all(ref == s["init"])
    graph = onnx.load(str(directory / layout["graphs"]["chunk"])).graph
    assert [i.name for i in graph.input] == ["x"] + [s["input"] for s in layout["state"]]
    assert [o.name for o in graph.output] == ["y"] + [s["output"] for s in layout["state"]]
    assert layout["input"]["shape"] == [2, 320] and layout["output"]["shape"] == [2, 320, 10]
    assert layout["audio"]["sample_rate"] == 16000 and tuple(layout["audio"]["labels"]) == LABELS
    assert layout["model"]["pool_product"] == 64


def _standalone(directory, audio):
    """The README's standalone example (onnxruntime and numpy only), returning the logits of every chunk."""
    layout = json.load(open(directory / "stream.json"))
    session = ort.InferenceSession(str(directory / layout["graphs"]["chunk"]))
    state = {s["input"]: np.full(s["shape"], s["init"], dtype=s["dtype"]) for s in layout["state"]}
    outputs = [layout["output"]["name"]] + [s["output"] for s in layout["state"]]
    n, logits = layout["chunk"], []
    for start in range(0, audio.shape[1] - n + 1, n):
        y, *new_state = session.run(outputs, {layout["input"]["name"]: audio[:, start : start + n], **state})
        state = dict(zip(state, new_state))
        logits.append(y)
    return np.concatenate(logits, axis=1)


def test_standalone_onnxruntime_recipe(exported):
    model, directory, batch = exported("onnx", "classifier_small")
    audio = _inputs(model, batch, 10 * 320)
    with torch.no_grad():
        ref, _ = model(audio)
    assert rel_err(torch.from_numpy(_standalone(directory, audio.numpy())), ref) < TOL


def test_runner_errors(exported):
    model, directory, batch = exported("onnx", "lm")
    runner = OnnxStream(directory)
    with pytest.raises(ValueError, match="multiples of 16"):
        runner.push(_inputs(model, 1, 7))  # exported without the one-sample graph
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        runner.push(np.full((1, 16), 256))
    with pytest.raises(ValueError, match="integer tokens"):
        runner.push(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="batches of 1"):
        OnnxStream(directory, batch_size=2)
    with pytest.raises(ValueError, match="onnx"):
        ProgramStream(directory)
    with pytest.raises(FileNotFoundError, match="stream.json"):
        OnnxStream(directory / "nowhere")


def test_unsupported_models_are_clear_errors(tmp_path):
    bidirectional = build_model("classifier_bidirectional", **{"backbone.d_model": 8, "backbone.n_blocks": [1]})
    with pytest.raises(ExportError, match="bidirectional.*cannot stream"):
        export_stream(bidirectional, tmp_path, "onnx", 320)
    s4d = tiny_model("sc09_s4d")  # d_model 8: matrix form up to 724 steps per chunk
    check_exportable(s4d, 724, "onnx")
    with pytest.raises(ExportError, match="S4D mixers of stage 0 would see 725 steps.*chunks up to 724"):
        check_exportable(s4d, 725, "onnx")
    check_exportable(s4d, 725, "torch-export")
    lm = tiny_model("sc09_small")
    with pytest.raises(ExportError, match="chunk"):
        export_stream(lm, tmp_path, "onnx", 0)
    with pytest.raises(ExportError, match="format"):
        export_stream(lm, tmp_path, "tflite", 16)
    with pytest.raises(ExportError, match="float32"):
        check_exportable(tiny_model("sc09_small").to(torch.bfloat16), 16)
    with pytest.raises(ExportError, match="AudioLM or AudioClassifier"):
        check_exportable(torch.nn.Linear(2, 2), 16)
    assert not list(tmp_path.iterdir())  # nothing written


def test_cli_export(tmp_path, capsys):
    """The command line exports a saved model (S4D and Mamba-1 stages: torch.export takes S4D) and reports a
    bidirectional classifier in one line."""
    from audiomamba.cli import main

    model = tiny_model("sc09_mixed")
    model.save(tmp_path / "lm")
    out = tmp_path / "lm_pt2"
    assert main(["export", str(tmp_path / "lm"), "--format", "torch-export", "--chunk", "8", str(out)]) == 0
    assert "torch-export" in capsys.readouterr().out
    runner, stream = ProgramStream(out), model.stream(1)
    for n in (8, 8, 3):
        x = _inputs(model, 1, n)
        assert rel_err(torch.from_numpy(runner.push(x)), stream.push(x)) < TOL
    bidirectional = build_model("classifier_bidirectional", **{"backbone.d_model": 8, "backbone.n_blocks": [1]})
    bidirectional.save(tmp_path / "bi")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "bi"), "--format", "onnx", str(tmp_path / "bi_onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bidirectional" in err and "cannot stream" in err
