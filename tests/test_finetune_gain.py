"""Pretraining is worth it downstream (issue 15), in a short version of scripts/finetune_gain.py: a brief
pretraining run, fine-tuned on the demo task, beats the same architecture fine-tuned from random initialisation
with the same recipe and seeds."""

import csv
import json
import os
import subprocess
import sys

from minroberta.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The default recipe for 400 updates on the task's own training texts (no labels, no evaluation texts) leaves the
# token-frequency plateau that 400 updates on the whole corpus stay on. At finetune's default lr 1e-4 the
# fine-tuning seed decides most of the spread (a random start mostly stays near one class, now and then it does
# not), so the test compares means over three seeds: 30-36 points apart for five pretraining seeds, 3 points the
# wrong way after one update (docs/performance.md).
UPDATES = 400
SEEDS = (0, 1, 2)
MARGIN = 0.10


def test_pretraining_beats_random_init_on_the_demo_task(tmp_path):
    task = tmp_path / "task"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_task.py"), str(task)], check=True,
                   capture_output=True)
    with open(task / "train.csv", encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n", encoding="utf-8")   # a blank line ends each document
    model = tmp_path / "pretrained"
    assert main(["pretrain", "--corpus", str(corpus), "--steps", str(UPDATES), "--eval-every", str(UPDATES),
                 "--save-every", str(UPDATES), "--out", str(model)]) == 0
    accuracy = {"pretrained": [], "random init": []}
    for seed in SEEDS:
        out = tmp_path / f"gain-{seed}"
        done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "finetune_gain.py"), str(model),
                               "--task", str(task), "--seed", str(seed), "--out", str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        for start, value in json.loads((out / "gain.json").read_text()).items():
            accuracy[start].append(value)
    mean = {start: sum(values) / len(values) for start, values in accuracy.items()}
    assert mean["pretrained"] >= mean["random init"] + MARGIN, accuracy
