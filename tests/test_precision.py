"""Matrix-product precision: float16 mixed precision with loss scaling (run here, on NumPy and the stand-in),
and the TF32 switch (GPU only; here only its refusal is tested).

Tolerances of float16 mixed precision, relative to the largest reference value, against the float64 model on
the same weights: logits 2e-3, loss 1e-5, gradients 5e-3 with the default loss scale (2^16). A float16
operand keeps 11 significant bits (relative rounding 2^-11 = 4.9e-4), so products and what follows them carry
errors of that order; the measured figures are in the closing note and README."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minroberta
from minroberta import backend, engine, heads
from minroberta.engine import precision
from minroberta.engine.precision import LossScaler
from tests.reference import gradient_floor, reference_mlm, relative_error, transformers_or_skip
from tests.test_pretrain import SMALL_RUN, corpus_file, final_params, run_cli   # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def engine_installed():
    """Lower-precision products are the engine's: it stands in for ops/matmul.py's plain product."""
    engine.install()

LOGITS_TOLERANCE, LOSS_TOLERANCE, GRADIENT_TOLERANCE = 2e-3, 1e-5, 5e-3
CONFIG = dict(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              max_position_embeddings=66, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, size=(4, 64))
    ids[1, 40:] = 1
    mask = (ids != 1).astype(np.int64)
    labels = np.where((rng.random(ids.shape) < 0.15) & (mask == 1), ids, -100)
    return ids, mask, labels


# --- the product itself

@settings(max_examples=50, deadline=None)
@given(m=st.integers(1, 12), k=st.integers(1, 40), n=st.integers(1, 12), log_scale=st.floats(-3, 1),   # overflow has its own test
       seed=st.integers(0, 2**31))
def test_fp16_product_is_a_half_gemm_with_float32_accumulation(m, k, n, log_scale, seed):
    """The operands rounded to float16, summed in float32, the result rounded to float16. Against the exact
    sum of the rounded operands (float64 here), ours may be off by float32's accumulation error (at most k
    roundings of 2^-24 relative to the sum of |terms|) plus one float16 step where it is rounded."""
    for name in ("numpy", "standin"):
        backend.use(name)
        rng = np.random.default_rng(seed)
        a = (rng.standard_normal((2, m, k)) * 10.0 ** log_scale).astype(np.float32)
        b = (rng.standard_normal((2, k, n)) * 10.0 ** log_scale).astype(np.float32)
        a16, b16 = a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)
        exact = a16 @ b16                                                  # (2, m, n)
        accumulation = k * 2.0 ** -24 * (np.abs(a16) @ np.abs(b16))
        allowed = accumulation + np.spacing((np.abs(exact) + accumulation).astype(np.float16)).astype(np.float64)
        precision.use("fp16")
        got = backend.to_host(precision.matmul(backend.to_device(a), backend.to_device(b)))
        assert got.dtype == np.float32
        assert np.array_equal(got, got.astype(np.float16)), "the result was not rounded to float16"
        assert np.all(np.abs(got - exact) <= allowed), name
        assert np.any(got != (a @ b)), "the operands were not rounded to float16"
        precision.use("float32")
        assert np.array_equal(backend.to_host(precision.matmul(backend.to_device(a), backend.to_device(b))), a @ b)
    backend.use("numpy")


def test_an_fp16_product_past_65504_is_inf(numpy_backend):
    precision.use("fp16")
    a = np.full((1, 2), 200.0, dtype=np.float32)
    assert np.isinf(precision.matmul(a, a.T)[0, 0])        # 80000 does not fit in float16
    assert precision.matmul(a / 2, a.T / 2)[0, 0] == 20000.0


def test_tf32_needs_the_cupy_backend_and_unknown_modes_are_refused(numpy_backend):
    with pytest.raises(minroberta.MinRobertaError, match="needs the cupy backend"):
        precision.use("tf32")
    with pytest.raises(minroberta.MinRobertaError, match="unknown precision 'bf16'"):
        precision.use("bf16")
    assert precision.name() == "float32"


# --- the model under float16 products

def errors_against_float64(loss_scale):
    """(logits, loss, worst gradient) relative errors of the float32-weight model with float16 products,
    against the float64 model with the same weights; and the largest fraction of gradient entries that are
    zero here but not in float64."""
    config = minroberta.Config(**CONFIG)
    ids, mask, labels = batch()
    precision.use("float32")
    exact = minroberta.Roberta(config, seed=3, dtype="float64")
    exact_loss, exact_grads = exact.loss_and_grads(ids, mask, labels)
    exact_logits = backend.to_host(exact(ids, mask).logits)
    exact_grads = {k: backend.to_host(g) for k, g in exact_grads.items()}
    floor = gradient_floor(exact_grads.values())
    model = minroberta.Roberta(config, seed=3, dtype="float32")
    precision.use("fp16")
    loss, grads = model.loss_and_grads(ids, mask, labels, loss_scale=loss_scale)
    logits = backend.to_host(model(ids, mask).logits)
    grads = {k: backend.to_host(g) / loss_scale for k, g in grads.items()}
    worst = max(relative_error(grads[k], exact_grads[k], floor) for k in exact_grads)
    # entries above 1e-12 in float64 (a gradient that is zero in exact arithmetic shows there as 1e-19 noise)
    lost = max(float(np.mean((grads[k] == 0) & (np.abs(exact_grads[k]) > 1e-12))) for k in exact_grads)
    return (relative_error(logits, exact_logits), relative_error(backend.to_host(loss), backend.to_host(exact_loss)),
            worst, lost)


def test_fp16_model_stays_within_its_tolerances_of_float64(xp):
    logits_error, loss_error, gradient_error, lost = errors_against_float64(LossScaler().scale)
    print(f"fp16 vs float64 ({backend.name()}): logits {logits_error:.2e}, loss {loss_error:.2e}, "
          f"worst gradient {gradient_error:.2e}, gradient entries lost {lost:.3f}")
    assert logits_error <= LOGITS_TOLERANCE
    assert loss_error <= LOSS_TOLERANCE
    assert gradient_error <= GRADIENT_TOLERANCE
    assert lost == 0.0


def test_without_loss_scaling_small_fp16_gradients_vanish(numpy_backend):
    """The reason for the scaler: at scale 1 some gradient entries fall below float16's range and become
    zero (several percent of a tensor here), and the worst gradient error grows far past the tolerance."""
    *_, scaled_error, _ = errors_against_float64(LossScaler().scale)
    *_, unscaled_error, lost = errors_against_float64(1.0)
    assert lost > 0.01
    assert unscaled_error > 10 * scaled_error and unscaled_error > GRADIENT_TOLERANCE


def test_fp16_logits_match_transformers_in_float32(numpy_backend):
    torch, _ = transformers_or_skip()
    model = minroberta.Roberta(minroberta.Config(**CONFIG), seed=4, dtype="float32")
    ids, mask, _ = batch(1)
    expected = reference_mlm(model)(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    precision.use("fp16")
    assert relative_error(backend.to_host(model(ids, mask).logits), expected.detach().numpy()) <= LOGITS_TOLERANCE


# --- the loss scaler and the trainer

def test_loss_scaler_backs_off_on_overflow_and_grows_after_a_run_of_good_updates():
    scaler = LossScaler(scale=1024.0, growth_interval=3)
    scaler.update(finite=False)
    assert scaler.scale == 512.0
    for _ in range(2):
        scaler.update(finite=True)
    assert scaler.scale == 512.0
    scaler.update(finite=False)   # an overflow restarts the count
    for _ in range(3):
        scaler.update(finite=True)
    assert scaler.scale == 512.0 and scaler.good_steps == 0
    restored = LossScaler()
    restored.load_state(json.loads(json.dumps(scaler.state())))
    assert restored.state() == scaler.state()
    grads = {"w": np.full(3, 1024.0, dtype=np.float32)}
    LossScaler(scale=1024.0).unscale(grads)
    assert np.array_equal(grads["w"], np.ones(3, dtype=np.float32))


def test_an_overflowing_scale_skips_updates_and_comes_down(tmp_path, numpy_backend):
    from minroberta.data import PretrainingData
    from minroberta.engine.trainer import TrainSettings, Trainer
    precision.use("fp16")
    config = minroberta.Config(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=8, max_position_embeddings=20)
    samples = [np.array([0] + [5 + (i * j) % 20 for j in range(10)] + [2], dtype=np.int32) for i in range(32)]
    data = PretrainingData(samples, samples[:8], pad_id=1, mask_id=29, special_ids=(0, 1, 2, 3, 29), vocab_size=30,
                           seed=0)
    trainer = Trainer(minroberta.Roberta(config, seed=0), data, None,
                      TrainSettings(steps=40, batch_size=4, save_every=100, eval_every=100), str(tmp_path))
    trainer.scaler = LossScaler(scale=2.0 ** 40)   # float16 holds up to 2^16: the first updates must overflow
    before = {k: v.copy() for k, v in trainer.model.params.items()}
    trainer.train_step()
    assert trainer.scaler.scale == 2.0 ** 39 and trainer.optimizer.step_count == 0
    assert all(np.array_equal(before[k], v) for k, v in trainer.model.params.items())
    for _ in range(39):
        trainer.train_step()
    assert 0 < trainer.optimizer.step_count < 40 and trainer.scaler.scale <= 2.0 ** 24
    assert all(np.isfinite(v).all() for v in trainer.model.params.values())


def test_fp16_pretraining_learns_and_resumes_bit_for_bit(tmp_path, corpus_file):  # noqa: F811
    common = ["pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 12, "--save-every", 5, "--eval-every", 12,
              "--lr", "3e-3", "--precision", "fp16"]
    assert run_cli(*common, "--out", tmp_path / "straight") == 0
    assert run_cli(*common, "--out", tmp_path / "resumed", "--stop-at-step", 5) == 0
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-00000005" / "trainer_state.json").read_text())
    assert state["precision"] == "fp16" and state["loss_scale"]["scale"] > 0
    assert run_cli(*common, "--out", tmp_path / "resumed", "--resume") == 0
    a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "straight" / "metrics.jsonl") if '"loss"' in line]
    assert losses[-1] < losses[0] - 0.3, losses


def test_fp16_training_step_runs_on_the_device_standin(tmp_path, corpus_file):  # noqa: F811
    previous = backend.name()
    try:
        assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 2, "--eval-every", 2,
                       "--backend", "standin", "--precision", "fp16", "--out", tmp_path / "standin") == 0
    finally:
        backend.use(previous)


def test_fp16_refuses_float64_parameters(tmp_path, capsys, corpus_file):  # noqa: F811
    assert run_cli("pretrain", *SMALL_RUN, "--corpus", corpus_file, "--steps", 1, "--dtype", "float64",
                   "--precision", "fp16", "--out", tmp_path / "x") == 2
    assert "--precision fp16 works on float32 parameters" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["mlm", "classes", "regression", "qa"])
def test_every_loss_scales_its_gradients_and_not_its_value(numpy_backend, head):
    """The backward is linear in dloss, and a power of two scales every float exactly, so the gradients of
    8 x loss are 8 x the gradients, bit for bit, for every head's loss; the loss itself is returned unscaled."""
    config = minroberta.Config(**CONFIG)
    ids, mask, labels = batch()
    mlm = minroberta.Roberta(config, seed=5, dtype="float64")
    rng = np.random.default_rng(2)
    if head == "mlm":
        run = lambda scale: mlm.loss_and_grads(ids, mask, labels, loss_scale=scale)
    elif head == "qa":
        model = mlm.with_head("qa")
        starts, ends = rng.integers(0, 30, 4), rng.integers(30, 60, 4)
        run = lambda scale: heads.qa_loss_and_grads(model, ids, mask, starts, ends, loss_scale=scale)
    else:
        model = mlm.with_head("classification", extra={"num_labels": 3 if head == "classes" else 1})
        targets = rng.integers(0, 3, 4) if head == "classes" else rng.standard_normal(4)
        run = lambda scale: heads.classification_loss_and_grads(model, ids, mask, targets, loss_scale=scale)
    loss, grads = run(1.0)
    scaled_loss, scaled_grads = run(8.0)
    assert float(scaled_loss) == float(loss)
    for key, g in grads.items():
        assert np.array_equal(scaled_grads[key], 8.0 * g), key


@pytest.mark.parametrize("loss_scale", [{"scale": "big", "good_steps": 0}, {"scale": 0.0, "good_steps": 0},
                                        {"scale": float("nan"), "good_steps": 0}, {"good_steps": 3},
                                        {"scale": 2.0, "good_steps": -1}, [65536.0]])
def test_a_damaged_loss_scale_makes_the_trainer_state_unusable(tmp_path, loss_scale):
    """Caught where every trainer state is checked, so resuming falls back past it with a one-line warning."""
    from minroberta.engine.trainer import STATE, read_state
    (tmp_path / STATE).write_text(json.dumps({"step": 3, "optimizer_steps": 3, "loss_scale": loss_scale}))
    with pytest.raises(minroberta.MinRobertaError, match=f"{STATE}: not a trainer state"):
        read_state(str(tmp_path))
    (tmp_path / STATE).write_text(json.dumps({"step": 3, "optimizer_steps": 3,
                                              "loss_scale": {"scale": 1024.0, "good_steps": 7}}))
    assert read_state(str(tmp_path))["loss_scale"]["scale"] == 1024.0
