"""The reference loop (loop.py) against the engine's trainer: the same float64 updates from the same start on the
same batches. With the engine installed the two agree to float64 rounding; with it off, and one thread, the
trainer's machinery (flat buffers, parts, accumulation) wraps the very same step, bit for bit."""

import numpy as np
import pytest

import minroberta
from minroberta import dispatch, engine, loop
from minroberta.engine import threads
from minroberta.engine.trainer import TrainSettings, Trainer
from tests.reference import relative_error

CONFIG = minroberta.Config(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=24, max_position_embeddings=18, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


class Batches:
    """Masked batches that are pure functions of (epoch, index), with padding and a few rows to cut in parts."""
    mask_id = 4

    def batches_per_epoch(self, batch_size):
        return 3

    def train_batch(self, epoch, index, batch_size, shard=(0, 1)):
        rng = np.random.default_rng([epoch, index])
        ids = rng.integers(5, 40, size=(batch_size, 16))
        ids[:, 0] = 0
        mask = np.ones_like(ids)
        mask[-1, 11:] = 0
        ids = np.where(mask == 1, ids, 1)
        labels = np.where((rng.random(ids.shape) < 0.3) & (mask == 1), ids, -100)
        return {"input_ids": np.where(labels != -100, self.mask_id, ids), "attention_mask": mask, "labels": labels}

    def valid_batches(self, batch_size):
        for index in range(2):
            yield self.train_batch(99, index, batch_size)


def reference_run(settings):
    assert not dispatch.installed()
    model = minroberta.Roberta(CONFIG, seed=0, dtype="float64")
    optimizer = loop.AdamW(model.params, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay)
    losses = [loop.train_step(model, optimizer, Batches(), settings, step)[0] for step in range(settings.steps)]
    return losses, model.params, loop.evaluate(model, Batches(), settings)


def engine_run(settings, installed):
    trainer = Trainer(minroberta.Roberta(CONFIG, seed=0, dtype="float64"), Batches(), None, settings, None)
    assert dispatch.installed()   # the trainer installs the engine itself
    if not installed:
        engine.uninstall()
    trainer.progress.quiet = True
    losses = [trainer.train_step()[0] for _ in range(settings.steps)]
    return losses, trainer.model.params, trainer.evaluate()


def test_the_engine_takes_the_reference_loops_float64_steps(numpy_backend):
    """Fast forms, the last layer on the scored rows, two threads' parts, flat buffers: 1e-11 after 8 updates."""
    settings = TrainSettings(steps=8, batch_size=6, accumulate=2, lr=1e-2, warmup=2, clip_norm=0.5)
    expected_losses, expected, expected_eval = reference_run(settings)
    threads.use(2)
    losses, params, metrics = engine_run(settings, installed=True)
    assert np.allclose(losses, expected_losses, rtol=1e-12, atol=0)
    for name in expected:
        assert relative_error(params[name], expected[name]) <= 1e-11, name
    assert metrics.pop("step") == 8
    assert metrics == pytest.approx(expected_eval, rel=1e-12)
    initial = minroberta.Roberta(CONFIG, seed=0, dtype="float64").params   # the updates moved far beyond that
    assert relative_error(expected["roberta.encoder.layer.1.attention.self.query.weight"],
                          initial["roberta.encoder.layer.1.attention.self.query.weight"]) > 1e-3


def test_without_the_engine_the_trainer_takes_the_same_bits(numpy_backend):
    """No clipping (the flat buffer's norm sums in another order) and one thread (no parts): every bit equal."""
    settings = TrainSettings(steps=5, batch_size=6, accumulate=2, lr=1e-2, warmup=2, clip_norm=0.0)
    expected_losses, expected, _ = reference_run(settings)
    threads.use(1)
    losses, params, _ = engine_run(settings, installed=False)
    assert losses == expected_losses
    for name in expected:
        assert np.array_equal(params[name], expected[name]), name


def test_the_reference_loop_runs_on_the_device_stand_in():
    """The core is written over the array module: on the stand-in, which refuses every hidden host round-trip,
    the loop takes the same float64 steps as on NumPy, to the bit."""
    from minroberta import backend
    settings = TrainSettings(steps=3, batch_size=4, accumulate=2, lr=1e-2, warmup=1, eval_batches=1)
    runs = {}
    for name in ("numpy", "standin"):
        backend.use(name)
        try:
            model = minroberta.Roberta(CONFIG, seed=0, dtype="float64")
            optimizer = loop.AdamW(model.params, betas=settings.betas, eps=settings.eps,
                                   weight_decay=settings.weight_decay)
            losses = [loop.train_step(model, optimizer, Batches(), settings, step)[0] for step in range(3)]
            metrics = loop.evaluate(model, Batches(), settings)
            runs[name] = losses, {k: backend.to_host(v) for k, v in model.params.items()}, metrics
        finally:
            backend.use("numpy")
    assert runs["standin"][0] == runs["numpy"][0] and runs["standin"][2] == runs["numpy"][2]
    for name, value in runs["numpy"][1].items():
        assert np.array_equal(runs["standin"][1][name], value), name


def test_the_reference_is_what_runs_until_the_engine_is_installed(numpy_backend, monkeypatch):
    """Importing everything installs nothing; install() switches the forms on, MINROBERTA_REFERENCE=1 keeps them
    off; an op edited in ops/ changes what the reference model computes."""
    import minroberta.cli  # noqa: F401  (imports the engine's modules: still nothing installed)
    assert not dispatch.installed() and dispatch.fast_form("layernorm_forward", np.ones(3)) is None
    assert engine.install() and dispatch.fast_form("layernorm_forward", np.ones(3)) is not None
    monkeypatch.setenv("MINROBERTA_REFERENCE", "1")
    assert not engine.install() and dispatch.fast_form("layernorm_forward", np.ones(3)) is None
    model = minroberta.Roberta(CONFIG, seed=0, dtype="float64")
    batch = Batches().train_batch(0, 0, 4)
    loss, grads = model.loss_and_grads(batch["input_ids"], batch["attention_mask"], batch["labels"])
    from minroberta import model as model_module
    monkeypatch.setattr(model_module, "gelu_backward", lambda dout, cache: dout)   # a "broken" derivative
    _, broken = model.loss_and_grads(batch["input_ids"], batch["attention_mask"], batch["labels"])
    changed = [name for name in grads if not np.array_equal(grads[name], broken[name])]
    assert "roberta.encoder.layer.0.intermediate.dense.weight" in changed


def test_pretrain_reference_runs_the_reference_loop(tmp_path, capsys):
    from minroberta import cli
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {n} says that the value of item {n} is returned. It is never None."
                                  for n in range(40)))
    out = tmp_path / "run"
    assert cli.main(["pretrain", "--reference", "--preset", "micro", "--corpus", str(corpus), "--steps", "4",
                     "--batch-size", "4", "--eval-every", "2", "--vocab-size", "300", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "the reference core (loop.py, no fast form)" in err and "eval at step 4" in err
    assert (out / "model.safetensors").exists() and not (out / "checkpoints").exists()
    assert not dispatch.installed()
    assert cli.main(["pretrain", "--reference", "--resume", "--out", str(out)]) == 2
    assert "keeps no checkpoints, skips no update and runs on one process, so --resume" in capsys.readouterr().err
