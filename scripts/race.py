"""A race: the default pretraining recipe through minroberta and through HuggingFace, same wall-clock budget.

Both sides get the same tokenizer, the same packed blocks, the same masked batches (minroberta's data
pipeline: dynamic masking as fairseq and DataCollatorForLanguageModeling do it, at the recipe's rate), the same
initial weights, the same AdamW (betas, eps, weight decay on matrices only), warmup-and-decay schedule and
gradient clipping. HuggingFace runs `RobertaForMaskedLM` (eager attention) with `torch.optim.AdamW`. Each side
trains in its own process on the same number of threads until the recipe's updates are done or the budget is
spent; the clock counts training only (evaluations are paused out of it). The two take turns, one evaluation
interval (--eval-every updates) at a time, the other waiting: a shared machine's slow and fast minutes fall on
both alike, where one run after the other could hand one side a slow spell. Both are scored on the same
validation batches.

    python scripts/race.py                                # the default recipe, 300 s each
    python scripts/race.py --seconds 120 --out runs/race -- --corpus notes/   # flags after -- go to the recipe

Writes race.json (both curves), race.png (validation loss and accuracy at <mask> against seconds) and
race.md (the table) to --out. Needs the `parity` extra (torch, transformers) and, for the picture, `plot`.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minroberta import atomic, corpus, save_pretrained  # noqa: E402
from minroberta.engine import threads  # noqa: E402
from minroberta.cli import VOCAB_SIZES, build_parser, pretrain_config, pretrain_settings  # noqa: E402
from minroberta.data import IGNORE_INDEX, PretrainingData  # noqa: E402
from minroberta.model import Roberta  # noqa: E402
from minroberta.optim import linear_schedule  # noqa: E402
from minroberta.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

SIDES = ("minroberta", "huggingface")


def recipe(extra):
    """`minroberta pretrain`'s recipe: its defaults, with the user's `extra` flags on top."""
    return pretrain_settings(build_parser().parse_args(["pretrain", *extra]))


def prepare(args, work):
    """Tokenizer, initial weights and recipe into `work`, as `minroberta pretrain` would make them."""
    documents = list(corpus.stdlib_documents()) if not args.corpus else list(corpus.read_documents(args.corpus))
    train_docs, _ = corpus.train_valid_split(documents)
    if args.tokenizer:
        tokenizer = Tokenizer.from_dir(args.tokenizer)
    else:
        tokenizer = train_tokenizer(train_docs, vocab_size=args.vocab_size or VOCAB_SIZES[args.preset])
    model = Roberta(pretrain_config(args, tokenizer), seed=args.seed)
    save_pretrained(model, work, tokenizer=tokenizer)


def load_data(args, tokenizer):
    documents = list(corpus.stdlib_documents()) if not args.corpus else list(corpus.read_documents(args.corpus))
    train_docs, valid_docs = corpus.train_valid_split(documents)
    return PretrainingData.build(tokenizer, train_docs, valid_docs, block_size=args.seq_len, seed=args.seed,
                                 mask_prob=args.mask_prob)


# --- the two sides: each yields (seconds of training, update, validation metrics) at every evaluation

def minroberta_side(settings, work, data, budget):
    from minroberta.checkpoint import load_pretrained
    from minroberta.engine.trainer import Trainer
    trainer = Trainer(load_pretrained(work), data, None, settings, out_dir=None)
    trainer.progress.quiet = True
    clock = 0.0
    while trainer.step < settings.steps and clock < budget:
        start = time.perf_counter()
        trainer.train_step()
        clock += time.perf_counter() - start
        if trainer.step % settings.eval_every == 0 or trainer.step == settings.steps or clock >= budget:
            metrics = trainer.evaluate()
            yield clock, trainer.step, metrics["valid_loss"], metrics["valid_mask_accuracy"]


def huggingface_side(settings, work, data, budget):
    import torch
    from transformers import RobertaForMaskedLM
    torch.manual_seed(settings.seed)
    model = RobertaForMaskedLM.from_pretrained(work, attn_implementation="eager")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.lr, betas=settings.betas, eps=settings.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: linear_schedule(t, 1.0, settings.warmup_steps, settings.steps))
    as_tensors = lambda batch: {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}

    def evaluate():
        model.eval()
        loss_sum = count = correct = shown = 0.0
        with torch.no_grad():
            for n, batch in enumerate(data.valid_batches(settings.batch_size)):
                if settings.eval_batches and n >= settings.eval_batches:
                    break
                batch = as_tensors(batch)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                scored = batch["labels"] != IGNORE_INDEX
                targets, rows = batch["labels"][scored], logits[scored]
                loss_sum += torch.nn.functional.cross_entropy(rows, targets, reduction="sum").item()
                count += targets.numel()
                is_mask = batch["input_ids"][scored] == data.mask_id
                correct += (rows.argmax(-1) == targets)[is_mask].sum().item()
                shown += is_mask.sum().item()
        model.train()
        return loss_sum / count, correct / shown

    model.train()
    per_epoch = data.batches_per_epoch(settings.batch_size)
    clock, step = 0.0, 0
    while step < settings.steps and clock < budget:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for i in range(settings.accumulate):
            g = step * settings.accumulate + i
            batch = as_tensors(data.train_batch(g // per_epoch, g % per_epoch, settings.batch_size))
            loss = model(**batch).loss / settings.accumulate
            loss.backward()
        if settings.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        optimizer.step()
        schedule.step()
        step += 1
        clock += time.perf_counter() - start
        if step % settings.eval_every == 0 or step == settings.steps or clock >= budget:
            yield (clock, step, *evaluate())


def worker(side, extra, work, budget, threads_count, out):
    args = recipe(extra)
    threads.use(threads_count)
    if side == "huggingface":
        import torch
        threads.use(1)   # minroberta's data code only; the BLAS threads go to torch
        torch.set_num_threads(threads_count)
    data = load_data(args, Tokenizer.from_dir(work))
    run = minroberta_side if side == "minroberta" else huggingface_side
    curve = []
    print("ready", flush=True)
    sys.stdin.readline()                      # the first turn (see take_turns)
    for seconds, step, loss, accuracy in run(args, work, data, budget):
        curve.append({"seconds": seconds, "step": step, "valid_loss": loss, "valid_mask_accuracy": accuracy})
        print(f"{side}: {seconds:6.1f} s, update {step}: validation loss {loss:.4f}, accuracy at <mask> "
              f"{accuracy:.3f}", file=sys.stderr, flush=True)
        print("evaluated", flush=True)
        sys.stdin.readline()                  # wait for the next turn before training on
    atomic.write_json(out, curve)
    print("done", flush=True)


def take_turns(commands):
    """Start a worker per command and wait until each has loaded its data ("ready"), then let them train in
    turns: each is told to go on, trains to its next evaluation (it says "evaluated") or to its end ("done"),
    and waits while the others take their turns."""
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for command in commands]

    def hear(worker_process):
        said = worker_process.stdout.readline()
        while said and said.strip() not in ("ready", "evaluated", "done"):   # anything a library printed
            sys.stderr.write(said)
            said = worker_process.stdout.readline()
        return said.strip()

    for worker_process in workers:
        if hear(worker_process) != "ready":
            for other in workers:
                other.kill()
            raise SystemExit(f"a race worker failed to start: {' '.join(worker_process.args)}")
    running = list(workers)
    while running:
        for worker_process in list(running):
            worker_process.stdin.write("go\n")
            worker_process.stdin.flush()
            said = hear(worker_process)
            if said != "evaluated":
                running.remove(worker_process)
                if worker_process.wait() != 0 or said != "done":
                    for other in running:
                        other.kill()
                    raise SystemExit(f"a race worker failed: {' '.join(worker_process.args)}")


# --- the report

def time_to_reach(curve, loss):
    """Seconds at which `curve` first reaches `loss` (linear between evaluations), or None."""
    previous = (0.0, math.inf)
    for point in curve:
        if point["valid_loss"] <= loss:
            (t0, l0), (t1, l1) = previous, (point["seconds"], point["valid_loss"])
            if not math.isfinite(l0):
                return t1
            return t0 + (t1 - t0) * (l0 - loss) / (l0 - l1)
        previous = (point["seconds"], point["valid_loss"])
    return None


def report(curves, budget, out, cpu):
    lines = [f"Race: the default recipe for {budget:.0f} s of training each ({cpu}).", "",
             "| implementation | updates | final validation loss | accuracy at <mask> | time to reach the other's "
             "final loss |", "| --- | --- | --- | --- | --- |"]
    final = {side: curves[side][-1] for side in SIDES}
    reach = {}
    for side, other in zip(SIDES, reversed(SIDES)):
        reach[side] = time_to_reach(curves[side], final[other]["valid_loss"])
        when = "not reached" if reach[side] is None else f"{reach[side]:.1f} s"
        lines.append(f"| {side} | {final[side]['step']} | {final[side]['valid_loss']:.4f} | "
                     f"{final[side]['valid_mask_accuracy']:.3f} | {when} |")
    if reach["minroberta"] is not None:
        lines += ["", f"minroberta reached HuggingFace's final loss in {reach['minroberta'] / final['huggingface']['seconds']:.2f} "
                      "of HuggingFace's time."]
    # when both finish the recipe, their final losses differ by rounding and the line above may not exist;
    # the higher final loss is on both curves
    common = max(final[side]["valid_loss"] for side in SIDES)
    at = {side: time_to_reach(curves[side], common) for side in SIDES}
    lines += ["", f"Both reached a validation loss of {common:.4f} (the higher final loss): minroberta after "
                  f"{at['minroberta']:.1f} s, HuggingFace after {at['huggingface']:.1f} s, a ratio of "
                  f"{at['minroberta'] / at['huggingface']:.2f}."]
    atomic.write_text(os.path.join(out, "race.md"), "\n".join(lines) + "\n")
    atomic.write_json(os.path.join(out, "race.json"), {"budget_s": budget, "cpu": cpu, "curves": curves})
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no race.png", file=sys.stderr)
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for side in SIDES:
        seconds = [p["seconds"] for p in curves[side]]
        left.plot(seconds, [p["valid_loss"] for p in curves[side]], marker=".", label=side)
        right.plot(seconds, [p["valid_mask_accuracy"] for p in curves[side]], marker=".", label=side)
    left.set(xlabel="seconds of training", ylabel="validation loss", yscale="log")
    right.set(xlabel="seconds of training", ylabel="validation accuracy at <mask>")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"default recipe, {budget:.0f} s each, {cpu}")
    figure.tight_layout()
    path = os.path.join(out, "race.png")
    figure.savefig(path + ".partial.png", dpi=110)
    os.replace(path + ".partial.png", path)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
        with open("/proc/cpuinfo") as handle:
            avx512 = "avx512f" in handle.read()
    except (OSError, StopIteration):
        return "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {'AVX-512' if avx512 else 'no AVX-512'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="training seconds each side may use")
    parser.add_argument("--threads", type=int, default=2, help="threads for each side")
    parser.add_argument("--out", default=os.path.join("runs", "race"))
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--curve", help=argparse.SUPPRESS)
    parser.add_argument("recipe", nargs="*", help="`minroberta pretrain` flags (after --)")
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options.recipe, options.work, options.seconds, options.threads, options.curve)
    os.makedirs(options.out, exist_ok=True)
    work = os.path.join(options.out, "start")
    prepare(recipe(options.recipe), work)
    paths = {side: os.path.join(options.out, f"curve-{side}.json") for side in SIDES}
    take_turns([[sys.executable, os.path.abspath(__file__), "--worker", side, "--work", work, "--curve", paths[side],
                 "--seconds", str(options.seconds), "--threads", str(options.threads), "--", *options.recipe]
                for side in SIDES])
    curves = {}
    for side in SIDES:
        with open(paths[side]) as handle:
            curves[side] = json.load(handle)
    report(curves, options.seconds, options.out, cpu_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())
