"""A short fault-injection campaign (scripts/torture.py): killed and resumed runs end bit-identical, no checkpoint
is left unloadable, and disk-full, read-only and corrupted-checkpoint runs fail or recover as promised."""

import importlib.util
import json
import os

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "torture.py")


def load_script():
    spec = importlib.util.spec_from_file_location("torture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_campaign_passes(tmp_path, capsys):
    results = tmp_path / "results.json"
    status = load_script().main(["--trials", "3", "--steps", "8", "--seed", "0", "--workdir", str(tmp_path / "runs"),
                                 "--json", str(results)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    summary = json.loads(results.read_text())["summary"]
    assert (summary["trials"], summary["identical"], summary["mismatched"]) == (3, 3, 0), printed
    assert summary["unloadable_checkpoints"] == 0, printed
    assert summary["errors"] == 0 and summary["scenarios_failed"] == 0, printed
    assert "disk full" in printed and "read-only checkpoints" in printed and "corrupted latest" in printed
