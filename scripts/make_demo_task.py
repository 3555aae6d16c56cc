"""Build the offline fine-tuning demo: which standard-library package does a docstring come from?

Writes OUT_DIR/train.csv and OUT_DIR/eval.csv (columns text,label) from this Python's own docstrings: the
largest packages, the same number of docstrings from each (so the majority baseline is 1 / number of
packages), each text cut to its first 400 characters; about one in five goes to eval, by a hash of the text.

    python scripts/make_demo_task.py runs/demo-task
    minroberta finetune --model runs/pretrain --task classify --train runs/demo-task/train.csv \\
        --eval runs/demo-task/eval.csv --out runs/demo-classifier
    minroberta predict --model runs/demo-classifier "Return the event loop of the current thread."
"""

import argparse
import collections
import csv
import hashlib
import io
import os
import sys

from minroberta import atomic
from minroberta.corpus import stdlib_docstrings

PACKAGES = ("asyncio", "email", "tkinter", "multiprocessing", "xml", "unittest", "importlib", "http", "concurrent",
            "json", "logging", "sqlite3", "ctypes", "urllib", "idlelib", "pydoc_data", "lib2to3", "curses")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory for train.csv and eval.csv")
    parser.add_argument("--classes", type=int, default=4, help="how many packages (the largest ones)")
    parser.add_argument("--per-class", type=int, default=150, help="docstrings per package")
    args = parser.parse_args(argv)
    by_package = collections.defaultdict(list)
    for path, text in stdlib_docstrings():
        package = path.split(os.sep)[0]
        if package in PACKAGES:
            by_package[package].append(" ".join(text.split())[:400])
    chosen = sorted(by_package, key=lambda p: (-len(by_package[p]), p))[:args.classes]
    per_class = min(args.per_class, *(len(by_package[p]) for p in chosen))
    rows = {"train": [], "eval": []}
    for package in chosen:
        for text in by_package[package][:per_class]:
            digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
            rows["eval" if digest[0] % 5 == 0 else "train"].append((text, package))
    os.makedirs(args.out, exist_ok=True)
    for split, examples in rows.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["text", "label"])
        writer.writerows(examples)
        atomic.write_text(os.path.join(args.out, f"{split}.csv"), buffer.getvalue())
    print(f"{len(rows['train'])} training and {len(rows['eval'])} evaluation docstrings from "
          f"{', '.join(chosen)} ({per_class} each) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
