"""The production training loop: loop.py's update, re-implemented from loop.py's parts to run across worker
processes, threads and MPI ranks, in mixed precision, with evaluation, metrics, atomic checkpoints, exact resume
and Ctrl-C that loses nothing.

Pretraining and fine-tuning share it; what differs (the loss, how batches are weighted, the evaluation) is a
task object: `MaskedLM` here, the fine-tuning tasks in finetune.py. Everything a step does is a pure function
of (seed, step): the batches it reads, their masks and its dropout. So a checkpoint needs only the parameters,
the optimizer moments, the step (and, in float16 mixed precision, the loss scale), and a resumed run retraces
the uninterrupted one bit for bit.
"""

import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time

import numpy as np

from .. import atomic, backend, guards
from ..checkpoint import load_pretrained, read_safetensors, save_pretrained
from ..data import rank_share
from ..errors import MinRobertaError
from ..loop import add_gradients, describe, metrics_of, micro_batch, scored_count, summed_evaluation
from ..model import uses_dropout
from ..optim import clip_or_norm, linear_schedule
from .. import recipe
from ..recipe import TrainSettings  # noqa: F401  (the trainer's settings; tests and scripts take it from here)
from . import distributed, install, precision, threads, workers as worker_processes
from .flat import FlatAdamW

CHECKPOINTS = "checkpoints"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.safetensors"
METRICS = "metrics.jsonl"


class MaskedLM:
    """Pretraining's task: the MLM loss; micro-batches weighted by their scored tokens; evaluation reports
    validation loss, perplexity, accuracy over every scored token and accuracy at the tokens shown as
    `<mask>` alone (the 10% of scored tokens left unchanged are got right by copying the input, so only the
    second says how well the model predicts from context)."""

    best_metric = None   # pretraining keeps the last model, not a best one
    mask_id = None       # without one, only the all-labels accuracy is reported

    def __init__(self, mask_id=None):
        self.mask_id = mask_id

    def weight(self, batch):
        return scored_count(batch)

    def loss_and_grads(self, model, batch, dropout_key, loss_scale=1.0):
        return model.loss_and_grads(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                    dropout_key=dropout_key, loss_scale=loss_scale)

    def evaluate(self, model, batches, world=distributed.Single()):
        """Over this rank's batches; the sums are added over ranks, so every rank gets the global figures."""
        sums = summed_evaluation(model, batches, self.mask_id)
        return metrics_of(world.allreduce_scalars(list(sums)))

    def describe(self, metrics):
        return describe(metrics)


