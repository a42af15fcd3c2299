"""Baseline models a user compares ours with, behind the same interfaces (``build_model``, ``model.save``,
``load_model``, the audio contract, training, evaluation, ``audiomamba classify``).

:class:`LogMelCNNClassifier` (``arch: logmel_cnn``): the usual spectrogram classifier. Waveform (B, L) → log-mel
spectrogram (B, M, T) → per-band normalization → a VGG-style CNN (blocks of two 3x3 convolutions with BatchNorm and
ReLU, 2x2 max pooling between blocks) → mean over frequency → mean over valid time frames → linear head. Not
causal: it classifies whole clips and has no streaming state.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from .contract import AudioContract
from .heads import ClassifierHead
from .models import _AudioModel, check_contract


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions (padding 1, no bias), each followed by BatchNorm and ReLU: (B, c_in, F, T) → (B, c_out,
    F, T)."""
    layers = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LogMelCNNClassifier(nn.Module):
    """Log-mel + CNN classifier of waveforms (see the module docstring); ``config.logmel_cnn`` sets its shape.

    Exposes what the classifier consumers use: ``classify(x, lengths)``, ``forward(x) -> (logits, None)``,
    ``head.linear`` (its input is the pooled features), ``audio``, ``labels``, ``causal`` (False), ``save``.
    """

    def __init__(self, config):
        super().__init__()
        if config.arch != "logmel_cnn" or config.kind != "classifier" or config.input != "waveform":
            raise ValueError("LogMelCNNClassifier needs arch 'logmel_cnn', kind 'classifier', input 'waveform'")
        c = config.logmel_cnn
        self.config, self._audio = config, None
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, win_length=c.win_length, hop_length=c.hop_length,
            n_mels=c.n_mels, power=2.0, center=True)
        self.norm = nn.BatchNorm1d(c.n_mels)  # per mel band, over batch and time
        widths = [1, *c.channels]
        self.blocks = nn.ModuleList(_conv_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(c.dropout)
        self.head = ClassifierHead(widths[-1], config.n_classes, pooling="mean", causal=False)

    # the audio contract, saving and inference copies work as for the backbone models
    labels = _AudioModel.labels
    num_parameters = _AudioModel.num_parameters
    save = _AudioModel.save
    low_precision_copy = _AudioModel.low_precision_copy

    @property
    def audio(self) -> AudioContract | None:
        """The audio contract (see ``audiomamba.contract``); its sample rate must be the mel filters' rate."""
        return self._audio

    @audio.setter
    def audio(self, contract: AudioContract | None) -> None:
        if contract is not None:
            check_contract(self.config, contract)
            if contract.sample_rate != self.config.logmel_cnn.sample_rate:
                raise ValueError(f"audio contract: {contract.sample_rate} Hz audio, but the log-mel front end is laid "
                                 f"out for logmel_cnn.sample_rate={self.config.logmel_cnn.sample_rate}")
        self._audio = contract

    @property
    def causal(self) -> bool:
        return False

    def init_state(self, batch_size: int, device=None, dtype=None):
        raise ValueError("the log-mel CNN classifies whole clips: it has no streaming state")

    def stream(self, *args, **kwargs):
        raise ValueError("the log-mel CNN classifies whole clips: it cannot be streamed")

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform (B, L) → normalized log-mel spectrogram (B, M, T), T = L // hop_length + 1."""
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x: expected a float waveform (batch, length), got {tuple(x.shape)} {x.dtype}")
        with torch.autocast(x.device.type, enabled=False):  # the STFT and the logarithm in float32
            mel = self.melspec(x.float())  # (B, M, T)
            return self.norm(torch.log(mel + 1e-6))

    def frames(self, lengths: torch.Tensor, n_pools: int, n_frames: int) -> torch.Tensor:
        """Valid frames (B,) of the last block's output (``n_frames`` long, after ``n_pools`` 2x2 poolings) for
        clips of ``lengths`` samples: a pooled frame is valid when the first frame it covers is."""
        valid = lengths // self.config.logmel_cnn.hop_length + 1  # spectrogram frames (centred STFT)
        scale = 2**n_pools
        return ((valid + scale - 1) // scale).clamp(1, n_frames)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Waveform (B, L) → per-frame features (B, T', C) of the last block, averaged over frequency, and the
        number of poolings applied (a map smaller than 2 x 2, from a very short clip, is not pooled further)."""
        h = self.log_mel(x)[:, None]  # (B, 1, M, T)
        n_pools = 0
        for i, block in enumerate(self.blocks):
            if i > 0 and min(h.shape[-2:]) >= 2:
                h, n_pools = self.pool(h), n_pools + 1  # (B, C, M / 2^i, T / 2^i)
            h = block(h)
        return self.dropout(h.mean(2).transpose(1, 2)), n_pools  # (B, C, F', T') → (B, T', C)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform (B, L) → per-frame features (B, T', C) of the last block, averaged over frequency."""
        return self._features(x)[0]

    def classify(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Whole-clip logits (B, C) of waveforms x (B, L); ``lengths`` (B,): valid samples of zero-padded rows."""
        h, n_pools = self._features(x)  # (B, T', C)
        if lengths is not None:
            lengths = self.frames(lengths.to(h.device), n_pools, h.shape[1])
        return self.head.pool_sequence(h, lengths)

    def forward(self, x: torch.Tensor, state=None):
        """x (B, L) → (logits (B, C), None), as a bidirectional classifier returns them."""
        if state is not None:
            raise ValueError("the log-mel CNN has no streaming state")
        return self.classify(x), None
