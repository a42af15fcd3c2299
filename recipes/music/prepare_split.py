"""Arrange a folder of music files into train/ val/ test/ for ``data.split=folders``.

Every ``--every``-th file (1-based: rows every, 2*every, ...) in manifest order (the ``file`` column of
``--manifest``, default SRC/manifest.csv if present, else sorted names) goes to validation, the rest to training.
The bach_piano README's split is exactly this with --every 5. There is no separate test part: test/ holds the
validation files too, so the reported "test" NLL is the validation NLL.

Usage: python recipes/music/prepare_split.py SRC DST [--every 5] [--copy]
(symbolic links by default; --copy writes real copies, e.g. for a folder that must travel to another machine).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

AUDIO = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--manifest", default=None)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--copy", action="store_true")
    args = parser.parse_args(argv)
    src, dst = Path(args.src).resolve(), Path(args.dst)
    manifest = Path(args.manifest) if args.manifest else src / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            files = [src / row["file"] for row in csv.DictReader(fh)]
    else:
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO)
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise SystemExit(f"prepare_split: no audio found or missing files under {src}: {missing[:3]}")
    val = [f for i, f in enumerate(files, 1) if i % args.every == 0]
    train = [f for i, f in enumerate(files, 1) if i % args.every != 0]
    for part, group in (("train", train), ("val", val), ("test", val)):
        (dst / part).mkdir(parents=True, exist_ok=True)
        for f in group:
            target = dst / part / f.name
            if target.exists() or target.is_symlink():
                target.unlink()
            if args.copy:
                shutil.copy2(f, target)
            else:
                target.symlink_to(f)
    print(f"{dst}: train {len(train)} files, val {len(val)} files (test = val): {[f.name for f in val]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
