"""The helper scripts: metric plots, the fairseq converter's refusals, smoke runs of the benchmark and of the GPU
check."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plot_metrics_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib (the plot extra)")
    records = [{"step": s, "loss": 8 - s / 10, "lr": 1e-3} for s in range(1, 20)]
    records += [{"step": 10, "valid_loss": 7.0, "valid_ppl": 1000.0, "valid_accuracy": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{torn")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_metrics.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_names_a_missing_file(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_metrics.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "metrics.jsonl: no such file" in done.stderr


@pytest.mark.parametrize("precision,modes", [("float32", ["train", "infer"]), ("fp16", ["infer"])])
def test_the_benchmark_measures_both_implementations(tmp_path, precision, modes):
    """One step of each workload: the table and the JSON come out whole (speed itself is not tested)."""
    pytest.importorskip("torch", reason="the benchmark's reference needs torch (the parity extra)")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--preset", "tiny", "--mode",
                           *modes, "--repeats", "1", "--steps", "1", "--warmup", "0", "--precision", precision,
                           "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"matrix products {precision}" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| tiny ")]
    assert len(rows) == len(modes)
    records = json.loads(out.read_text())
    assert {(r["impl"], r["mode"]) for r in records} == {(i, m) for i in ("minroberta", "reference") for m in modes}
    assert all(r["tokens_per_s"] > 0 and r["precision"] == precision for r in records)


def test_the_benchmark_profiles_the_ops_of_a_step():
    """--profile: every op's own time and the products' line; the parts add up to the step (no time counted twice)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--profile", "--mode", "train",
                           "--steps", "1", "--warmup", "0", "--threads", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ms = {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\S.*?)\s+([\d.]+)(?:\s+[\d.]+%)?$", done.stdout, re.M)}
    step = ms.pop("step")
    assert {"matrix products", "gelu_forward", "layernorm_backward", "AdamW", "other"} <= set(ms)
    assert abs(sum(ms.values()) - step) <= 0.01 * step + 0.5


def test_the_race_runs_both_implementations_from_the_same_start(tmp_path):
    """A few updates each: the table, the curves and the picture come out; the two sides start from the same
    weights on the same batches, so their first validation losses agree (float32 rounding apart)."""
    pytest.importorskip("transformers", reason="the race's other side needs transformers (the parity extra)")
    pytest.importorskip("matplotlib", reason="the race's picture needs matplotlib (the plot extra)")
    corpus = tmp_path / "text.txt"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        corpus.write_text(handle.read(), encoding="utf-8")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "race.py"), "--seconds", "60", "--threads",
                           "1", "--out", str(tmp_path / "race"), "--", "--preset", "micro", "--batch-size", "8",
                           "--steps", "4", "--eval-every", "2", "--eval-batches", "2", "--vocab-size", "512",
                           "--corpus", str(corpus)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| minroberta | 4 |" in done.stdout and "| huggingface | 4 |" in done.stdout
    curves = json.loads((tmp_path / "race" / "race.json").read_text())["curves"]
    first = [curves[side][0]["valid_loss"] for side in ("minroberta", "huggingface")]
    assert [p["step"] for p in curves["huggingface"]] == [2, 4]
    assert abs(first[0] - first[1]) <= 1e-4 * first[1], first
    assert (tmp_path / "race" / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_gpu_check_dry_run_reports_every_stage(tmp_path):
    """gpu_check.sh --dry-run: the GPU check's stages on the CPU (standin backend, micro sizes, torch on the CPU
    as the benchmark's reference), so that a typo or a missing import fails here and not in the one call on a GPU.
    Where CuPy has no GPU its tests skip, and the summary says skipped, not pass."""
    pytest.importorskip("torch", reason="the benchmark's reference needs torch (the parity extra)")
    from tests.test_cupy import REASON
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    summary = (tmp_path / "summary.md").read_text()
    stages = {stage["name"]: stage["result"] for stage in results["stages"]}
    assert list(stages) == ["environment", "gpu-tests", "bench-float32", "bench-tf32", "bench-fp16-fused", "pretrain"]
    assert all(f"| {name} | {result} |" in summary for name, result in stages.items())
    assert stages["gpu-tests"] == ("skipped" if REASON else "pass")
    assert stages["bench-tf32"] == "skipped" and "fail" not in stages.values()
    assert all(results["bench"][name]["ratio"] > 0 for name in ("bench-float32", "bench-fp16-fused"))
    assert results["pretrain"]["tokens_per_s"] > 0 and results["pretrain"]["valid_loss"] > 0
    assert "-- pretrain: exit status 0" in (tmp_path / "gpu_check.log").read_text()


def test_the_gpu_check_names_its_usage():
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "usage: bash scripts/gpu_check.sh [--dry-run] OUT_DIR"


def test_the_embedding_benchmark_compares_both_on_minilm(tmp_path):
    """Six texts, one process each: the table, the JSON and identical vectors (speed itself is not tested)."""
    pytest.importorskip("sentence_transformers", reason="the embedding benchmark's reference is sentence-transformers")
    from tests.bert import minilm_dir
    out = tmp_path / "bench_embed.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_embed.py"), "--model", minilm_dir(),
                           "--texts", "6", "--repeats", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| encode, texts/s |" in done.stdout and "| end to end, texts/s |" in done.stdout
    record = json.loads(out.read_text())
    assert record["worst_cosine"] >= 0.99999
    assert {m["impl"] for m in record["measurements"]} == {"minroberta", "sentence-transformers"}
    assert all(m["texts"] == 6 and 0 < m["encode_s"] < m["end_to_end_s"] and m["encode_cpu_s"] > 0 and
               m["end_to_end_cpu_s"] > m["encode_cpu_s"] and m["peak_rss_mib"] > 0
               for m in record["measurements"])


def test_the_fine_tuning_comparison_runs_both_on_minilm(tmp_path):
    """Two tiny classes, one epoch each: the table and both runs' accuracies (neither speed nor accuracy tested)."""
    pytest.importorskip("transformers", reason="the comparison's reference is transformers (the parity extra)")
    from tests.bert import minilm_dir
    out = tmp_path / "compare.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare_finetune.py"), "--model", minilm_dir(),
                           "--classes", "2", "--per-class", "5", "--epochs", "1", "--batch-size", "4", "--max-length",
                           "32", "--threads", "1", "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| minroberta |" in done.stdout and "| transformers |" in done.stdout
    runs = json.loads(out.read_text())
    assert [r["impl"] for r in runs] == ["minroberta", "transformers"]
    assert all(r["train_s"] > 0 and len(r["accuracies"]) == 1 and 0 <= r["accuracies"][0] <= 1 for r in runs)


def test_bench_prepare_times_raw_encoding_and_the_first_update(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} says that the value {i * 7} is returned." for i in range(200)))
    prep, script = tmp_path / "prep", os.path.join(ROOT, "scripts", "bench_prepare.py")
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-m", "minroberta.cli", "prepare", "--corpus", str(corpus), "--out",
                           str(prep), "--preset", "micro"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, script, "raw", str(prep)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["raw_encode_mb_s"] > 0
    done = subprocess.run([sys.executable, script, "first-update", "pretrain", "--preset", "micro", "--batch-size", "4",
                           "--prepared", str(prep), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0 and "first update done" in done.stderr, done.stderr
