"""The two Python pieces of scripts/gpu_check.sh: the environment report it starts with, and the summary it ends
with (summary.md, one row per stage, and results.json, every figure the stages left in the output directory).

    python3 scripts/gpu_report.py env OUT_DIR --backend cupy
    python3 scripts/gpu_report.py summary OUT_DIR --started EPOCH_SECONDS [--dry-run]
"""

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

STAGES = ("environment", "gpu-tests", "bench-float32", "bench-tf32", "bench-fp16-fused", "pretrain")


def environment(backend):
    """Versions of everything the stages use, and the GPU as CuPy, PyTorch and nvidia-smi see it. A missing
    package is noted, not an error; only the cupy backend needs CuPy and a device."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "backend": backend}
    for package in ("numpy", "tokenizers", "safetensors", "transformers", "pytest", "hypothesis"):
        try:
            info[package] = importlib.metadata.version(package)   # without importing: transformers takes seconds
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    try:
        import cupy
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        properties = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = properties["name"].decode()
        info["compute_capability"] = f"{properties['major']}.{properties['minor']}"
        info["gpu_memory_mib"] = properties["totalGlobalMem"] // 2**20
    except Exception as exc:   # ImportError, or the CUDA runtime's own error when there is no driver or device
        info["cupy_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["torch_gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError as exc:
        info["torch_error"] = str(exc)
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info


def describe_environment(info):
    if "gpu" in info:
        gpu = f"{info['gpu']} (compute {info['compute_capability']}), CuPy {info['cupy']}"
    else:
        gpu = f"no GPU through CuPy ({info['cupy_error']})"
    torch = f"torch {info['torch']}" if "torch" in info else "no torch"
    if info.get("torch_gpu"):
        torch += f" on {info['torch_gpu']}"
    return f"{gpu}; {torch}; transformers {info['transformers']}"


def test_results(path):
    """Counts and skip reasons from pytest's JUnit XML."""
    if not os.path.exists(path):
        return None
    cases = ElementTree.parse(path).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    reasons = set()
    for case in cases:
        skipped = case.find("skipped")
        if skipped is not None:
            counts["skipped"] += 1
            reasons.add(skipped.get("message", ""))
        elif case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "skip_reasons": sorted(reasons)}


def bench_results(path):
    """Median tokens/s of each implementation, their ratio per repetition, and the GPU memory each held."""
    if not os.path.exists(path):
        return None
    records = json.load(open(path))
    ours = [r for r in records if r["impl"] == "minroberta"]
    reference = [r for r in records if r["impl"] == "reference"]
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, reference)]
    return {"minroberta_tokens_per_s": statistics.median(r["tokens_per_s"] for r in ours),
            "reference_tokens_per_s": statistics.median(r["tokens_per_s"] for r in reference),
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "minroberta_device_peak_mib": max((r.get("device_peak_mib") or 0) for r in ours) or None,
            "reference_device_peak_mib": max((r.get("device_peak_mib") or 0) for r in reference) or None,
            "records": records}


def pretrain_results(path):
    """The run's last training record (tokens/s over the whole run so far) and last validation record."""
    if not os.path.exists(path):
        return None
    records = [json.loads(line) for line in open(path) if line.strip()]
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    if not train:
        return None
    result = {"steps": train[-1]["step"], "tokens_per_s": train[-1]["tokens_per_s"], "first_loss": train[0]["loss"],
              "last_loss": train[-1]["loss"]}
    if valid:
        result.update({k: valid[-1][k] for k in ("valid_loss", "valid_ppl", "valid_accuracy")})
        result["valid_step"] = valid[-1]["step"]
    return result


def summary(out, started, dry_run):
    """Every stage's result from stages.tsv and the figures its files hold; returns the exit status."""
    rows = {}
    if os.path.exists(os.path.join(out, "stages.tsv")):
        for line in open(os.path.join(out, "stages.tsv")):
            name, status, seconds, note = line.rstrip("\n").split("\t")
            rows[name] = {"name": name, "exit_status": status, "seconds": float(seconds), "note": note}
    env_path = os.path.join(out, "env.json")
    figures = {"dry_run": dry_run, "device_seconds": round(time.time() - started, 1),
               "environment": json.load(open(env_path)) if os.path.exists(env_path) else None,
               "tests": test_results(os.path.join(out, "gpu-tests.xml")),
               "bench": {name: bench_results(os.path.join(out, f"{name}.json")) for name in STAGES if "bench" in name},
               "pretrain": pretrain_results(os.path.join(out, "pretrain-metrics.jsonl"))}
    stages = []
    for name in STAGES:
        row = rows.get(name, {"name": name, "exit_status": "missing", "seconds": 0.0, "note": "not recorded"})
        row["result"], found = judge(name, row["exit_status"], figures)
        row["note"] = "; ".join(part for part in (found, row["note"]) if part)
        stages.append(row)
    figures["stages"] = stages

    lines = [f"# gpu_check.sh{' --dry-run' if dry_run else ''}: {figures['device_seconds']:.0f} s in all", "",
             "| stage | result | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['result']} | {s['seconds']:.1f} | {s['note']} |" for s in stages]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(figures, handle, indent=2)
    print(text, end="")
    return 1 if any(s["result"] == "fail" for s in stages) else 0


def judge(name, status, figures):
    """(pass | fail | skipped, what the stage's figures say)."""
    if name == "environment" and figures["environment"] is not None:
        return ("pass" if status == "0" else "fail"), describe_environment(figures["environment"])
    if status == "skip":
        return "skipped", ""
    if status == "budget":
        return "fail", ""
    if status in ("124", "137"):
        return "fail", "timed out"
    if status != "0":
        return "fail", f"exit status {status}"
    if name == "gpu-tests":
        tests = figures["tests"]
        if tests is None:
            return "fail", "no JUnit report"
        counted = f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped"
        reasons = f": {'; '.join(tests['skip_reasons'])}" if tests["skip_reasons"] else ""
        return ("skipped" if tests["passed"] == 0 else "pass"), counted + reasons
    if name.startswith("bench"):
        bench = figures["bench"][name]
        if bench is None:
            return "fail", "no JSON"
        return "pass", (f"minroberta {bench['minroberta_tokens_per_s']:,.0f} tok/s, HF "
                        f"{bench['reference_tokens_per_s']:,.0f} tok/s, ratio {bench['ratio']:.2f}x")
    run = figures["pretrain"]
    if run is None or "valid_loss" not in run:
        return "fail", "no validation record in metrics.jsonl"
    return "pass", (f"{run['tokens_per_s']:,.0f} tok/s, loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}, "
                    f"validation loss {run['valid_loss']:.4f} (ppl {run['valid_ppl']:.2f}) at step {run['valid_step']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="write env.json and print it")
    env.add_argument("out")
    env.add_argument("--backend", choices=["cupy", "standin"], required=True)
    report = commands.add_parser("summary", help="write summary.md and results.json and print the table")
    report.add_argument("out")
    report.add_argument("--started", type=float, required=True, help="the script's start, seconds since the epoch")
    report.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if not os.path.isdir(args.out):
        sys.exit(f"gpu_report.py: {args.out}: no such directory")
    if args.command == "summary":
        return summary(args.out, args.started, args.dry_run)
    info = environment(args.backend)
    with open(os.path.join(args.out, "env.json"), "w") as handle:
        json.dump(info, handle, indent=2)
    print(json.dumps(info, indent=2))
    if args.backend == "cupy" and "gpu" not in info:
        print(f"gpu_report.py: the cupy backend needs CuPy and a GPU: {info['cupy_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
