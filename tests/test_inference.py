"""audiomamba.inference: files become model inputs as the model's audio contract says (rate, mono mix,
loudness, padding, tokenizer), checked against the same steps written out here with soundfile and torchaudio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from audiomamba.contract import AudioContract, TokenizerSpec
from audiomamba.inference import audio_contract, file_to_input, read_for_model, to_model_input, tokens_to_audio
from audiomamba.models import build_model

TINY = {"backbone.d_model": 8, "backbone.n_blocks": [1], "backbone.pool": [2, 2]}


def _stereo_file(path, rate: int, frames: int, seed: int):
    """A quiet stereo float WAV of fresh random samples; returns them (frames, 2)."""
    data = 0.05 * np.random.default_rng(seed).standard_normal((frames, 2)).astype(np.float32)
    sf.write(str(path), data, rate, subtype="FLOAT")
    return data


def test_read_for_model_resamples_mixes_normalizes_and_pads(tmp_path):
    audio = AudioContract(8000, "waveform", labels=("a", "b"), length=2000, loudness_db=-20.0)
    model = build_model("classifier_small", audio=audio, n_classes=2, **TINY)
    data = _stereo_file(tmp_path / "x.wav", 22050, 4410, seed=1)  # 0.2 s at 22.05 kHz -> 1600 samples at 8 kHz
    mono = torch.from_numpy(data.mean(axis=1))
    want = AF.resample(mono, 22050, 8000)
    want = want * (10 ** (-20 / 20) / want.pow(2).mean().sqrt())  # RMS -20 dBFS (peak far below 0.99)
    got = read_for_model(model, tmp_path / "x.wav")
    assert got.shape == (1600,) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6)
    assert float(20 * torch.log10(got.pow(2).mean().sqrt())) == pytest.approx(-20.0, abs=1e-4)
    padded = read_for_model(model, tmp_path / "x.wav", pad=True)  # shorter than the 2000-sample clips
    assert padded.shape == (2000,) and torch.equal(padded[:1600], got) and not padded[1600:].any()
    x = file_to_input(model, tmp_path / "x.wav")
    assert x.shape == (1, 1600) and torch.equal(x[0], got)  # waveform models take the samples themselves


@pytest.mark.parametrize("kind,bits", [("mulaw", 8), ("linear", 6)])
def test_to_model_input_uses_the_contracts_tokenizer(kind, bits, tmp_path):
    audio = AudioContract(16000, "tokens", TokenizerSpec(kind, bits=bits))
    lm = build_model("sc09_small", audio=audio, vocab_size=2**bits, **TINY)
    wave = (0.4 * torch.randn(3, 77, generator=torch.Generator().manual_seed(bits))).clamp(-1, 1)
    V = 2**bits
    want = AF.mu_law_encoding(wave, V) if kind == "mulaw" else torch.round((wave.double() + 1) * (V - 1) / 2).long()
    tokens = to_model_input(lm, wave)
    assert tokens.dtype == torch.int64 and torch.equal(tokens, want)
    back = tokens_to_audio(lm, tokens)
    if kind == "mulaw":
        assert torch.allclose(back, AF.mu_law_decoding(want, V), atol=1e-6)
    else:  # the nearest of V levels from -1 to 1
        assert torch.allclose(back.double(), want.double() * 2 / (V - 1) - 1, atol=1e-6)
        assert (back - wave).abs().max() <= 1 / (V - 1) + 1e-6
    path = tmp_path / "y.wav"
    _stereo_file(path, 16000, 500, seed=2)
    assert torch.equal(file_to_input(lm, path), to_model_input(lm, read_for_model(lm, path)[None]))


def test_inputs_the_contract_cannot_make_are_clear_errors(tmp_path):
    bare = build_model("classifier_small", **TINY)
    with pytest.raises(ValueError, match="no audio contract"):
        to_model_input(bare, torch.zeros(1, 8))
    codec = AudioContract(24000, "tokens", TokenizerSpec("codec", n_codebooks=2, pattern="parallel", codebook_size=8))
    with pytest.raises(ValueError, match="codec tokens: encode the audio with the codec"):
        to_model_input(codec, torch.zeros(1, 8))
    with pytest.raises(ValueError, match="tokens that are not audio"):
        to_model_input(AudioContract(8000, "tokens"), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="float"):
        to_model_input(AudioContract(8000, "waveform"), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_for_model(AudioContract(8000, "waveform"), tmp_path / "missing.wav")
    assert audio_contract(codec) is codec
