"""Selective copying (Mamba paper, arXiv 2312.00752, §4.1 and Table 1): a synthetic task that needs content-aware
selection. M data tokens sit at random positions of a context of C positions filled with a blank (noise) token;
after a separator the model must write the M data tokens in order. A linear time-invariant model cannot do it
well (its mixing weights do not depend on what it reads); a selective one can.

Framed as next-token prediction so that it trains through the LM task unchanged. One example (S = C + 1 + M):

    tokens  = [ x_0 … x_{C-1} | SEP | d_1 … d_M ]      x_i = BLANK except at M sorted random positions, which
                                                           hold d_1 … d_M in order
    mask    = [ 0 …       0    |  0  | 1  …  1  ]       targets that count: the copied tokens

Vocabulary (V = ``vocab_size``): BLANK = 0, data tokens 1 … V-2, SEP = V-1. Training is teacher-forced (when
writing d_i the model has read d_1 … d_{i-1}); :func:`copying_accuracy` reports that per-token accuracy and
also the strict one: greedy generation of all M tokens from the context and separator alone.

An item is a pure function of (seed, index): every split is reproducible and needs no storage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from audiomamba.config import load_experiment_config
from audiomamba.models import load_model

BLANK = 0


class SelectiveCopying(Dataset):
    """Selective-copying examples; items {"tokens": (1, S) int64, "mask": (S,) bool, "label": -1}.

    Args:
        size: number of examples.
        context_length: C, positions of the context (the paper: 4096).
        n_tokens: M, data tokens to copy (the paper: 16).
        vocab_size: V, including BLANK (0) and SEP (V-1); data tokens are 1 … V-2 (the paper: V = 16).
        seed: examples are drawn from a generator seeded by (seed, index).
    """

    def __init__(self, size: int, context_length: int = 256, n_tokens: int = 16, vocab_size: int = 16,
                 seed: int = 0):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 (blank, separator and >= 2 data tokens), got {vocab_size}")
        if not 1 <= n_tokens <= context_length:
            raise ValueError(f"n_tokens must be in [1, context_length={context_length}], got {n_tokens}")
        self.size, self.context_length, self.n_tokens = size, context_length, n_tokens
        self.vocab_size, self.seed = vocab_size, seed
        self.sep = vocab_size - 1
        self.classes: list[str] = []  # no class labels (items carry label -1)

    @property
    def seq_len(self) -> int:
        """S = C + 1 + M."""
        return self.context_length + 1 + self.n_tokens

    def __len__(self) -> int:
        return self.size

    def example(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (S,) int64, mask (S,) bool) of example ``index``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        C, M = self.context_length, self.n_tokens
        data = torch.randint(1, self.vocab_size - 1, (M,), generator=g)  # (M,) in 1 … V-2
        positions = torch.randperm(C, generator=g)[:M].sort().values  # (M,) sorted distinct
        context = torch.full((C,), BLANK, dtype=torch.long)
        context[positions] = data
        tokens = torch.cat([context, torch.tensor([self.sep]), data])  # (S,)
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[C + 1 :] = True
        return tokens, mask

    def __getitem__(self, index):
        if isinstance(index, (tuple, list)):  # (index, crop_seed) from the resumable sampler
            index = index[0]
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        tokens, mask = self.example(int(index))
        return {"tokens": tokens[None], "mask": mask, "label": torch.tensor(-1), "index": torch.tensor(index)}


@torch.no_grad()
def copying_accuracy(model, dataset: SelectiveCopying, batch_size: int = 64, generate: bool = True,
                     device=None) -> dict:
    """Accuracy of an AudioLM on selective copying.

    - ``token_accuracy``: teacher-forced, the fraction of copied tokens d_i predicted exactly (argmax) after
      reading the context, SEP and d_1 … d_{i-1} (what the training loss optimizes).
    - ``generated_token_accuracy`` / ``sequence_accuracy`` (``generate``): the model writes all M tokens
      greedily from the context and SEP alone (its own outputs fed back); the fraction of correct tokens and of
      examples copied entirely.

    Returns a dict with those keys and ``n_examples``.
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    C, M = dataset.context_length, dataset.n_tokens
    hits = gen_hits = seq_hits = n = 0
    try:
        for start in range(0, len(dataset), batch_size):
            pairs = [dataset.example(i) for i in range(start, min(start + batch_size, len(dataset)))]
            tokens = torch.stack([t for t, _ in pairs]).to(device)  # (B, S)
            target = tokens[:, C + 1 :]  # (B, M)
            logits, _ = model(tokens)  # (B, S, V)
            pred = logits[:, C : C + M].argmax(-1)  # position s predicts s + 1
            hits += int((pred == target).sum())
            if generate:
                out = model.generate(batch_size=tokens.shape[0], num_steps=M, prompt=tokens[:, : C + 1],
                                     temperature=0.0, progress=False)
                gen_tokens = out.tokens if hasattr(out, "tokens") else out  # (B, M)
                gen_hits += int((gen_tokens == target).sum())
                seq_hits += int((gen_tokens == target).all(1).sum())
            n += tokens.shape[0]
    finally:
        model.train(was_training)
    out = {"token_accuracy": hits / (n * M), "n_examples": n}
    if generate:
        out["generated_token_accuracy"] = gen_hits / (n * M)
        out["sequence_accuracy"] = seq_hits / n
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m audiomamba.data.selective_copying MODEL_DIR``: accuracy of a trained model on the test split.

    MODEL_DIR is a ``model.save`` directory (``outputs/<run>/model``); the task's sizes come from the run's
    ``config.yaml`` beside it when present (else the options). Prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m audiomamba.data.selective_copying", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--n", type=int, default=None, help="test examples (default: the run's test_size)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-generate", action="store_true", help="teacher-forced accuracy only")
    args = parser.parse_args(argv)
    sizes = {"context_length": 256, "n_tokens": 16, "vocab_size": 16, "test_size": 2048, "seed": 0}
    run_config = Path(args.model_dir).parent / "config.yaml"
    if run_config.is_file():
        sc = load_experiment_config(str(run_config)).data.selective_copying
        sizes = {k: getattr(sc, k) for k in sizes}
    model = load_model(args.model_dir, device=args.device)
    ds = SelectiveCopying(args.n or sizes["test_size"], sizes["context_length"], sizes["n_tokens"],
                          sizes["vocab_size"], seed=sizes["seed"] + 2)  # the test split's seed
    res = copying_accuracy(model, ds, args.batch_size, generate=not args.no_generate)
    res.update(sizes, parameters=model.num_parameters())
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
