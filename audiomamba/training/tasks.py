"""Lightning glue around the plain models: the LM task (teacher forcing, NLL in bits) and the classifier task.

The models stay plain ``nn.Module``s (``self.model``); these modules add the loss, metrics, optimizer, EMA of
the weights, and the extra checkpoint content that makes resuming exact (RNG states, the resolved config).
"""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from audiomamba.config import ExperimentConfig, experiment_config_to_yaml
from audiomamba.contract import AudioContract
from audiomamba.models import build_model
from audiomamba.tokenizers import CodebookPattern
from audiomamba.training.optim import build_optimizer

LN2 = math.log(2.0)


def _rng_states() -> dict:
    """All RNG states as tensors and plain values (so checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, cached], "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _Task(L.LightningModule):
    """Shared: model, optimizer + schedule, EMA, checkpoint extras."""

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.cfg = cfg
        # the model carries the audio contract of its data (rate, tokenizer; label names once the data is scanned)
        self.model = build_model(cfg.model, audio=AudioContract.from_experiment(cfg))
        self.ema = None
        if cfg.optim.ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)

    @property
    def tokenizer(self):
        """The waveform tokenizer of the model's audio contract (audio batches → tokens); None for waveform
        input, codec tokens and non-audio tokens."""
        tok = self.model.audio.tokenizer if self.model.audio is not None else None
        return tok.build() if tok is not None and tok.kind != "codec" else None

    @property
    def classes(self) -> list[str]:
        """A classifier's label names in index order (its model's ``audio.labels``; saved in checkpoints)."""
        return list(self.model.labels)

    @classes.setter
    def classes(self, names) -> None:
        if self.cfg.model.kind != "classifier":
            return  # a language model has no labels
        names = list(names)
        if names and len(names) != self.cfg.model.n_classes:
            raise ValueError(f"the data has {len(names)} classes, model.n_classes is {self.cfg.model.n_classes}: "
                             f"set model.n_classes={len(names)}")
        for model in (self.model, self.ema.module if self.ema is not None else None):
            if model is not None:
                model.audio = model.audio.with_labels(names)

    @property
    def eval_model(self):
        """The weights used for validation, testing and export: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def configure_optimizers(self):
        total = self.cfg.trainer.max_steps
        if total is None or total < 1:
            total = int(self.trainer.estimated_stepping_batches)
        opt, sched = build_optimizer(self.model, self.cfg.optim, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the weights change, before any callback (a checkpoint saved at the end of this batch holds
        # the EMA that includes this step, so a resumed run continues it exactly)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["audiomamba_config"] = experiment_config_to_yaml(self.cfg)
        checkpoint["rng_states"] = _rng_states()
        checkpoint["audiomamba_classes"] = list(self.classes)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.classes = list(checkpoint.get("audiomamba_classes", []))
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def _log_lr(self) -> None:
        if self.trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, prog_bar=False)


class LMTask(_Task):
    """Next-token prediction with teacher forcing; reports NLL in nats (loss) and bits per sample/token.

    Batches: {"audio": (B, L)} (tokenized here with the data's tokenizer) or {"tokens": (B, K, T), "mask": (B, T)}
    (interleaved here with the data's codebook pattern). The model sees (B, S, K') tokens and predicts position
    s + 1 from positions <= s; positions that are fillers or padding carry no loss.
    """

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        d = cfg.data
        self.pattern = None
        if d.source in ("tokens", "selective_copying"):  # token streams with a validity mask
            K = d.n_codebooks if d.n_codebooks is not None else cfg.model.n_codebooks
            special = d.codebook_size if d.codebook_size is not None else 0
            self.pattern = CodebookPattern(d.pattern, K, special_token=special)
            self.mask_pattern = CodebookPattern(d.pattern, K, special_token=0)

    def sequence(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input tokens (B, S, K') int64 and the validity of each position (B, S, K') bool."""
        if "tokens" in batch:
            codes = batch["tokens"]  # (B, K, T)
            frame_mask = batch.get("mask")
            if frame_mask is None:
                frame_mask = torch.ones(codes.shape[0], codes.shape[2], dtype=torch.bool, device=codes.device)
            seq, _ = self.pattern.interleave(codes)  # (B, K', S)
            valid, _ = self.mask_pattern.interleave(frame_mask[:, None].expand(-1, codes.shape[1], -1).long())
            return seq.transpose(1, 2), valid.bool().transpose(1, 2)  # (B, S, K')
        tokens = self.tokenizer.encode(batch["audio"])  # (B, L)
        return tokens[..., None], torch.ones_like(tokens, dtype=torch.bool)[..., None]

    def nll(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL in nats over valid targets, and their count."""
        seq, valid = self.sequence(batch)
        logits, _ = model(seq, return_state=False)  # (B, S, K', V); no streaming state built
        logits = logits[:, :-1].float()  # predicts positions 1..S-1
        target, weight = seq[:, 1:], valid[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        w = weight.reshape(-1).to(nll.dtype)
        return (nll * w).sum(), w.sum()

    def training_step(self, batch, batch_idx):
        total, count = self.nll(self.model, batch)
        loss = total / count.clamp(min=1)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/bits", loss / LN2, on_step=True)
        self._log_lr()
        return loss

    def _eval_step(self, batch, stage: str):
        total, count = self.nll(self.eval_model, batch)
        n = count.clamp(min=1)
        self.log(f"{stage}/loss", total / n, on_epoch=True, prog_bar=stage == "val", sync_dist=True,
                 batch_size=int(n))
        self.log(f"{stage}/bits", total / n / LN2, on_epoch=True, sync_dist=True, batch_size=int(n))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")


class ClassifierTask(_Task):
    """Cross-entropy on whole-clip logits; reports loss and accuracy.

    Batches: {"audio": (B, L), "label": (B,)} (tokenized first if the model takes tokens) or
    {"tokens": (B, K, T), "label": (B,)}.
    """

    def inputs(self, batch: dict) -> torch.Tensor:
        if "tokens" in batch:
            tokens = batch["tokens"].transpose(1, 2)  # (B, K, T) -> (B, T, K)
            return tokens[..., 0] if tokens.shape[-1] == 1 else tokens
        audio = batch["audio"]  # (B, L)
        if self.cfg.model.input == "tokens":
            return self.tokenizer.encode(audio)
        return audio

    def _loss_acc(self, model, batch):
        logits = model.classify(self.inputs(batch)).float()  # (B, C)
        labels = batch["label"]
        if int(labels.min()) < 0:
            raise ValueError("classification needs labels: set data.labels to folder, csv or regex")
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, acc

    def training_step(self, batch, batch_idx):
        loss, acc = self._loss_acc(self.model, batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/acc", acc, on_step=True)
        self._log_lr()
        return loss

    def _eval_step(self, batch, stage):
        loss, acc = self._loss_acc(self.eval_model, batch)
        bs = batch["label"].shape[0]
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True, batch_size=bs)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")


TASK_CLASSES = {"lm": LMTask, "classify": ClassifierTask}


def build_task(cfg: ExperimentConfig) -> _Task:
    return TASK_CLASSES[cfg.task](cfg)
