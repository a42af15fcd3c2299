"""Bad inputs at every entry point: each gets one clear error line, a counted skip, or a correct result; never a
traceback and never a NaN output.

The module builds its own corrupt files (empty, header-only, truncated, text-as-WAV, NaN/Inf float WAVs, a
1-sample file, a stereo file at another rate, a long file) and corrupt model files (0-byte, text and truncated
checkpoints, a truncated safetensors file, a YAML syntax error, weights that do not fit), and runs them through
``audiomamba classify|stream|train|evaluate|export`` (in-process, ``audiomamba.cli.main``) and the Python API.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from audiomamba.cli import main
from audiomamba.contract import AudioContract
from audiomamba.data.audio_folder import AudioFolder, BadFileError, read_audio
from audiomamba.inference import causal_nll, classify_long, read_for_model, to_model_input
from audiomamba.models import build_model, load_model

RATE = 8000
TINY = [
    "model.backbone.d_model=8", "model.backbone.pool=[2]", "model.backbone.n_blocks=[1]",
    "model.backbone.mixer=[s4d,mamba1]", "data.length=64", "data.batch_size=4", "data.synthetic.train_size=8",
    "data.synthetic.val_size=4", "data.synthetic.test_size=4", "trainer.max_steps=2", "trainer.progress_bar=false",
]
TINY_WAVE = {"backbone.d_model": 8, "backbone.n_blocks": [1], "backbone.pool": [2, 2]}


def _tone(n: int, seed: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """A quiet random tone plus noise, (n,) or (n, channels) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 1200) * t) + 0.02 * rng.standard_normal(n)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)


