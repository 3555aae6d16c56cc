"""The helper scripts: metric plots and the fairseq converter's refusals."""

import json
import os
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
