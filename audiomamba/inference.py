"""Audio files → model inputs, as the model's audio contract (``model.audio``) says, in one place.

    wave = read_for_model(model, "clip.flac")         # (L,) float32 at model.audio.sample_rate
    x = to_model_input(model, wave[None])              # (1, L) waveform or (1, L) int64 tokens
    x = file_to_input(model, "clip.flac", pad=True)    # both, padded to the training clip length

Reading: soundfile → mono mix → torchaudio resampling to the model's rate → the trimming and loudness
normalization of its training data (``audiomamba.data.audio_folder.read_audio``) → optional zero padding to
the training clip length → the model's tokenizer (mu-law or linear codes) for token models.

Long inputs run in bounded memory (:func:`classify_long`): a causal model takes them in chunks of
``CHUNK_SAMPLES`` through its state (exactly the one-call result, up to float rounding); a bidirectional model,
which needs its whole input at once, sees at most ``BIDIRECTIONAL_WINDOW`` samples per call: a longer input is
cut into near-equal consecutive windows, and its logits are the mean of the windows' logits.
"""

from __future__ import annotations

import math
import warnings
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
        n = wave.shape[0]
        warnings.warn(f"{path} holds {n} sample(s) ({1000 * n / audio.sample_rate:.1f} ms at {audio.sample_rate} "
                      f"Hz), fewer than the model's {audio.length}-sample clips: padded with {audio.length - n} "
                      f"samples of silence ({100 * (audio.length - n) / audio.length:.1f}% of what the model sees)",
                      stacklevel=2)
        wave = torch.nn.functional.pad(wave, (0, audio.length - n))
    return wave


def to_model_input(model, wave: torch.Tensor) -> torch.Tensor:
    """Waveforms at the model's rate (B, L) float → its input: (B, L) float (waveform models) or (B, L) int64
    tokens from its tokenizer (token models)."""
    audio = audio_contract(model)
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(f"wave: expected a float (batch, length) waveform, got {tuple(wave.shape)} {wave.dtype}")
    if not bool(torch.isfinite(wave).all()):
        raise ValueError(f"wave: {int(wave.isnan().sum())} NaN and {int(wave.isinf().sum())} infinite sample(s) "
                         f"(of {wave.numel()})")
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


# samples per forward call of a causal model over a long input: ~70 MB of activations for classifier_small, and
# within a few percent of the one-call speed on a CPU
CHUNK_SAMPLES = 2**15
# the longest input a bidirectional classifier sees in one call (~600 MB of activations for
# classifier_bidirectional: 33 s at 16 kHz); longer inputs are classified in windows
BIDIRECTIONAL_WINDOW = 2**19


@torch.no_grad()
def classify_long(model, x: torch.Tensor, chunk: int = CHUNK_SAMPLES, window: int = BIDIRECTIONAL_WINDOW
                  ) -> torch.Tensor:
    """Whole-input logits (B, C) of an AudioClassifier for inputs of any length, in bounded memory.

    Args:
        model: an AudioClassifier.
        x: (B, L) waveform or tokens ((B, L, K) for K codebooks).
        chunk: causal models: samples per forward call; the state carries over between calls, so the result is
            ``model.classify(x)`` up to float rounding, with activations for ``chunk`` samples at a time.
        window: bidirectional models: inputs of up to ``window`` samples are classified in one call
            (``model.classify(x)``); a longer input is cut into ``ceil(L / window)`` near-equal consecutive
            windows (no overlap, no padding), each classified on its own, and the windows' logits are averaged.
    """
    if chunk < 1 or window < 1:
        raise ValueError(f"chunk and window must be >= 1, got {chunk}, {window}")
    length = x.shape[1]
    if model.causal:
        if length <= chunk:
            return model.classify(x)
        state = None
        for start in range(0, length, chunk):
            logits, state = model(x[:, start : start + chunk], state)  # (B, n, C) running logits
        return logits[:, -1]
    if length <= window:
        return model.classify(x)
    pieces = torch.tensor_split(x, math.ceil(length / window), dim=1)
    return torch.stack([model.classify(p) for p in pieces]).mean(0)


def causal_nll(model, seq: torch.Tensor, valid: torch.Tensor | None = None, chunk: int = CHUNK_SAMPLES
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced NLL of a causal AudioLM over token sequences of any length, in bounded memory.

    Args:
        seq: (B, S) or (B, S, K) tokens.
        valid: same shape, bool: which positions count as targets (None: all).
        chunk: positions per forward call; the state carries over, so the sums equal one call's.

    Returns:
        (summed NLL in nats over the valid targets 1..S-1, their count), both float32 scalars.
    """
    length = seq.shape[1]
    total = torch.zeros((), device=seq.device)
    count = torch.zeros((), device=seq.device)
    state = None
    for start in range(0, max(length - 1, 0), chunk):
        stop = min(start + chunk, length - 1)  # logits at positions start..stop-1 predict start+1..stop
        logits, state = model(seq[:, start:stop], state)  # (B, n[, K], V)
        target = seq[:, start + 1 : stop + 1]
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                reduction="none")
        weight = (torch.ones_like(nll) if valid is None
                  else valid[:, start + 1 : stop + 1].reshape(-1).to(nll.dtype))
        total += (nll * weight).sum()
        count += weight.sum()
    return total, count
