#!/usr/bin/env bash
# Prove the GPU path on a machine with an NVIDIA GPU and CuPy: the GPU tests (CuPy against NumPy, against
# transformers on CUDA, a short pretraining whose loss falls, resume exactness), then the benchmark of
# minroberta on CuPy against HuggingFace on PyTorch-CUDA, roberta-base shape. Installs nothing.
#     bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); print(f'CuPy {cupy.__version__}, {n} GPU(s)')"
python -m pytest -q -rs tests/test_cupy.py
python scripts/bench.py --backend cupy --preset tiny base --mode train infer --repeats 3 --steps 10 --warmup 3
