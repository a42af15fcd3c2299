"""The log-mel CNN baseline (audiomamba.baselines): size, the classifier interfaces it shares with our models
(build, save/load with the audio contract, classify with lengths, evaluation features, training), its errors, and
the generation scores of real held-out clips (the ceiling) with a chosen classifier."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from audiomamba.contract import AudioContract
from audiomamba.evaluation import classifier_outputs, evaluate_generation
from audiomamba.inference import file_to_input
from audiomamba.models import build_model, load_model

TINY = {"logmel_cnn.channels": [4, 8], "logmel_cnn.n_mels": 16, "n_classes": 3}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("logmel_cnn", **TINY)
    # BatchNorm running statistics that are not the identity, as after training
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_size_matches_the_mamba_classifier():
    cnn, mamba = build_model("logmel_cnn"), build_model("classifier_small")
    assert abs(cnn.num_parameters() / mamba.num_parameters() - 1) < 0.1
    assert not cnn.causal and cnn.config.arch == "logmel_cnn"


def test_save_load_roundtrip_with_contract_and_classify_a_file(tmp_path):
    model = _tiny()
    model.audio = AudioContract(sample_rate=8000, input="waveform", labels=("a", "b", "c"), length=4000)
    x = 0.1 * torch.randn(3, 4000)
    with torch.no_grad():
        logits = model.classify(x)
        assert logits.shape == (3, 3)
        assert torch.equal(model(x)[0], logits)
    loaded = load_model(model.save(tmp_path / "m"))
    assert type(loaded) is type(model) and loaded.labels == ("a", "b", "c") and loaded.audio == model.audio
    with torch.no_grad():
        assert torch.equal(loaded.eval().classify(x), logits)
    wave = (0.2 * np.random.default_rng(1).standard_normal(4000)).astype(np.float32)
    sf.write(str(tmp_path / "clip.wav"), wave, 8000, subtype="FLOAT")
    x_file = file_to_input(loaded, tmp_path / "clip.wav", pad=True)  # what `audiomamba classify` feeds
    assert x_file.shape == (1, 4000)
    with torch.no_grad():
        assert torch.isfinite(loaded.classify(x_file)).all()


def test_classify_with_lengths_averages_the_valid_frames():
    model = _tiny(1)
    x = 0.1 * torch.randn(2, 4000)
    lengths = torch.tensor([4000, 1700])
    with torch.no_grad():
        h = model.features(x)  # (B, T', C)
        frames = model.frames(lengths, len(model.blocks) - 1, h.shape[1])
        assert frames[0] == h.shape[1] and 0 < frames[1] < h.shape[1]
        expected = torch.stack([model.head.linear(h[b, : frames[b]].mean(0)) for b in range(2)])
        assert torch.allclose(model.classify(x, lengths), expected, atol=1e-6)
        assert torch.equal(model.classify(x, torch.tensor([4000, 4000])), model.classify(x))


def test_errors():
    with pytest.raises(ValueError, match="classifier of waveforms"):
        build_model("logmel_cnn", kind="lm", input="tokens")
    model = _tiny()
    with pytest.raises(ValueError, match="logmel_cnn.sample_rate=8000"):
        model.audio = AudioContract(sample_rate=16000, input="waveform")
    with pytest.raises(ValueError, match="streaming state"):
        model.init_state(1)
    with pytest.raises(ValueError, match="float waveform"):
        model.classify(torch.zeros(2, 100, dtype=torch.long))


def test_scores_of_generated_and_real_clips_with_the_cnn_as_scorer():
    model = _tiny(2)
    gen = torch.Generator().manual_seed(3)
    reference = 0.2 * torch.randn(10, 2000, generator=gen)
    real = 0.2 * torch.randn(6, 2000, generator=gen)
    generated = 0.2 * torch.randn(7, 2000, generator=gen)
    real_labels = torch.randint(0, 3, (6,), generator=gen)
    out = classifier_outputs(model, real)
    assert out.features.shape == (6, 8)  # the pooled CNN features (the head's input)
    res = evaluate_generation(model, generated, reference, batch_size=4, real_waves=real, real_labels=real_labels)
    assert res["n_generated"] == 7 and res["real"]["n_generated"] == 6
    with torch.no_grad():
        predicted = model.classify(real).argmax(-1)
    assert res["real"]["accuracy"] == pytest.approx(float((predicted == real_labels).double().mean()))
    # the real clips scored against themselves as reference: the FID floor of 0
    same = evaluate_generation(model, generated, real, batch_size=4, real_waves=real)
    assert same["real"]["fid"] == pytest.approx(0.0, abs=1e-6) and same["real"]["is"] == pytest.approx(
        same["reference_is"], rel=1e-9)
    assert "real" not in evaluate_generation(model, generated, reference, batch_size=4)


def test_trains_through_the_normal_entry_point(tmp_path):
    from audiomamba.config import load_experiment_config
    from audiomamba.training import train

    overrides = ["defaults.model=logmel_cnn", "model.input=waveform", "model.n_classes=6",
                 "model.logmel_cnn.channels=[4,8]", "model.logmel_cnn.n_mels=16", "data.tokenizer=none",
                 "data.length=2048", "data.batch_size=8", "data.synthetic.train_size=32", "data.synthetic.val_size=8",
                 "data.synthetic.test_size=8", "data.augment.noise.p=0.5", "trainer.max_steps=3",
                 "trainer.val_every_n_steps=3", f"trainer.output_dir={tmp_path}", "trainer.progress_bar=false"]
    cfg = load_experiment_config("quickstart_classifier", overrides)
    assert cfg.model.arch == "logmel_cnn" and cfg.model.logmel_cnn.channels == [4, 8]
    out = train(cfg, quiet=True)
    assert out["metrics"]["steps"] == 3 and 0.0 <= out["metrics"]["test/acc"] <= 1.0
    model = load_model(out["model_dir"])
    assert model.config.arch == "logmel_cnn" and len(model.labels) == 6 and model.audio.sample_rate == 8000


def test_lm_generation_scores_report_the_real_test_clips(tmp_path):
    """evaluate_lm_generation with the CNN as the chosen scorer: the generated clips' scores and, under "real",
    those of the classifier data's real test clips (the ceiling)."""
    from audiomamba.config import load_experiment_config
    from audiomamba.evaluation import evaluate_lm_generation

    rng = np.random.default_rng(4)
    for s in ("ann", "bob"):
        for d in range(3):
            for i in range(7):
                n = int(rng.integers(1200, 2400))
                wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * d) * np.arange(n) / 8000) * rng.uniform(0.5, 1.0)
                sf.write(str(tmp_path / f"{d}_{s}_{i}.wav"), wave.astype(np.float32), 8000, subtype="PCM_16")
    clf_cfg = load_experiment_config("fsdd_classification_logmel_cnn", [
        f"data.root={tmp_path}", "data.length=2400", "model.n_classes=3", "model.logmel_cnn.channels=[4,8]",
        "model.logmel_cnn.n_mels=16"])
    torch.manual_seed(5)
    clf = build_model(clf_cfg.model, audio=AudioContract.from_experiment(clf_cfg, ["0", "1", "2"])).eval()
    lm_cfg = load_experiment_config("fsdd_generation_mamba", [f"data.root={tmp_path}", "data.length=2400"])
    tiny_lm = {"backbone.d_model": 8, "backbone.n_blocks": [1], "backbone.mixer_options": {"mamba1": {"d_state": 4}}}
    lm = build_model("sc09_small", audio=AudioContract.from_experiment(lm_cfg), **tiny_lm).eval()
    out = evaluate_lm_generation(lm, lm_cfg, classifier=clf, classifier_cfg=clf_cfg, n_samples=3,
                                 sample_length=160, batch_size=3)
    real = out["real"]
    assert out["n_generated"] == 3 and real["n_generated"] == 30  # takes 0-4 of 2 speakers x 3 digits
    assert real["n_reference"] == out["n_reference"]
    from audiomamba.data import AudioDataModule

    dm = AudioDataModule(clf_cfg.data)
    dm.setup()
    items = [dm.test_set[i] for i in range(len(dm.test_set))]
    with torch.no_grad():
        predicted = clf.classify(torch.stack([it["audio"] for it in items])).argmax(-1)
    labels = torch.stack([it["label"] for it in items])
    assert real["accuracy"] == pytest.approx(float((predicted == labels).double().mean()), abs=1e-12)
    assert 1.0 <= real["is"] <= 3.0 and real["fid"] >= 0.0
    assert "real" not in evaluate_lm_generation(lm, lm_cfg, classifier=clf, classifier_cfg=clf_cfg, n_samples=3,
                                                sample_length=160, batch_size=3, real_split=None)
