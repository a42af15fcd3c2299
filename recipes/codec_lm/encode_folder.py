"""Encode a folder of audio into EnCodec token files for the codec LM (``data.source=tokens``).

Each audio file becomes ``DST/<relative path>.npy``: an int16 array [K, T] of EnCodec codes (24 kHz model,
75 frames/s; K = 8 codebooks of 1024 codes at 6 kbps). Weights are read from a local file or the torch hub
cache, never downloaded; ``--random-weights`` uses an untrained codec (pipeline checks only: its tokens carry
no meaning).

Usage: python recipes/codec_lm/encode_folder.py SRC DST [--bandwidth 6] [--limit N] [--random-weights]
       [--checkpoint encodec_24khz-d7cc33bc.th] [--seconds 2.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    from audiomamba.data.audio_folder import AUDIO_EXTENSIONS, AudioFolder
    from audiomamba.tokenizers import EncodecTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N files (sorted)")
    parser.add_argument("--seconds", type=float, default=None, help="crop each file to at most this long")
    parser.add_argument("--random-weights", action="store_true", help="untrained codec (pipeline check only)")
    parser.add_argument("--checkpoint", default=None, help="local encodec_24khz-*.th state dict")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)  # random weights are reproducible
    codec = EncodecTokenizer(bandwidth=args.bandwidth, pretrained=not args.random_weights,
                             checkpoint=args.checkpoint, device=args.device)
    src, dst = Path(args.src), Path(args.dst)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)[: args.limit]
    if not files:
        raise SystemExit(f"encode_folder: no audio files under {src}")
    reader = AudioFolder(src, sample_rate=codec.sample_rate, labels="none", files=files, random_crop=False)
    max_len = None if args.seconds is None else int(args.seconds * codec.sample_rate)
    for i, f in enumerate(files):
        wave = reader.read(f)[:max_len]  # (L,) at 24 kHz
        codes = codec.encode(wave[None])[0].cpu().numpy().astype(np.int16)  # (K, T)
        out = dst / f.relative_to(src).with_suffix(".npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, codes)
        if i == 0:
            print(f"{f.name}: {wave.shape[0]} samples -> codes {codes.shape} ({codec})", flush=True)
    print(f"wrote {len(files)} token files under {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
