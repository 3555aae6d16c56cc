#!/usr/bin/env bash
# Prove the GPU path on a machine with an NVIDIA GPU and CuPy: the GPU tests (CuPy against NumPy, against
# transformers on CUDA, fused kernels against the plain ops, float16 and TF32 products within their tolerances,
# short pretraining runs whose loss falls and which resume exactly), then the benchmark of minroberta on CuPy
# against HuggingFace on PyTorch-CUDA, roberta-base shape, in float32, TF32 and float16 mixed precision.
# Installs nothing.
#     bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); print(f'CuPy {cupy.__version__}, {n} GPU(s)')"
python -m pytest -q -rs tests/test_cupy.py
bench="python scripts/bench.py --backend cupy --preset base --repeats 2 --steps 10 --warmup 3"
$bench --mode train infer
$bench --mode train --precision tf32
$bench --mode train --precision fp16 --fused
