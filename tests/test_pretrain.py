"""The pretraining job end to end: loss falls, resume is bit-exact, kills lose nothing, bad input is one line."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import minroberta
from minroberta import backend
from minroberta.checkpoint import read_safetensors
from minroberta.cli import main
from minroberta.engine.trainer import MaskedLM, TrainSettings, Trainer, list_checkpoints

SMALL_RUN = ["--preset", "micro", "--seq-len", "64", "--batch-size", "8", "--log-every", "2", "--eval-batches", "4"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """A few hundred sentences of real prose (stdlib docstrings), as a user's text file."""
    from minroberta.corpus import stdlib_documents
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    documents = []
    for document in stdlib_documents():
        documents.append(document)
        if len(documents) == 400:
            break
    path.write_text("\n\n".join(documents), encoding="utf-8")
    return str(path)


def run_cli(*args):
    return main([str(a) for a in args])


def final_params(out_dir):
    return read_safetensors(os.path.join(out_dir, "model.safetensors"))


def test_resume_is_bit_identical(tmp_path, corpus_file):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 8, "--save-every", 3, "--eval-every", 4]
    assert run_cli(*common, "--out", straight) == 0
    assert run_cli(*common, "--out", resumed, "--stop-at-step", 4) == 0
    assert not os.path.exists(resumed / "model.safetensors")
    assert run_cli(*common, "--out", resumed, "--resume") == 0
    a, b = final_params(straight), final_params(resumed)
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in open(resumed / "metrics.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps)), "metrics of the redone steps were not trimmed"


def test_resume_alone_keeps_the_runs_recipe(tmp_path, capsys, corpus_file):
    """`--resume --out DIR` and nothing else goes on with the recipe the run was started with (each checkpoint
    keeps it), bit for bit; a recipe flag given again with another value is a one-line error, and --steps may
    only grow. Half-written checkpoints of a killed run are cleared on the way."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    recipe = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 8, "--lr", "2e-3", "--seed", 5,
              "--mask-prob", 0.3, "--save-every", 3, "--eval-every", 4]
    assert run_cli(*recipe, "--out", straight) == 0
    assert run_cli(*recipe, "--out", resumed, "--stop-at-step", 4) == 0
    half = resumed / "checkpoints" / ".partial-step-00000005"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"torn")
    assert run_cli("pretrain", "--out", resumed, "--resume") == 0
    assert not half.exists()
    a, b = final_params(straight), final_params(resumed)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    capsys.readouterr()
    assert run_cli("pretrain", "--out", resumed, "--resume", "--preset", "mini") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("was trained with --preset micro; a checkpoint fixes the model, so drop --preset (or start "
                        "a new run in another --out)") and "\n" not in err
    assert run_cli("pretrain", "--out", resumed, "--resume", "--steps", 3) == 2
    assert "--steps 3 is not past" in capsys.readouterr().err
    # a flag given with another value goes on from the checkpoint, said; the warmup stays the run's own
    assert run_cli("pretrain", "--out", resumed, "--resume", "--steps", 12, "--lr", "1e-3") == 0
    err = capsys.readouterr().err
    assert "--steps 12 instead of the run's 8, from step 8 on" in err and "--lr 0.001 instead of the run's 0.002" in err
    records = [json.loads(line) for line in open(resumed / "metrics.jsonl") if '"loss"' in line]
    assert records[-1]["step"] == 12
    warmup = round(0.15 * 8)   # the default share of the run's first --steps
    # the record of step s is update s - 1's
    expected = [1e-3 * (12 - (r["step"] - 1)) / (12 - warmup) for r in records if r["step"] > 8]
    assert np.allclose([r["lr"] for r in records if r["step"] > 8], expected, rtol=1e-6)


def test_loss_falls_on_the_builtin_corpus(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("pretrain", *SMALL_RUN, "--steps", 80, "--lr", "3e-3", "--eval-every", 40, "--out", out) == 0
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if "valid_loss" in line]
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl") if '"loss"' in line]
    uniform = np.log(2048)   # the loss of a model that has learnt nothing
    assert np.mean(losses[:3]) - np.mean(losses[-10:]) > 0.6, losses
    assert evals[-1]["valid_loss"] < min(evals[0]["valid_loss"], uniform - 0.5), evals
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "<mask>" in printed
    # the run directory is an HF-layout model directory
    model = minroberta.load_pretrained(str(out))
    assert model.config.vocab_size == 2048


class OneBatch:
    """Training data that is one batch, every update."""

    def __init__(self, batch):
        self.batch = batch

    def batches_per_epoch(self, batch_size):
        return 1

    def train_batch(self, epoch, index, batch_size, shard=(0, 1)):
        return self.batch


def test_a_tiny_model_overfits_one_batch(numpy_backend):
    config = minroberta.Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=34, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    model = minroberta.Roberta(config, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, size=(4, 32))
    labels = np.where(rng.random(ids.shape) < 0.3, ids, -100)
    inputs = np.where(labels != -100, 4, ids)
    batch = {"input_ids": inputs, "attention_mask": np.ones_like(ids), "labels": labels}

    trainer = Trainer(model, OneBatch(batch), None, TrainSettings(steps=150, lr=3e-3, warmup=10), None)
    for _ in range(150):
        loss, _, _ = trainer.train_step()
    assert loss < 0.1


def test_on_two_threads_a_step_runs_a_part_per_thread_and_makes_the_whole_batchs_update(numpy_backend):
    """Uneven parts (7 rows into 4 + 3, scored tokens unequal): weighted by their scored tokens, the parts'
    update is the one-thread update of the batch whole, to float32 rounding."""
    from minroberta.engine import threads
    config = minroberta.Config(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=34, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 50, size=(7, 24))
    labels = np.where(rng.random(ids.shape) < np.linspace(0.1, 0.6, 7)[:, None], ids, -100)
    batch = {"input_ids": np.where(labels != -100, 4, ids), "attention_mask": np.ones_like(ids), "labels": labels}
    seen = []

    class Counting(MaskedLM):
        def loss_and_grads(self, model, part, dropout_key, loss_scale=1.0):
            seen.append(len(part["input_ids"]))
            return super().loss_and_grads(model, part, dropout_key, loss_scale)

    updated = {}
    previous = threads.count()
    try:
        for count in (1, 2):
            threads.use(count)
            trainer = Trainer(minroberta.Roberta(config, seed=0), OneBatch(batch), None,
                              TrainSettings(steps=3, lr=1e-2, warmup=0), None, task=Counting())
            losses = [trainer.train_step()[0] for _ in range(3)]
            updated[count] = (losses, trainer.model.params)
    finally:
        threads.use(previous)
    assert seen[:3] == [7] * 3 and sorted(seen[3:]) == [3] * 3 + [4] * 3   # the parts run side by side
    seen.clear()
    batch = {k: v[:1] for k, v in batch.items()}   # one row for two threads: the micro-batch stays whole
    threads.use(2)
    Trainer(minroberta.Roberta(config, seed=0), OneBatch(batch), None, TrainSettings(steps=1), None,
            task=Counting()).train_step()
    assert seen == [1]
    assert np.allclose(updated[1][0], updated[2][0], rtol=1e-5)
    for name, value in updated[1][1].items():
        assert np.abs(updated[2][1][name] - value).max() <= 1e-5 * max(1.0, np.abs(value).max()), name


def test_the_whole_training_step_runs_on_the_device_standin(tmp_path, corpus_file):
    """Data, model, loss, backward, clipping and AdamW with no hidden host round-trip."""
    previous = backend.name()
    try:
        assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 2, "--eval-every", 2,
                       "--backend", "standin", "--out", tmp_path / "standin") == 0
    finally:
        backend.use(previous)


KILL_DURING_SAVE = """
import os, signal, sys
from minroberta import atomic, cli
real = atomic.write_bytes
def dying_write(path, data):
    if "step-00000004" in path and path.endswith("optimizer.safetensors"):
        real(path + ".half", data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
atomic.write_bytes = dying_write
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, corpus_file):
    out = tmp_path / "killed"
    args = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 6, "--save-every", 2, "--eval-every", 6,
            "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL
    checkpoints = list_checkpoints(out)
    assert [os.path.basename(c) for c in checkpoints] == ["step-00000002"]
    minroberta.load_pretrained(checkpoints[-1])
    # and the run resumes from it to the end
    assert run_cli(*args, "--resume") == 0
    assert os.path.basename(list_checkpoints(out)[-1]) == "step-00000006"


def test_ctrl_c_saves_the_update_it_finished_and_resume_goes_on_from_it(tmp_path, corpus_file):
    """A first SIGINT lets the update under way finish, saves it (between two regular checkpoints) and exits
    130 naming it; --resume then retraces the uninterrupted run exactly."""
    out, straight = tmp_path / "interrupted", tmp_path / "straight"
    common = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 10000, "--save-every", 5000,
              "--eval-every", 5000, "--log-every", 1, "--threads", 1]
    process = subprocess.Popen([sys.executable, "-m", "minroberta.cli", *map(str, common), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:   # not a terminal: one progress line per update
        if line.startswith("step 3/"):
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 1, checkpoints
    step = int(os.path.basename(checkpoints[0]).split("-")[1])
    assert step >= 3 and f"interrupted after update {step} of 10000: saved {checkpoints[0]}" in stdout, stdout
    assert "Traceback" not in stderr
    later = step + 2
    assert run_cli(*common, "--out", out, "--resume", "--stop-at-step", later) == 0
    assert run_cli(*common, "--out", straight, "--stop-at-step", later) == 0
    a = read_safetensors(os.path.join(list_checkpoints(out)[-1], "model.safetensors"))
    b = read_safetensors(os.path.join(list_checkpoints(straight)[-1], "model.safetensors"))
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_too_little_text_is_refused_before_training(tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text("A single short document, which the split gives to training alone.\n")
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", one, "--steps", 2, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {one}: too little text for a run (training gets 1 document, validation 0); give it "
                       "more documents (blank lines separate them)")
    assert not any("training a byte-level BPE" in line for line in err)
    assert not (tmp_path / "out").exists()


def test_the_run_holds_its_folder_before_preparing_the_corpus_there(tmp_path, monkeypatch, corpus_file):
    """A second run started while the first prepares its corpus must find the folder locked, or it would take
    the first's half-made corpus for a killed run's leftover and remove it."""
    from minroberta import guards, prepared
    out = tmp_path / "runs" / "out"
    pack, seen = prepared._tokenize_and_pack, []

    def packing(*args):
        seen.append([os.path.abspath(path) for _, path in guards._held])
        return pack(*args)

    monkeypatch.setattr(prepared, "_tokenize_and_pack", packing)
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 1, "--out", out) == 0
    assert seen == [[str(out / ".minroberta.lock")]]


@pytest.mark.parametrize("problem", ["empty", "invalid_utf8", "no_text_dir", "binary"])
def test_bad_corpora_are_one_line_errors(tmp_path, capsys, problem):
    target = tmp_path / "corpus"
    if problem == "empty":
        target = tmp_path / "empty.txt"
        target.write_text("\n\n  \n")
    elif problem == "invalid_utf8":
        target = tmp_path / "bad.txt"
        target.write_bytes(b"fine text\n\xff\xfe broken")
    elif problem == "no_text_dir":
        target.mkdir()
        (target / "image.png").write_bytes(b"\x89PNG")
    else:
        target = tmp_path / "data.txt"
        target.write_bytes(b"text\x00\x01\x02")
    out = tmp_path / "out"
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", target, "--steps", 2, "--out", out) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(target) in error
    assert not os.path.exists(out / "checkpoints")


def test_other_bad_input_is_a_one_line_error_and_overwrites_nothing(tmp_path, capsys, corpus_file):
    bad_tokenizer = tmp_path / "tok"
    bad_tokenizer.mkdir()
    (bad_tokenizer / "tokenizer.json").write_text("{not a tokenizer")
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--tokenizer", bad_tokenizer, "--out",
                   tmp_path / "a") == 2
    assert "tokenizer.json: not a tokenizer file" in capsys.readouterr().err
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--threads", 0, "--out", tmp_path / "b") == 2
    assert capsys.readouterr().err.strip() == "error: threads must be a whole number of at least 1, got 0"
    assert not (tmp_path / "b").exists()


    run = tmp_path / "run"
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 2, "--out", run) == 0
    before = open(run / "model.safetensors", "rb").read()
    capsys.readouterr()
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 2, "--out", run) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run_cli("pretrain", *SMALL_RUN[:2], "--seq-len", 32, "--corpus", corpus_file, "--steps", 4, "--out", run,
                   "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained with --seq-len 64" in err and "drop --seq-len" in err
    assert open(run / "model.safetensors", "rb").read() == before


def test_fill_mask_rejects_too_long_text_and_missing_mask(tmp_path, capsys, corpus_file):
    run = tmp_path / "run"
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 2, "--out", run) == 0
    capsys.readouterr()
    assert run_cli("fill-mask", "--model", run, "The <mask> of it.") == 0
    assert "<mask> 1:" in capsys.readouterr().out
    assert run_cli("fill-mask", "--model", run, "no mask here") == 2
    printed = capsys.readouterr()
    assert "no <mask> token" in printed.err and printed.out == ""   # nothing echoed before the error
    assert run_cli("fill-mask", "--model", run, "word " * 200 + "<mask>") == 2
    assert "the model takes at most 64" in capsys.readouterr().err


