"""Data: audio folders, token folders, the synthetic default set, and Lightning DataModules."""

from audiomamba.data.audio_folder import FSDD_REGEX, AudioFolder, BadFileError, normalize_loudness, read_audio
from audiomamba.data.datamodule import AudioDataModule, ResumableBatchSampler, ResumableDataLoader, split_files
from audiomamba.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from audiomamba.data.synthetic import SyntheticAudio
from audiomamba.data.tokens import TokenFolder, load_tokens

__all__ = [
    "FSDD_REGEX", "AudioFolder", "BadFileError", "normalize_loudness", "read_audio", "AudioDataModule",
    "ResumableBatchSampler", "ResumableDataLoader", "split_files", "SYNTHETIC_CLASSES", "SyntheticAudio",
    "TokenFolder", "load_tokens",
]
