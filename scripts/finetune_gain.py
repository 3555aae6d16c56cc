"""Is pretraining worth it downstream? Fine-tune a pretrained model and the same architecture from random
initialisation on the demo task (scripts/make_demo_task.py), with the same recipe and seed, and compare.

    python scripts/finetune_gain.py runs/pretrain                    # writes runs/pretrain-gain/
    python scripts/finetune_gain.py runs/pretrain --epochs 2 --out runs/gain -- --lr 1e-3

--seed draws the random initialisation and seeds both fine-tuning runs; flags after -- go to both `minroberta
finetune` runs. Prints a table of the best evaluation accuracy of each and writes it, with the figures as JSON,
to --out.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minroberta import atomic  # noqa: E402
from minroberta.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from minroberta.model import Roberta  # noqa: E402
from minroberta.tokenizer import Tokenizer  # noqa: E402


def best_accuracy(run_dir):
    """The best evaluation accuracy in a fine-tuning run's metrics."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        return max(json.loads(line)["accuracy"] for line in handle if '"accuracy"' in line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a pretrained model directory (minroberta pretrain's --out)")
    parser.add_argument("--out", help="where the task, the two runs and the table go (default: MODEL-gain)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--task", help="a demo task already built (make_demo_task.py's OUT_DIR); default: build "
                                       "one in OUT/task with --classes and --per-class")
    parser.add_argument("--classes", type=int, default=4, help="packages in the demo task")
    parser.add_argument("--per-class", type=int, default=150, help="docstrings per package")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation and of both "
                                                            "fine-tuning runs (the new head, the order)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)   # what follows -- goes to `minroberta finetune`
    args = parser.parse_args(argv[:cut])
    args.finetune = argv[cut + 1:]
    out = args.out or args.model.rstrip("/") + "-gain"
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(here, ".."), os.environ.get("PYTHONPATH", "")])}
    task = args.task or os.path.join(out, "task")
    if not args.task:
        subprocess.run([sys.executable, os.path.join(here, "make_demo_task.py"), task, "--classes", str(args.classes),
                        "--per-class", str(args.per_class)], check=True, env=env)

    # the same architecture and tokenizer, weights drawn afresh as a new model's are
    pretrained = load_pretrained(args.model)
    scratch = os.path.join(out, "random-init")
    save_pretrained(Roberta(pretrained.config, seed=args.seed), scratch, tokenizer=Tokenizer.from_dir(args.model))

    results = {}
    for name, model in (("pretrained", args.model), ("random init", scratch)):
        run = os.path.join(out, "finetune-" + name.replace(" ", "-"))
        done = subprocess.run([sys.executable, "-m", "minroberta.cli", "finetune", "--model", model, "--task",
                               "classify", "--train", os.path.join(task, "train.csv"), "--eval",
                               os.path.join(task, "eval.csv"), "--out", run, "--epochs", str(args.epochs),
                               "--seed", str(args.seed), *args.finetune], env=env)
        if done.returncode != 0:   # finetune has said why in one line (a finished run in the way, a bad flag)
            print(f"error: fine-tuning from {name} failed (exit status {done.returncode}); "
                  f"a fresh --out starts over", file=sys.stderr)
            return 2
        results[name] = best_accuracy(run)
    with open(os.path.join(task, "train.csv"), encoding="utf-8", newline="") as handle:
        packages = len({row["label"] for row in csv.DictReader(handle)})
    lines = [f"Fine-tuning on the demo task ({packages} packages, {args.epochs:g} epochs, the same recipe):", "",
             "| start | best evaluation accuracy |", "| --- | --- |"]
    lines += [f"| {name} | {accuracy:.3f} |" for name, accuracy in results.items()]
    lines += ["", f"pretraining adds {100 * (results['pretrained'] - results['random init']):.1f} accuracy points"]
    atomic.write_text(os.path.join(out, "gain.md"), "\n".join(lines) + "\n")
    atomic.write_json(os.path.join(out, "gain.json"), results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
