"""Data: synthetic set, audio folders (labels, resampling, crop/pad, bad files), token folders, splits, loaders."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from omegaconf import OmegaConf

from audiomamba.data import (
    FSDD_REGEX,
    AudioDataModule,
    AudioFolder,
    BadFileError,
    ResumableBatchSampler,
    SyntheticAudio,
    TokenFolder,
    normalize_loudness,
    split_files,
)
from audiomamba.data.audio_folder import list_files


def _write(path, data, sr=8000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def _tone(n, f=440.0, sr=8000, amp=0.5):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def test_synthetic_is_seeded_balanced_and_classes_differ():
    a, b = SyntheticAudio(size=24, length=2048, seed=3), SyntheticAudio(size=24, length=2048, seed=3)
    c = SyntheticAudio(size=24, length=2048, seed=4)
    for i in (0, 7, 23):
        assert torch.equal(a[i]["audio"], b[i]["audio"])
        assert not torch.equal(a[i]["audio"], c[i]["audio"])
    labels = [int(a[i]["label"]) for i in range(24)]
    assert np.bincount(labels).tolist() == [4] * 6
    for i in range(24):
        x = a[i]["audio"]
        assert x.shape == (2048,) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert 0.25 < x.abs().max() <= 1.0
    with pytest.raises(ValueError, match="unknown synthetic classes"):
        SyntheticAudio(classes=["note", "kazoo"])


def test_audio_folder_labels_from_folders_resample_mono_crop(tmp_path):
    _write(tmp_path / "dog" / "a.wav", _tone(4000))
    _write(tmp_path / "dog" / "b.flac", _tone(1000), subtype="PCM_16")
    stereo = np.stack([_tone(16000, sr=16000), -_tone(16000, sr=16000) * 0.5], axis=1)  # (L, 2) at 16 kHz
    _write(tmp_path / "cat" / "c.wav", stereo, sr=16000)
    ds = AudioFolder(tmp_path, sample_rate=8000, length=3000, labels="folder", random_crop=False)
    assert ds.classes == ["cat", "dog"]
    by_name = {ds.files[i].name: ds[i] for i in range(len(ds))}
    assert int(by_name["c.wav"]["label"]) == 0 and int(by_name["b.flac"]["label"]) == 1
    assert set(by_name) == {"a.wav", "b.flac", "c.wav"}
    for item in by_name.values():
        assert item["audio"].shape == (3000,)
    # stereo 16 kHz -> mono mix (mean of channels) -> torchaudio resample to 8 kHz -> center crop
    mono = torch.from_numpy(stereo.mean(axis=1).astype(np.float32))
    ref = AF.resample(mono, 16000, 8000)
    start = (ref.shape[0] - 3000) // 2
    q = 1 / 32768  # PCM_16 quantization
    assert (by_name["c.wav"]["audio"] - ref[start : start + 3000]).abs().max() < 4 * q
    # short file: zero padded at the end
    assert by_name["b.flac"]["audio"][1000:].abs().max() == 0


def test_audio_folder_labels_folder_names_nested(tmp_path):
    _write(tmp_path / "x" / "dog" / "a.wav", _tone(100))
    _write(tmp_path / "y" / "cat" / "b.wav", _tone(100))
    ds = AudioFolder(tmp_path, sample_rate=8000, labels="folder")
    assert ds.classes == ["cat", "dog"]


def test_audio_folder_random_crop_is_seeded(tmp_path):
    _write(tmp_path / "a" / "x.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 8000).astype(np.float32))
    ds = AudioFolder(tmp_path, sample_rate=8000, length=1000, random_crop=True)
    full = ds.read(ds.files[0])
    for seed in (1, 2, 3):
        x = ds[(0, seed)]["audio"]
        assert torch.equal(x, ds[(0, seed)]["audio"])
        starts = [s for s in range(8000 - 1000 + 1) if torch.equal(full[s : s + 1000], x)]
        assert len(starts) == 1


def test_audio_folder_random_pad_and_gain(tmp_path):
    clip = np.random.default_rng().uniform(-0.3, 0.3, 600).astype(np.float32)
    _write(tmp_path / "a" / "x.wav", clip, subtype="FLOAT")
    plain = AudioFolder(tmp_path, sample_rate=8000, length=1000, random_crop=True)
    assert torch.equal(plain[(0, 7)]["audio"][:600], torch.from_numpy(clip))  # default: padded at the end
    shifted = AudioFolder(tmp_path, sample_rate=8000, length=1000, random_crop=True, random_pad=True, gain_db=6.0)
    offsets = set()
    for seed in range(1, 30):
        x = shifted[(0, seed)]["audio"]
        assert x.shape == (1000,) and torch.equal(x, shifted[(0, seed)]["audio"])
        nz = torch.nonzero(x).flatten()
        start = int(nz[0])
        offsets.add(start)
        ratio = x[start : start + 600] / torch.from_numpy(clip)
        assert torch.allclose(ratio, ratio[0].expand(600), rtol=1e-5)  # one gain for the whole clip
        assert 10 ** (-6 / 20) - 1e-6 <= float(ratio[0]) <= 10 ** (6 / 20) + 1e-6
        assert not x[:start].any() and not x[start + 600 :].any()
    assert len(offsets) > 5
    fixed = AudioFolder(tmp_path, sample_rate=8000, length=1000, random_crop=False, random_pad=True, gain_db=6.0)
    assert torch.equal(fixed[(0, 3)]["audio"][:600], torch.from_numpy(clip))  # evaluation sets: no augmentation
    with pytest.raises(ValueError, match="gain_db"):
        AudioFolder(tmp_path, sample_rate=8000, gain_db=-1.0)


def test_labels_from_regex_and_csv(tmp_path):
    for name in ("3_theo_7.wav", "0_lucas_0.wav", "3_george_12.wav"):
        _write(tmp_path / name, _tone(200))
    ds = AudioFolder(tmp_path, sample_rate=8000, labels="regex", label_regex=FSDD_REGEX)
    assert ds.classes == ["0", "3"]
    assert {f.name: int(ds[i]["label"]) for i, f in enumerate(ds.files)} == {
        "0_lucas_0.wav": 0, "3_george_12.wav": 1, "3_theo_7.wav": 1}
    with pytest.raises(ValueError, match="does not match"):
        AudioFolder(tmp_path, labels="regex", label_regex=r"^(\d+)_x")
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerow(["3_theo_7.wav", "speech"])
        w.writerow(["0_lucas_0.wav", "noise"])
    ds = AudioFolder(tmp_path, labels="csv", csv_path=str(tmp_path / "labels.csv"))
    assert len(ds) == 2 and ds.classes == ["noise", "speech"]
    assert {f.name: ds.classes[int(ds[i]["label"])] for i, f in enumerate(ds.files)} == {
        "3_theo_7.wav": "speech", "0_lucas_0.wav": "noise"}


def test_trim_and_loudness(tmp_path):
    x = np.concatenate([np.zeros(8000), _tone(4000, amp=0.01), np.zeros(8000)]).astype(np.float32)
    _write(tmp_path / "a" / "q.wav", x, subtype="FLOAT")
    ds = AudioFolder(tmp_path, sample_rate=8000, trim_db=40, loudness_db=-20)
    y = ds[0]["audio"]
    assert 4000 <= y.shape[0] <= 5200  # the silence is gone (librosa trims on frames of 1024)
    rms_db = 20 * torch.log10(y.pow(2).mean().sqrt())
    assert abs(float(rms_db) + 20) < 0.5
    loud = normalize_loudness(torch.tensor(_tone(1000, amp=0.5)), target_db=0.0)
    assert loud.abs().max() <= 0.99 + 1e-6  # peak-limited


def test_bad_files_fail_with_name_or_are_skipped_and_counted(tmp_path):
    for i in range(4):
        _write(tmp_path / "a" / f"ok{i}.wav", _tone(1000))
    good = (tmp_path / "a" / "ok0.wav").read_bytes()
    (tmp_path / "a" / "truncated.wav").write_bytes(good[: len(good) // 2])  # header intact, data cut
    with pytest.raises(BadFileError, match="truncated.wav"):
        AudioFolder(tmp_path, sample_rate=8000, length=500)
    (tmp_path / "a" / "empty.wav").write_bytes(b"")
    (tmp_path / "a" / "garbage.wav").write_bytes(b"RIFF1234WAVEjunkjunkjunk")
    with pytest.warns(UserWarning, match="skipped 3 bad file"):
        ds = AudioFolder(tmp_path, sample_rate=8000, length=500, skip_bad_files=True)
    assert len(ds) == 4 and ds.n_bad == 3
    # a file that goes bad after scanning: error naming it, or skipped mid-epoch with a counted warning
    (tmp_path / "a" / "ok2.wav").write_bytes(b"")
    bad_index = [f.name for f in ds.files].index("ok2.wav")
    with pytest.warns(UserWarning, match="ok2.wav"):
        item = ds[bad_index]
    assert int(item["index"]) != bad_index and ds.n_bad == 4
    strict = AudioFolder(tmp_path, sample_rate=8000, files=[tmp_path / "a" / "ok1.wav", tmp_path / "a" / "ok3.wav"])
    (tmp_path / "a" / "ok3.wav").write_bytes(b"xx")
    with pytest.raises(BadFileError, match="ok3.wav"):
        strict[1]


def test_token_folder(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1024, (4, 50))
    b = torch.randint(0, 1024, (4, 20))
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "a.npy", a)
    torch.save(b, tmp_path / "x" / "b.pt")
    ds = TokenFolder(tmp_path, length=30, n_codebooks=4, random_crop=False)
    items = {f.name: ds[i] for i, f in enumerate(ds.files)}
    assert torch.equal(items["a.npy"]["tokens"], torch.from_numpy(a[:, :30]))
    assert items["a.npy"]["mask"].all()
    assert torch.equal(items["b.pt"]["tokens"][:, :20], b) and (items["b.pt"]["tokens"][:, 20:] == 0).all()
    assert items["b.pt"]["mask"].sum() == 20
    crop = TokenFolder(tmp_path, length=30, random_crop=True)[(0, 5)]["tokens"]
    assert crop.shape == (4, 30) and any(torch.equal(crop, torch.from_numpy(a[:, s : s + 30])) for s in range(21))
    np.save(tmp_path / "x" / "c.npy", rng.random((4, 10)))  # floats: not tokens
    ds = TokenFolder(tmp_path)
    with pytest.raises(BadFileError, match="c.npy"):
        ds[[f.name for f in ds.files].index("c.npy")]
    torch.save({"not": "a tensor"}, tmp_path / "x" / "d.pt")
    with pytest.raises(BadFileError, match="d.pt"):
        TokenFolder(tmp_path)[3]


def test_splits_fsdd_random_folders(tmp_path):
    files = [tmp_path / f"{d}_{s}_{i}.wav" for d in range(3) for s in ("ann", "bob") for i in range(10)]
    train, val, test = split_files(files, tmp_path, "fsdd", val_fraction=0.2, test_fraction=0.0, seed=0)
    assert sorted(test) == sorted(f for f in files if int(f.stem.split("_")[2]) <= 4)
    assert len(val) == 6 and len(train) == 24 and not set(train) & set(val)
    train, val, test = split_files(files, tmp_path, "random", 0.1, 0.2, seed=1)
    assert len(test) == 12 and len(val) == 6 and sorted(train + val + test) == sorted(files)
    assert split_files(files, tmp_path, "random", 0.1, 0.2, seed=1) == (train, val, test)
    nested = [tmp_path / s / f"{i}.wav" for s in ("train", "valid", "test") for i in range(2)]
    train, val, test = split_files(nested, tmp_path, "folders", 0, 0, 0)
    assert [f.parent.name for f in train + val + test] == ["train"] * 2 + ["valid"] * 2 + ["test"] * 2


def _epoch(sampler):
    return [b for b in sampler]


def test_resumable_sampler_resumes_mid_epoch_and_varies_by_epoch():
    s = ResumableBatchSampler(23, 4, seed=7)
    assert len(s) == 5
    e0, e1 = _epoch(s), _epoch(s)
    assert e0 != e1 and len(e0) == 5 and all(len(b) == 4 for b in e0)
    assert len({i for b in e0 for i, _ in b}) == 20
    fresh = ResumableBatchSampler(23, 4, seed=7)
    fresh.load_state_dict({"epoch": 1, "consumed": 3})
    assert _epoch(fresh) == e1[3:]
    assert _epoch(fresh) == _epoch(s)  # both continue with epoch 2


def test_datamodule_synthetic_and_fsdd_like_folder(tmp_path):
    from audiomamba.config import DataConfig

    cfg = OmegaConf.structured(DataConfig(batch_size=4, length=512))
    cfg.synthetic.train_size, cfg.synthetic.val_size, cfg.synthetic.test_size = 12, 6, 6
    dm = AudioDataModule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, 512) and batch["label"].shape == (4,)
    assert not torch.equal(dm.train_set[0]["audio"], dm.test_set[0]["audio"])
    for d in range(2):
        for i in range(8):
            _write(tmp_path / f"{d}_ann_{i}.wav", _tone(300 + 50 * i, f=300 + 200 * d))
    cfg = OmegaConf.structured(DataConfig(source="folder", root=str(tmp_path), labels="regex",
                                          label_regex=FSDD_REGEX, split="fsdd", length=400, batch_size=2))
    dm = AudioDataModule(cfg)
    dm.setup("fit")
    assert len(dm.test_set) == 10 and dm.classes == ["0", "1"]
    assert all(int(f.stem.split("_")[2]) <= 4 for f in dm.test_set.files)
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio"].shape == (2, 400)
    assert list_files(tmp_path, (".wav",))[0].name == "0_ann_0.wav"


def test_resumable_sampler_shards_by_rank(monkeypatch):
    import audiomamba.data.datamodule as dm_module

    seen = []
    for rank in (0, 1, 2):
        monkeypatch.setattr(dm_module, "_dist_rank_world", lambda r=rank: (r, 3))
        s = ResumableBatchSampler(20, 3, seed=1)
        assert len(s) == 2  # 20 // 3 = 6 items per rank -> 2 batches of 3
        seen.append([i for b in s for i, _ in b])
    flat = [i for part in seen for i in part]
    assert len(flat) == len(set(flat)) == 18  # disjoint shards of one permutation
