"""A data set of pre-computed token arrays [K, T] (codec codes) stored as .npy or .pt files under a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from audiomamba.data.audio_folder import BadFileError, FileDataset, list_files

TOKEN_EXTENSIONS = (".npy", ".pt")


def load_tokens(path: Path) -> torch.Tensor:
    """One token file as a (K, T) int64 tensor (1-D arrays are read as K = 1). .pt is loaded with weights_only."""
    try:
        if path.suffix.lower() == ".npy":
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            arr = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(arr, torch.Tensor):
                raise BadFileError(f"token file {path} holds a {type(arr).__name__}, expected a tensor")
    except BadFileError:
        raise
    except Exception as e:
        raise BadFileError(f"cannot read token file {path}: {e}") from None
    if arr.dtype.is_floating_point or arr.dtype == torch.bool or arr.dtype.is_complex:
        raise BadFileError(f"token file {path} has dtype {arr.dtype}, expected integers")
    if arr.dim() == 1:
        arr = arr[None]
    if arr.dim() != 2 or arr.shape[1] == 0:
        raise BadFileError(f"token file {path} has shape {tuple(arr.shape)}, expected [K, T] with T > 0")
    if int(arr.min()) < 0:
        raise BadFileError(f"token file {path} holds negative codes")
    return arr.long()


class TokenFolder(FileDataset):
    """Token arrays under ``root``; items {"tokens": (K, T) int64, "mask": (T,) bool, "label", "index"}.

    Args:
        root: folder searched recursively for .npy / .pt files.
        length: crop (random offset when ``random_crop``, else from the start) or pad with ``pad_token`` to this
            many frames; ``mask`` marks the real frames. None keeps full length.
        n_codebooks: expected K (None: accept any, but all files must agree within a batch).
        vocab_size: if given, codes must be < vocab_size (checked on load).
        labels, label_regex, csv_path, skip_bad_files, classes: as in AudioFolder.
    """

    def __init__(self, root, length: int | None = None, n_codebooks: int | None = None,
                 vocab_size: int | None = None, pad_token: int = 0, random_crop: bool = True,
                 labels: str = "none", label_regex=None, csv_path=None, files=None, skip_bad_files: bool = False,
                 classes=None):
        self.length, self.n_codebooks, self.vocab_size = length, n_codebooks, vocab_size
        self.pad_token, self.random_crop = pad_token, random_crop
        files = [Path(f) for f in files] if files is not None else list_files(root, TOKEN_EXTENSIONS)
        super().__init__(root, files, labels, label_regex, csv_path, skip_bad_files, classes)

    def check_file(self, path: Path) -> None:
        if path.stat().st_size == 0:
            raise BadFileError(f"empty token file {path}")

    def load(self, path: Path, crop_seed: int | None) -> dict:
        tokens = load_tokens(path)  # (K, T)
        if self.n_codebooks is not None and tokens.shape[0] != self.n_codebooks:
            raise BadFileError(f"token file {path} has K={tokens.shape[0]} codebooks, expected {self.n_codebooks}")
        if self.vocab_size is not None and int(tokens.max()) >= self.vocab_size:
            raise BadFileError(f"token file {path} holds code {int(tokens.max())} >= vocab_size {self.vocab_size}")
        T = tokens.shape[1]
        mask = torch.ones(T, dtype=torch.bool)
        if self.length is not None:
            L = self.length
            if T > L:
                start = 0
                if self.random_crop and crop_seed is not None:
                    start = int(np.random.default_rng(crop_seed).integers(0, T - L + 1))
                tokens, mask = tokens[:, start : start + L], mask[start : start + L]
            elif T < L:
                tokens = torch.nn.functional.pad(tokens, (0, L - T), value=self.pad_token)
                mask = torch.nn.functional.pad(mask, (0, L - T), value=False)
        return {"tokens": tokens, "mask": mask}
