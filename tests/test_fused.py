"""The fused CUDA kernels (minroberta/engine/fused.py), checked without a GPU in two ways:

- each kernel body, wrapped as CuPy wraps it (inputs by value, outputs by reference, T the element type), is
  compiled by nvcc for the GPU, so a typo or a type error in the CUDA text fails here;
- the same bodies compiled by the host C++ compiler stand in for cupy.ElementwiseKernel (same broadcasting and
  argument order), and the model, its backward and AdamW run with fused kernels on NumPy against the plain ops.

What this cannot show is the kernels running on a GPU: tests/test_cupy.py does that where one exists."""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import minroberta
from minroberta import backend
from minroberta import engine
from minroberta.engine import fused
from minroberta.optim import AdamW
from tests.reference import gradient_floor, relative_error

TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def parameters(text):
    return [part.split()[-1] for part in text.split(",")]


def kernel_source(name, inputs, outputs, body, device):
    """One kernel as a C++ template over T, instantiated for float and double as extern "C" functions."""
    ins, outs = parameters(inputs), parameters(outputs)
    pointers = ", ".join([f"const T* {a}_" for a in ins] + [f"T* {a}_" for a in outs])
    bind = " ".join([f"const T {a} = {a}_[i];" for a in ins] + [f"T& {a} = {a}_[i];" for a in outs])
    if device:
        loop = "long i = blockIdx.x * (long)blockDim.x + threadIdx.x; if (i >= n) return; {"
        qualifier = "__global__"
    else:
        loop = "for (long i = 0; i < n; ++i) {"
        qualifier = ""
    lines = [f"template <typename T> {qualifier} void {name}(long n, {pointers}) {{ {loop} {bind} {body} }} }}"]
    for t in TYPES.values():
        typed = pointers.replace("T*", f"{t}*")
        names = ", ".join([f"{a}_" for a in ins + outs])
        if device:
            lines.append(f"template __global__ void {name}<{t}>(long, {typed});")
        else:
            lines.append(f'extern "C" void {name}_{t}(long n, {typed}) {{ {name}<{t}>(n, {names}); }}')
    return "\n".join(lines)


def all_sources(device):
    prologue = "" if device else "#include <cmath>\nusing std::erfc; using std::exp; using std::sqrt;\n"
    return prologue + "\n\n".join(kernel_source(name, *spec, device=device) for name, spec in fused.KERNELS.items())


