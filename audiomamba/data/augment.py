"""On-the-fly waveform augmentation of training clips: speed, pitch, reverberation, band-stop, time masks, time
shift, gain and additive noise (configured by ``data.augment``, an :class:`audiomamba.config.AugmentConfig`).

Every augmentation acts on one clip (L,) float32 after the data set cut it to the clip length, and returns a
clip of the same length, so the chain runs the same on every audio source and a token model receives the
augmented waveform before its tokenizer. All random draws of an item come from its seed: the training sampler
draws one per item from (seed, epoch), so a run and its resumption see the same augmented clips, while another
seed or epoch sees others. Validation and test items carry no seed and are never augmented.

Transforms come from torchaudio and librosa where they exist (noise at an SNR, gain, FFT convolution, band-reject
biquad, phase vocoder); resampling goes through libsoxr (librosa's ``soxr_hq``), which handles any ratio in well
under a millisecond per clip, where torchaudio's polyphase resampler builds a long kernel for ratios such as 1.1
(tens of milliseconds) and so makes its ``pitch_shift`` take seconds per clip at 8 kHz.
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

PEAK = 0.99  # augmented clips are scaled down to this peak when they exceed it
ORDER = ("speed", "pitch", "reverb", "band_stop", "time_mask", "shift", "gain", "noise")  # the chain's order


# ------------------------------------------------------------------------------------------ single transforms


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """(T,) -> (length,): zero-pad at the end, or keep the ``length`` consecutive samples with the most energy
    (so that a slowed-down clip loses its silence, not its speech)."""
    T = wave.shape[-1]
    if T <= length:
        return torch.nn.functional.pad(wave, (0, length - T))
    energy = torch.cat([wave.new_zeros(1), wave.double().pow(2).cumsum(0)])  # (T + 1,)
    start = int((energy[length:] - energy[:-length]).argmax())
    return wave[start : start + length]


def change_speed(wave: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
    """Speed perturbation: (T,) -> (~T / factor,), resampled so that it plays ``factor`` times faster (tempo and
    pitch both scale by ``factor``)."""
    if factor == 1.0:
        return wave
    y = librosa.resample(wave.numpy(), orig_sr=sample_rate * factor, target_sr=sample_rate, res_type="soxr_hq")
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def shift_pitch(wave: torch.Tensor, sample_rate: int, semitones: float, n_fft: int = 256) -> torch.Tensor:
    """Pitch shift by ``semitones`` at constant duration: (T,) -> (T,). As ``torchaudio.functional.pitch_shift``:
    a phase-vocoder time stretch by 2^(semitones/12) (torchaudio's ``phase_vocoder`` on an STFT of ``n_fft``
    points, hop n_fft / 4), then resampling back to T samples, here with libsoxr. Clips of at most n_fft / 2
    samples are returned unchanged."""
    T, hop = wave.shape[-1], n_fft // 4
    if semitones == 0.0 or T <= n_fft // 2:
        return wave
    rate = 2.0 ** (-semitones / 12.0)  # < 1 (raising the pitch): stretched longer, then resampled shorter
    window = torch.hann_window(n_fft, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)  # (n_fft / 2 + 1, frames)
    phase_advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1, dtype=wave.dtype)[:, None]
    stretched = torch.istft(AF.phase_vocoder(spec, rate, phase_advance), n_fft, hop, window=window,
                            length=int(round(T / rate)))  # (T / rate,)
    y = librosa.resample(stretched.numpy(), orig_sr=sample_rate / rate, target_sr=sample_rate, res_type="soxr_hq")
    return fit_length(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), T)


def room_impulse_response(sample_rate: int, rt60: float, drr_db: float, rng: np.random.Generator) -> torch.Tensor:
    """A synthetic room impulse response (n,): a unit direct path, then Gaussian noise whose envelope falls by
    60 dB in ``rt60`` seconds, scaled so that the direct path's energy over the tail's is ``drr_db`` dB.
    n = rt60 · sample_rate (at least 2) samples."""
    n = max(2, int(round(rt60 * sample_rate)))
    t = torch.arange(1, n, dtype=torch.float64) / sample_rate  # (n - 1,) seconds
    tail = torch.from_numpy(rng.standard_normal(n - 1)) * torch.pow(10.0, -3.0 * t / rt60)  # -60 dB at rt60
    tail = tail * (10.0 ** (-drr_db / 20.0) / tail.norm().clamp_min(1e-12))
    return torch.cat([torch.ones(1, dtype=torch.float64), tail]).float()


def reverberate(wave: torch.Tensor, impulse_response: torch.Tensor) -> torch.Tensor:
    """(T,) convolved with a room impulse response (n,), cut to T samples, rescaled to the input's RMS."""
    T, n = wave.shape[-1], impulse_response.shape[-1]
    # trailing zeros leave the convolution unchanged and make the FFT length a power of two (fast)
    padded = torch.nn.functional.pad(impulse_response, (0, (1 << (T + n - 2).bit_length()) - (T + n - 1)))
    y = AF.fftconvolve(wave, padded)[:T]  # (T,)
    rms_in, rms_out = wave.pow(2).mean().sqrt(), y.pow(2).mean().sqrt()
    return y * (rms_in / rms_out) if rms_out > 1e-12 else y


