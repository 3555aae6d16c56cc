"""Fine-tuning, prediction and embeddings through the command line, on the built-in demo task."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minroberta
from minroberta import backend
from minroberta.cli import main
from minroberta.embed import sentence_embeddings, word_vector
from minroberta.tokenizer import Tokenizer
from tests.reference import relative_error, transformers_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A micro model pretrained briefly on the built-in corpus."""
    out = tmp_path_factory.mktemp("pretrained")
    assert main(["pretrain", "--preset", "micro", "--seq-len", "64", "--batch-size", "16", "--steps", "60",
                 "--lr", "2e-3", "--eval-every", "60", "--log-every", "20", "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def demo_task(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_task.py"), str(out)], check=True,
                   capture_output=True)
    return str(out)


def majority_share(path):
    labels = [row["label"] for row in csv.DictReader(open(path, encoding="utf-8"))]
    return max(labels.count(label) for label in set(labels)) / len(labels)


def test_finetuning_beats_the_majority_baseline_and_predicts(pretrained, demo_task, tmp_path, capsys):
    out = tmp_path / "classifier"
    assert main(["finetune", "--model", pretrained, "--task", "classify", "--train", f"{demo_task}/train.csv",
                 "--eval", f"{demo_task}/eval.csv", "--out", str(out), "--epochs", "5", "--lr", "1e-3",
                 "--max-length", "64", "--eval-every", "25"]) == 0
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if "accuracy" in line]
    best = max(e["accuracy"] for e in evals)
    baseline = majority_share(f"{demo_task}/eval.csv")
    assert best >= baseline + 0.15, (best, baseline)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "Create a new widget and pack it.", "An email message."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in {"asyncio", "email", "idlelib", "tkinter"} for line in lines)


def test_a_finetuned_checkpoint_loads_in_transformers(pretrained, tmp_path, numpy_backend):
    torch, transformers = transformers_or_skip()
    train = tmp_path / "train.csv"
    train.write_text("text_a,text_b,label\nA cat sat.,A cat was sitting.,same\nThe sky.,A parser for XML.,different\n"
                     "Open a file.,Opens the file.,same\nSocket error.,A fine day.,different\n")
    out = tmp_path / "pair"
    assert main(["finetune", "--model", pretrained, "--task", "pair", "--train", str(train), "--eval", str(train),
                 "--out", str(out), "--epochs", "2", "--batch-size", "2", "--eval-every", "2"]) == 0
    model = minroberta.load_pretrained(str(out))
    assert model.head == "classification" and model.config.extra["id2label"] == {"0": "different", "1": "same"}
    reference, info = transformers.RobertaForSequenceClassification.from_pretrained(
        str(out), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = Tokenizer.from_dir(str(out))
    ids, mask = tokenizer.encode_batch(["A cat sat.", "Open it."], ["A cat was sitting.", "A fine day."])
    expected = reference.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    assert relative_error(model(ids, mask).logits, expected) <= 1e-5


@pytest.mark.parametrize("precision", ["float32", "fp16"])
def test_question_answering_finetunes_and_answers(pretrained, tmp_path, capsys, precision):
    rows = []
    for n, (thing, colour) in enumerate([("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
                                         ("blood", "red"), ("sun", "yellow")] * 3):
        context = f"The {thing} is {colour} today."
        rows.append({"context": context, "question": f"What colour is the {thing}?",
                     "answers": {"text": [colour], "answer_start": [context.index(colour)]}})
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "qa"
    assert main(["finetune", "--model", pretrained, "--task", "qa", "--train", str(data), "--eval", str(data),
                 "--out", str(out), "--epochs", "20", "--lr", "3e-3", "--batch-size", "6", "--eval-every", "20",
                 "--precision", precision]) == 0
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if '"f1"' in line]
    assert max(e["f1"] for e in evals) >= 0.5
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--context", "The sea is green today.", "What colour is the sea?"]) == 0
    assert capsys.readouterr().out.strip().endswith("What colour is the sea?")


def test_embeddings(pretrained, tmp_path, capsys, numpy_backend):
    model = minroberta.load_pretrained(pretrained)
    tokenizer = Tokenizer.from_dir(pretrained)
    vectors = sentence_embeddings(model, tokenizer, ["one text", "another, longer text"], pooling="mean",
                                  normalize=True)
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    fox = word_vector(model, tokenizer, "The quick brown fox jumps.", "fox")
    assert fox.shape == (64,) and np.all(np.isfinite(fox))
    output = tmp_path / "vectors.npy"
    assert main(["embed", "--model", pretrained, "--pooling", "cls", "--output", str(output), "a", "b c"]) == 0
    assert np.load(output, allow_pickle=False).shape == (2, 64)
    assert main(["embed", "--model", pretrained, "--pooling", "tokens", "a fox"]) == 0
    assert "fox" in capsys.readouterr().out


@pytest.mark.parametrize("problem,message", [
    ("unseen_label", "eval.csv:3: label 'maybe' does not occur in the training file"),
    ("missing_column", "train.csv:1: missing column 'label'"),
    ("empty_side", "train.csv:2: text_b is empty"),
    ("answer_not_in_context", "train.jsonl:1: answer 'purple' is not in the context"),
])
def test_bad_fine_tuning_files_are_one_line_errors(pretrained, tmp_path, capsys, problem, message):
    task = "pair" if problem == "empty_side" else "qa" if problem == "answer_not_in_context" else "classify"
    train, evaluation = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text("text,label\nfine,yes\nbad,no\n")
    evaluation.write_text("text,label\nfine,yes\nunsure,maybe\n")
    if problem == "missing_column":
        train.write_text("text,category\nfine,yes\n")
    elif problem == "empty_side":
        train.write_text("text_a,text_b,label\nfine,,yes\n")
    elif problem == "answer_not_in_context":
        train = tmp_path / "train.jsonl"
        train.write_text(json.dumps({"context": "The sky is blue.", "question": "Colour?",
                                     "answers": {"text": ["purple"], "answer_start": [11]}}) + "\n")
        evaluation = train
    code = main(["finetune", "--model", pretrained, "--task", task, "--train", str(train), "--eval", str(evaluation),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_long_texts_are_truncated_with_a_warning(pretrained, tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "word " * 300 + ",long\nshort text,short\n")
    assert main(["finetune", "--model", pretrained, "--task", "classify", "--train", str(train), "--eval", str(train),
                 "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "2"]) == 0
    assert "1 of 2 examples were longer than 64 tokens and were truncated" in capsys.readouterr().err
