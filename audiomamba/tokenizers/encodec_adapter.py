"""EnCodec (Defossez et al. 2022) as a codec tokenizer: audio <-> (B, K, T) code streams.

Needs the optional ``encodec`` package (``pip install 'audiomamba[codec]'``). Weights are read only from a local
file or from the torch hub cache (``$TORCH_HOME/hub/checkpoints``); nothing is downloaded at run time. To fill the
cache once, on a machine with network access:
``python -c "import encodec; encodec.EncodecModel.encodec_model_24khz()"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchaudio.functional as AF

CHECKPOINTS = {"encodec_24khz": "encodec_24khz-d7cc33bc.th"}


def _import_encodec():
    try:
        import encodec
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the EnCodec tokenizer needs the optional 'encodec' package: pip install 'audiomamba[codec]'"
        ) from e
    return encodec


def find_checkpoint(name: str = "encodec_24khz", checkpoint: str | os.PathLike | None = None) -> Path:
    """The local weight file: ``checkpoint`` if given, else the torch hub cache entry. Never downloads."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"EnCodec checkpoint file not found: {path}")
        return path
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown EnCodec model {name!r}; known: {sorted(CHECKPOINTS)}")
    path = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINTS[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"EnCodec weights not found at {path} (audiomamba never downloads at run time). Pass checkpoint=PATH, "
            "or fill the torch hub cache once with: "
            "python -c \"import encodec; encodec.EncodecModel.encodec_model_24khz()\""
        )
    return path


class EncodecTokenizer:
    """Audio <-> EnCodec codes (the causal 24 kHz model, one segment, no normalization).

    Args:
        bandwidth: target bandwidth in kbps (1.5, 3, 6, 12, 24 -> K = 2, 4, 8, 16, 32 codebooks).
        pretrained: load weights (from ``checkpoint`` or the torch hub cache); False gives random weights (tests).
        checkpoint: path to a local ``encodec_24khz-*.th`` state dict.
        device: where the codec runs.
    """

    kind = "encodec"

    def __init__(self, bandwidth: float = 6.0, pretrained: bool = True, checkpoint=None, device="cpu"):
        encodec = _import_encodec()
        model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        if pretrained:
            path = find_checkpoint("encodec_24khz", checkpoint)
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        if bandwidth not in model.target_bandwidths:
            raise ValueError(f"bandwidth must be one of {model.target_bandwidths}, got {bandwidth}")
        model.set_target_bandwidth(bandwidth)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.bandwidth = bandwidth
        self.sample_rate = model.sample_rate
        self.frame_rate = model.frame_rate
        self.n_codebooks = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, bandwidth)
        self.vocab_size = model.quantizer.bins  # codes per codebook

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Args: wave (B, L) or (L,) float, at ``sample_rate`` (default: the codec's 24 kHz).

        Returns: codes (B, K, T) int64 in [0, V), T = ceil(L' / 320) frames at 75 Hz (L' after resampling).
        """
        if wave.dim() == 1:
            wave = wave[None]
        if wave.dim() != 2:
            raise ValueError(f"wave must be (B, L) or (L,), got {tuple(wave.shape)}")
        wave = wave.float().to(self.device)
        if sample_rate is not None and sample_rate != self.sample_rate:
            wave = AF.resample(wave, sample_rate, self.sample_rate)
        frames = self.model.encode(wave[:, None, :])  # list of (codes (B, K, T), scale)
        codes = torch.cat([f[0] for f in frames], dim=-1)
        return codes.long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (B, K, T) integer. Returns: wave (B, 320 T) float32 at 24 kHz."""
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise ValueError(f"codes must be (B, K={self.n_codebooks}, T), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size})")
        wave = self.model.decode([(codes.long().to(self.device), None)])  # (B, 1, L)
        return wave[:, 0].float()

    def __repr__(self) -> str:
        return f"EncodecTokenizer(bandwidth={self.bandwidth}, K={self.n_codebooks}, V={self.vocab_size})"
