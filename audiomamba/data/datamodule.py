"""Lightning DataModules: train/val/test splits of the synthetic set, an audio folder or a token folder.

The training loader is resumable: its batch sampler draws epoch e's order from (seed, e), gives every item a
crop seed drawn from the same generator, shards by rank under DDP, and saves (epoch, batches consumed) in the
checkpoint, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from audiomamba.data.audio_folder import AUDIO_EXTENSIONS, FSDD_REGEX, AudioFolder, list_files
from audiomamba.data.augment import AugmentedDataset, WaveAugment
from audiomamba.data.selective_copying import SelectiveCopying
from audiomamba.data.synthetic import SyntheticAudio
from audiomamba.data.tokens import TOKEN_EXTENSIONS, TokenFolder

SOURCES = ("synthetic", "folder", "tokens", "selective_copying")
SPLITS = ("random", "fsdd", "folders", "speaker")


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableBatchSampler(Sampler):
    """Batches of (index, crop_seed) pairs; epoch e's order and crop seeds come from (seed, e).

    Under DDP each rank takes every world_size-th item of the permutation (set ``use_distributed_sampler=False``
    in the Trainer). ``state_dict`` is {"epoch", "consumed"}; loading it makes the next iteration start at that
    epoch, after the consumed batches.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.consumed, self._skip = 0, 0, 0

    def _n_local(self) -> int:
        _, world = _dist_rank_world()
        return self.n_items // world if world > 1 else self.n_items

    def __len__(self) -> int:
        n = self._n_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        rank, world = _dist_rank_world()
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n_items, generator=g) if self.shuffle else torch.arange(self.n_items)
        crop_seeds = torch.randint(0, 2**62, (self.n_items,), generator=g)
        if world > 1:
            order = order[: self._n_local() * world][rank::world]
        n_batches = len(self)
        if skip >= n_batches:  # the checkpoint was taken at the very end of an epoch
            epoch, skip = epoch + 1, 0
            self.epoch = epoch
            yield from self.__iter__()
            return
        for b in range(skip, n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(int(i), int(crop_seeds[i])) for i in idx]
        self.epoch = epoch + 1

    def mark(self, epoch: int, consumed: int) -> None:
        """Record progress (called before each training step): ``consumed`` batches of ``epoch`` are done."""
        self.epoch_in_progress, self.consumed = epoch, consumed

    def state_dict(self) -> dict:
        return {"epoch": getattr(self, "epoch_in_progress", self.epoch), "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed, self._skip = int(state["epoch"]), int(state["consumed"]), int(state["consumed"])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning saves in and restores from checkpoints (via its batch sampler)."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def _seeded_val(rest: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val): a seeded ``val_fraction`` of ``rest`` (at least one file) is validation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(rest), generator=g).tolist()
    n_val = max(1, round(val_fraction * len(rest)))
    return sorted(rest[i] for i in perm[n_val:]), sorted(rest[i] for i in perm[:n_val])


def split_files(files: list[Path], root: Path, rule: str, val_fraction: float, test_fraction: float, seed: int,
                label_regex: str | None = None, test_speaker: str | None = None):
    """Split audio/token files into (train, val, test) lists.

    - "random": a seeded permutation; ``test_fraction`` and ``val_fraction`` of the files (at least one each).
    - "fsdd": FSDD's conventional rule: take index 0-4 -> test; ``val_fraction`` of the rest, seeded -> val.
    - "folders": top-level subfolders train/, val/ (or valid/), test/ under the root.
    - "speaker": every file of ``test_speaker`` (the group "speaker" of ``label_regex`` on the file name, FSDD's
      by default) -> test; ``val_fraction`` of the other speakers' files, seeded -> val (leave one speaker out).
    """
    if rule == "speaker":
        pattern = re.compile(label_regex or FSDD_REGEX)
        if "speaker" not in pattern.groupindex:
            raise ValueError(f"split 'speaker': label_regex {pattern.pattern!r} has no group named 'speaker'")
        test, rest, speakers = [], [], set()
        for f in files:
            m = pattern.search(f.name)
            if m is None:
                raise ValueError(f"split 'speaker': file name {f.name} does not match {pattern.pattern!r}")
            speakers.add(m.group("speaker"))
            (test if m.group("speaker") == test_speaker else rest).append(f)
        if not test or not rest:
            raise ValueError(f"split 'speaker': test_speaker {test_speaker!r} must be one of several speakers, "
                             f"found {sorted(speakers)}")
        train, val = _seeded_val(rest, val_fraction, seed)
        return train, val, test
    if rule == "folders":
        parts = {"train": [], "val": [], "test": []}
        for f in files:
            top = f.relative_to(root).parts[0]
            top = "val" if top == "valid" else top
            if top in parts:
                parts[top].append(f)
        missing = [k for k, v in parts.items() if not v]
        if missing:
            raise ValueError(f"split 'folders': no files under {root}/{{{','.join(missing)}}}")
        return parts["train"], parts["val"], parts["test"]
    if rule == "fsdd":
        pattern = re.compile(FSDD_REGEX)
        test, rest = [], []
        for f in files:
            m = pattern.match(f.name)
            if m is None:
                raise ValueError(f"split 'fsdd': file name {f.name} is not {{digit}}_{{speaker}}_{{index}}.wav")
            (test if int(m.group("index")) <= 4 else rest).append(f)
        train, val = _seeded_val(rest, val_fraction, seed)
        return train, val, test
    if rule == "random":
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(files), generator=g).tolist()
        n_test = max(1, round(test_fraction * len(files)))
        n_val = max(1, round(val_fraction * len(files)))
        if n_test + n_val >= len(files):
            raise ValueError(f"split 'random': {len(files)} files are too few for val and test")
        test = sorted(files[i] for i in perm[:n_test])
        val = sorted(files[i] for i in perm[n_test : n_test + n_val])
        train = sorted(files[i] for i in perm[n_test + n_val :])
        return train, val, test
    raise ValueError(f"split must be one of {SPLITS}, got {rule!r}")


