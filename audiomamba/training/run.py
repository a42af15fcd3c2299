"""Running experiments: build the Trainer from a config, fit, test, export; load tasks back from checkpoints.

Run directories: a run writes under ``output_dir/run_name``; a new run whose directory already holds another run
(its config.yaml or checkpoints) writes to the next free ``output_dir/run_name-vN`` instead, so that no run
overwrites another's files. A resumed run continues in the directory of its checkpoint, and ``--resume last``
(:func:`last_checkpoint`) picks the newest version of the run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf

from audiomamba.config import ExperimentConfig, experiment_config_to_yaml, load_experiment_config
from audiomamba.data import AudioDataModule
from audiomamba.training.callbacks import AtomicCheckpoint, LoaderProgress, SampleCallback, WriteConfig
from audiomamba.training.tasks import build_task

EXPERIMENT_FILE = "experiment.yaml"
CONFIG_FILE = "config.yaml"
# set while a run fits: the run directory chosen by the launching process, for the processes that DDP launches
# (they run the command again, and would otherwise pick the next free version folder themselves)
RUN_DIR_ENV = "AUDIOMAMBA_RUN_DIR"


def resolve_precision(cfg: ExperimentConfig) -> str:
    """The Lightning precision: trainer.precision, where "auto" is bf16 mixed precision on GPU, else float32."""
    p = cfg.trainer.precision
    if p != "auto":
        return p
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def run_dir_of(cfg: ExperimentConfig) -> Path:
    """``output_dir/run_name`` (run_name: the experiment's name by default): the first version of the run."""
    return Path(cfg.trainer.output_dir) / (cfg.trainer.run_name or cfg.name)


def _used(run_dir: Path) -> bool:
    """Whether a directory holds a run: its config.yaml or a checkpoint."""
    return (run_dir / CONFIG_FILE).is_file() or any((run_dir / "checkpoints").glob("*.ckpt"))


def _versions(cfg: ExperimentConfig) -> list[Path]:
    """The used versions of a run, oldest first: ``run_dir_of(cfg)``, then ``-v1``, ``-v2``, ..."""
    base = run_dir_of(cfg)
    found = [base] if _used(base) else []
    if base.parent.is_dir():
        numbered = []
        for p in base.parent.glob(f"{base.name}-v*"):
            tail = p.name[len(base.name) + 2 :]
            if tail.isdigit() and _used(p):
                numbered.append((int(tail), p))
        found += [p for _, p in sorted(numbered)]
    return found


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """Where a new run of ``cfg`` writes: ``run_dir_of(cfg)`` when unused, else the first unused ``-vN``."""
    base = run_dir_of(cfg)
    if not _used(base):
        return base
    n = 1
    while _used(base.with_name(f"{base.name}-v{n}")):
        n += 1
    return base.with_name(f"{base.name}-v{n}")


def last_checkpoint(cfg: ExperimentConfig) -> Path:
    """``checkpoints/last.ckpt`` of the newest version of the run of ``cfg`` (FileNotFoundError saying what is
    missing). Every checkpoint write updates it (:class:`AtomicCheckpoint`)."""
    versions = _versions(cfg)
    if not versions:
        raise FileNotFoundError(f"--resume last: no run under {run_dir_of(cfg)} (its output_dir/run_name)")
    path = versions[-1] / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume last: no checkpoint at {path} (the run stopped before its first "
                                f"checkpoint; trainer.ckpt_every_n_steps=N saves every N steps)")
    return path


def saved_config(checkpoint: str | Path) -> dict:
    """The resolved experiment config a training checkpoint was written with, as a plain dict."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "audiomamba_config" not in ckpt:
        raise ValueError(f"{checkpoint} is not an audiomamba training checkpoint (no audiomamba_config inside)")
    return OmegaConf.to_container(OmegaConf.create(ckpt["audiomamba_config"]))


def resumed_config(checkpoint: str | Path, overrides=()) -> tuple[ExperimentConfig, list[str]]:
    """The config to resume ``checkpoint`` with: the one it was saved with (its overrides included), with
    ``overrides`` (dotlist) on top; and the changes they make, as lines ``key: old -> new``."""
    swaps = [o for o in overrides if o.startswith("defaults.")]
    if swaps:
        raise ValueError(f"{swaps[0]}: a resumed run keeps its saved config; set the fields themselves "
                         f"(e.g. trainer.devices=2) instead of swapping a preset")
    saved = saved_config(checkpoint)
    cfg = load_experiment_config(saved, list(overrides))
    return cfg, config_diff(load_experiment_config(saved), cfg)


def config_diff(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """The fields that differ, as lines ``dotted.key: old -> new``."""
    def flat(tree, prefix=""):
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix[:-1]: tree}

    a = flat(OmegaConf.to_container(OmegaConf.structured(old)))
    b = flat(OmegaConf.to_container(OmegaConf.structured(new)))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def _run_dir_for(cfg: ExperimentConfig, resume: str | None) -> Path:
    """The run directory of a launch: the launching process's (DDP), a resumed checkpoint's, or a new one."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if resume is not None and Path(resume).resolve().parent.name == "checkpoints":
        return Path(resume).resolve().parent.parent
    return new_run_dir(cfg)


def build_trainer(cfg: ExperimentConfig, run_dir: Path, callbacks=(), quiet: bool = False) -> L.Trainer:
    t = cfg.trainer
    validate = t.limit_val_batches > 0
    # every checkpoint write also writes last.ckpt (what --resume last reads), each file atomically
    cbs = [LoaderProgress(),
           AtomicCheckpoint(dirpath=run_dir / "checkpoints", filename="best-step{step:07d}",
                            auto_insert_metric_name=False, monitor="val/loss" if validate else None, mode="min",
                            save_top_k=t.save_top_k if validate else 0, save_last=True)]
    if t.ckpt_every_n_steps:
        cbs.append(AtomicCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:07d}",
                                    auto_insert_metric_name=False, every_n_train_steps=t.ckpt_every_n_steps,
                                    save_top_k=-1, monitor=None, save_last=True))
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
    ``trainer.progress_bar``). Writes under the run directory (``output_dir/run_name``, or its next free
    ``-vN`` version when that holds another run; a resumed run: its checkpoint's): config.yaml (once the fit
    starts), checkpoints/ (last.ckpt updated at every checkpoint), logs/version_N/, tb/version_N/, model/
    (model.safetensors with the audio contract, config.yaml, experiment.yaml), metrics.json. Returns run_dir,
    checkpoint, model_dir, metrics.
    """
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=not quiet)
    run_dir = _run_dir_for(cfg, resume)
    if run_dir != run_dir_of(cfg) and resume is None and not os.environ.get(RUN_DIR_ENV):
        print(f"{run_dir_of(cfg)} holds an earlier run: this run writes to {run_dir}", flush=True)
    text = experiment_config_to_yaml(cfg)
    if not quiet:
        print(f"# resolved config ({run_dir / CONFIG_FILE})\n{text}", flush=True)
    dm = AudioDataModule(cfg.data, seed=cfg.trainer.seed)
    task = build_task(cfg)
    if cfg.data.source == "synthetic" or cfg.data.labels != "none":
        task.classes = dm.classes
    trainer = build_trainer(cfg, run_dir, [WriteConfig(run_dir / CONFIG_FILE, text), *callbacks], quiet=quiet)
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # processes launched by DDP during the fit write here too
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            if resume is not None:  # a resumed run writes beside its earlier checkpoints
                warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            trainer.fit(task, datamodule=dm, ckpt_path=resume)
            ckpt_cb = trainer.checkpoint_callback
            best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
            best = best or (ckpt_cb.last_model_path if ckpt_cb is not None else None)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if test:
                results = trainer.test(task, datamodule=dm, ckpt_path=best or None, verbose=not quiet)
                metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
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
