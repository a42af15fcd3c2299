"""A data set of audio files under a folder (recursive), with labels from folder names, a CSV or a file-name regex.

Reading: soundfile -> mono mix -> torchaudio resampling -> optional trim (librosa) -> optional loudness
normalization (RMS in dBFS, peak-limited) -> crop or zero-pad to ``length`` samples.

Bad files (unreadable, empty, truncated WAV, NaN or infinite samples): by default a clear error naming the file; with
``skip_bad_files=True`` they are dropped (found when scanning) or replaced by the next good item (found when
reading), and counted in a warning, so one bad file never ends a run mid-epoch.
"""

from __future__ import annotations

import csv
import os
import re
import struct
import warnings
from pathlib import Path

import librosa  # a lazy loader: its submodules load on first use
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
LABEL_SOURCES = ("folder", "csv", "regex", "none")
FSDD_REGEX = r"^(?P<label>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$"


class BadFileError(RuntimeError):
    """An audio or token file that cannot be used; the message names the file."""


def check_wav_complete(path: Path) -> None:
    """Raise BadFileError if a RIFF/WAV file's data chunk declares more bytes than the file holds (truncated)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # not a plain RIFF/WAV (RF64, W64, ...): leave it to libsndfile
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size:
                    raise BadFileError(
                        f"truncated WAV file {path}: header declares {chunk_size} bytes of audio, "
                        f"the file holds {size - pos - 8}"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)
        raise BadFileError(f"WAV file {path} has no data chunk (truncated or corrupt)")


def list_files(root: str | os.PathLike, extensions: tuple[str, ...]) -> list[Path]:
    """All files under ``root`` (recursive, sorted) whose suffix is in ``extensions`` (case-insensitive)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise FileNotFoundError(f"no files with extensions {list(exts)} under {root}")
    return files