class AudioDataModule(L.LightningDataModule):
    """Train/val/test loaders for ``cfg`` (a DataConfig). Batches: {"audio": (B, L)} or {"tokens": (B, K, T),
    "mask": (B, T)}, plus "label" (B,) and, for files, "index" (B,). With ``cfg.augment`` enabled, training audio
    items are augmented on the fly (``audiomamba.data.augment``), seeded per (seed, epoch, item)."""

    def __init__(self, cfg, seed: int = 0):
        super().__init__()
        if cfg.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {cfg.source!r}")
        self.cfg, self.seed = cfg, seed
        self.train_set = self.val_set = self.test_set = None
        self.train_batch_sampler = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        c = self.cfg
        if c.source == "synthetic":
            s = c.synthetic
            kw = dict(length=c.length, sample_rate=c.sample_rate, classes=list(s.classes))
            self.train_set = SyntheticAudio(size=s.train_size, seed=s.seed, **kw)
            self.val_set = SyntheticAudio(size=s.val_size, seed=s.seed + 1, **kw)
            self.test_set = SyntheticAudio(size=s.test_size, seed=s.seed + 2, **kw)
            self._augment_train_set()
            return
        if c.source == "selective_copying":
            s = c.selective_copying
            kw = dict(context_length=s.context_length, n_tokens=s.n_tokens, vocab_size=s.vocab_size)
            self.train_set = SelectiveCopying(s.train_size, seed=s.seed, **kw)
            self.val_set = SelectiveCopying(s.val_size, seed=s.seed + 1, **kw)
            self.test_set = SelectiveCopying(s.test_size, seed=s.seed + 2, **kw)
            return
        if not c.root:
            raise ValueError(f"data.source={c.source!r} needs data.root (the folder with the files)")
        root = Path(c.root).expanduser()
        exts = AUDIO_EXTENSIONS if c.source == "folder" else TOKEN_EXTENSIONS
        files = list_files(root, tuple(c.extensions) if c.extensions else exts)
        train, val, test = split_files(files, root, c.split, c.val_fraction, c.test_fraction, c.split_seed,
                                       label_regex=c.label_regex, test_speaker=c.test_speaker)
        common = dict(labels=c.labels, label_regex=c.label_regex, csv_path=c.csv_path, skip_bad_files=c.skip_bad_files)
        def make(fs, crop, classes=None):
            if c.source == "folder":
                return AudioFolder(root, sample_rate=c.sample_rate, length=c.length, files=fs, random_crop=crop,
                                   random_pad=c.random_pad, gain_db=c.gain_db, trim_db=c.trim_db,
                                   loudness_db=c.loudness_db, classes=classes, **common)
            return TokenFolder(root, length=c.length, n_codebooks=c.n_codebooks, files=fs, random_crop=crop,
                               classes=classes, **common)

        self.train_set = make(train, c.random_crop)
        classes = self.train_set.classes if c.labels != "none" else None
        self.val_set, self.test_set = make(val, False, classes), make(test, False, classes)
        self._augment_train_set()

    def _augment_train_set(self) -> None:
        augment = getattr(self.cfg, "augment", None)
        if isinstance(augment, DictConfig):  # a DataConfig given as an OmegaConf node
            augment = OmegaConf.to_object(augment)
        if augment is not None and augment.enabled:
            if self.cfg.source not in ("folder", "synthetic"):
                raise ValueError(f"data.augment acts on audio: data.source {self.cfg.source!r} holds no waveforms")
            self.train_set = AugmentedDataset(self.train_set, WaveAugment(augment, self.cfg.sample_rate))

    @property
    def classes(self) -> list[str]:
        self.setup()
        return list(self.train_set.classes)

    def train_dataloader(self):
        self.train_batch_sampler = ResumableBatchSampler(len(self.train_set), self.cfg.batch_size, seed=self.seed)
        # loaders get their own generators: creating an iterator must not draw from the global RNG (dropout's),
        # or a resumed run would see different random numbers than the uninterrupted one
        return ResumableDataLoader(self.train_set, batch_sampler=self.train_batch_sampler,
                                   num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0,
                                   generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, ds):
        bs = self.cfg.eval_batch_size or self.cfg.batch_size
        return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=self.cfg.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return self._eval_loader(self.val_set)

    def test_dataloader(self):
        return self._eval_loader(self.test_set)