class PoisonedAt(MaskedLM):
    """The MLM task, except that the loss of update `step` is NaN (a stand-in for a numerical blow-up)."""

    def __init__(self, step):
        self.step, self.trainer = step, None

    def loss_and_grads(self, model, batch, key, loss_scale=1.0):
        loss, grads = super().loss_and_grads(model, batch, key, loss_scale)
        if self.trainer.step == self.step:
            loss = loss * float("nan")
        return loss, grads


def poisoned_trainer(tmp_path, skip):
    from minroberta.data import PretrainingData
    config = minroberta.Config(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8, max_position_embeddings=20)
    samples = [np.array([0] + [5 + (i * j) % 20 for j in range(10)] + [2], dtype=np.int32) for i in range(32)]
    data = PretrainingData(samples, samples[:8], pad_id=1, mask_id=29, special_ids=(0, 1, 2, 3, 29), vocab_size=30,
                           seed=0)
    task = PoisonedAt(step=3)
    trainer = Trainer(minroberta.Roberta(config, seed=0), data, None,
                      TrainSettings(steps=6, batch_size=4, save_every=1, eval_every=100, skip_nonfinite=skip),
                      str(tmp_path), task=task)
    task.trainer = trainer
    return trainer


def test_a_non_finite_loss_stops_and_leaves_the_last_checkpoint_untouched(tmp_path, numpy_backend):
    trainer = poisoned_trainer(tmp_path, skip=False)
    with pytest.raises(minroberta.MinRobertaError, match="non-finite loss at step 4; stopping"):
        trainer.run()
    checkpoints = list_checkpoints(str(tmp_path))
    assert os.path.basename(checkpoints[-1]) == "step-00000003"
    before = open(os.path.join(checkpoints[-1], "model.safetensors"), "rb").read()
    minroberta.load_pretrained(checkpoints[-1])
    assert open(os.path.join(checkpoints[-1], "model.safetensors"), "rb").read() == before


