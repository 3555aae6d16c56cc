"""Plot a run's metrics.jsonl: training loss and learning rate, validation loss and masked-token accuracy.

    python scripts/plot_metrics.py runs/pretrain [--out runs/pretrain/metrics.png]

Needs matplotlib (pip install -e '.[plot]').
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minroberta.pictures import save_figure  # noqa: E402

LABELS = {"valid_mask_accuracy": "accuracy at <mask>", "valid_accuracy": "accuracy, all scored tokens"}


def read_metrics(path):
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue   # a line torn by a kill
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (or its metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: metrics.png beside metrics.jsonl)")
    args = parser.parse_args(argv)
    path = args.run if args.run.endswith(".jsonl") else os.path.join(args.run, "metrics.jsonl")
    if not os.path.exists(path):
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: plotting needs matplotlib (pip install -e '.[plot]')", file=sys.stderr)
        return 2
    records = read_metrics(path)
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if any(k.startswith("valid_") or k in ("accuracy", "f1") for k in r)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss", lw=1)
    if valid and "valid_loss" in valid[0]:
        left.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation loss")
    left.set_xlabel("update")
    left.set_ylabel("loss")
    left.legend()
    if train and "lr" in train[0]:
        rate = left.twinx()
        rate.plot([r["step"] for r in train], [r["lr"] for r in train], color="grey", alpha=0.4, lw=1)
        rate.set_ylabel("learning rate", color="grey")
    for key in ("valid_mask_accuracy", "valid_accuracy", "accuracy", "f1", "macro_f1", "exact_match"):
        if valid and key in valid[0]:
            right.plot([r["step"] for r in valid], [r[key] for r in valid], "o-",
                       label=LABELS.get(key, key.replace("_", " ")))
    right.set_xlabel("update")
    right.legend()
    figure.suptitle(os.path.dirname(os.path.abspath(path)))
    figure.tight_layout()
    out = args.out or os.path.join(os.path.dirname(path), "metrics.png")
    try:
        save_figure(figure, out)
    except (OSError, ValueError) as exc:   # a missing folder, an unknown format
        where, why = (exc.filename or out, exc.strerror) if isinstance(exc, OSError) else (out, exc)
        print(f"error: {where}: {why}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
