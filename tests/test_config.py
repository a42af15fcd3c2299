"""Configs: every shipped YAML loads through its schema; typos fail with their name; precedence of layers."""

from __future__ import annotations

import importlib.resources

import pytest
from omegaconf import OmegaConf

from audiomamba.config import (
    DataConfig,
    ExperimentConfig,
    OptimConfig,
    TrainerConfig,
    config_names,
    experiment_config_to_yaml,
    load_experiment_config,
    load_model_config,
)

SCHEMAS = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig}
ROOT = importlib.resources.files("audiomamba.configs")


def _all_yaml():
    return sorted((d.name, p.name) for d in ROOT.iterdir() if d.is_dir() for p in d.iterdir()
                  if p.name.endswith(".yaml"))


def test_there_are_configs_of_every_group():
    groups = {g for g, _ in _all_yaml()}
    assert {"model", "data", "trainer", "experiment"} <= groups
    assert {"quickstart_classifier", "quickstart_lm"} <= set(config_names("experiment"))


@pytest.mark.parametrize("group,name", _all_yaml())
def test_every_yaml_loads_through_its_schema(group, name):
    stem = name[: -len(".yaml")]
    if group == "experiment":
        # recipes for user folders leave data.root to the command line
        tree = OmegaConf.load(str(ROOT / group / name))
        needs_root = "data" in tree and "root" in tree.data and tree.data.root is None
        cfg = load_experiment_config(stem, ["data.root=/some/folder"] if needs_root else [])
        assert isinstance(cfg, ExperimentConfig)
    elif group == "model":
        load_model_config(stem)
    elif group in SCHEMAS:
        tree = OmegaConf.load(str(ROOT / group / name))
        merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[group]), tree)
        if group == "data" and merged.source != "synthetic":
            merged.root = "/some/folder"  # presets for user folders leave root to the command line
        OmegaConf.to_object(merged)
        # and inside an experiment, under its group key (with a model that fits a codec-token data preset)
        extra = []
        if group == "data":
            extra = ["data.root=/x"]
            if merged.source == "tokens":
                extra += [f"model.n_codebooks={merged.n_codebooks}", f"model.vocab_size={merged.codebook_size + 1}"]
        load_experiment_config({"defaults": {group: stem}}, extra)
    else:
        pytest.fail(f"no schema for config group {group!r}")


@pytest.mark.parametrize("override,name", [
    ("trainer.max_stepz=3", "trainer.max_stepz"),
    ("data.batchsize=3", "data.batchsize"),
    ("model.backbone.d_modle=8", "model.backbone.d_modle"),
    ("optim.learning_rate=1", "optim.learning_rate"),
    ("colour=red", "colour"),
])
def test_unknown_key_is_an_error_naming_it(override, name):
    with pytest.raises(ValueError, match=f"unknown config key '{name}'"):
        load_experiment_config("quickstart_lm", [override])


def test_unknown_key_in_a_yaml_file_names_key_and_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: lm\ntrainer:\n  max_steps: 5\n  devicez: 2\n")
    with pytest.raises(ValueError, match=r"'trainer.devicez'.*exp.yaml"):
        load_experiment_config(str(path))


def test_mistyped_values_and_cross_field_checks():
    with pytest.raises(ValueError, match="data.batch_size"):
        load_experiment_config("quickstart_lm", ["data.batch_size=many"])
    with pytest.raises(ValueError, match=r"vocab_size=512 must equal 2\*\*data.bits=256"):
        load_experiment_config("quickstart_lm", ["model.vocab_size=512"])
    with pytest.raises(ValueError, match="needs model.kind 'classifier'"):
        load_experiment_config("quickstart_lm", ["task=classify"])
    with pytest.raises(ValueError, match="data.root is required"):
        load_experiment_config("quickstart_lm", ["data.source=folder"])
    with pytest.raises(ValueError, match="n_classes=4"):
        load_experiment_config("quickstart_classifier", ["model.n_classes=4"])
    with pytest.raises(ValueError, match="unknown experiment preset"):
        load_experiment_config("no_such_experiment")


def test_precedence_defaults_presets_file_cli(tmp_path):
    base = load_experiment_config(None)
    assert base.trainer.max_steps == TrainerConfig().max_steps and base.trainer.accelerator == "auto"
    path = tmp_path / "exp.yaml"
    path.write_text("defaults: {trainer: cpu, data: synthetic}\ndata: {batch_size: 3}\ntrainer: {max_steps: 7}\n")
    cfg = load_experiment_config(str(path))
    assert cfg.trainer.accelerator == "cpu"  # from the trainer preset
    assert cfg.data.length == 2048  # from the data preset
    assert cfg.data.batch_size == 3 and cfg.trainer.max_steps == 7  # the file beats the presets
    cfg = load_experiment_config(str(path), ["trainer.max_steps=9", "data.synthetic.seed=4",
                                             "model.backbone.mixer=s4d", "trainer.devices=auto"])
    assert cfg.trainer.max_steps == 9 and cfg.data.synthetic.seed == 4  # the command line beats the file
    assert cfg.model.backbone.mixer == ["s4d"] and cfg.trainer.devices == "auto"
    cfg = load_experiment_config(str(path), ["defaults.trainer=ddp"])  # swap a preset from the command line
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and cfg.trainer.max_steps == 7
    with pytest.raises(ValueError, match="unknown trainer preset 'nope'"):
        load_experiment_config(str(path), ["defaults.trainer=nope"])


def test_resolved_yaml_round_trips():
    cfg = load_experiment_config("quickstart_classifier", ["trainer.max_steps=11"])
    text = experiment_config_to_yaml(cfg)
    again = load_experiment_config(OmegaConf.create(text))
    assert again == cfg
