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
    twin = SelectiveCopying(50, context_length=40, n_tokens=6, vocab_size=10, seed=3)
    assert torch.equal(ds[7]["tokens"], twin[7]["tokens"])  # a pure function of (seed, index)
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
    data = SelectiveCopying(8, 12, 3, 16, seed=2)
    model = task.model.eval()
    tokens = torch.stack([data.example(i)[0] for i in range(len(data))])  # (8, 16)
    target = tokens[:, 13:]  # (8, 3)
    with torch.no_grad():  # bias the head towards the most frequent copied token, so that some guesses hit
        model.head.linear.bias[int(target.flatten().mode().values)] += 20.0
    acc = copying_accuracy(model, data, batch_size=3)
    assert acc["token_accuracy"] > 0 and acc["generated_token_accuracy"] > 0
    # the same accuracies computed independently: full forward passes, greedy decoding by re-reading the prefix
    with torch.no_grad():
        forced = model(tokens)[0][:, 12:15].argmax(-1)
        seq = tokens[:, :13]
        for _ in range(3):
            seq = torch.cat([seq, model(seq)[0][:, -1:].argmax(-1)], 1)
    greedy = seq[:, 13:]
    assert acc["n_examples"] == 8
    assert acc["token_accuracy"] == int((forced == target).sum()) / 24
    assert acc["generated_token_accuracy"] == int((greedy == target).sum()) / 24
    assert acc["sequence_accuracy"] == int((greedy == target).all(1).sum()) / 8


def test_config_checks_vocabulary():
    import pytest

    with pytest.raises(ValueError, match="vocab_size"):
        load_experiment_config("selective_copying_mamba", ["model.vocab_size=32"])
    cfg_m = load_experiment_config("selective_copying_mamba")
    cfg_s = load_experiment_config("selective_copying_s4d")
    n_m, n_s = build_model(cfg_m.model).num_parameters(), build_model(cfg_s.model).num_parameters()
    assert abs(n_m - n_s) / n_m < 0.05  # equal size within 5%
