"""Callbacks: data-loader progress for exact resume, atomic checkpoints that keep last.ckpt current, the run's
config.yaml written once the fit starts, and periodic generated samples (WAV + spectrogram PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from weakref import proxy

import lightning as L
import numpy as np
import soundfile as sf
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint


class LoaderProgress(L.Callback):
    """Tells the resumable batch sampler, before each step, how many batches of the epoch are consumed, so the
    loader state saved in a checkpoint points exactly at the next unseen batch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        dm = trainer.datamodule
        sampler = getattr(dm, "train_batch_sampler", None) if dm is not None else None
        if sampler is not None:
            sampler.mark(trainer.current_epoch, batch_idx + 1)


class AtomicCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose files are never seen half-written: each is written to ``NAME.tmp`` and renamed
    over ``NAME`` (a rename within a directory is atomic), so a crash mid-write leaves the previous file intact.

    With ``save_last=True`` every save this callback makes (periodic, best, end of epoch) also rewrites
    ``last.ckpt``, the checkpoint ``--resume last`` reads; several of these callbacks may share one last.ckpt.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("enable_version_counter", False)  # last.ckpt, never last-v1.ckpt beside another's
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not _is_local_file_protocol(filepath):  # remote storage: no rename there
            super()._save_checkpoint(trainer, filepath)
            return
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class WriteConfig(L.Callback):
    """Writes the run's resolved config (``text``) to ``path`` when the fit really starts (after the Trainer and
    its processes are set up), on rank 0, so that a launch that fails earlier leaves no config behind."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = Path(path), text

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self.text)


def save_spectrogram_png(wave: np.ndarray, sample_rate: int, path: Path, title: str = "") -> Path:
    """A log-magnitude STFT spectrogram of (L,) ``wave`` as a PNG (librosa + matplotlib, headless)."""
    # plotting imports matplotlib (~2 s) and must pick the headless backend first: only when a PNG is written
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft = 512 if len(wave) >= 512 else max(16, 2 ** int(np.log2(max(len(wave), 16))))
    spec = np.abs(librosa.stft(wave.astype(np.float32), n_fft=n_fft, hop_length=n_fft // 4))
    db = librosa.amplitude_to_db(spec, ref=np.max)
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    img = librosa.display.specshow(db, sr=sample_rate, hop_length=n_fft // 4, x_axis="time", y_axis="hz", ax=ax)
    fig.colorbar(img, ax=ax, format="%+2.0f dB")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_samples(waves: torch.Tensor, sample_rate: int, out_dir: Path, prefix: str) -> list[Path]:
    """Write (B, L) waveforms as 16-bit WAVs plus one spectrogram PNG of the first; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, w in enumerate(waves.float().cpu().numpy()):
        p = out_dir / f"{prefix}_{i}.wav"
        sf.write(str(p), np.clip(w, -1, 1), sample_rate, subtype="PCM_16")
        paths.append(p)
    paths.append(save_spectrogram_png(waves[0].float().cpu().numpy(), sample_rate, out_dir / f"{prefix}_0.png",
                                      title=prefix))
    return paths


def generate_waveforms(task, n: int, length: int, seed: int, progress: bool = False) -> torch.Tensor:
    """Sample ``n`` clips of ``length`` tokens from an LM task's (EMA) model and decode them: (n, length)."""
    model = task.eval_model
    was_training = model.training
    tokens = model.generate(batch_size=n, num_steps=length, seed=seed, progress=progress)  # (n, length)
    model.train(was_training)
    return task.tokenizer.decode(tokens.cpu())


class SampleCallback(L.Callback):
    """Every ``every_n_epochs`` epochs: generate ``n_samples`` clips, write WAVs + a spectrogram PNG under
    ``out_dir/epoch_XXXX/`` at the model's sample rate and add them to TensorBoard when a TensorBoard logger is
    attached. LM on waveform tokens only (codec tokens need their codec to decode)."""

    def __init__(self, out_dir: Path, every_n_epochs: int, n_samples: int, length: int, seed: int = 0):
        self.out_dir, self.every, self.n, self.length = Path(out_dir), every_n_epochs, n_samples, length
        self.seed = seed

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every <= 0 or (trainer.current_epoch + 1) % self.every or not trainer.is_global_zero:
            return
        if pl_module.tokenizer is None:  # no waveform tokenizer in the model's audio contract
            return
        rate = pl_module.model.audio.sample_rate
        waves = generate_waveforms(pl_module, self.n, self.length, seed=self.seed + trainer.current_epoch)
        paths = write_samples(waves, rate, self.out_dir / f"epoch_{trainer.current_epoch:04d}", "sample")
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_audio"):
                for i, w in enumerate(waves):
                    exp.add_audio(f"samples/{i}", w[None].float(), trainer.global_step, rate)
                import matplotlib.image

                exp.add_image("samples/spectrogram", matplotlib.image.imread(paths[-1])[..., :3],
                              trainer.global_step, dataformats="HWC")