class FileDataset(Dataset):
    """Shared machinery of file-backed data sets: labels, bad-file policy, (index, crop_seed) items."""

    def __init__(self, root, files, labels, label_regex, csv_path, skip_bad_files, classes=None):
        self.root = Path(root).expanduser()
        self.skip_bad_files = skip_bad_files
        self.n_bad = 0  # bad files skipped: found by the scan, then found when read (e.g. NaN samples)
        self.bad_indices: set[int] = set()  # files found bad when read (skipped from then on)
        if labels not in LABEL_SOURCES:
            raise ValueError(f"labels must be one of {LABEL_SOURCES}, got {labels!r}")
        self.label_source = labels
        names = self._label_names(files, labels, label_regex, csv_path)
        if labels == "csv":  # the CSV chooses the files
            files = [f for f in files if f in names]
            if not files:
                raise ValueError(f"no file listed in {csv_path} was found under {self.root}")
        good, bad = [], []
        for f in files:
            try:
                self.check_file(f)
                good.append(f)
            except BadFileError as e:
                if not skip_bad_files:
                    raise BadFileError(f"{e} (set skip_bad_files=true to skip such files)") from None
                bad.append(f)
        if bad:
            self.n_bad = len(bad)
            warnings.warn(f"skipped {len(bad)} bad file(s) under {self.root}, e.g. {bad[0]}", stacklevel=2)
        if not good:
            raise FileNotFoundError(f"no usable files under {self.root}")
        self.files = good
        if labels == "none":
            self.classes, self.labels = [], [-1] * len(good)
        else:
            found = sorted({names[f] for f in good}, key=_natural_key)
            self.classes = list(classes) if classes is not None else found
            missing = [c for c in found if c not in self.classes]
            if missing:
                raise ValueError(f"labels {missing} are not among the given classes {self.classes}")
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[names[f]] for f in good]

    def _label_names(self, files, labels, label_regex, csv_path) -> dict[Path, str]:
        if labels == "folder":
            return {f: f.parent.name for f in files}
        if labels == "regex":
            if not label_regex:
                raise ValueError("labels='regex' needs label_regex (with a group named 'label', or one group)")
            pattern = re.compile(label_regex)
            out = {}
            for f in files:
                m = pattern.search(f.name)
                if m is None:
                    raise ValueError(f"file name {f.name} does not match label_regex {label_regex!r}")
                out[f] = m.group("label") if "label" in pattern.groupindex else m.group(1)
            return out
        if labels == "csv":
            if not csv_path:
                raise ValueError("labels='csv' needs csv_path (a CSV with columns path,label)")
            out = {}
            with open(Path(csv_path).expanduser(), newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                    raise ValueError(f"{csv_path} must have a header with columns 'path' and 'label'")
                for row in reader:
                    out[(self.root / row["path"]).resolve()] = row["label"]
            return {f: out[f.resolve()] for f in files if f.resolve() in out}
        return {}

    def check_file(self, path: Path) -> None:  # overridden
        raise NotImplementedError

    def load(self, path: Path, crop_seed: int | None) -> dict:  # overridden
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        crop_seed = None
        if isinstance(index, (tuple, list)):
            index, crop_seed = index
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            if i in self.bad_indices:
                continue
            try:
                item = self.load(self.files[i], crop_seed)
            except BadFileError as e:
                if not self.skip_bad_files:
                    raise BadFileError(f"{e} (set skip_bad_files=true to skip such files)") from None
                self.bad_indices.add(i)  # counted once, never read again
                self.n_bad += 1
                warnings.warn(f"skipped unreadable file {self.files[i]} ({self.n_bad} bad so far): {e}", stacklevel=2)
                continue
            item["label"] = torch.tensor(self.labels[i], dtype=torch.long)
            item["index"] = torch.tensor(i, dtype=torch.long)
            return item
        raise BadFileError(f"no readable file left under {self.root}")


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def crop_or_pad(x: torch.Tensor, length: int, crop_seed: int | None, random_pad: bool = False) -> torch.Tensor:
    """(..., T) -> (..., length): random crop when ``crop_seed`` is given, else center crop. Shorter clips are
    zero-padded at the end, or (``random_pad`` with a ``crop_seed``) placed at a random offset in the window."""
    T = x.shape[-1]
    if T > length:
        if crop_seed is None:
            start = (T - length) // 2
        else:
            start = int(np.random.default_rng(crop_seed).integers(0, T - length + 1))
        return x[..., start : start + length]
    if T < length:
        before = 0
        if random_pad and crop_seed is not None:
            before = int(np.random.default_rng(crop_seed).integers(0, length - T + 1))
        return torch.nn.functional.pad(x, (before, length - T - before))
    return x


def random_gain(x: torch.Tensor, gain_db: float, seed: int) -> torch.Tensor:
    """x scaled by a gain drawn uniformly in [-gain_db, +gain_db] dB (from ``seed``), peak-limited to 0.99."""
    db = float(np.random.default_rng([seed, 1]).uniform(-gain_db, gain_db))
    y = x * 10.0 ** (db / 20.0)
    peak = float(y.abs().max()) if y.numel() else 0.0
    return y * (0.99 / peak) if peak > 0.99 else y


class AudioFolder(FileDataset):
    """Audio files under ``root``; items {"audio": (L,) float32, "label": int64, "index": int64}.

    Args:
        root: folder searched recursively.
        sample_rate: target rate (files at other rates are resampled with torchaudio).
        length: crop or pad every clip to this many samples (None: keep full length; batch size 1 then).
        labels: "folder" (parent folder name) | "csv" (``csv_path`` with columns path,label, paths relative to
            root) | "regex" (``label_regex`` on the file name, group "label") | "none".
        files: restrict to these files (paths); default all audio files under root.
        random_crop: crop at a random offset (seeded per item by the sampler) instead of the center.
        random_pad: with ``random_crop``, place clips shorter than ``length`` at a random offset in the zero-padded
            window instead of at its start (a time-shift augmentation for short clips such as spoken digits).
        gain_db: with ``random_crop``, scale each clip by a random gain in [-gain_db, +gain_db] dB (0: off).
        trim_db: trim leading/trailing parts quieter than this many dB below peak (librosa); None: no trim.
        loudness_db: normalize RMS to this many dBFS (peak-limited to 0.99); None: keep levels.
        skip_bad_files: skip and count unreadable files instead of failing.
        classes: the label names in index order (default: sorted names found).
    """

    def __init__(self, root, sample_rate: int = 16000, length: int | None = None, labels: str = "folder",
                 label_regex: str | None = None, csv_path: str | None = None, files=None,
                 extensions: tuple[str, ...] = AUDIO_EXTENSIONS, random_crop: bool = True,
                 random_pad: bool = False, gain_db: float = 0.0, trim_db: float | None = None,
                 loudness_db: float | None = None, skip_bad_files: bool = False, classes=None):
        if gain_db < 0:
            raise ValueError(f"gain_db must be >= 0, got {gain_db}")
        self.sample_rate, self.length = sample_rate, length
        self.random_crop, self.random_pad, self.gain_db = random_crop, random_pad, gain_db
        self.trim_db, self.loudness_db = trim_db, loudness_db
        files = [Path(f) for f in files] if files is not None else list_files(root, extensions)
        super().__init__(root, files, labels, label_regex, csv_path, skip_bad_files, classes)

    def check_file(self, path: Path) -> None:
        try:
            info = sf.info(str(path))
        except Exception as e:
            raise BadFileError(f"cannot read audio file {path}: {e}") from None
        if info.frames == 0:
            raise BadFileError(f"empty audio file {path} (0 frames)")
        if path.suffix.lower() == ".wav":
            check_wav_complete(path)

    def read(self, path: Path) -> torch.Tensor:
        """The whole file as (L,) float32 mono at ``sample_rate``, trimmed and normalized as configured."""
        return read_audio(path, self.sample_rate, self.trim_db, self.loudness_db)

    def load(self, path: Path, crop_seed: int | None) -> dict:
        wave = self.read(path)
        seed = crop_seed if self.random_crop else None
        if self.length is not None:
            wave = crop_or_pad(wave, self.length, seed, self.random_pad)
        if self.gain_db > 0 and seed is not None:
            wave = random_gain(wave, self.gain_db, seed)
        return {"audio": wave}


def read_audio(path, sample_rate: int, trim_db: float | None = None, loudness_db: float | None = None,
               check: bool = False) -> torch.Tensor:
    """One audio file as (L,) float32: soundfile -> mono mix -> torchaudio resample to ``sample_rate`` ->
    optional trim (``trim_db`` below peak, librosa) -> optional RMS normalization to ``loudness_db`` dBFS.

    Raises BadFileError naming the file when it cannot be read, is empty, holds NaN or infinite samples (float
    files), or (``check``) is a truncated WAV.
    """
    path = Path(path)
    if check and path.suffix.lower() == ".wav":
        check_wav_complete(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:
        raise BadFileError(f"cannot read audio file {path}: {e}") from None
    if data.shape[0] == 0:
        raise BadFileError(f"empty audio file {path} (0 frames)")
    finite = np.isfinite(data)
    if not finite.all():
        bad = data[~finite]
        raise BadFileError(f"audio file {path} holds {np.isnan(bad).sum()} NaN and {np.isinf(bad).sum()} infinite "
                           f"sample(s) (of {data.size})")
    wave = torch.from_numpy(data.mean(axis=1))  # (L,) mono mix
    if sr != sample_rate:
        wave = AF.resample(wave, sr, sample_rate)
    if trim_db is not None:
        trimmed, _ = librosa.effects.trim(wave.numpy(), top_db=trim_db, frame_length=1024, hop_length=256)
        if trimmed.size:
            wave = torch.from_numpy(np.ascontiguousarray(trimmed))
    if loudness_db is not None:
        wave = normalize_loudness(wave, loudness_db)
    return wave.float()


def normalize_loudness(wave: torch.Tensor, target_db: float, peak: float = 0.99) -> torch.Tensor:
    """Scale (L,) ``wave`` to an RMS of ``target_db`` dBFS, then limit its peak to ``peak``. Silence is kept."""
    rms = wave.pow(2).mean().sqrt()
    if rms < 1e-8:
        return wave
    out = wave * (10 ** (target_db / 20) / rms)
    top = out.abs().max()
    return out * (peak / top) if top > peak else out