def test_the_kernels_compile_for_the_gpu(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (the CUDA compiler) is not installed")
    source = tmp_path / "kernels.cu"
    source.write_text(all_sources(device=True))
    result = subprocess.run([nvcc, "--ptx", "-arch=compute_80", str(source), "-o", str(tmp_path / "kernels.ptx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    for name in fused.KERNELS:
        assert name in ptx


class HostKernel:
    """cupy.ElementwiseKernel's calling convention over the host-compiled body: inputs broadcast together,
    outputs allocated (or given, and then read and written in place), one output returned bare."""

    def __init__(self, library, name, inputs, outputs, calls):
        self.library, self.name, self.calls = library, name, calls
        self.inputs, self.outputs = parameters(inputs), parameters(outputs)

    def __call__(self, *args):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        given_ins, given_outs = args[:len(self.inputs)], list(args[len(self.inputs):])
        dtype = next(np.asarray(a).dtype for a in args if isinstance(a, np.ndarray) and a.ndim > 0)
        shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        ins = [np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dtype), shape)) for a in given_ins]
        outs = given_outs or [np.empty(shape, dtype=dtype) for _ in self.outputs]
        buffers = [np.ascontiguousarray(o) for o in outs]
        function = getattr(self.library, f"{self.name}_{TYPES[dtype]}")
        function(ctypes.c_long(int(np.prod(shape))), *(b.ctypes.data_as(ctypes.c_void_p) for b in ins + buffers))
        for out, buffer in zip(outs, buffers):
            if out is not buffer:
                out[...] = buffer
        return outs[0] if len(outs) == 1 else tuple(outs)


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the kernel bodies for the CPU")
    folder = tmp_path_factory.mktemp("kernels")
    (folder / "kernels.cpp").write_text(all_sources(device=False))
    result = subprocess.run([compiler, "-O1", "-shared", "-fPIC", "-o", str(folder / "kernels.so"),
                             str(folder / "kernels.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(folder / "kernels.so"))


@pytest.fixture
def fused_on_the_cpu(host_library, numpy_backend, monkeypatch):
    """fused.enabled() is true and fused.kernel(name) is the host-compiled body; yields the call counts."""
    calls = {}
    engine.install()
    monkeypatch.setattr(fused, "_enabled", True)
    monkeypatch.setattr(fused, "kernel", lambda name: HostKernel(host_library, name, *fused.KERNELS[name][:2], calls))
    yield calls


CONFIG = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=34, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def logits_loss_and_grads(dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, size=(3, 32))
    ids[2, 20:] = 1
    mask = (ids != 1).astype(np.int64)
    labels = np.where((rng.random(ids.shape) < 0.2) & (mask == 1), ids, -100)
    model = minroberta.Roberta(minroberta.Config(**CONFIG), seed=2, dtype=dtype)
    return (model(ids, mask).logits, *model.loss_and_grads(ids, mask, labels))


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-12), ("float32", 2e-6)])
def test_the_model_with_fused_kernels_matches_the_plain_ops(fused_on_the_cpu, monkeypatch, dtype, tolerance):
    logits, loss, grads = logits_loss_and_grads(dtype)
    assert set(fused_on_the_cpu) >= set(fused.KERNELS) - {"adamw"}, "some kernel was never used"
    monkeypatch.setattr(fused, "_enabled", False)
    plain_logits, plain_loss, plain_grads = logits_loss_and_grads(dtype)
    floor = gradient_floor(plain_grads.values())
    worst = max(relative_error(grads[k], plain_grads[k], floor) for k in plain_grads)
    print(f"fused vs plain, {dtype}: logits {relative_error(logits, plain_logits):.1e}, "
          f"loss {relative_error(loss, plain_loss):.1e}, worst gradient {worst:.1e}")
    assert relative_error(logits, plain_logits) <= tolerance
    assert relative_error(loss, plain_loss) <= tolerance
    assert worst <= tolerance


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-15), ("float32", 1e-6)])
def test_fused_adamw_matches_the_plain_update(fused_on_the_cpu, monkeypatch, dtype, tolerance):
    rng = np.random.default_rng(1)
    shapes = {"w": (70, 40), "b": (40,)}   # a decayed matrix and an undecayed vector
    initial = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads_by_step = [{k: rng.standard_normal(s).astype(dtype) * 10.0 ** -step for k, s in shapes.items()}
                     for step in range(3)]

    def three_updates():
        params = {k: v.copy() for k, v in initial.items()}
        optimizer = AdamW(params)
        for grads in grads_by_step:
            optimizer.step(params, {k: g.copy() for k, g in grads.items()}, 1e-2)
        return params, optimizer

    params, optimizer = three_updates()
    assert fused_on_the_cpu["adamw"] == 6
    monkeypatch.setattr(fused, "_enabled", False)
    plain_params, plain_optimizer = three_updates()
    for k in shapes:
        print(f"fused AdamW vs plain, {dtype}, {k}: {relative_error(params[k], plain_params[k]):.1e}")
        assert relative_error(params[k], plain_params[k]) <= tolerance
        assert relative_error(optimizer.exp_avg[k], plain_optimizer.exp_avg[k]) <= tolerance
        assert relative_error(optimizer.exp_avg_sq[k], plain_optimizer.exp_avg_sq[k]) <= tolerance


def test_fused_kernels_refuse_the_cpu_backends(numpy_backend):
    with pytest.raises(minroberta.MinRobertaError, match="need the cupy backend"):
        fused.use(True)
    assert not fused.enabled()
