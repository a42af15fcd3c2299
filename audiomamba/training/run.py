"""Running experiments: build the Trainer from a config, fit, test, export; load tasks back from checkpoints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

from audiomamba.config import ExperimentConfig, experiment_config_to_yaml, load_experiment_config
from audiomamba.data import AudioDataModule
from audiomamba.training.callbacks import LoaderProgress, SampleCallback
from audiomamba.training.tasks import build_task

EXPERIMENT_FILE = "experiment.yaml"


def resolve_precision(cfg: ExperimentConfig) -> str:
    """The Lightning precision: trainer.precision, where "auto" is bf16 mixed precision on GPU, else float32."""
    p = cfg.trainer.precision
    if p != "auto":
        return p
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def run_dir_of(cfg: ExperimentConfig) -> Path:
    return Path(cfg.trainer.output_dir) / (cfg.trainer.run_name or cfg.name)


def build_trainer(cfg: ExperimentConfig, run_dir: Path, callbacks=(), quiet: bool = False) -> L.Trainer:
    t = cfg.trainer
    validate = t.limit_val_batches > 0
    cbs = [LoaderProgress(),
           ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-step{step:07d}",
                           auto_insert_metric_name=False, monitor="val/loss" if validate else None, mode="min",
                           save_top_k=t.save_top_k if validate else 0, save_last=True)]
    if t.ckpt_every_n_steps:
        cbs.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                                   auto_insert_metric_name=False, every_n_train_steps=t.ckpt_every_n_steps,
                                   save_top_k=-1, monitor=None))
    if t.sample_every_n_epochs and cfg.task == "lm":
        cbs.append(SampleCallback(run_dir / "samples", t.sample_every_n_epochs, t.n_samples, t.sample_length,
                                  seed=t.seed))
    cbs.extend(callbacks)
    # one version folder per launch (logs/version_0, version_1 after a resume, ...): a resumed run must not
    # overwrite the metrics its first launch wrote
    loggers = [CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")]
    return L.Trainer(
        max_steps=t.max_steps, max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices,
        strategy=t.strategy, num_nodes=t.num_nodes, precision=resolve_precision(cfg),
        gradient_clip_val=cfg.optim.grad_clip, accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None if t.val_every_n_steps else 1,
        limit_val_batches=t.limit_val_batches, limit_test_batches=t.limit_test_batches,
        num_sanity_val_steps=t.num_sanity_val_steps, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar, enable_model_summary=not quiet,
        deterministic=t.deterministic, use_distributed_sampler=False, default_root_dir=run_dir,
        callbacks=cbs, logger=loggers,
    )


def train(cfg: ExperimentConfig, resume: str | None = None, callbacks=(), test: bool = True,
          quiet: bool = False) -> dict:
    """Fit (optionally resuming from a Lightning checkpoint), test the best checkpoint, export the model.

    ``quiet`` skips printing the resolved config, the model summary and the test table (progress bars follow
    ``trainer.progress_bar``). Writes under ``output_dir/run_name``: config.yaml, checkpoints/, logs/version_N/,
    tb/version_N/, model/ (model.safetensors with the audio contract, config.yaml, experiment.yaml),
    metrics.json. Returns run_dir, checkpoint, model_dir, metrics.
    """
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=not quiet)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = experiment_config_to_yaml(cfg)
    (run_dir / "config.yaml").write_text(text)
    if not quiet:
        print(f"# resolved config ({run_dir / 'config.yaml'})\n{text}", flush=True)
    dm = AudioDataModule(cfg.data, seed=cfg.trainer.seed)
    task = build_task(cfg)
    if cfg.data.source == "synthetic" or cfg.data.labels != "none":
        task.classes = dm.classes
    trainer = build_trainer(cfg, run_dir, callbacks, quiet=quiet)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        trainer.fit(task, datamodule=dm, ckpt_path=resume)
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
        best = best or (ckpt_cb.last_model_path if ckpt_cb is not None else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if test:
            results = trainer.test(task, datamodule=dm, ckpt_path=best or None, verbose=not quiet)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    out = {"run_dir": str(run_dir), "checkpoint": best, "model_dir": None, "metrics": metrics}
    if trainer.is_global_zero:
        model_dir = export_model(task, run_dir / "model")
        out["model_dir"] = str(model_dir)
        metrics["steps"] = trainer.global_step
        metrics["parameters"] = task.model.num_parameters()
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return out


def export_model(task, out_dir: str | Path) -> Path:
    """Save the task's (EMA) model with ``model.save`` (weights, config and audio contract: sample rate,
    tokenizer, label names) plus ``experiment.yaml`` (the resolved experiment config, whose data section
    ``audiomamba evaluate`` reads)."""
    out_dir = Path(out_dir)
    task.eval_model.save(out_dir)
    (out_dir / EXPERIMENT_FILE).write_text(experiment_config_to_yaml(task.cfg))
    return out_dir


def load_task(checkpoint: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild a task (model + config) from a Lightning checkpoint written by :func:`train`."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "audiomamba_config" not in ckpt:
        raise ValueError(f"{path} is not an audiomamba training checkpoint (no audiomamba_config inside)")
    cfg = load_experiment_config(OmegaConf.create(ckpt["audiomamba_config"]))
    task = build_task(cfg)
    task.load_state_dict(ckpt["state_dict"])
    task.classes = list(ckpt.get("audiomamba_classes", []))
    return task.eval(), cfg
