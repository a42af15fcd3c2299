"""Training: Lightning tasks (LM, classifier), optimizer + schedule, callbacks, and the run helpers."""

from audiomamba.training.callbacks import LoaderProgress, SampleCallback, save_spectrogram_png, write_samples
from audiomamba.training.optim import build_optimizer, param_groups, warmup_cosine
from audiomamba.training.run import build_trainer, load_task, resolve_precision, run_dir_of, train
from audiomamba.training.tasks import ClassifierTask, LMTask, build_task

__all__ = [
    "LoaderProgress", "SampleCallback", "save_spectrogram_png", "write_samples", "build_optimizer", "param_groups",
    "warmup_cosine", "build_trainer", "load_task", "resolve_precision", "run_dir_of", "train", "ClassifierTask",
    "LMTask", "build_task",
]
