"""Seeded, procedurally generated audio: the built-in default data set (quickstart, tests, smoke runs).

Six classes of sounds, each drawn with random parameters from a generator seeded by (seed, index), so an item
is a pure function of its seed and index:

- ``note``: a harmonic tone with an ADSR envelope and a pitch contour (glide or vibrato),
- ``chirp``: an exponential sine sweep, up or down, over one to three octaves,
- ``pulses``: a train of short decaying clicks at 4-40 Hz,
- ``noise``: band-pass filtered noise with a swell envelope,
- ``tremolo``: a pure tone with 3-12 Hz amplitude modulation,
- ``bell``: an FM bell (inharmonic partials, exponential decay).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("note", "chirp", "pulses", "noise", "tremolo", "bell")


def _envelope_adsr(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    a = int(sr * rng.uniform(0.005, 0.05))
    d = int(sr * rng.uniform(0.02, 0.1))
    r = int(sr * rng.uniform(0.02, 0.15))
    s_level = rng.uniform(0.4, 0.9)
    env = np.full(n, s_level)
    a, d, r = min(a, n), min(d, max(n - a, 0)), min(r, n)
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    env[a : a + d] = np.linspace(1.0, s_level, d, endpoint=False)
    if r:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


def _phase(freq: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)


def _note(n, sr, rng):
    t = np.arange(n) / sr
    f0 = 110.0 * 2 ** rng.uniform(0, 2.5)
    if rng.random() < 0.5:  # glide by up to a fifth
        contour = 2 ** (rng.uniform(-7, 7) / 12 * t / t[-1])
    else:  # vibrato
        contour = 2 ** (rng.uniform(0.2, 0.8) / 12 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    freq = np.minimum(f0 * contour, sr / 2.5)
    phase = _phase(freq, sr, rng)
    decay = rng.uniform(0.4, 0.8)
    y = sum(decay**h * np.sin((h + 1) * phase) for h in range(6) if (h + 1) * freq.max() < sr / 2)
    return y * _envelope_adsr(n, sr, rng)


def _chirp(n, sr, rng):
    t = np.arange(n) / sr
    octaves = rng.uniform(1, 3) * rng.choice([-1, 1])
    f_start = 100.0 * 2 ** rng.uniform(0, 4 - max(octaves, 0)) if octaves > 0 else 100.0 * 2 ** rng.uniform(3, 4.5)
    freq = np.minimum(f_start * 2 ** (octaves * t / t[-1]), sr / 2.2)
    return np.sin(_phase(freq, sr, rng)) * _envelope_adsr(n, sr, rng)


def _pulses(n, sr, rng):
    rate = rng.uniform(4, 40)
    tau = rng.uniform(0.001, 0.006) * sr
    click_len = int(6 * tau) + 1
    click = np.exp(-np.arange(click_len) / tau)
    click *= np.sin(2 * np.pi * rng.uniform(500, sr / 4) * np.arange(click_len) / sr + rng.uniform(0, 6.3))
    y = np.zeros(n + click_len)
    start = rng.uniform(0, sr / rate)
    for p in np.arange(start, n, sr / rate * rng.uniform(0.9, 1.1)):
        i = int(p)
        y[i : i + click_len] += click * rng.uniform(0.6, 1.0)
    return y[:n]


def _noise(n, sr, rng):
    x = rng.standard_normal(n)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    center = 150.0 * 2 ** rng.uniform(0, np.log2(sr / 2 / 150.0) - 0.5)
    width = center * rng.uniform(0.1, 0.5)
    spec *= np.exp(-0.5 * ((freqs - center) / width) ** 2)
    y = np.fft.irfft(spec, n)
    t = np.linspace(0, 1, n)
    swell = np.sin(np.pi * t) ** rng.uniform(0.5, 2.0)
    return y / (np.abs(y).max() + 1e-9) * swell


def _tremolo(n, sr, rng):
    t = np.arange(n) / sr
    f = 150.0 * 2 ** rng.uniform(0, 2.5)
    am = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 12) * t + rng.uniform(0, 6.3))
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) * am


def _bell(n, sr, rng):
    t = np.arange(n) / sr
    fc = 200.0 * 2 ** rng.uniform(0, 2)
    ratio = rng.choice([1.4, 2.76, 3.5, 1.21])
    index = rng.uniform(2, 6) * np.exp(-t / rng.uniform(0.05, 0.3))
    y = np.sin(2 * np.pi * fc * t + index * np.sin(2 * np.pi * fc * ratio * t))
    return y * np.exp(-t / rng.uniform(0.1, 0.5))


_GENERATORS = {"note": _note, "chirp": _chirp, "pulses": _pulses, "noise": _noise, "tremolo": _tremolo, "bell": _bell}


def synthesize(kind: str, length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``kind``: (L,) float32, peak in [0.3, 0.9], with faint background noise."""
    if kind not in _GENERATORS:
        raise ValueError(f"synthetic class must be one of {CLASSES}, got {kind!r}")
    y = _GENERATORS[kind](length, sample_rate, rng)
    y = y / (np.abs(y).max() + 1e-9) * rng.uniform(0.3, 0.9)
    y = y + rng.standard_normal(length) * 10 ** rng.uniform(-3.5, -2.5)
    return np.clip(y, -1, 1).astype(np.float32)


class SyntheticAudio(Dataset):
    """``size`` clips of ``length`` samples; item i has class ``classes[i % C]`` and is generated from (seed, i).

    Items: {"audio": (L,) float32, "label": int64 scalar}. Indices may also be (index, crop_seed) pairs (the
    resumable sampler's form); the crop seed is unused since clips are generated at their final length.
    """

    def __init__(self, size: int = 1024, length: int = 4096, sample_rate: int = 8000, seed: int = 0,
                 classes: tuple[str, ...] | list[str] = CLASSES):
        unknown = [c for c in classes if c not in _GENERATORS]
        if unknown:
            raise ValueError(f"unknown synthetic classes {unknown}; known: {CLASSES}")
        if size < 1 or length < 16:
            raise ValueError(f"need size >= 1 and length >= 16, got size={size}, length={length}")
        self.size, self.length, self.sample_rate, self.seed = size, length, sample_rate, seed
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, (tuple, list)):
            index = index[0]
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, index])
        label = index % len(self.classes)
        audio = synthesize(self.classes[label], self.length, self.sample_rate, rng)
        return {"audio": torch.from_numpy(audio), "label": torch.tensor(label, dtype=torch.long)}
