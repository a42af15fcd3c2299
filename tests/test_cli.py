"""The `audiomamba` command line: help, one-line errors, and train -> classify/stream/evaluate/export/generate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiomamba.cli import WEIGHTS, main
from audiomamba.config import load_experiment_config
from audiomamba.contract import AudioContract, TokenizerSpec
from audiomamba.data import SyntheticAudio
from audiomamba.models import build_model, load_model
from audiomamba.precision import INFERENCE_WEIGHTS
from audiomamba.tokenizers import LinearTokenizer, MuLawTokenizer

TINY = [
    "model.backbone.d_model=8", "model.backbone.pool=[2]", "model.backbone.n_blocks=[1]",
    "model.backbone.mixer=[s4d,mamba1]", "data.length=64", "data.batch_size=4", "data.synthetic.train_size=12",
    "data.synthetic.val_size=6", "data.synthetic.test_size=6", "trainer.max_steps=3", "trainer.progress_bar=false",
]


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err, argv
    assert err[-1].startswith(f"audiomamba {argv[0]}: error:")
    for n in needles:
        assert n in err[-1], (n, err[-1])


def test_help_teaches_by_example():
    out = subprocess.run([sys.executable, "-m", "audiomamba.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout and "audiomamba train quickstart_lm" in out.stdout
    for cmd in ("quickstart", "train", "generate", "classify", "stream", "evaluate", "export", "bench"):
        assert cmd in out.stdout
    sub = subprocess.run([sys.executable, "-m", "audiomamba.cli", "stream", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "example:" in sub.stdout and "--chunk-ms" in sub.stdout


def test_weights_choices_are_the_models_precisions():
    # the parser spells them out (no torch import for --help); they must stay the models' names
    assert WEIGHTS == tuple(INFERENCE_WEIGHTS)


def test_bad_inputs_exit_nonzero_with_one_line(capsys, tmp_path):
    _one_line_error(capsys, ["train", "quickstart_lm", "trainer.max_stepz=3"], "trainer.max_stepz")
    _one_line_error(capsys, ["train", "no_such_preset"], "unknown experiment preset")
    _one_line_error(capsys, ["classify", str(tmp_path / "missing"), "x.wav"], "model not found")
    _one_line_error(capsys, ["train", "quickstart_lm", "--resume", str(tmp_path / "nope.ckpt")], "nope.ckpt")


def _wav(path: Path, index: int) -> Path:
    clip = SyntheticAudio(size=12, length=1000, seed=9)[index]["audio"].numpy()
    sf.write(str(path), clip, 8000, subtype="FLOAT")
    return path


def test_classifier_train_classify_stream_evaluate_export(capsys, tmp_path):
    assert main(["train", "quickstart_classifier", *TINY, f"trainer.output_dir={tmp_path}"]) == 0
    run = tmp_path / "quickstart_classifier"
    printed = capsys.readouterr().out
    assert "# resolved config" in printed and "test/acc" in printed
    wav = _wav(tmp_path / "clip.wav", 3)
    assert main(["classify", str(run), str(wav), str(wav)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[1] in ("note", "chirp", "pulses", "noise", "tremolo", "bell")

    # streaming in 7 ms chunks ends on the same prediction as classifying the whole file
    model = load_model(run / "model").eval()
    tokens = MuLawTokenizer().encode(torch.from_numpy(sf.read(str(wav), dtype="float32")[0])[None])
    with torch.no_grad():
        probs = model.classify(tokens).softmax(-1)[0]
    assert main(["stream", str(run), str(wav), "--chunk-ms", "7", "--print-every-ms", "14"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("streaming") and out[-1].startswith("done")
    last = out[-2].split()
    assert last[2] == model.labels[int(probs.argmax())]
    assert float(last[3].split("=")[1]) == pytest.approx(float(probs.max()), abs=2e-3)

    assert main(["evaluate", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["items"] == 6 and result["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert result["nll_nats"] == pytest.approx(metrics["test/loss"], rel=1e-4)

    assert main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "exported")]) == 0
    exported = load_model(tmp_path / "exported")
    for (name, a), b in zip(model.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name
    _one_line_error(capsys, ["generate", str(run)], "classifier")
    _one_line_error(capsys, ["classify", str(run), str(tmp_path / "nothing.wav")], "nothing.wav")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(wav.read_bytes()[:2000])  # a truncated WAV: the header promises more audio than the file holds
    _one_line_error(capsys, ["classify", str(run), str(cut)], "truncated WAV file", "cut.wav")


def test_classify_preprocesses_like_the_training_data(capsys, tmp_path):
    """classify reads a file as the test set was read: the experiment's loudness normalization, then zero padding
    of a clip shorter than the training length."""
    from audiomamba.data.audio_folder import normalize_loudness

    argv = ["train", "quickstart_classifier", *TINY, "data.loudness_db=-20", f"trainer.output_dir={tmp_path}"]
    assert main(argv) == 0
    run = tmp_path / "quickstart_classifier"
    capsys.readouterr()
    quiet = (0.01 * torch.randn(40)).clamp(-1, 1)  # 40 samples at about -40 dBFS; the training length is 64
    wav = tmp_path / "quiet.wav"
    sf.write(str(wav), quiet.numpy(), 8000, subtype="FLOAT")
    assert main(["classify", str(run), str(wav), "--top", "6"]) == 0
    ranked = capsys.readouterr().out.strip().split("\t")[2].strip("()").split(", ")
    printed = {name: float(p) for name, p in (r.split() for r in ranked)}

    model = load_model(run / "model").eval()
    classes = model.labels
    assert model.audio.loudness_db == -20.0 and model.audio.length == 64
    wave = normalize_loudness(torch.from_numpy(sf.read(str(wav), dtype="float32")[0]), -20.0)
    wave = torch.nn.functional.pad(wave, (0, 64 - 40))
    with torch.no_grad():
        probs = model.classify(MuLawTokenizer().encode(wave[None])).softmax(-1)[0]
    assert set(printed) == set(classes)
    for i, name in enumerate(classes):
        assert printed[name] == pytest.approx(float(probs[i]), abs=1.5e-3), name


def test_lm_generate_stream_evaluate(capsys, tmp_path):
    assert main(["train", "quickstart_lm", *TINY, f"trainer.output_dir={tmp_path}"]) == 0
    capsys.readouterr()
    run = tmp_path / "quickstart_lm"
    assert main(["generate", str(run), "--n", "2", "--steps", "120", "--out", str(tmp_path / "gen")]) == 0
    paths = capsys.readouterr().out.split()
    assert [Path(p).name for p in paths] == ["sample_0.wav", "sample_1.wav", "sample_0.png"]
    wave, sr = sf.read(paths[0])
    assert sr == 8000 and wave.shape == (120,)

    # the streamed running NLL equals the NLL of one offline forward over the file's tokens
    wav = _wav(tmp_path / "clip.wav", 1)
    model = load_model(run / "model").eval()
    tokens = MuLawTokenizer().encode(torch.from_numpy(sf.read(str(wav), dtype="float32")[0])[None])
    with torch.no_grad():
        logp = model(tokens)[0].log_softmax(-1)[0, :-1]
    ref = -float(logp.gather(-1, tokens[0, 1:, None]).mean()) / math.log(2)
    assert main(["stream", str(run), str(wav), "--chunk-ms", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert float(out[-2].split()[4]) == pytest.approx(ref, abs=2e-3)

    assert main(["evaluate", str(run), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and 0 < result["nll_bits_per_token"] < 12


def test_quickstart_end_to_end_small(capsys, tmp_path):
    small = ["data.synthetic.val_size=8", "data.synthetic.test_size=12", "data.length=256",
             "trainer.progress_bar=false"]
    assert main(["quickstart", *small, "--out", str(tmp_path), "--classifier-steps", "2", "--lm-steps", "2",
                 "--seconds", "0.01", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "bits/sample" in out and "quickstart done" in out
    summary = json.loads((tmp_path / "metrics.json").read_text())
    # the reported test accuracy is the exported classifier's accuracy on the test clips, computed here anew
    cfg = load_experiment_config("quickstart_classifier", small)
    syn = cfg.data.synthetic
    test_set = SyntheticAudio(size=syn.test_size, length=cfg.data.length, sample_rate=cfg.data.sample_rate,
                              classes=list(syn.classes), seed=syn.seed + 2)
    clf = load_model(summary["classifier"]["model_dir"]).eval()
    audio = torch.stack([test_set[i]["audio"] for i in range(len(test_set))])
    labels = torch.stack([test_set[i]["label"] for i in range(len(test_set))])
    with torch.no_grad():
        predicted = clf.classify(MuLawTokenizer(8).encode(audio)).argmax(-1)
    assert summary["classifier"]["test_accuracy"] == pytest.approx(float((predicted == labels).double().mean()),
                                                                   abs=1e-6)
    assert summary["lm"]["test_nll_bits_per_sample"] > 0
    assert (tmp_path / "samples" / "sample_0.wav").is_file() and (tmp_path / "samples" / "sample_0.png").is_file()
    assert summary["classifier"]["steps"] == 2 and summary["lm"]["steps"] == 2


def test_classify_and_stream_honour_the_models_audio_contract(capsys, tmp_path):
    """A model saved at 8 kHz with 6-bit linear tokens and its own label names: a 16 kHz file is resampled to
    8 kHz and tokenized with that tokenizer (no guessed rate or mu-law), and the labels printed are the model's."""
    torch.manual_seed(0)
    audio = AudioContract(8000, "tokens", TokenizerSpec("linear", bits=6), labels=("low", "mid", "high"))
    model = build_model("classifier_small", audio=audio, input="tokens", vocab_size=64, n_classes=3,
                        **{"backbone.d_model": 8, "backbone.n_blocks": [1], "backbone.pool": [2, 2]}).eval()
    model.save(tmp_path / "m")
    wave16k = (0.3 * torch.randn(1, 1600)).clamp(-1, 1)
    wav = tmp_path / "clip16k.wav"
    sf.write(str(wav), wave16k[0].numpy(), 16000, subtype="FLOAT")
    x = LinearTokenizer(6).encode(AF.resample(wave16k, 16000, 8000))  # (1, 800) at the model's rate
    with torch.no_grad():
        probs = model.classify(x).softmax(-1)[0]
    assert main(["classify", str(tmp_path / "m"), str(wav), "--top", "3"]) == 0
    ranked = capsys.readouterr().out.strip().split("\t")[2].strip("()").split(", ")
    printed = {name: float(p) for name, p in (r.split() for r in ranked)}
    assert set(printed) == {"low", "mid", "high"}
    for i, name in enumerate(audio.labels):
        assert printed[name] == pytest.approx(float(probs[i]), abs=1.5e-3), name

    assert main(["stream", str(tmp_path / "m"), str(wav), "--chunk-ms", "20", "--print-every-ms", "100"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].endswith("0.10 s in 5 chunks of 160 samples (20 ms)")  # 800 samples at 8 kHz
    last = out[-2].split()
    assert last[2] == audio.labels[int(probs.argmax())]
    assert float(last[3].split("=")[1]) == pytest.approx(float(probs.max()), abs=2e-3)


def test_model_without_audio_contract_is_a_one_line_error(capsys, tmp_path):
    torch.manual_seed(0)
    build_model("classifier_small", **{"backbone.d_model": 8, "backbone.n_blocks": [1]}).save(tmp_path / "bare")
    wav = _wav(tmp_path / "clip.wav", 0)
    _one_line_error(capsys, ["classify", str(tmp_path / "bare"), str(wav)], "no audio contract")
    _one_line_error(capsys, ["stream", str(tmp_path / "bare"), str(wav)], "no audio contract")


def test_bench_stream_runs(capsys):
    assert main(["bench", "stream", "--seconds", "0.1"]) == 0
    assert "real-time factor" in capsys.readouterr().out
