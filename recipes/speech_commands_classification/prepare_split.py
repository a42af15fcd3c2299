"""Arrange a Speech Commands folder (v0.02: <word>/<speaker>_nohash_<n>.wav plus validation_list.txt and
testing_list.txt) into train/ val/ test/ folders of <word>/ subfolders, for ``data.split=folders`` with
``data.labels=folder``. The official lists decide the split (speakers never cross it).

- default: the 35 words (the SC35 task of S4 / SaShiMi); ``_background_noise_`` is left out.
- ``--digits``: only zero ... nine (SC09, for sc09_generation and its scoring classifier).

Usage: python recipes/speech_commands_classification/prepare_split.py SRC DST [--digits] [--copy]
(symbolic links by default).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--digits", action="store_true", help="SC09: the ten digit words only")
    parser.add_argument("--copy", action="store_true")
    args = parser.parse_args(argv)
    src, dst = Path(args.src).resolve(), Path(args.dst)
    lists = {}
    for part, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        path = src / name
        if not path.is_file():
            raise SystemExit(f"prepare_split: {path} not found (expected the Speech Commands v0.02 folder)")
        lists.update({line.strip(): part for line in path.read_text().splitlines() if line.strip()})
    words = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("_"))
    if args.digits:
        words = [w for w in words if w in DIGITS]
    counts = {"train": 0, "val": 0, "test": 0}
    for word in words:
        for f in sorted((src / word).glob("*.wav")):
            part = lists.get(f"{word}/{f.name}", "train")
            target = dst / part / word / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            shutil.copy2(f, target) if args.copy else target.symlink_to(f)
            counts[part] += 1
    print(f"{dst}: {len(words)} words; {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
