"""`--resume --out DIR` alone restores the whole recipe a checkpoint keeps (recipe.py): the precision, the
cadence of checkpoints, evaluations and metric records, and fine-tuning's flags; the run ends bit for bit where
the uninterrupted one does."""

import json
import os

import numpy as np

from minroberta import recipe
from minroberta.checkpoint import read_safetensors
from minroberta.engine import trainer as training
from tests.test_finetune import demo_task, pretrained  # noqa: F401  (fixtures)
from tests.test_pretrain import SMALL_RUN, corpus_file, final_params, run_cli  # noqa: F401  (a fixture)


def assert_same_params(a_dir, b_dir):
    a, b = final_params(a_dir), final_params(b_dir)
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def records(out):
    """metrics.jsonl, less its timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in open(os.path.join(out, "metrics.jsonl"))]


def test_fp16_and_the_cadence_come_back_with_resume_alone(tmp_path, corpus_file):  # noqa: F811
    """float16 products and the loss scale, and the checkpoint, evaluation and metric cadence: after a stop at
    update 3, `--resume --out` with no other flag writes the same checkpoints, the same metrics.jsonl and the
    same final weights as the uninterrupted run."""
    recipe = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 7, "--precision", "fp16", "--lr", "3e-3",
              "--save-every", 2, "--eval-every", 3, "--log-every", 1, "--keep-checkpoints", 10]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*recipe, "--out", straight) == 0
    assert run_cli(*recipe, "--out", resumed, "--stop-at-step", 3) == 0
    assert run_cli("pretrain", "--resume", "--out", resumed) == 0
    assert_same_params(straight, resumed)
    steps = lambda out: [os.path.basename(c) for c in training.list_checkpoints(str(out))]
    assert steps(straight) == ["step-00000002", "step-00000004", "step-00000006", "step-00000007"]
    assert steps(resumed) == sorted(steps(straight) + ["step-00000003"])   # and the stop's own
    assert records(resumed) == records(straight)
    state = training.read_state(training.list_checkpoints(str(resumed))[-1])
    assert state["precision"] == "fp16" and state["settings"]["precision"] == "fp16"


def test_finetune_resumes_with_resume_alone(tmp_path, pretrained, demo_task, monkeypatch):  # noqa: F811
    """A fine-tuning run stopped after update 3 goes on with `finetune --resume --out DIR` and nothing else, to
    the same best model and the same checkpoint as the uninterrupted run."""
    recipe = ["finetune", "--model", pretrained, "--task", "classify", "--train", f"{demo_task}/train.csv",
              "--eval", f"{demo_task}/eval.csv", "--epochs", "0.05", "--lr", "1e-3", "--max-length", "32",
              "--eval-every", 2, "--save-every", 1, "--seed", 4]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*recipe, "--out", straight) == 0
    run = training.Trainer.run
    monkeypatch.setattr(training.Trainer, "run", lambda self, stop_at=None: run(self, stop_at=3))
    assert run_cli(*recipe, "--out", resumed) == 0
    monkeypatch.setattr(training.Trainer, "run", run)
    assert run_cli("finetune", "--resume", "--out", resumed) == 0
    assert_same_params(straight, resumed)
    last = [training.list_checkpoints(str(out))[-1] for out in (straight, resumed)]
    assert os.path.basename(last[0]) == os.path.basename(last[1])
    moments = [read_safetensors(os.path.join(c, training.OPTIMIZER)) for c in last]
    assert all(np.array_equal(moments[0][k], moments[1][k]) for k in moments[0])


OLD_SETTINGS = ("accumulate", "batch_size", "clip_norm", "eps", "eval_batches", "eval_every", "keep_checkpoints",
                "log_every", "lr", "save_every", "seed", "skip_nonfinite", "steps", "weight_decay")
OLD_FLAGS = ("accumulate", "batch_size", "beta2", "clip_norm", "corpus", "dropout", "dtype", "heads", "hidden_size",
             "intermediate_size", "layers", "lr", "mask_prob", "preset", "seed", "seq_len", "skip_nonfinite", "steps",
             "warmup", "weight_decay")


def as_written_before_the_recipe(path):
    """Rewrite a trainer_state.json as minroberta wrote it before recipe.py: the trainer's settings (dropout a
    switch, the betas a pair, warmup in updates) beside the command's flags under "recipe", precision apart."""
    state = json.load(open(path))
    settings = state["settings"]
    old = {name: settings[name] for name in OLD_SETTINGS}
    old.update(betas=[0.9, settings["beta2"]], dropout=settings["dropout"] > 0,
               warmup=recipe.Pretraining.from_saved(state, path).warmup_steps)
    state.update(settings=old, recipe={name: settings[name] for name in OLD_FLAGS}, precision=settings["precision"])
    json.dump(state, open(path, "w"))


def test_a_checkpoint_written_before_the_recipe_resumes_bit_for_bit(tmp_path, corpus_file):  # noqa: F811
    """Checkpoints of earlier versions kept the recipe in two parts; a resume reads both and ends where the
    uninterrupted run does."""
    run = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 6, "--save-every", 2]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(*run, "--out", straight) == 0
    assert run_cli(*run, "--out", resumed, "--stop-at-step", 4) == 0
    for checkpoint in training.list_checkpoints(str(resumed)):
        as_written_before_the_recipe(os.path.join(checkpoint, "trainer_state.json"))
    assert run_cli("pretrain", "--resume", "--out", resumed) == 0
    assert_same_params(straight, resumed)