def test_skip_nonfinite_skips_the_update_and_goes_on(tmp_path, numpy_backend):
    trainer = poisoned_trainer(tmp_path, skip=True)
    trainer.run()
    assert trainer.step == 6 and trainer.skipped == 1
    assert all(np.all(np.isfinite(p)) for p in trainer.model.params.values())


def test_held_out_probes_mask_one_whole_word_of_the_given_sentences():
    from minroberta.cli import held_out_probes
    from minroberta.tokenizer import train_tokenizer
    documents = ["The quick brown fox jumps over the lazy dog near the river bank today. It was sunny.",
                 "Return the value of the attribute from the object given here by name."] * 30
    tokenizer = train_tokenizer(documents, vocab_size=1000)
    probes = held_out_probes(tokenizer, documents, max_tokens=40, count=4)
    assert len(probes) == 4
    for text, word in probes:
        assert text.count("<mask>") == 1 and len(word) >= 4 and word.isalpha()
        assert len(tokenizer.encode_plain(" " + word)) == 1                  # one <mask> can name it
        assert any(text.replace("<mask>", word) in d for d in documents)     # the sentence, one word masked
        assert len(tokenizer.encode(text).ids) <= 40
    assert held_out_probes(tokenizer, documents, max_tokens=5) == []         # nothing fits: no probes


