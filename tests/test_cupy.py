"""The real GPU path: run where CuPy and an NVIDIA GPU exist; collected everywhere, skipped with the reason."""

import os
import subprocess
import sys

import numpy as np
import pytest

import minroberta
from minroberta import backend, engine
from minroberta.engine import fused, precision
from minroberta.checkpoint import read_safetensors
from minroberta.optim import AdamW
from tests.reference import gradient_floor, relative_error


def _gpu_reason():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device visible to CuPy"
    except ImportError:
        return "CuPy is not installed (the gpu-cuda12 or gpu-cuda13 extra)"
    except Exception as exc:   # the CUDA runtime's own errors: no driver, no device
        return f"CuPy cannot reach a GPU: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


REASON = _gpu_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
CONFIG = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=34, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def cupy_backend():
    previous = backend.name()
    yield backend.use("cupy")
    precision.use("float32")
    fused.use(False)
    backend.use(previous)


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, size=(4, 32))
    ids[1, 20:] = 1
    mask = (ids != 1).astype(np.int64)
    labels = np.where((rng.random(ids.shape) < 0.2) & (mask == 1), ids, -100)
    return ids, mask, labels


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-10), ("float32", 1e-4)])
def test_cupy_matches_numpy_forward_and_backward(cupy_backend, dtype, tolerance):
    config = minroberta.Config(**CONFIG)
    ids, mask, labels = batch()
    backend.use("numpy")
    host_model = minroberta.Roberta(config, seed=1, dtype=dtype)
    host_loss, host_grads = host_model.loss_and_grads(ids, mask, labels)
    backend.use("cupy")
    device_model = minroberta.Roberta(config, seed=1, dtype=dtype)
    device_loss, device_grads = device_model.loss_and_grads(ids, mask, labels)
    assert relative_error(backend.to_host(device_loss), host_loss) <= tolerance
    for key, value in host_grads.items():
        assert relative_error(backend.to_host(device_grads[key]), value, 1e-6) <= tolerance * 10, key


def test_cupy_matches_transformers_on_cuda(cupy_backend):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    from tests.reference import reference_mlm
    model = minroberta.Roberta(minroberta.Config(**CONFIG), seed=2, dtype="float64")
    reference = reference_mlm(model).cuda()
    ids, mask, labels = batch()
    expected = reference(input_ids=torch.tensor(ids).cuda(), attention_mask=torch.tensor(mask).cuda()).logits
    assert relative_error(backend.to_host(model(ids, mask).logits), expected.detach().cpu().numpy()) <= 1e-10


def test_pretraining_on_the_gpu_learns_and_resumes_exactly(tmp_path):
    run = [sys.executable, "-m", "minroberta.cli", "pretrain", "--preset", "micro", "--seq-len", "64", "--steps", "30",
           "--save-every", "10", "--eval-every", "30", "--log-every", "5", "--backend", "cupy"]
    assert subprocess.run(run + ["--out", str(tmp_path / "a")], capture_output=True).returncode == 0
    assert subprocess.run(run + ["--out", str(tmp_path / "b"), "--stop-at-step", "10"], capture_output=True).returncode == 0
    assert subprocess.run(run + ["--out", str(tmp_path / "b"), "--resume"], capture_output=True).returncode == 0
    a, b = (read_safetensors(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    losses = [line for line in open(tmp_path / "a" / "metrics.jsonl") if '"loss"' in line]
    assert float(losses[-1].split('"loss": ')[1].split(",")[0]) < float(losses[0].split('"loss": ')[1].split(",")[0])


def device_loss_and_grads(dtype, mode="float32", use_fused=False):
    """On CuPy with the given matrix precision and kernels: logits, loss, gradients (host), params after AdamW."""
    backend.use("cupy")
    engine.install()
    precision.use(mode)
    fused.use(use_fused)
    ids, mask, labels = batch()
    model = minroberta.Roberta(minroberta.Config(**CONFIG), seed=1, dtype=dtype)
    logits = backend.to_host(model(ids, mask).logits)
    scale = precision.LossScaler().scale if mode == "fp16" else 1.0
    loss, grads = model.loss_and_grads(ids, mask, labels, loss_scale=scale)
    grads = {k: backend.to_host(g) / scale for k, g in grads.items()}
    optimizer = AdamW(model.params)
    optimizer.step(model.params, {k: backend.to_device(g) for k, g in grads.items()}, 1e-3)
    params = {k: backend.to_host(p) for k, p in model.params.items()}
    precision.use("float32")
    fused.use(False)
    return logits, backend.to_host(loss), grads, params


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), ("float32", 2e-6)])
def test_fused_kernels_match_the_plain_ops_on_the_gpu(cupy_backend, dtype, tolerance):
    logits, loss, grads, params = device_loss_and_grads(dtype, use_fused=True)
    plain_logits, plain_loss, plain_grads, plain_params = device_loss_and_grads(dtype)
    floor = gradient_floor(plain_grads.values())
    assert relative_error(logits, plain_logits) <= tolerance
    assert relative_error(loss, plain_loss) <= tolerance
    for key in plain_grads:
        assert relative_error(grads[key], plain_grads[key], floor) <= tolerance, key
    for key in ("roberta.encoder.layer.0.intermediate.dense.weight", "lm_head.bias"):
        assert relative_error(params[key], plain_params[key]) <= tolerance, key


@pytest.mark.parametrize("mode", ["fp16", "tf32"])
def test_reduced_precision_products_on_the_gpu_stay_within_their_tolerances(cupy_backend, mode):
    """Against the float64 model on the host; the bounds of tests/test_precision.py (TF32 keeps the same 10
    mantissa bits as float16, in float32's range)."""
    from tests.test_precision import GRADIENT_TOLERANCE, LOGITS_TOLERANCE
    if mode == "tf32" and int(__import__("cupy").cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs compute capability 8.0")
    logits, loss, grads, _ = device_loss_and_grads("float32", mode)
    exact_logits, exact_loss, exact_grads, _ = device_loss_and_grads("float64")
    floor = gradient_floor(exact_grads.values())
    worst = max(relative_error(grads[k], exact_grads[k], floor) for k in exact_grads)
    print(f"{mode} on the GPU vs float64: logits {relative_error(logits, exact_logits):.2e}, worst gradient {worst:.2e}")
    assert relative_error(logits, exact_logits) <= LOGITS_TOLERANCE
    assert worst <= GRADIENT_TOLERANCE


def test_fp16_fused_pretraining_on_the_gpu_learns_and_resumes_exactly(tmp_path):
    run = [sys.executable, "-m", "minroberta.cli", "pretrain", "--preset", "micro", "--seq-len", "64", "--steps", "30",
           "--save-every", "10", "--eval-every", "30", "--log-every", "5", "--backend", "cupy", "--precision", "fp16",
           "--fused"]
    for out, extra in (("a", []), ("b", ["--stop-at-step", "10"]), ("b", ["--resume"])):
        done = subprocess.run(run + ["--out", str(tmp_path / out)] + extra, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (read_safetensors(str(tmp_path / d / "model.safetensors")) for d in "ab")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    losses = [line for line in open(tmp_path / "a" / "metrics.jsonl") if '"loss"' in line]
    assert float(losses[-1].split('"loss": ')[1].split(",")[0]) < float(losses[0].split('"loss": ')[1].split(",")[0])