class Progress:
    """One status line: step, loss, tokens/s and ETA; rewritten in place on a terminal, printed every
    `log_every` steps otherwise (logs, CI)."""

    def __init__(self, total, stream=None, quiet=False):
        self.total, self.stream, self.quiet = total, stream or sys.stderr, quiet   # stderr now, not at import
        self.interactive = self.stream.isatty()

    def update(self, step, loss, tokens_per_s, seconds_per_step, force=False):
        if self.quiet:
            return
        eta = (self.total - step) * seconds_per_step
        line = (f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_s:,.0f} tok/s | "
                f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        if self.interactive:
            self.stream.write("\r" + line.ljust(80) + ("\n" if step == self.total else ""))
        elif force:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text):
        if self.quiet:
            return
        if self.interactive:
            self.stream.write("\r" + " " * 80 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


class Trainer:
    """Trains `model` on `data` for `task` (default: masked-LM pretraining), writing everything under `out_dir`.
    `data` gives train_batch(epoch, index, batch_size, shard), batches_per_epoch(batch_size) and
    valid_batches(batch_size). Under MPI (`world` of several ranks) each rank trains on its shard of every
    global batch (ranks x batch_size sequences) and rank 0 alone writes checkpoints, metrics and progress."""

    def __init__(self, model, data, tokenizer, settings, out_dir, progress=None, task=None, world=None):
        settings.validate()
        install()   # the fast forms (unless MINROBERTA_REFERENCE=1)
        self.model, self.data, self.tokenizer, self.settings, self.out_dir = model, data, tokenizer, settings, out_dir
        self.task = task or MaskedLM(getattr(data, "mask_id", None))
        self.world = world or distributed.Single()
        if self.world.size > 1 and not isinstance(self.task, MaskedLM):
            raise MinRobertaError("only pretraining runs on several processes; fine-tune with one")
        self.global_batch = settings.batch_size * self.world.size
        self.dropout = uses_dropout(model.config)
        self.best = None
        self.skipped = 0   # updates skipped for a non-finite loss or gradient (--skip-nonfinite)
        self.optimizer = FlatAdamW(model.params, betas=settings.betas, eps=settings.eps,
                                   weight_decay=settings.weight_decay)
        model.params = self.optimizer.hold(model.params)   # in one flat buffer: one update over all of them
        # float16 products need the loss scaled (precision.LossScaler); float32 and TF32 do not
        self.scaler = precision.LossScaler() if precision.name() == "fp16" else None
        self.step = 0
        self.progress = progress or Progress(settings.steps, quiet=not self.world.is_main)
        self.last_eval = None
        self.interrupted = False   # set when a Ctrl-C ended run() early, after saving the update it finished
        self.workers = None        # worker_processes.Workers, started on the first update that can use them
        self.use_workers = os.environ.get("MINROBERTA_SLICE_WORKERS", "1") != "0"
        self.on_update = None      # called with the trainer after each update (budget.TimeBudget sizes a run so)

    # --- one update
    def micro_batches(self, step):
        """The micro-batches of update `step`: global micro-batch g = step * accumulate + i, read in order
        (this rank's shard of each, under MPI)."""
        for i in range(self.settings.accumulate):
            yield i, micro_batch(self.data, step, i, self.settings.accumulate, self.global_batch,
                                 shard=(self.world.rank, self.world.size))

    def losses_and_grads(self, batch, dropout_key, total_scored):
        """[(loss, gradients, weight)] of a micro-batch's parts: the micro-batch whole, or, on several NumPy
        threads without dropout and with a row for each, one part of its rows per thread (data.rank_share's
        shares), computed side by side: in worker processes where they apply (part_workers), else on the threads
        (threads.each). Whole parts side by side beat cutting every op of one batch (docs/performance.md);
        dropout draws its masks for the micro-batch whole, so with dropout it stays whole. A part's weight is its
        share of the update's scored tokens, and its gradients come already weighted (through the loss scale), so
        the update's gradient is their plain sum."""
        scale = self.scaler.scale if self.scaler else 1.0
        count = threads.count() if backend.name() == "numpy" and dropout_key is None else 1
        if count == 1 or len(batch["input_ids"]) < count:
            parts = [batch]
        else:
            parts = [{k: rank_share(v, j, count) for k, v in batch.items()} for j in range(count)]
        weights = [self.task.weight(part) / total_scored for part in parts]
        if len(parts) > 1 and (workers := self.part_workers(parts)) is not None:
            def here(part, part_scale):
                with threads.alone():   # the workers have the other cores
                    return self.task.loss_and_grads(self.model, part, None, part_scale)
            results = workers.run(parts, [scale * w for w in weights], here)
            return [(loss, grads, w) for (loss, grads), w in zip(results, weights)]
        results = [None] * len(parts)

        def run(j):   # dropout_key is None whenever there are several parts
            results[j] = (*self.task.loss_and_grads(self.model, parts[j], dropout_key, scale * weights[j]), weights[j])
        threads.each(run, range(len(parts)))   # one part: on this thread, its ops cut as usual
        return results

    def part_workers(self, parts):
        """The worker processes for parts[1:] (workers.py), started on first use and again when the parts or the
        parameters' layout change; None where they do not apply: pretraining on NumPy in float32 on one rank,
        parameters in the optimizer's flat buffer, Linux, and MINROBERTA_SLICE_WORKERS not 0. If they cannot
        start, the threads take over, said once."""
        if not (self.use_workers and type(self.task) is MaskedLM and self.world.size == 1 and self.scaler is None
                and self.model.dtype == "float32" and self.optimizer.held is not None
                and precision.name() == "float32" and worker_processes.available()):
            return None
        if self.workers is not None and not self.workers.fits(self.optimizer, parts):
            self.workers.close()
            self.workers = None
        if self.workers is None:
            rows = max(len(part["input_ids"]) for part in parts)
            try:
                self.workers = worker_processes.Workers(self.model, self.optimizer, len(parts) - 1, rows,
                                              parts[0]["input_ids"].shape[1])
            except (OSError, MinRobertaError) as error:
                self.use_workers = False
                self.progress.message(f"worker processes did not start ({error}); the parts run on threads")
                return None
        self.workers.bind(self.model, self.optimizer)   # again after a restore, which holds the parameters anew
        return self.workers

    # an inf or NaN is caught below and reported in one line (or handled by the loss scaler); NumPy's own
    # warnings about it along the way would only repeat that
    @np.errstate(over="ignore", invalid="ignore")
    def train_step(self):
        """One update, as loop.train_step does it: the summed weighted gradients of the update's micro-batches
        (over their parts and the ranks too), unscaled, clipped, then one AdamW step unless they are not finite.
        -> (loss, tokens, learning rate)."""
        loss, tokens, grads = self.gradients(self.step)
        lr = linear_schedule(self.step, self.settings.lr, self.settings.warmup_steps, self.settings.steps)
        if (flat := self.optimizer.gather(grads)) is not None:     # the optimizer's one buffer: one pass each
            grads = flat
        norm = self.unscale_and_clip(grads)
        if self.update_is_finite(loss, norm):
            self.optimizer.step(self.model.params, grads, lr)
        self.step += 1
        return loss, tokens, lr

    def gradients(self, step):
        """-> the update's loss, its tokens, and its gradients: each micro-batch's (and part's) weighted by its
        share of the update's scored tokens, so their plain sum is the gradient of one large batch."""
        world = self.world
        batches = list(self.micro_batches(step))
        total_scored = max(1, world.allreduce_scalars([sum(self.task.weight(b) for _, b in batches)])[0])
        grads, loss, tokens = None, 0.0, 0
        for i, batch in batches:
            # dropout's draws follow this shard's place in the update (micro-batch i of rank r is shard
            # i * ranks + r), so ranks x accumulation in any split gives the same draws and the same update
            key = (self.settings.seed, step, i * world.size + world.rank) if self.dropout else None
            for part_loss, part_grads, weight in self.losses_and_grads(batch, key, total_scored):
                grads = add_gradients(grads, part_grads)
                loss += weight * backend.scalar(part_loss)
            tokens += int(np.sum(batch["attention_mask"]))
        if world.size > 1:
            grads = world.allreduce_grads(grads)
            loss, tokens = world.allreduce_scalars([loss, tokens])
        return loss, tokens, grads

    def unscale_and_clip(self, grads):
        """The gradients (a dict, or the optimizer's flat buffer) divided by the loss scale in float16 and clipped,
        in place. -> their global norm before clipping, a float."""
        tensors = grads if isinstance(grads, dict) else {"all": grads}
        if self.scaler:
            self.scaler.unscale(tensors)
        return clip_or_norm(tensors, self.settings.clip_norm)

    def update_is_finite(self, loss, norm):
        """False for an update to skip: a float16 overflow (the loss scale backs off, said), or a non-finite loss or
        gradient with --skip-nonfinite (said). Without it, a non-finite one stops the run."""
        if self.scaler:
            self.scaler.update(math.isfinite(norm))
            if math.isfinite(loss) and not math.isfinite(norm):   # the scale was too large: the expected case
                self.progress.message(f"step {self.step + 1}: float16 gradient overflow, update skipped; loss "
                                      f"scale lowered to {self.scaler.scale:g}")
                return False
        if math.isfinite(loss) and math.isfinite(norm):
            return True
        what = f"non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step {self.step + 1}"
        if not self.settings.skip_nonfinite:
            raise MinRobertaError(f"{what}; stopping. The last good checkpoint is left untouched under "
                                  f"{os.path.join(str(self.out_dir), CHECKPOINTS)} (--skip-nonfinite skips "
                                  "such updates instead)")
        self.skipped += 1
        self.progress.message(f"warning: {what}; update skipped ({self.skipped} so far)")
        return False

    # --- evaluation
    def evaluate(self):
        """The task's validation metrics, over at most `eval_batches` batches."""
        batches = self.data.valid_batches(self.global_batch)
        if self.settings.eval_batches:
            batches = itertools.islice(batches, self.settings.eval_batches)
        if self.world.size > 1:   # each rank scores every size-th batch; the task adds the sums over ranks
            mine = (b for n, b in enumerate(batches) if n % self.world.size == self.world.rank)
            return {"step": self.step, **self.task.evaluate(self.model, mine, self.world)}
        return {"step": self.step, **self.task.evaluate(self.model, batches)}

    # --- the loop
    def run(self, stop_at=None):
        """Train to `settings.steps` (or checkpoint and return early after update `stop_at`). A first Ctrl-C
        finishes the update under way, saves a checkpoint of it and returns with `interrupted` set; a second
        one stops at once (the last checkpoint is still whole: they are written atomically)."""
        with _InterruptAfterStep() as interrupt:
            return self._run(stop_at, interrupt)

    def _run(self, stop_at, interrupt):
        settings = self.settings
        started, tokens_seen, steps_timed = time.time(), 0, 0
        self.interrupted = False
        while self.step < settings.steps:
            if stop_at is not None and self.step >= stop_at:
                if self.step % settings.save_every:    # else the loop has just saved this step
                    self.save_checkpoint()
                return self.last_eval
            loss, tokens, lr = self.train_step()
            if self.on_update is not None:   # may change settings.steps and the schedule (budget.py)
                self.on_update(self)
                settings = self.settings
            tokens_seen += tokens
            steps_timed += 1
            elapsed = time.time() - started
            seconds_per_step = elapsed / steps_timed
            log_now = self.step % settings.log_every == 0 or self.step == settings.steps
            self.progress.update(self.step, loss, tokens_seen / max(elapsed, 1e-9), seconds_per_step, force=log_now)
            if log_now:
                self.log({"step": self.step, "loss": loss, "lr": lr, "tokens_per_s": tokens_seen / max(elapsed, 1e-9)})
            if self.step % settings.eval_every == 0 or self.step == settings.steps:
                self.last_eval = self.evaluate()
                self.log(self.last_eval)
                self.progress.message(f"eval at step {self.step}: {self.task.describe(self.last_eval)}")
                self.keep_if_best(self.last_eval)
            saved_now = self.step % settings.save_every == 0 or self.step == settings.steps
            if saved_now:
                self.save_checkpoint()
            # every rank stops after the same update, so none waits in a collective for one that has left
            if self.world.allreduce_scalars([interrupt.requested])[0] if self.world.size > 1 else interrupt.requested:
                self.interrupted = True
                if not saved_now:
                    self.save_checkpoint()
                return self.last_eval
        if self.task.best_metric is None and self.world.is_main:
            self.require_finite("the final model")
            save_pretrained(self.model, self.out_dir, tokenizer=self.tokenizer)
        return self.last_eval

    def keep_if_best(self, metrics):
        """Tasks that name a best metric (higher is better) keep their best model at the top of out_dir."""
        metric = self.task.best_metric
        unsound = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if metric is not None and unsound:   # the model's outputs overflowed: whatever its accuracy, not a best
            self.progress.message(f"warning: {unsound[0]} is {metrics[unsound[0]]} at step {self.step}; not kept "
                                  "as the best model")
            return
        if metric is None or (self.best is not None and metrics[metric] <= self.best):
            return
        self.require_finite(f"a best model at step {self.step}")
        self.best = metrics[metric]
        if not self.world.is_main:
            return
        save_pretrained(self.model, self.out_dir, tokenizer=self.tokenizer)
        self.progress.message(f"new best {metric} {self.best:.4f}: model saved to {self.out_dir}")

    def log(self, record):
        if not self.world.is_main:
            return
        with open(os.path.join(self.out_dir, METRICS), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # --- checkpoints
    def save_checkpoint(self):
        """Write checkpoints/step-N as a whole: into a hidden directory first, then one rename. A kill at any
        moment leaves the previous checkpoint as it was. Rank 0 writes; the replicas are identical."""
        from safetensors.numpy import save
        if not self.world.is_main:
            return None
        self.require_finite(f"checkpoint step-{self.step:08d}", moments=True)
        root = os.path.join(self.out_dir, CHECKPOINTS)
        os.makedirs(root, exist_ok=True)
        final = os.path.join(root, f"step-{self.step:08d}")
        partial = os.path.join(root, f".partial-step-{self.step:08d}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            save_pretrained(self.model, partial, tokenizer=self.tokenizer)
            moments = {k: np.ascontiguousarray(backend.to_host(v)) for k, v in self.optimizer.state_arrays().items()}
            atomic.write_bytes(os.path.join(partial, OPTIMIZER), save(moments))
            state = {"step": self.step, "optimizer_steps": self.optimizer.step_count,
                     "settings": dataclasses.asdict(self.settings), "backend": backend.name(),
                     "last_eval": self.last_eval, "best": self.best, "global_batch": self.global_batch,
                     "ranks": self.world.size, "precision": precision.name(),
                     "loss_scale": self.scaler.state() if self.scaler else None}
            atomic.write_json(os.path.join(partial, STATE), state)
        except BaseException as exc:   # a second Ctrl-C or a full disk mid-write: no half checkpoint left behind
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(exc, OSError) and exc.filename and str(exc.filename).startswith(partial):
                # name the checkpoint being written, not its hidden temporary folder
                raise OSError(exc.errno, exc.strerror, final + str(exc.filename)[len(partial):]) from None
            raise
        if os.path.exists(final):
            atomic.remove_tree(final)
        os.replace(partial, final)
        atomic.sync_directory(root)
        for old in list_checkpoints(self.out_dir)[:-self.settings.keep_checkpoints]:
            atomic.remove_tree(old)
        return final

    def require_finite(self, what, moments=False):
        """Refuse to save parameters (and optimizer moments) holding a NaN or an infinity as good."""
        tensors = dict(self.model.params)
        if moments:
            tensors.update(self.optimizer.state_arrays())
        if (name := guards.first_nonfinite(tensors)) is not None:
            raise MinRobertaError(f"update {self.step} left NaN or infinite values in {name}, so {what} is not "
                                  f"saved; the last good checkpoint is left untouched under "
                                  f"{os.path.join(str(self.out_dir), CHECKPOINTS)} (a lower --lr may help)")

    def restore(self, checkpoint):
        """Load parameters, optimizer moments and step from a checkpoint directory (already validated)."""
        model = load_pretrained(checkpoint)
        if set(model.params) != set(self.model.params):
            raise MinRobertaError(f"{checkpoint}: its tensors do not match this model")
        for name, value in model.params.items():
            if tuple(value.shape) != tuple(self.model.params[name].shape):
                raise MinRobertaError(f"{checkpoint}: tensor {name} has shape {tuple(value.shape)}, this run's "
                                      f"model has {tuple(self.model.params[name].shape)}")
        self.model.params = model.params
        state = read_state(checkpoint)
        self.optimizer = FlatAdamW(self.model.params, betas=self.settings.betas, eps=self.settings.eps,
                               weight_decay=self.settings.weight_decay)
        self.optimizer.load_state_arrays(read_optimizer(checkpoint), state["optimizer_steps"],
                                         os.path.join(checkpoint, OPTIMIZER))
        self.model.params = self.optimizer.hold(self.model.params)
        saved_batch = state.get("global_batch", self.global_batch)
        if saved_batch != self.global_batch:
            raise MinRobertaError(
                f"{checkpoint} was written by a run with a global batch of {saved_batch} sequences "
                f"({state.get('ranks', 1)} ranks); this run has {self.global_batch} ({self.world.size} ranks x "
                f"--batch-size {self.settings.batch_size}). Keep ranks x --batch-size the same to resume: the data "
                "order follows the global batch")
        if self.scaler and state.get("loss_scale"):
            self.scaler.load_state(state["loss_scale"])
        self.step = state["step"]
        self.last_eval = state.get("last_eval")
        self.best = state.get("best")
        self.trim_metrics()

    def begin(self, checkpoint, report=print):
        """Continue from `checkpoint`, or (None) start a new run in out_dir. Half-written checkpoints of a killed
        run go first."""
        root = os.path.join(self.out_dir, CHECKPOINTS)
        if self.world.is_main and os.path.isdir(root):
            for name in os.listdir(root):
                if name.startswith((".partial-", ".trash-")):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        if checkpoint is None:
            self.start_fresh()
        else:
            self.restore(checkpoint)
            report(f"resumed from {checkpoint} at step {self.step}")

    def start_fresh(self):
        """A new run in out_dir: metric records of an earlier attempt that never reached a checkpoint go."""
        path = os.path.join(self.out_dir, METRICS)
        if self.world.is_main and os.path.exists(path):
            atomic.write_text(path, "")

    def trim_metrics(self):
        """After a resume, drop metric records from beyond the checkpoint (the steps about to be redone)."""
        path = os.path.join(self.out_dir, METRICS)
        if not self.world.is_main or not os.path.exists(path):
            return
        kept = []
        for line in guards.read_regular_file(path, guards.METRICS_LIMIT).decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue   # a line torn by a kill
            step = record.get("step", 0) if isinstance(record, dict) else None
            if isinstance(step, int) and step <= self.step:
                kept.append(json.dumps(record) + "\n")
        atomic.write_text(path, "".join(kept))


class _InterruptAfterStep:
    """While active, the first SIGINT only sets `requested` (the loop saves and stops after the update under
    way, which a KeyboardInterrupt would leave half applied); the second raises KeyboardInterrupt as usual.
    Outside the main thread signals cannot be caught, and Ctrl-C keeps its usual meaning."""

    def __init__(self):
        self.requested, self.previous = 0, None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def checkpoint_to_resume(out_dir, resume, report=print):
    """With `resume`: the newest good checkpoint in out_dir and its trainer state (an error when there is none).
    Without: (None, None), and an error when out_dir already holds a run, so that nothing is overwritten."""
    if resume:
        checkpoint, state = latest_good_checkpoint(out_dir, report=report)
        if checkpoint is None:
            raise MinRobertaError(f"{out_dir}: no checkpoint to resume from")
        return checkpoint, state
    if list_checkpoints(out_dir):
        raise MinRobertaError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    return None, None


def list_checkpoints(out_dir):
    """Complete checkpoint directories under out_dir, oldest first."""
    root = os.path.join(out_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-"))
    return [os.path.join(root, n) for n in names]


def read_state(checkpoint, complete=False):
    """A checkpoint's trainer state, every value checked in type and range (`complete`: with its settings, as
    a resume needs them)."""
    path = os.path.join(checkpoint, STATE)
    state = guards.load_json(path)
    guards.check_trainer_state(state, path, recipe.kind_of(state), complete)
    try:
        if state.get("loss_scale") is not None:
            precision.LossScaler().load_state(state["loss_scale"])   # raises on a damaged one
        return state
    except (ValueError, KeyError, TypeError) as exc:
        raise MinRobertaError(f"{path}: not a trainer state ({type(exc).__name__}: {exc})") from None


def read_optimizer(checkpoint):
    """A checkpoint's AdamW moments, each checked finite."""
    path = os.path.join(checkpoint, OPTIMIZER)
    moments = read_safetensors(path)
    guards.require_finite_tensors(moments, path)
    return moments


def latest_good_checkpoint(out_dir, report=print):
    """The newest checkpoint that loads and its trainer state, falling back (and saying so) past damaged ones;
    (None, None) when none."""
    for checkpoint in reversed(list_checkpoints(out_dir)):
        try:
            load_pretrained(checkpoint)
            read_optimizer(checkpoint)
            return checkpoint, read_state(checkpoint, complete=True)
        except MinRobertaError as exc:
            report(f"warning: checkpoint {checkpoint} is unusable ({exc}); falling back to an earlier one")
    return None, None
