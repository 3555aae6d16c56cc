"""A run sized to the time the user has: `pretrain --time-budget 10m` turns a duration into a number of updates.

The count is decided early in the run, from the time the first updates took and one timed evaluation and
checkpoint, so that training, its evaluations and checkpoints end within the budget, and decided once more a
little later from a longer stretch; the warmup and the decay to zero are laid out over that count (Izsak et al.
2021 and Geiping & Goldstein 2022 found a schedule that ends at the deadline one of the larger gains at small
budgets). The final count is kept in the run's recipe, so a --resume goes on to it instead of deciding again.
"""

import dataclasses
import re
import time

from .errors import MinRobertaError

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
TIMED_UPDATES = 20   # updates timed before deciding, after the first two (which start worker processes)
SKIPPED_UPDATES = 2
REPLAN_SHARE = 0.1   # the count is decided again after this share of the first count
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
    """Trainer.on_update hook, deciding the count twice. First, after TIMED_UPDATES updates, it times one
    evaluation and one checkpoint and sets the trainer's settings.steps to updates_within the budget (and the
    warmup to `warmup_share` of it, when given), so that the schedule is laid out early. Then, after another
    REPLAN_SHARE of that count, it decides again from the update time measured over that longer stretch (the
    first updates run slower than the rest), keeps the final count as the recipe's steps (its --time-budget
    then cleared) and checkpoints it, so that a --resume from there continues to the same count; a resume from
    before it decides anew. `started`:
    time.time() when the run began (preparing the data counts against the budget)."""

    def __init__(self, seconds, started, warmup_share=None, say=print):
        self.seconds, self.started, self.warmup_share, self.say = seconds, started, warmup_share, say
        self.plan = None      # the latest decision
        self.calls = 0
        self.timer = None     # (time, step) when timing began
        self.replan_at = None

    def __call__(self, trainer):
        if self.plan is not None and self.plan["final"]:
            return
        now, settings = time.time(), trainer.settings
        self.calls += 1
        if self.timer is None:
            if self.calls >= SKIPPED_UPDATES:   # timing starts after the first updates (they start workers)
                self.timer = (now, trainer.step)
            return
        done = trainer.step - self.timer[1]
        if self.plan is None:
            if done < TIMED_UPDATES:
                return
            step_s = (now - self.timer[0]) / done
            began = time.time()
            trainer.evaluate()
            eval_s = time.time() - began
            began = time.time()
            trainer.save_checkpoint()
            save_s = time.time() - began
            self.decide(trainer, step_s, eval_s, save_s, final=False)
            self.timer = (time.time(), trainer.step)   # the second timing starts after this one's pauses
            self.replan_at = trainer.step + max(TIMED_UPDATES, round(REPLAN_SHARE * trainer.settings.steps))
            return
        if trainer.step < self.replan_at or trainer.step >= trainer.settings.steps:
            return
        # the evaluations and checkpoints of the stretch (after updates timer .. step - 1), at the times measured,
        # are not update time
        first, last = self.timer[1], trainer.step - 1
        pauses = ((last // settings.eval_every - (first - 1) // settings.eval_every) * self.plan["eval_s"]
                  + (last // settings.save_every - (first - 1) // settings.save_every) * self.plan["save_s"])
        step_s = max(now - self.timer[0] - pauses, 0.0) / done
        self.decide(trainer, step_s, self.plan["eval_s"], self.plan["save_s"], final=True)
        trainer.save_checkpoint()   # holding the final count

    def decide(self, trainer, step_s, eval_s, save_s, final):
        # every rank must choose the same count: the mean of their timings
        world = trainer.world
        step_s, eval_s, save_s, spent = (value / world.size for value in world.allreduce_scalars(
            [step_s, eval_s, save_s, time.time() - self.started]))
        settings = trainer.settings
        steps = updates_within(self.seconds - spent, trainer.step, step_s, eval_s, settings.eval_every, save_s,
                               settings.save_every)
        warmup = settings.warmup if self.warmup_share is None else max(1, round(self.warmup_share * steps))
        trainer.settings = dataclasses.replace(settings, steps=steps, warmup=warmup)
        if final and hasattr(settings, "time_budget"):   # the recipe keeps the count: a resume goes on to it
            trainer.settings = dataclasses.replace(trainer.settings, time_budget=None)
        trainer.progress.total = steps
        self.plan = {"seconds": self.seconds, "steps": steps, "warmup": warmup, "decided_at": trainer.step,
                     "step_s": step_s, "eval_s": eval_s, "save_s": save_s, "final": final}
        self.say(f"time budget {self.seconds:g} s, {'final' if final else 'first'} count at update {trainer.step}: "
                 f"{1000 * step_s:.0f} ms an update, {eval_s:.1f} s an evaluation, {save_s:.1f} s a checkpoint -> "
                 f"{steps:,} updates (warmup {warmup:,})")
