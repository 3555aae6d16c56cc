"""The time budget: durations, the arithmetic that turns the time left into updates, the trainer hook, and a
budgeted run that records its count so that --resume goes on to it exactly."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minroberta import budget
from minroberta.checkpoint import read_safetensors
from minroberta.cli import main
from minroberta.errors import MinRobertaError
from minroberta.engine.trainer import STATE, TrainSettings, list_checkpoints


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           ("600", 600), (" 10 M ", 600), ("2m30s", 150)])
def test_durations(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "1m30", "ten minutes", "0s", "-5m"])
def test_bad_durations_are_one_line_errors(text):
    with pytest.raises(MinRobertaError, match="--time-budget"):
        budget.parse_duration(text)


def simulated_seconds(done, steps, step_s, eval_s, eval_every, save_s, save_every):
    """What the trainer's loop spends on updates done+1 .. steps, walked one update at a time as Trainer._run
    does (an evaluation and a checkpoint at their multiples and at the last update), plus the final save."""
    seconds = 0.0
    for step in range(done + 1, steps + 1):
        seconds += step_s
        seconds += eval_s if step % eval_every == 0 or step == steps else 0.0
        seconds += save_s if step % save_every == 0 or step == steps else 0.0
    return seconds + save_s


@settings(max_examples=300, deadline=None)
@given(left=st.floats(0, 300), done=st.integers(0, 50), step_s=st.floats(0.01, 2.0), eval_s=st.floats(0, 5),
       eval_every=st.integers(1, 40), save_s=st.floats(0, 3), save_every=st.integers(1, 60))
def test_the_count_is_the_most_updates_that_fit(left, done, step_s, eval_s, eval_every, save_s, save_every):
    steps = budget.updates_within(left, done, step_s, eval_s, eval_every, save_s, save_every)
    room = budget.SAFETY * left
    assert steps >= done
    if steps > done:
        assert simulated_seconds(done, steps, step_s, eval_s, eval_every, save_s, save_every) <= room + 1e-9
    assert simulated_seconds(done, steps + 1, step_s, eval_s, eval_every, save_s, save_every) > room - 1e-9


class FakeTrainer:
    def __init__(self, clock):
        self.clock, self.step = clock, 0
        self.settings = TrainSettings(steps=2600, warmup=390, eval_every=200, save_every=400)
        self.progress = type("P", (), {"total": 2600})()
        self.world = type("W", (), {"size": 1, "allreduce_scalars": staticmethod(list)})()
        self.evaluations, self.saves = 0, []

    def evaluate(self):
        self.clock[0] += 2.0
        self.evaluations += 1

    def save_checkpoint(self):
        self.clock[0] += 1.0
        self.saves.append(self.settings.steps)


def test_the_hook_decides_early_then_again_from_a_longer_stretch(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(budget.time, "time", lambda: clock[0])
    said = []
    hook = budget.TimeBudget(600, started=1000.0 - 30, warmup_share=0.15, say=said.append)   # 30 s of setup
    trainer = FakeTrainer(clock)

    def update(seconds):   # as Trainer._run: the update, the hook, then the evaluation or checkpoint due
        trainer.step += 1
        clock[0] += seconds
        at_hook[0] = clock[0]
        hook(trainer)
        clock[0] += 2.0 * (trainer.step % 200 == 0) + 1.0 * (trainer.step % 400 == 0)
    at_hook = [None]
    while hook.plan is None:
        update(5.0 if trainer.step < budget.SKIPPED_UPDATES else 0.2)   # the first updates are not timed
    first = budget.SKIPPED_UPDATES + budget.TIMED_UPDATES
    assert trainer.step == first and trainer.evaluations == 1 and trainer.saves == [2600]
    spent = 30 + budget.SKIPPED_UPDATES * 5.0 + budget.TIMED_UPDATES * 0.2 + 2.0 + 1.0
    expected = budget.updates_within(600 - spent, first, 0.2, 2.0, 200, 1.0, 400)
    assert trainer.settings.steps == expected == trainer.progress.total
    assert trainer.settings.warmup == round(0.15 * expected) and not hook.plan["final"]

    while not hook.plan["final"]:   # the later updates run faster: the count grows
        update(0.1)
    second = first + max(budget.TIMED_UPDATES, round(budget.REPLAN_SHARE * expected))
    assert trainer.step == second
    final = budget.updates_within(600 - (at_hook[0] - 970), second, 0.1, 2.0, 200, 1.0, 400)
    assert hook.plan["step_s"] == pytest.approx(0.1)   # the evaluation at update 200 is not counted in it
    assert final > expected
    assert trainer.settings.steps == final == trainer.progress.total
    assert trainer.settings.warmup == round(0.15 * final)
    assert hook.plan["steps"] == final and hook.plan["final"]
    assert trainer.evaluations == 1 and trainer.saves == [2600, final]   # the last checkpoint holds the count
    assert len(said) == 2 and f"{final:,} updates" in said[1]
    update(0.1)
    assert trainer.evaluations == 1 and len(trainer.saves) == 2


SMALL_RUN = ["--preset", "micro", "--seq-len", "64", "--batch-size", "8", "--log-every", "2", "--eval-batches", "4",
             "--eval-every", "10", "--save-every", "10"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from minroberta.corpus import stdlib_documents
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    documents = [d for _, d in zip(range(300), stdlib_documents())]
    path.write_text("\n\n".join(documents), encoding="utf-8")
    return str(path)


def run_cli(*args):
    return main([str(a) for a in args])


def test_a_budgeted_run_resumes_to_its_recorded_count(tmp_path, monkeypatch, corpus_file):
    """The count comes from timing, so the test fixes it (updates_within is replaced): what is checked is that
    it is recorded and that --resume, from a checkpoint after the decision, goes on to it bit for bit."""
    monkeypatch.setattr(budget, "TIMED_UPDATES", 4)
    decided = budget.SKIPPED_UPDATES + 2 * budget.TIMED_UPDATES   # the final count, at update 10
    monkeypatch.setattr(budget, "updates_within", lambda left, done, *rest: decided + 11)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--time-budget", "1h"]
    assert run_cli(*common, "--out", straight) == 0
    assert run_cli(*common, "--out", resumed, "--stop-at-step", decided + 4) == 0
    monkeypatch.setattr(budget, "updates_within", lambda *a: pytest.fail("a resumed run decided again"))
    assert run_cli("pretrain", "--resume", "--out", resumed) == 0
    state = json.load(open(os.path.join(list_checkpoints(resumed)[-1], STATE)))
    assert state["step"] == state["settings"]["steps"] == decided + 11
    assert state["settings"]["time_budget"] is None   # the recipe keeps the count instead
    assert state["settings"]["warmup"] == round(0.15 * (decided + 11))
    first = read_safetensors(os.path.join(straight, "model.safetensors"))
    second = read_safetensors(os.path.join(resumed, "model.safetensors"))
    for key in first:
        assert np.array_equal(first[key], second[key]), key
