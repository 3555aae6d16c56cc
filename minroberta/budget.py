"""A run sized to the time the user has: `pretrain --time-budget 10m` turns a duration into a number of updates.

The count is decided early in the run, from the time the first updates took and one timed evaluation and
checkpoint, so that training, its evaluations and checkpoints end within the budget; the warmup and the decay to
zero are then laid out over that count (Izsak et al. 2021 and Geiping & Goldstein 2022 found a schedule that ends
at the deadline one of the larger gains at small budgets). The count is kept in the run's recipe, so a --resume
goes on to the same count instead of deciding again.
"""

import dataclasses
import re
import time

from .errors import MinRobertaError

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
TIMED_UPDATES = 20   # updates timed before deciding, after the first two (which start worker processes)
SKIPPED_UPDATES = 2
SAFETY = 0.97        # the share of the time left that is planned for: step times drift on a shared machine


def parse_duration(text):
    """'90s', '10m', '2h', '1h30m', '1.5h' or plain seconds ('600') -> seconds."""
    spec = re.sub(r"\s+", "", text.lower())
    if re.fullmatch(r"\d+(\.\d*)?", spec):
        seconds = float(spec)
    elif re.fullmatch(r"(\d+(\.\d*)?[hms])+", spec):
        seconds = sum(float(number) * UNITS[unit] for number, unit in re.findall(r"(\d+(?:\.\d*)?)([hms])", spec))
    else:
        raise MinRobertaError(f"--time-budget {text!r}: expected a duration such as 90s, 10m, 2h or 1h30m")
    if not seconds > 0:
        raise MinRobertaError(f"--time-budget {text!r}: must be longer than nothing")
    return seconds


def occurrences(done, steps, every):
    """How many of the updates done+1 .. steps end with an evaluation (or a checkpoint) every `every` updates:
    the multiples of `every`, and the last update, which always has one."""
    if steps <= done:
        return 0
    return steps // every - done // every + (steps % every != 0)


def updates_within(seconds_left, done, step_s, eval_s, eval_every, save_s, save_every):
    """The most updates N (at least `done`) whose remaining updates, evaluations and checkpoints, and the final
    model's save, fit in SAFETY * seconds_left:
        (N - done) step_s + evals(done, N] eval_s + (saves(done, N] + 1) save_s <= SAFETY seconds_left."""
    def cost(n):
        return ((n - done) * step_s + occurrences(done, n, eval_every) * eval_s
                + (occurrences(done, n, save_every) + 1) * save_s)
    room = SAFETY * seconds_left
    low, high = done, done + int(max(room, 0.0) / step_s) + 1   # cost(high) > room: the updates alone overrun
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= room else (low, middle)
    return low


class TimeBudget:
    """Trainer.on_update hook: after the timed updates, times one evaluation and one checkpoint, sets the
    trainer's settings.steps to updates_within the budget (and the warmup to `warmup_share` of it, when given),
    records the plan in trainer.recipe and checkpoints it, so a --resume from here on continues to the same
    count. `started`: time.time() when the run began (preparing the data counts against the budget)."""

    def __init__(self, seconds, started, warmup_share=None, say=print):
        self.seconds, self.started, self.warmup_share, self.say = seconds, started, warmup_share, say
        self.plan = None
        self.timer = None   # (time, step) when timing began

    def __call__(self, trainer):
        if self.plan is not None:
            return
        now = time.time()
        if self.timer is None:
            if trainer.step >= SKIPPED_UPDATES:
                self.timer = (now, trainer.step)
            return
        if trainer.step < self.timer[1] + TIMED_UPDATES:
            return
        step_s = (now - self.timer[0]) / (trainer.step - self.timer[1])
        began = time.time()
        trainer.evaluate()
        eval_s = time.time() - began
        began = time.time()
        trainer.save_checkpoint()
        save_s = time.time() - began
        # every rank must choose the same count: the mean of their timings
        world = trainer.world
        step_s, eval_s, save_s, spent = (value / world.size for value in world.allreduce_scalars(
            [step_s, eval_s, save_s, time.time() - self.started]))
        settings = trainer.settings
        steps = updates_within(self.seconds - spent, trainer.step, step_s, eval_s, settings.eval_every, save_s,
                               settings.save_every)
        warmup = settings.warmup if self.warmup_share is None else max(1, round(self.warmup_share * steps))
        trainer.settings = dataclasses.replace(settings, steps=steps, warmup=warmup)
        trainer.progress.total = steps
        self.plan = {"seconds": self.seconds, "steps": steps, "warmup": warmup, "decided_at": trainer.step,
                     "step_s": step_s, "eval_s": eval_s, "save_s": save_s}
        if trainer.recipe is not None:
            trainer.recipe = {**trainer.recipe, "steps": steps, "time_budget_plan": self.plan}
        trainer.save_checkpoint()   # again, now holding the count
        self.say(f"time budget {self.seconds:g} s: {1000 * step_s:.0f} ms an update, {eval_s:.1f} s an evaluation, "
                 f"{save_s:.1f} s a checkpoint -> {steps:,} updates (warmup {warmup:,})")