def _bad_audio(folder: Path) -> dict[str, Path]:
    """The corrupt and odd audio files, by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.wav" for name in
             ("empty", "header_only", "truncated", "text", "nan", "inf", "one_sample", "stereo_44k")}
    files["empty"].write_bytes(b"")
    sf.write(str(files["header_only"]), np.zeros(0, np.float32), RATE, subtype="PCM_16")
    sf.write(str(files["truncated"]), _tone(4000, 1), RATE, subtype="PCM_16")
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:3000])
    files["text"].write_text("this is a text file with a .wav name, not audio\n" * 20)
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        x = _tone(800, 2)
        x[np.random.default_rng(3).choice(800, 5, replace=False)] = value
        sf.write(str(files[name]), x, RATE, subtype="FLOAT")
    sf.write(str(files["one_sample"]), _tone(1, 4), RATE, subtype="FLOAT")
    sf.write(str(files["stereo_44k"]), _tone(6000, 5, rate=44100, channels=2), 44100, subtype="FLOAT")
    return files


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained tiny classifier run (mu-law tokens, 8 kHz), the bad files, and corrupt copies of the model."""
    root = tmp_path_factory.mktemp("bad_inputs")
    assert main(["train", "quickstart_classifier", *TINY, f"trainer.output_dir={root}", "trainer.max_steps=1"]) == 0
    run = root / "quickstart_classifier"
    ckpt = run / "checkpoints" / "last.ckpt"
    files = _bad_audio(root / "audio")
    sf.write(str(root / "audio" / "good.wav"), _tone(900, 6), RATE, subtype="FLOAT")
    models = {}
    for name, data in (("ckpt_empty", b""), ("ckpt_text", b"name: not a checkpoint\n"),
                       ("ckpt_truncated", ckpt.read_bytes()[: ckpt.stat().st_size // 2])):
        models[name] = root / f"{name}.ckpt"
        models[name].write_bytes(data)

    def model_copy(name: str) -> Path:
        path = root / name
        shutil.copytree(run / "model", path)
        return path

    models["safetensors_truncated"] = model_copy("safetensors_truncated")
    weights = models["safetensors_truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    models["yaml_syntax"] = model_copy("yaml_syntax")
    (models["yaml_syntax"] / "config.yaml").write_text("kind: classifier\nbackbone: {d_model: 8\n  pool: [2]\n")
    models["keys"] = model_copy("keys")  # two weights missing, one unknown
    w = load_file(str(models["keys"] / "model.safetensors"))
    missing = sorted(w)[:2]
    for k in missing:
        del w[k]
    w["extra.weight"] = torch.zeros(3)
    save_file(w, str(models["keys"] / "model.safetensors"), metadata={"format": "pt"})
    models["sizes"] = model_copy("sizes")  # weights of another width
    cfg = (models["sizes"] / "config.yaml").read_text()
    (models["sizes"] / "config.yaml").write_text(re.sub(r"d_model: 8", "d_model: 12", cfg))
    return {"root": root, "run": run, "ckpt": ckpt, "files": files, "models": models, "missing": missing}


def _call(capsys, argv) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    assert not re.search(r"\bnan\b", out, re.IGNORECASE), out
    return code, out, [line for line in err.splitlines() if line.strip()]


def _one_error(capsys, argv, *needles) -> str:
    code, out, err = _call(capsys, argv)
    errors = [line for line in err if ": error: " in line]
    assert code == 1 and len(errors) == 1, (argv, err)
    assert errors[0] == err[-1] and errors[0].startswith(f"audiomamba {argv[0]}: error: "), err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


AUDIO_ERRORS = {"empty": "cannot read audio file", "header_only": "empty audio file", "truncated": "truncated WAV",
                "text": "cannot read audio file", "nan": "5 NaN and 0 infinite", "inf": "0 NaN and 5 infinite"}


@pytest.mark.parametrize("case", sorted(AUDIO_ERRORS))
def test_bad_audio_files_one_line_each(setup, capsys, case):
    path = setup["files"][case]
    for command in ("classify", "stream"):
        _one_error(capsys, [command, setup["run"], path], str(path), AUDIO_ERRORS[case])
    with pytest.raises(BadFileError, match=re.escape(str(path))):
        read_audio(path, RATE, check=True)


def test_missing_audio_file(setup, capsys, tmp_path):
    for command in ("classify", "stream"):
        _one_error(capsys, [command, setup["run"], tmp_path / "nope.wav"], "nope.wav", "not found")


def test_one_sample_file_is_padded_with_a_warning(setup, capsys):
    path = setup["files"]["one_sample"]
    code, out, err = _call(capsys, ["classify", setup["run"], path])
    assert code == 0 and out.startswith(str(path))
    assert len(err) == 1 and err[0].startswith("audiomamba classify: warning:") and str(path) in err[0]
    assert "padded with 63 samples" in err[0] and "98.4%" in err[0]
    probs = [float(p) for p in re.findall(r" (\d\.\d+)", out.split("\t")[2])]
    assert probs and all(0 <= p <= 1 for p in probs)
    code, out, err = _call(capsys, ["stream", setup["run"], path])  # a stream is not padded: one sample
    assert code == 0 and "in 1 chunks of" in out and not err


def test_stereo_file_at_another_rate_classifies_as_its_mono_mix(setup, capsys):
    path = setup["files"]["stereo_44k"]
    code, out, err = _call(capsys, ["classify", setup["run"], path, "--top", "6"])
    assert code == 0 and not err
    model = load_model(setup["run"] / "model").eval()
    wave = read_for_model(model, path, pad=True)
    assert wave.shape == (-(-6000 * RATE // 44100),)  # resampled to 8 kHz (length rounded up)
    with torch.no_grad():
        probs = model.classify(to_model_input(model, wave[None])).softmax(-1)[0]
    shown = dict(re.findall(r"(\w+) (\d\.\d{3})", out.split("\t")[2]))
    for i, name in enumerate(model.labels):
        assert float(shown[name]) == pytest.approx(float(probs[i]), abs=6e-4)


MODEL_ERRORS = {"ckpt_empty": "empty or truncated checkpoint", "ckpt_text": "not a PyTorch checkpoint",
                "ckpt_truncated": "truncated or corrupt checkpoint",
                "safetensors_truncated": "not a readable safetensors file", "yaml_syntax": "not valid YAML at line 3",
                "keys": "2 missing key(s)", "sizes": "size mismatch"}


@pytest.mark.parametrize("case", sorted(MODEL_ERRORS))
def test_corrupt_model_files_one_line_each(setup, capsys, case, tmp_path):
    model, good = setup["models"][case], setup["files"]["stereo_44k"]
    line = _one_error(capsys, ["classify", model, good], str(model), MODEL_ERRORS[case])
    if case == "keys":
        assert all(k in line for k in setup["missing"]) and "1 unexpected key(s): extra.weight" in line
    _one_error(capsys, ["stream", model, good], str(model), MODEL_ERRORS[case])
    _one_error(capsys, ["evaluate", model], str(model), MODEL_ERRORS[case])
    _one_error(capsys, ["export", model, tmp_path / "onnx", "--format", "onnx"], str(model), MODEL_ERRORS[case])
    if case.startswith("ckpt"):
        _one_error(capsys, ["export", model, tmp_path / "out"], str(model), MODEL_ERRORS[case])
        _one_error(capsys, ["train", "quickstart_classifier", "--resume", model], str(model), MODEL_ERRORS[case])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(setup, capsys):
    _one_error(capsys, ["classify", setup["run"], setup["files"]["stereo_44k"], "--device", "cuda"],
               "no CUDA GPU found here: use --device cpu")


def test_debug_env_shows_the_traceback(setup, monkeypatch):
    monkeypatch.setenv("AUDIOMAMBA_DEBUG", "1")
    with pytest.raises(Exception) as info:  # raised, so Python prints the traceback (of the EOFError too)
        main(["classify", str(setup["models"]["ckpt_empty"]), str(setup["files"]["stereo_44k"])])
    assert isinstance(info.value.__cause__, EOFError)


def test_train_config_errors_one_line(setup, capsys, tmp_path):
    bad = tmp_path / "exp.yaml"
    bad.write_text("name: x\ndefaults: {model: classifier_small\n")
    _one_error(capsys, ["train", bad], str(bad), "not valid YAML at line")
    _one_error(capsys, ["train", "quickstart_classifier", *TINY, f"trainer.output_dir={tmp_path}",
                        "trainer.accelerator=gpu"], "use trainer.accelerator=cpu")
    assert not (tmp_path / "quickstart_classifier" / "config.yaml").exists()  # the launch never started
    _one_error(capsys, ["train", "quickstart_classifier", f"trainer.output_dir={tmp_path}", "--resume", "last"],
               "--resume last: no run under")


def _bad_folder(root: Path, setup) -> Path:
    """Two classes of good clips plus every bad file, in class folders."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            sf.write(str(root / c / f"{c}{i}.wav"), _tone(300, 10 * ord(c) + i), RATE, subtype="FLOAT")
    for i, (name, path) in enumerate(sorted(setup["files"].items())):
        if name not in ("one_sample", "stereo_44k"):
            shutil.copy(path, root / "ab"[i % 2] / path.name)
    return root


FOLDER = ["data.source=folder", "data.labels=folder", "model.n_classes=2", "data.val_fraction=0.2",
          "data.test_fraction=0.2"]


def test_train_and_evaluate_on_a_folder_with_bad_files(setup, capsys, tmp_path):
    folder = _bad_folder(tmp_path / "data", setup)
    argv = ["train", "quickstart_classifier", *TINY, *FOLDER, f"data.root={folder}", f"trainer.output_dir={tmp_path}"]
    _one_error(capsys, argv, str(folder), ".wav", "skip_bad_files=true")  # the scan names the first bad file
    code, out, err = _call(capsys, argv + ["data.skip_bad_files=true"])
    assert code == 0, err
    scanned = [int(m) for line in err for m in re.findall(r"skipped (\d+) bad file\(s\) under", line)]
    assert sum(scanned) == 4, err  # empty, header-only, truncated, text: found by each split's scan
    metrics = json.loads(out[out.index("{") : out.index("}") + 1])
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    # evaluation reads every clip of a split once: the NaN and Inf files are skipped and counted where they are
    run = tmp_path / "quickstart_classifier"
    skipped = []
    for split in ("train", "val", "test"):
        code, out, err = _call(capsys, ["evaluate", run, "--split", split])
        assert code == 0 and np.isfinite(json.loads(out)["accuracy"]), err
        skipped += [re.search(r"skipped unreadable file (\S+)", line).group(1) for line in err if "unreadable" in line]
    assert sorted(Path(p).name for p in skipped) == ["inf.wav", "nan.wav"]
    # the same model on the data without skipping: the bad file is named
    _one_error(capsys, ["evaluate", run, "data.skip_bad_files=false"], str(folder), "skip_bad_files=true")


def test_api_finite_checks_and_stream_input_conversion():
    audio = AudioContract(RATE, "waveform", labels=("x", "y"), length=64)
    model = build_model("classifier_small", audio=audio, n_classes=2, **TINY_WAVE).eval()
    gen = torch.Generator().manual_seed(7)
    x = 0.1 * torch.randn(2, 300, generator=gen)
    for value in (float("nan"), float("inf"), -float("inf")):
        bad = x.clone()
        bad[1, 100 + int(torch.randint(200, (1,), generator=gen))] = value
        with pytest.raises(ValueError, match="NaN"):
            model.classify(bad)
        with pytest.raises(ValueError, match="NaN"):
            model(bad)
        with pytest.raises(ValueError, match="wave: 1 NaN" if value != value else "wave: 0 NaN and 1 infinite"):
            to_model_input(model, bad)
        stream = model.stream(2)
        with torch.no_grad():
            stream.push(x[:, :100])
        before = stream.state_dict()
        with pytest.raises(ValueError, match="the stream is unchanged"):
            stream.push(bad[:, 100:])
        after = stream.state_dict()
        assert before.keys() == after.keys()
        for k in before:  # bit-exact: the rejected push touched nothing
            assert torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype, k
        # the stream goes on as if the bad chunk never came
        with torch.no_grad():
            out = stream.push(x[:, 100:])
            want, _ = model(x)
        torch.testing.assert_close(out, want[:, 100:], rtol=1e-5, atol=1e-6)
    stream = model.stream(1)
    with torch.no_grad():
        got = stream.push(x[:1, :50].double().numpy())  # numpy float64 -> the state's float32
        want, _ = model(x[:1, :50])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for chunk, needle in ((torch.tensor(0.5), "0-d"), (np.float32(0.5) * np.ones(()), "0-d"),
                          (x[0], "1-d"), (np.array(["a"]), "numbers"), ([0.1, 0.2], "tensor or numpy")):
        with pytest.raises(ValueError, match=needle):
            stream.push(chunk)
    assert stream.position == 50


def test_folder_counts_nan_files_it_skips(setup, tmp_path):
    folder = tmp_path / "d" / "a"
    folder.mkdir(parents=True)
    for name in ("nan", "inf"):
        shutil.copy(setup["files"][name], folder / f"{name}.wav")
    sf.write(str(folder / "ok.wav"), _tone(200, 9), RATE)
    ds = AudioFolder(tmp_path / "d", RATE, length=100, skip_bad_files=True)
    assert len(ds) == 3  # NaN is found when reading, not when scanning
    with pytest.warns(UserWarning, match="skipped unreadable file"):
        items = [ds[i] for i in range(3)]
    assert ds.n_bad == 2 and all(torch.isfinite(it["audio"]).all() for it in items)
    strict = AudioFolder(tmp_path / "d", RATE, length=100)
    with pytest.raises(BadFileError, match=r"inf\.wav holds 0 NaN and 5 infinite"):
        strict[0]


def _peak_rss_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        return True
    except OSError:
        return False


def test_long_file_classifies_in_bounded_memory(tmp_path, capsys):
    """60 s at 16 kHz through `audiomamba classify` (a causal waveform model): chunks through the state keep the
    peak RSS growth well below what one call needs (~240 MB for this model over 60 s, measured on a CPU), and
    the chunked result equals one call's."""
    rate, seconds = 16000, 60
    audio = AudioContract(rate, "waveform", labels=("x", "y", "z"))
    model = build_model("classifier_small", audio=audio, n_classes=3, **{"backbone.d_model": 8}).eval()
    model.save(tmp_path / "m")
    wav = tmp_path / "long.wav"
    sf.write(str(wav), _tone(rate * seconds, 11, rate), rate, subtype="PCM_16")
    if not _reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be reset here")
    base = _peak_rss_mb()
    code, out, err = _call(capsys, ["classify", tmp_path / "m", wav, "--top", "3"])
    growth = _peak_rss_mb() - base
    assert code == 0 and not err
    assert growth < 120, f"peak RSS grew by {growth:.0f} MB"
    probs = [float(p) for p in re.findall(r" (\d\.\d{3})", out.split("\t")[2])]
    assert len(probs) == 3 and sum(probs) == pytest.approx(1, abs=2e-3)
    # the chunked path (odd chunks, through the state) equals one call, here over the first 4 s
    x = read_for_model(model, wav)[None, : 4 * rate]
    with torch.no_grad():
        torch.testing.assert_close(classify_long(model, x, chunk=5003), model.classify(x), rtol=1e-4, atol=1e-5)


def test_bidirectional_long_inputs_are_classified_in_windows():
    audio = AudioContract(RATE, "waveform", labels=("x", "y"))
    model = build_model("classifier_bidirectional", audio=audio, n_classes=2, **TINY_WAVE).eval()
    x = 0.1 * torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(classify_long(model, x, window=1000), model.classify(x))
        want = torch.stack([model.classify(x[:, :334]), model.classify(x[:, 334:667]), model.classify(x[:, 667:])])
        torch.testing.assert_close(classify_long(model, x, window=400), want.mean(0))


def test_causal_nll_in_chunks_equals_one_call():
    lm = build_model("sc09_small", **TINY_WAVE).eval()
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 256, (2, 301), generator=gen)
    mask = torch.rand(2, 301, generator=gen) > 0.3
    with torch.no_grad():
        logits, _ = lm(tokens)  # (B, L, V)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        for chunk in (1, 64, 300, 1000):
            total, count = causal_nll(lm, tokens, mask, chunk=chunk)
            assert int(count) == int(mask[:, 1:].sum())
            torch.testing.assert_close(total, (nll * mask[:, 1:]).sum(), rtol=1e-5, atol=1e-4)
        total, count = causal_nll(lm, tokens[..., None], chunk=77)  # (B, L, K = 1) as the LM task feeds it
        assert int(count) == 2 * 300
        torch.testing.assert_close(total, nll.sum(), rtol=1e-5, atol=1e-4)


def test_a_new_run_never_writes_over_another_runs_files(setup, capsys):
    root, run = setup["root"], setup["run"]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, _ = _call(capsys, ["train", "quickstart_classifier", *TINY, f"trainer.output_dir={root}",
                                  "trainer.max_steps=1", "optim.lr=0.01"])
    newer = root / "quickstart_classifier-v1"
    assert code == 0 and f"{run} holds an earlier run: this run writes to {newer}" in out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the first run untouched
    assert "lr: 0.01" in (newer / "config.yaml").read_text()
    # --resume last continues the newest version, with its own saved config (lr 0.01, not the preset's)
    code, out, _ = _call(capsys, ["train", "quickstart_classifier", f"trainer.output_dir={root}", "trainer.max_steps=2",
                                  "--resume", "last"])
    assert code == 0 and f"resuming {newer}/checkpoints/last.ckpt" in out and "trainer.max_steps: 1 -> 2" in out
    assert json.loads((newer / "metrics.json").read_text())["steps"] == 2
    assert "lr: 0.01" in (newer / "config.yaml").read_text()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
