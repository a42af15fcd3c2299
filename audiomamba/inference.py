"""Audio files → model inputs, as the model's audio contract (``model.audio``) says, in one place.

    wave = read_for_model(model, "clip.flac")         # (L,) float32 at model.audio.sample_rate
    x = to_model_input(model, wave[None])              # (1, L) waveform or (1, L) int64 tokens
    x = file_to_input(model, "clip.flac", pad=True)    # both, padded to the training clip length

Reading: soundfile → mono mix → torchaudio resampling to the model's rate → the trimming and loudness
normalization of its training data (``audiomamba.data.audio_folder.read_audio``) → optional zero padding to
the training clip length → the model's tokenizer (mu-law or linear codes) for token models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .contract import AudioContract
from .data.audio_folder import read_audio


def audio_contract(model) -> AudioContract:
    """``model.audio`` (or ``model`` itself when it is an AudioContract); a ValueError saying how to give a model
    without one its contract. Every function here takes a model or a contract."""
    if isinstance(model, AudioContract):
        return model
    audio = getattr(model, "audio", None)
    if audio is None:
        raise ValueError("the model has no audio contract (sample rate, input kind, tokenizer): set model.audio = "
                         "audiomamba.contract.AudioContract(...) and save it again (models trained with "
                         "`audiomamba train` carry theirs)")
    return audio


def read_for_model(model, path: str | Path, pad: bool = False) -> torch.Tensor:
    """One audio file as the model's training data was read: (L,) float32 at ``model.audio.sample_rate``, mono,
    trimmed and loudness-normalized as its data was. ``pad``: zero-pad at the end to the training clip length
    (``model.audio.length``) when shorter, as a classifier's test clips were.

    Raises FileNotFoundError for a missing file, ``BadFileError`` (naming the file) for an unreadable one."""
    audio = audio_contract(model)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    wave = read_audio(path, audio.sample_rate, audio.trim_db, audio.loudness_db, check=True)  # (L,)
    if pad and audio.length is not None and wave.shape[0] < audio.length:
        wave = torch.nn.functional.pad(wave, (0, audio.length - wave.shape[0]))
    return wave


def to_model_input(model, wave: torch.Tensor) -> torch.Tensor:
    """Waveforms at the model's rate (B, L) float → its input: (B, L) float (waveform models) or (B, L) int64
    tokens from its tokenizer (token models)."""
    audio = audio_contract(model)
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(f"wave: expected a float (batch, length) waveform, got {tuple(wave.shape)} {wave.dtype}")
    if audio.input == "waveform":
        return wave
    if audio.tokenizer is None:
        raise ValueError("this model takes tokens that are not audio (its contract names no audio tokenizer)")
    return audio.tokenizer.build().encode(wave)


def file_to_input(model, path: str | Path, pad: bool = False) -> torch.Tensor:
    """An audio file → the model's input (1, L): :func:`read_for_model` then :func:`to_model_input`."""
    return to_model_input(model, read_for_model(model, path, pad)[None])


def tokens_to_audio(model, tokens: torch.Tensor) -> torch.Tensor:
    """A waveform-token model's tokens (B, L) int → waveforms (B, L) float32 at ``model.audio.sample_rate``."""
    audio = audio_contract(model)
    if audio.input != "tokens" or audio.tokenizer is None:
        raise ValueError("decoding to audio needs a model of waveform tokens (mu-law or linear)")
    return audio.tokenizer.build().decode(tokens)
