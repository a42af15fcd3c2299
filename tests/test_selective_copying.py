"""Selective copying: the examples hold what the task says, splits differ, and it trains through the LM task."""

import torch

from audiomamba.config import load_experiment_config
from audiomamba.data import AudioDataModule
from audiomamba.data.selective_copying import BLANK, SelectiveCopying, copying_accuracy
from audiomamba.models import build_model
from audiomamba.training import build_task


def test_examples_hold_the_tokens_in_order():
    ds = SelectiveCopying(50, context_length=40, n_tokens=6, vocab_size=10, seed=3)
    for i in range(len(ds)):
        item = ds[(i, 12345)]  # the resumable sampler passes (index, crop_seed)
        tokens, mask = item["tokens"][0], item["mask"]
        assert tokens.shape == mask.shape == (ds.seq_len,) == (47,)
        context, sep, copy = tokens[:40], tokens[40], tokens[41:]
        assert sep == 9 and ((copy >= 1) & (copy <= 8)).all()
        assert torch.equal(context[context != BLANK], copy)  # the data tokens, in order
        assert (context != BLANK).sum() == 6 and mask.sum() == 6 and mask[41:].all()
    assert torch.equal(ds[7]["tokens"], ds[7]["tokens"])  # a pure function of (seed, index)
    other = SelectiveCopying(50, context_length=40, n_tokens=6, vocab_size=10, seed=4)
    assert not torch.equal(ds[7]["tokens"], other[7]["tokens"])


def test_lm_task_scores_only_the_copied_tokens():
    cfg = load_experiment_config("selective_copying_mamba", [
        "data.selective_copying.context_length=12", "data.selective_copying.n_tokens=3", "data.batch_size=4",
        "model.backbone.d_model=16"])
    dm = AudioDataModule(cfg.data)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (4, 1, 16) and batch["mask"].shape == (4, 16)
    task = build_task(cfg)
    total, count = task.nll(task.model, batch)
    assert int(count) == 4 * 3  # the separator's target and the context carry no loss
    acc = copying_accuracy(task.model, SelectiveCopying(8, 12, 3, 16, seed=2), batch_size=3)
    assert acc["n_examples"] == 8 and 0 <= acc["sequence_accuracy"] <= acc["generated_token_accuracy"] <= 1


def test_config_checks_vocabulary():
    import pytest

    with pytest.raises(ValueError, match="vocab_size"):
        load_experiment_config("selective_copying_mamba", ["model.vocab_size=32"])
    cfg_m = load_experiment_config("selective_copying_mamba")
    cfg_s = load_experiment_config("selective_copying_s4d")
    n_m, n_s = build_model(cfg_m.model).num_parameters(), build_model(cfg_s.model).num_parameters()
    assert abs(n_m - n_s) / n_m < 0.05  # equal size within 5%
