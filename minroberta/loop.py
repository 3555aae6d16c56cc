"""The reference training loop: one pretraining run from start to end, with nothing around it.

    for each update:  read and mask its batches -> forward -> loss -> backward -> clip -> AdamW
    every eval_every updates:  the validation loss and the accuracy at <mask>

No threads, worker processes, MPI, loss scaling, checkpoints or resume: the engine's trainer
(engine/trainer.py) re-implements the same update from this file's parts, with those around it.
tests/test_loop.py holds the two to the same updates.
"""

import itertools
import math

import numpy as np

from . import backend
from .errors import MinRobertaError
from .model import uses_dropout
from .ops import IGNORE_INDEX, cross_entropy_forward
from .optim import AdamW, clip_or_norm, linear_schedule


def train(model, data, settings, say=print):
    """Pretrain `model` in place on `data` (data.PretrainingData) with `settings` (recipe.TrainSettings).
    -> the last evaluation's metrics."""
    optimizer = AdamW(model.params, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay)
    metrics = None
    for step in range(settings.steps):
        loss, lr = train_step(model, optimizer, data, settings, step)
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            say(f"step {done}/{settings.steps} | loss {loss:.4f} | lr {lr:.2e}")
        if done % settings.eval_every == 0 or done == settings.steps:
            metrics = evaluate(model, data, settings)
            say(f"eval at step {done}: {describe(metrics)}")
    return metrics


def train_step(model, optimizer, data, settings, step):
    """One update: the gradient of the mean loss over the scored tokens of all its micro-batches, clipped, then
    one AdamW step. -> (the update's loss, its learning rate)."""
    batches = [micro_batch(data, step, i, settings.accumulate, settings.batch_size)
               for i in range(settings.accumulate)]
    scored = [scored_count(batch) for batch in batches]
    dropout = uses_dropout(model.config)
    grads, loss = None, 0.0
    for i, batch in enumerate(batches):
        weight = scored[i] / max(1, sum(scored))      # this micro-batch's share of the update's scored tokens
        dropout_key = (settings.seed, step, i) if dropout else None
        part_loss, part_grads = model.loss_and_grads(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                     dropout_key=dropout_key, loss_scale=weight)
        grads = add_gradients(grads, part_grads)
        loss += weight * backend.scalar(part_loss)
    norm = clip_or_norm(grads, settings.clip_norm)
    if not (math.isfinite(loss) and math.isfinite(norm)):   # an update now would make every weight NaN
        raise MinRobertaError(f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step {step + 1}; "
                              "stopping (try a lower --lr)")
    lr = linear_schedule(step, settings.lr, settings.warmup_steps, settings.steps)
    optimizer.step(model.params, grads, lr)
    return loss, lr


def micro_batch(data, step, i, accumulate, batch_size, shard=(0, 1)):
    """Micro-batch i of update `step`: the (step * accumulate + i)-th batch of the epochs' shuffled orders, its
    sequences masked afresh for their epoch (data.py); under MPI, this rank's share of it. A pure function of the
    seed and these numbers."""
    per_epoch = data.batches_per_epoch(batch_size)
    g = step * accumulate + i
    return data.train_batch(g // per_epoch, g % per_epoch, batch_size, shard=shard)


def scored_count(batch):
    """The tokens a batch's loss scores: its labels that are not IGNORE_INDEX."""
    return int(np.sum(np.asarray(batch["labels"]) != IGNORE_INDEX))


def add_gradients(total, part):
    """total + part, keyed alike, added into total in place (the first part becomes the total)."""
    if total is None:
        return part
    for name, g in part.items():
        total[name] += g
    return total


# --- evaluation

def evaluate(model, data, settings):
    """The validation metrics over at most eval_batches batches (0: all)."""
    batches = data.valid_batches(settings.batch_size)
    if settings.eval_batches:
        batches = itertools.islice(batches, settings.eval_batches)
    return metrics_of(summed_evaluation(model, batches, data.mask_id))


def summed_evaluation(model, batches, mask_id):
    """evaluation_sums added over the batches, in their order."""
    sums = np.zeros(5)
    for batch in batches:
        sums += evaluation_sums(model, batch, mask_id)
    return sums


def evaluation_sums(model, batch, mask_id):
    """[summed loss, right, scored, right at <mask>, shown as <mask>] over one batch's scored tokens. Only the
    tokens shown as <mask> say how well the model predicts from context: the 10% left unchanged are got right
    by copying the input."""
    logits, targets = model.mlm_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])   # (N, V), (N,)
    count = int(targets.shape[0])
    if count == 0:
        return np.zeros(5)
    loss, _ = cross_entropy_forward(logits, targets)
    right = backend.to_host(logits.argmax(axis=1) == targets)                                      # (N,)
    shown_as_mask = np.asarray(batch["input_ids"])[np.asarray(batch["labels"]) != IGNORE_INDEX] == mask_id
    return np.array([backend.scalar(loss) * count, right.sum(), count, right[shown_as_mask].sum(),
                     shown_as_mask.sum()], dtype=np.float64)


def metrics_of(sums):
    """The metrics from evaluation_sums added over batches (and ranks)."""
    loss_sum, right, count, mask_right, mask_count = sums
    if count == 0:
        raise MinRobertaError("the validation split has no masked tokens to score; use a larger corpus")
    loss = loss_sum / count
    metrics = {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 700.0)), "valid_accuracy": right / count}
    if mask_count:
        metrics["valid_mask_accuracy"] = mask_right / mask_count
    return metrics


def describe(metrics):
    shown = f" | at <mask> {metrics['valid_mask_accuracy']:.3f}" if "valid_mask_accuracy" in metrics else ""
    return (f"loss {metrics['valid_loss']:.4f} | ppl {metrics['valid_ppl']:.2f} | "
            f"accuracy {metrics['valid_accuracy']:.3f}{shown}")