def band_stop(wave: torch.Tensor, sample_rate: int, center_hz: float, width_hz: float) -> torch.Tensor:
    """Frequency masking: a band-reject biquad centred on ``center_hz`` with a -3 dB width of ``width_hz``
    (Q = centre / width): (T,) -> (T,)."""
    return AF.bandreject_biquad(wave[None], sample_rate, center_hz, center_hz / width_hz)[0]


def time_mask(wave: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """Time masking: samples [start, start + width) set to zero: (T,) -> (T,)."""
    out = wave.clone()
    out[max(start, 0) : max(start + width, 0)] = 0.0
    return out


def time_shift(wave: torch.Tensor, shift: int) -> torch.Tensor:
    """Delay by ``shift`` samples (negative: advance); zeros enter at the edge: (T,) -> (T,)."""
    T = wave.shape[-1]
    out = torch.zeros_like(wave)
    if abs(shift) >= T:
        return out
    if shift >= 0:
        out[shift:] = wave[: T - shift]
    else:
        out[:shift] = wave[-shift:]
    return out


def add_noise(wave: torch.Tensor, snr_db: float, rng: np.random.Generator) -> torch.Tensor:
    """White Gaussian noise added at a signal-to-noise ratio of ``snr_db`` dB over the whole clip (T,) -> (T,).
    A silent clip stays silent."""
    noise = torch.from_numpy(rng.standard_normal(wave.shape[-1]).astype(np.float32))
    return AF.add_noise(wave[None], noise[None], torch.tensor([float(snr_db)]))[0]


def peak_limit(wave: torch.Tensor, peak: float = PEAK) -> torch.Tensor:
    """Scale (T,) down so that its largest magnitude is ``peak`` when it exceeds it."""
    top = float(wave.abs().max()) if wave.numel() else 0.0
    return wave * (peak / top) if top > peak else wave


# ------------------------------------------------------------------------------------------------ the chain


class WaveAugment:
    """The configured chain: ``WaveAugment(cfg.data.augment, sample_rate)(wave, seed)`` -> augmented wave.

    Args:
        cfg: an :class:`audiomamba.config.AugmentConfig`.
        sample_rate: the clips' rate in Hz.

    Call with a clip (L,) float and an integer seed; returns (L,) float32. Equal (clip, seed) give equal output.
    """

    def __init__(self, cfg, sample_rate: int):
        self.cfg, self.sample_rate = cfg, sample_rate

    def __call__(self, wave: torch.Tensor, seed: int) -> torch.Tensor:
        if wave.dim() != 1:
            raise ValueError(f"wave: expected one clip (L,), got {tuple(wave.shape)}")
        c, L = self.cfg, wave.shape[0]
        wave = wave.float()
        # each augmentation draws from its own generator of (seed, augmentation): whether it acts and its
        # parameters do not change when another augmentation is turned on or off
        for k, name in enumerate(ORDER):
            rng = np.random.default_rng([int(seed), 0x5EED, k])
            if rng.random() < getattr(c, name).p:
                wave = self._apply(name, wave, rng, L)
        return peak_limit(wave).float()

    def _apply(self, name: str, wave: torch.Tensor, rng: np.random.Generator, L: int) -> torch.Tensor:
        """One augmentation of the chain, its parameters drawn from ``rng``: (L,) -> (L,)."""
        c, sr = self.cfg, self.sample_rate
        if name == "speed":
            return fit_length(change_speed(wave, sr, float(rng.choice(c.speed.factors))), L)
        if name == "pitch":
            return shift_pitch(wave, sr, float(rng.uniform(-c.pitch.semitones, c.pitch.semitones)))
        if name == "reverb":
            rt60, drr = float(rng.uniform(*c.reverb.rt60)), float(rng.uniform(*c.reverb.drr_db))
            return reverberate(wave, room_impulse_response(sr, rt60, drr, rng))
        if name == "band_stop":
            for _ in range(int(rng.integers(1, c.band_stop.n + 1))):
                center = float(rng.uniform(100.0, 0.45 * sr))
                wave = band_stop(wave, sr, center, float(rng.uniform(*c.band_stop.hz)))
            return wave
        if name == "time_mask":
            max_width = max(1, int(c.time_mask.ms * sr / 1000))
            for _ in range(int(rng.integers(1, c.time_mask.n + 1))):
                width = int(rng.integers(1, max_width + 1))
                wave = time_mask(wave, int(rng.integers(0, max(L - width, 0) + 1)), width)
            return wave
        if name == "shift":
            max_shift = int(c.shift.ms * sr / 1000)
            return time_shift(wave, int(rng.integers(-max_shift, max_shift + 1)))
        if name == "gain":
            return AF.gain(wave, float(rng.uniform(-c.gain.db, c.gain.db)))
        return add_noise(wave, float(rng.uniform(*c.noise.snr_db)), rng)


class AugmentedDataset(Dataset):
    """A data set of audio items ({"audio": (L,), ...}) whose seeded items are augmented.

    Items are read as ``dataset[(index, seed)]`` (how the training sampler asks for them) and their "audio" goes
    through ``augment(audio, seed)``; label and index pass through unchanged. A plain ``dataset[index]`` (no seed)
    returns the item as it is. Other attributes (files, classes, labels) are the wrapped data set's.
    """

    def __init__(self, dataset, augment: WaveAugment):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name in ("dataset", "augment"):  # not set yet (e.g. while unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        out = self.dataset[item]
        if isinstance(item, (tuple, list)) and item[1] is not None:
            out = dict(out)
            out["audio"] = self.augment(out["audio"], int(item[1]))
        return out
