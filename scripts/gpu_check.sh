#!/usr/bin/env bash
# Prove the GPU path in one call on a bare machine with an NVIDIA GPU, CuPy, torch and transformers: the
# environment, the GPU tests (tests/test_cupy.py), the benchmark against PyTorch-CUDA at the roberta-base shape
# in float32, TF32 and float16 with fused kernels, and a timed pretraining run. Installs nothing and needs no
# network; every stage runs under its own timeout and the whole within GPU_CHECK_BUDGET seconds (default 360;
# 900 for the dry run, which only the budget bounds), and a failing stage does not stop the next. OUT_DIR gets
# gpu_check.log, summary.md and results.json.
#     bash scripts/gpu_check.sh OUT_DIR
#     bash scripts/gpu_check.sh --dry-run OUT_DIR   # the same stages on the CPU: standin backend, tiny sizes
# PYTHON names the interpreter (default python3).
set -uo pipefail

dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
if [[ $# -ne 1 || $1 == -* ]]; then
    echo "usage: bash scripts/gpu_check.sh [--dry-run] OUT_DIR" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1" || { echo "gpu_check.sh: cannot make $1" >&2; exit 2; }
out=$(cd "$1" && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1   # a stage cut off by its timeout still leaves what it printed in the log
budget=${GPU_CHECK_BUDGET:-$( (( dry )) && echo 900 || echo 360)}
started=$(date +%s.%N)
work=$(mktemp -d)   # run directories (checkpoints) stay out of OUT_DIR, which comes back from the device
trap 'rm -rf "$work"' EXIT

if (( dry )); then
    export MINROBERTA_BACKEND=standin
    backend=standin
    bench=(--backend standin --preset micro --mode train --repeats 1 --steps 1 --warmup 0)
    pretrain=(--backend standin --preset micro --seq-len 32 --batch-size 4 --steps 10 --eval-every 10
              --eval-batches 2 --save-every 10 --log-every 5 --vocab-size 512 --corpus "$root/README.md")
else
    backend=cupy
    bench=(--backend cupy --preset base --mode train --repeats 2 --steps 10 --warmup 3)
    # the README's default run (mini preset, 2,600 updates), so its validation loss can be set beside the CPU's
    pretrain=(--backend cupy --save-every 600)
fi

# [note=TEXT] stage NAME TIMEOUT_S COMMAND...: run it under its timeout (cut to what is left of the budget) and
# record NAME, exit status, seconds and the note in stages.tsv
stage() {
    local name=$1 limit=$2 left rc start seconds
    shift 2
    left=$(awk -v b="$budget" -v s="$started" -v now="$(date +%s.%N)" 'BEGIN { printf "%d", b - (now - s) }')
    # the stages' own limits are sized for the GPU; on a shared CPU only the budget bounds the dry run
    (( dry || limit > left )) && limit=$left
    if (( limit < 5 )); then
        echo "== $name: not run, the budget of $budget s is spent"
        printf '%s\tbudget\t0\tnot run: the budget of %s s was spent\n' "$name" "$budget" >> "$out/stages.tsv"
        return
    fi
    echo "== $name (timeout $limit s): $*"
    start=$(date +%s.%N)
    timeout -k 10 "$limit" "$@"
    rc=$?
    seconds=$(awk -v s="$start" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - s }')
    echo "-- $name: exit status $rc, $seconds s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "${note:-}" >> "$out/stages.tsv"
}

# skip NAME NOTE: a stage the dry run cannot run, listed as skipped with the reason
skip() {
    echo "== $1: skipped, $2"
    printf '%s\tskip\t0\t%s\n' "$1" "$2" >> "$out/stages.tsv"
}

main() {
    rm -f "$out"/{stages.tsv,env.json,gpu-tests.xml,bench-*.json,pretrain-metrics.jsonl,summary.md,results.json}
    cd "$root"
    echo "gpu_check.sh $( (( dry )) && echo '--dry-run ')$out, repository $root, budget $budget s"
    stage environment 60 "$py" scripts/gpu_report.py env "$out" --backend "$backend"
    stage gpu-tests 180 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_cupy.py --durations=5 \
        --junitxml="$out/gpu-tests.xml"
    stage bench-float32 90 "$py" scripts/bench.py "${bench[@]}" --json "$out/bench-float32.json"
    if (( dry )); then
        skip bench-tf32 "TF32 needs a GPU (dry run)"
        note="dry run: --fused needs CuPy, left out" stage bench-fp16-fused 90 \
            "$py" scripts/bench.py "${bench[@]}" --precision fp16 --json "$out/bench-fp16-fused.json"
    else
        stage bench-tf32 90 "$py" scripts/bench.py "${bench[@]}" --precision tf32 --json "$out/bench-tf32.json"
        stage bench-fp16-fused 90 "$py" scripts/bench.py "${bench[@]}" --precision fp16 --fused \
            --json "$out/bench-fp16-fused.json"
    fi
    stage pretrain 150 "$py" -m minroberta.cli pretrain "${pretrain[@]}" --out "$work/pretrain"
    cp "$work/pretrain/metrics.jsonl" "$out/pretrain-metrics.jsonl" 2>/dev/null
    "$py" scripts/gpu_report.py summary "$out" --started "$started" $( (( dry )) && echo --dry-run)
}

main 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