def test_accuracy_at_mask_counts_only_the_tokens_shown_as_mask(numpy_backend):
    """valid_mask_accuracy is the share of <mask> positions predicted right; valid_accuracy counts every
    scored token, the kept and the randomised ones too (checked against the logits by hand)."""
    config = minroberta.Config(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=14)
    model = minroberta.Roberta(config, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 29, size=(3, 12))
    labels = np.where(rng.random(ids.shape) < 0.5, ids, -100)
    inputs = np.where((labels != -100) & (rng.random(ids.shape) < 0.6), 29, ids)   # 29 is <mask> here
    batch = {"input_ids": inputs, "attention_mask": np.ones_like(ids), "labels": labels}
    metrics = MaskedLM(mask_id=29).evaluate(model, [batch])
    predicted = backend.to_host(model(inputs).logits).argmax(axis=-1)
    scored, shown = labels != -100, (labels != -100) & (inputs == 29)
    assert metrics["valid_accuracy"] == pytest.approx((predicted == ids)[scored].mean())
    assert metrics["valid_mask_accuracy"] == pytest.approx((predicted == ids)[shown].mean())


def test_the_default_recipe_warms_up_over_15_percent_with_beta2_099():
    from minroberta import cli
    settings = cli.pretrain_settings(cli.build_parser().parse_args(["pretrain", "--steps", "1000"]))
    assert settings.warmup_steps == 150 and settings.betas == (0.9, 0.99)
    settings = cli.pretrain_settings(cli.build_parser().parse_args(["pretrain", "--warmup", "7", "--beta2", "0.98"]))
    assert settings.warmup_steps == 7 and settings.betas == (0.9, 0.98)


@pytest.mark.parametrize("flag,value,message", [("--mask-prob", "0", "--mask-prob must be in (0, 1], got 0.0"),
                                                ("--dropout", "1.5", "--dropout must be in [0, 1), got 1.5"),
                                                ("--init-range", "-1", "--init-range must be positive, got -1.0"),
                                                ("--beta2", "1", "--beta2 must be in [0, 1), got 1.0")])
def test_bad_recipe_flags_are_one_line_errors_before_any_work(tmp_path, capsys, flag, value, message):
    assert run_cli("pretrain", flag, value, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" and not (tmp_path / "run").exists()
