"""Waveform augmentation (audiomamba.data.augment): each transform does what it names, the seeded chain (shapes,
determinism, variation across seeds and epochs, no NaN), the training-only hook of the DataModule with labels
kept, token models, the leave-one-speaker-out split, config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from audiomamba.config import (
    AUGMENTATIONS,
    AugmentConfig,
    DataConfig,
    GainAugment,
    TimeMaskAugment,
    load_experiment_config,
)
from audiomamba.data import FSDD_REGEX, AudioDataModule, split_files
from audiomamba.data import augment as A

SR = 8000


def _tone(freq: float, n: int = SR, amp: float = 0.3, phase: float = 0.0) -> torch.Tensor:
    return (amp * torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / SR + phase)).float()


def _peak_hz(x: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(x.double() * torch.hann_window(x.shape[0], dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * SR / x.shape[0]


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def _all_on() -> AugmentConfig:
    cfg = AugmentConfig()
    for name in AUGMENTATIONS:
        getattr(cfg, name).p = 1.0
    return cfg


# ------------------------------------------------------------------------------- each transform as named


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_resamples_length_and_pitch_by_the_factor(factor):
    freq = float(np.random.default_rng(int(factor * 100)).uniform(300, 900))
    y = A.change_speed(_tone(freq), SR, factor)
    assert abs(y.shape[0] - SR / factor) <= 2
    assert _peak_hz(y) == pytest.approx(freq * factor, rel=0.01)
    assert torch.isfinite(y).all()


def test_fit_length_pads_or_keeps_the_loudest_window():
    rng = np.random.default_rng(1)
    x = torch.zeros(1000)
    start = int(rng.integers(0, 800))
    x[start : start + 150] = torch.from_numpy(rng.standard_normal(150).astype(np.float32))
    y = A.fit_length(x, 400)
    assert y.shape == (400,) and torch.allclose(y.pow(2).sum(), x.pow(2).sum())  # the whole burst is kept
    short = torch.randn(300)
    padded = A.fit_length(short, 400)
    assert torch.equal(padded[:300], short) and not padded[300:].any()


@pytest.mark.parametrize("semitones", [-2.5, 3.0])
def test_pitch_shift_moves_frequency_and_keeps_duration(semitones):
    freq = float(np.random.default_rng(7).uniform(350, 600))
    y = A.shift_pitch(_tone(freq), SR, semitones)
    assert y.shape == (SR,) and torch.isfinite(y).all()
    assert _peak_hz(y[1000:7000]) == pytest.approx(freq * 2 ** (semitones / 12), rel=0.02)


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 25.0])
def test_noise_is_added_at_the_asked_snr(snr_db):
    rng = np.random.default_rng(int(snr_db * 10))
    x = torch.from_numpy(0.2 * rng.standard_normal(SR).astype(np.float32))
    y = A.add_noise(x, snr_db, rng)
    noise = y - x
    measured = 10 * math.log10(x.double().pow(2).sum() / noise.double().pow(2).sum())
    assert measured == pytest.approx(snr_db, abs=0.05)
    assert A.add_noise(torch.zeros(100), 10.0, rng).abs().max() == 0  # silence stays silent, no NaN


def test_gain_in_db_is_exact_and_peak_limit_caps():
    x = 0.01 * torch.randn(SR)
    db = float(np.random.default_rng(3).uniform(-6, 6))
    chain = A.WaveAugment(AugmentConfig(gain=GainAugment(p=1.0, db=6.0)), SR)
    # the chain draws its own gain: recover it, then check it is exactly a gain in dB from the range
    y = chain(x, seed=11)
    ratio_db = 20 * math.log10(_rms(y) / _rms(x))
    assert abs(ratio_db) <= 6.0 + 1e-4
    assert torch.allclose(y, x * 10 ** (ratio_db / 20), rtol=1e-5, atol=1e-7)
    import torchaudio.functional as AF

    assert torch.allclose(AF.gain(x, db), x * 10 ** (db / 20), rtol=1e-6)
    loud = A.peak_limit(3 * torch.randn(100))
    assert float(loud.abs().max()) == pytest.approx(A.PEAK, rel=1e-6)


def test_room_impulse_response_decay_and_ratio():
    rng = np.random.default_rng(5)
    rt60, drr = 0.3, 4.0
    h = A.room_impulse_response(SR, rt60, drr, rng).double()
    assert h.shape == (int(rt60 * SR),) and h[0] == 1.0
    assert 10 * math.log10(1.0 / h[1:].pow(2).sum()) == pytest.approx(drr, abs=1e-3)
    # energy in 40 ms windows falls by 60 dB per rt60 seconds (noise: within 2 dB)
    w = int(0.04 * SR)
    e1, e2 = h[w : 2 * w].pow(2).sum(), h[5 * w : 6 * w].pow(2).sum()
    assert 10 * math.log10(e1 / e2) == pytest.approx(60 * 4 * 0.04 / rt60, abs=2.0)
    x = _tone(500.0) * (torch.arange(SR) < SR // 2)
    y = A.reverberate(x, h.float())
    assert y.shape == x.shape and _rms(y) == pytest.approx(_rms(x), rel=1e-4)
    assert y[SR // 2 + 200 :].abs().max() > 1e-3  # a reverberant tail after the tone stops


def test_band_stop_removes_the_band_and_keeps_far_frequencies():
    center = float(np.random.default_rng(9).uniform(500, 1500))
    inside = A.band_stop(_tone(center), SR, center, 200.0)
    far = A.band_stop(_tone(center * 3), SR, center, 200.0)
    steady = slice(SR // 2, SR)  # after the filters' transient
    assert 20 * math.log10(_rms(inside[steady]) / _rms(_tone(center)[steady])) < -30
    assert 20 * math.log10(_rms(far[steady]) / _rms(_tone(center * 3)[steady])) == pytest.approx(0.0, abs=0.5)


def test_time_mask_and_shift():
    x = torch.randn(500)
    m = A.time_mask(x, 100, 37)
    assert not m[100:137].any() and torch.equal(m[:100], x[:100]) and torch.equal(m[137:], x[137:])
    assert torch.equal(A.time_shift(x, 20)[20:], x[:-20]) and not A.time_shift(x, 20)[:20].any()
    assert torch.equal(A.time_shift(x, -20)[:-20], x[20:]) and not A.time_shift(x, -20)[-20:].any()
    assert not A.time_shift(x, 600).any()


# --------------------------------------------------------------------------------------------- the chain


def test_chain_shape_determinism_seeds_no_nan():
    chain = A.WaveAugment(_all_on(), SR)
    rng = np.random.default_rng(0)
    for n in (SR, 3001):
        x = torch.from_numpy((0.3 * rng.standard_normal(n)).astype(np.float32)) * (torch.arange(n) < n // 2)
        outs = [chain(x, seed) for seed in (1, 1, 2)]
        for y in outs:
            assert y.shape == (n,) and y.dtype == torch.float32 and torch.isfinite(y).all()
            assert float(y.abs().max()) <= A.PEAK + 1e-6
        assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    silent = chain(torch.zeros(SR), 3)
    assert torch.isfinite(silent).all()
    off = A.WaveAugment(AugmentConfig(), SR)
    quiet = x * (0.5 / x.abs().max())
    assert torch.equal(off(quiet, 5), quiet)  # every p = 0: the clip unchanged


def test_enabling_one_augmentation_keeps_the_others_draws():
    x = 0.2 * torch.randn(SR)
    only_gain = A.WaveAugment(AugmentConfig(gain=GainAugment(p=1.0, db=6.0)), SR)
    both = AugmentConfig(gain=GainAugment(p=1.0, db=6.0), time_mask=TimeMaskAugment(p=1.0, n=1))
    gain_and_mask = A.WaveAugment(both, SR)
    a, b = only_gain(x, 4), gain_and_mask(x, 4)
    kept = b != 0
    assert torch.allclose(a[kept], b[kept]) and (~kept).sum() >= 1


# ------------------------------------------------------------------------------------------- the pipeline


def _fsdd_like(root, speakers=("ann", "bob", "cy"), digits=3, takes=6):
    rng = np.random.default_rng(2)
    for s in speakers:
        for d in range(digits):
            for i in range(takes):
                n = int(rng.integers(1500, 3000))
                wave = 0.3 * np.sin(2 * np.pi * (300 + 150 * d) * np.arange(n) / SR) * rng.uniform(0.5, 1.0)
                sf.write(str(root / f"{d}_{s}_{i}.wav"), wave.astype(np.float32), SR, subtype="PCM_16")


def _data_cfg(root, augment: bool, **kw):
    cfg = OmegaConf.structured(DataConfig(source="folder", root=str(root), labels="regex", label_regex=FSDD_REGEX,
                                          split="fsdd", length=4000, batch_size=6, tokenizer="none", **kw))
    if augment:
        for name in AUGMENTATIONS:
            cfg.augment[name].p = 0.7
    return cfg


def test_datamodule_augments_training_items_only_and_keeps_labels(tmp_path):
    _fsdd_like(tmp_path)
    plain, aug = AudioDataModule(_data_cfg(tmp_path, False), seed=3), AudioDataModule(_data_cfg(tmp_path, True), seed=3)
    plain.setup(), aug.setup()
    assert aug.classes == plain.classes and len(aug.train_set) == len(plain.train_set)
    for split in ("val_set", "test_set"):  # evaluation clips are never augmented
        a, b = getattr(aug, split), getattr(plain, split)
        assert all(torch.equal(a[i]["audio"], b[i]["audio"]) for i in range(len(a)))
    loader, plain_loader = aug.train_dataloader(), plain.train_dataloader()
    epochs = []
    for _ in range(2):
        batches, plain_batches = list(loader), list(plain_loader)
        for batch, ref in zip(batches, plain_batches):
            assert batch["audio"].shape == ref["audio"].shape == (6, 4000)
            assert torch.isfinite(batch["audio"]).all()
            assert torch.equal(batch["index"], ref["index"]) and torch.equal(batch["label"], ref["label"])
            files = [aug.train_set.files[int(i)] for i in batch["index"]]
            assert [aug.classes[int(c)] for c in batch["label"]] == [f.name.split("_")[0] for f in files]
        assert any(not torch.equal(b["audio"], r["audio"]) for b, r in zip(batches, plain_batches))
        epochs.append({int(i): a for b in batches for i, a in zip(b["index"], b["audio"])})
    # the same item gets other draws in another epoch; the same (seed, epoch, item) the same audio
    shared = sorted(set(epochs[0]) & set(epochs[1]))
    assert any(not torch.equal(epochs[0][i], epochs[1][i]) for i in shared)
    again = AudioDataModule(_data_cfg(tmp_path, True), seed=3)
    again.setup()
    first = next(iter(again.train_dataloader()))
    assert torch.equal(first["audio"], torch.stack([epochs[0][int(i)] for i in first["index"]]))
    other_seed = AudioDataModule(_data_cfg(tmp_path, True), seed=4)
    other_seed.setup()
    batch = next(iter(other_seed.train_dataloader()))
    seen = [(a, epochs[0][int(i)]) for a, i in zip(batch["audio"], batch["index"]) if int(i) in epochs[0]]
    assert seen and all(not torch.equal(a, b) for a, b in seen)


def test_token_model_trains_on_augmented_waveforms(tmp_path):
    """A mu-law token classifier on augmented synthetic audio: the task tokenizes the augmented batch."""
    from audiomamba.training.tasks import build_task

    overrides = ["data.synthetic.train_size=8", "data.batch_size=4", "data.length=512",
                 "data.augment.speed.p=1", "data.augment.noise.p=1", "model.backbone.d_model=8"]
    cfg = load_experiment_config("quickstart_classifier", overrides)
    assert cfg.model.input == "tokens" and cfg.data.tokenizer == "mulaw"
    dm = AudioDataModule(cfg.data, seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    plain = torch.stack([dm.train_set.dataset[int(i)]["audio"] for i in range(len(dm.train_set))])
    assert not any(torch.equal(a, plain[i]) for i, a in enumerate(batch["audio"]))
    task = build_task(cfg)
    tokens = task.inputs(batch)
    assert tokens.dtype == torch.int64 and torch.equal(tokens, task.tokenizer.encode(batch["audio"]))
    loss, _ = task._loss_acc(task.model, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_speaker_split_holds_out_one_speaker(tmp_path):
    files = [tmp_path / f"{d}_{s}_{i}.wav" for d in range(3) for s in ("ann", "bob", "cy") for i in range(8)]
    train, val, test = split_files(files, tmp_path, "speaker", 0.25, 0.0, seed=1, label_regex=FSDD_REGEX,
                                   test_speaker="bob")
    assert sorted(test) == sorted(f for f in files if "_bob_" in f.name)
    assert not any("_bob_" in f.name for f in train + val)
    assert len(val) == 12 and sorted(train + val + test) == sorted(files)
    assert split_files(files, tmp_path, "speaker", 0.25, 0.0, 1, FSDD_REGEX, "bob") == (train, val, test)
    with pytest.raises(ValueError, match="test_speaker 'dan'"):
        split_files(files, tmp_path, "speaker", 0.25, 0.0, 1, FSDD_REGEX, "dan")
    with pytest.raises(ValueError, match="no group named 'speaker'"):
        split_files(files, tmp_path, "speaker", 0.25, 0.0, 1, r"^(?P<label>\d)_", "bob")


def test_config_checks():
    with pytest.raises(ValueError, match="test_speaker"):
        load_experiment_config("fsdd_classification_causal", ["data.split=speaker"])
    with pytest.raises(ValueError, match="holds no waveforms"):
        load_experiment_config("codec_lm", ["data.root=/tmp", "data.augment.noise.p=0.5"])
    with pytest.raises(ValueError, match="data.augment.pitch.p"):
        load_experiment_config("fsdd_classification_causal", ["data.augment.pitch.p=1.5"])
    with pytest.raises(ValueError, match="reverb.rt60"):
        load_experiment_config("fsdd_classification_causal", ["data.augment.reverb.rt60=[0.5,0.1]"])
    cfg = load_experiment_config("fsdd_classification_causal", ["defaults.data=fsdd_augmented"])
    assert cfg.data.augment.enabled and cfg.data.random_pad and cfg.data.tokenizer == "none"
    assert not load_experiment_config("fsdd_classification_causal").data.augment.enabled
