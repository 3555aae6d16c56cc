"""The commands on BERT-family checkpoints: fill-mask on a BertForMaskedLM, fine-tuning into a checkpoint that
BertForSequenceClassification opens, prediction, and the one-line errors for what a checkpoint lacks. The
references are transformers' own models, tokenizers and checkpoints."""

import csv
import json
import os

import pytest

import minroberta
import minroberta.engine.trainer   # noqa: F401 here, not first inside a test: its Progress binds sys.stderr when imported
from minroberta import backend
from minroberta.cli import main
from minroberta.corpus import stdlib_docstrings
from minroberta.tokenizer import Tokenizer
from tests.bert import minilm, minilm_dir, write_tiny_bert   # noqa: F401 (minilm is a fixture)
from tests.reference import relative_error, transformers_or_skip


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- fill-mask ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert_mlm")
    return directory, write_tiny_bert(directory, "BertForMaskedLM")


@pytest.mark.parametrize("spelling", ["<mask>", "[MASK]"])
def test_fill_mask_on_a_bert_masked_lm_gives_transformers_predictions(bert_mlm, capsys, spelling):
    torch, transformers = transformers_or_skip()
    directory, reference = bert_mlm
    text = f"Return the {spelling} of the list."
    assert main(["fill-mask", "--model", str(directory), "--top-k", "3", text]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == text and lines[1].startswith("  <mask> 1: ")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    encoded = tokenizer(text.replace("<mask>", "[MASK]"), return_tensors="pt")
    with torch.no_grad():
        logits = reference(**encoded).logits[0]
    position = encoded["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    best = torch.topk(torch.softmax(logits[position].double(), dim=-1), 3)
    expected = "  ".join(f"{tokenizer.convert_ids_to_tokens(int(i))} {p:.3f}"
                         for p, i in zip(best.values.tolist(), best.indices.tolist()))
    assert lines[1] == f"  <mask> 1: {expected}"


def test_fill_mask_on_an_encoder_without_an_mlm_head_is_one_line(capsys):
    assert main(["fill-mask", "--model", minilm_dir(), "The capital of France is <mask>."]) == 2
    line = one_error_line(capsys)
    assert "has no masked-LM head (no cls.predictions.* tensors), so it cannot fill masks" in line


def test_fill_mask_with_a_tokenizer_without_a_mask_token_is_one_line(bert_mlm, tmp_path, capsys):
    directory, _ = bert_mlm
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text((directory / "tokenizer.json").read_text().replace("[MASK]", "[HOLE]"))
    assert main(["fill-mask", "--model", str(tmp_path), "Return the <mask>."]) == 2
    assert "tokenizer.json: has no mask token, which fill-mask needs" in one_error_line(capsys)


# --- fine-tuning and prediction ----------------------------------------------------------------------------

PAIRS = [("A cat sat.", "A cat was sitting.", "same"), ("The sky.", "A parser for XML.", "different"),
         ("Open a file.", "Opens the file.", "same"), ("Socket error.", "A fine day.", "different")]


def write_pairs(path):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text_a", "text_b", "label"])
        writer.writerows(PAIRS)


def assert_opens_in_transformers_with_the_same_logits(out, pairs):
    """BertForSequenceClassification and AutoTokenizer open the fine-tuned directory: no missing or unexpected
    tensor, the same ids and token types, the same logits."""
    torch, transformers = transformers_or_skip()
    reference, info = transformers.BertForSequenceClassification.from_pretrained(
        str(out), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    encoded = transformers.AutoTokenizer.from_pretrained(str(out))([a for a, _ in pairs], [b for _, b in pairs],
                                                                   padding=True, return_tensors="pt")
    ids, mask, types = Tokenizer.from_dir(str(out)).encode_batch([a for a, _ in pairs], [b for _, b in pairs],
                                                                  with_types=True)
    assert ids.tolist() == encoded["input_ids"].tolist() and types.tolist() == encoded["token_type_ids"].tolist()
    assert types.max() == 1
    with torch.no_grad():
        expected = reference.eval()(**encoded).logits.numpy()
    model = minroberta.load_pretrained(str(out))
    assert relative_error(backend.to_host(model(ids, mask, types).logits), expected) <= 1e-5


def test_a_bert_pair_classifier_fine_tuned_here_opens_in_transformers(tmp_path, numpy_backend, capsys):
    write_tiny_bert(tmp_path / "bert", "BertModel")
    write_pairs(tmp_path / "pairs.csv")
    out = tmp_path / "classifier"
    assert main(["finetune", "--model", str(tmp_path / "bert"), "--task", "pair", "--train", str(tmp_path / "pairs.csv"),
                 "--eval", str(tmp_path / "pairs.csv"), "--out", str(out), "--epochs", "2", "--batch-size", "2",
                 "--eval-every", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"] == {"0": "different",
                                                                                                  "1": "same"}
    assert_opens_in_transformers_with_the_same_logits(out, [(a, b) for a, b, _ in PAIRS])
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--pair", "A cat was sitting.", "A cat sat.", "The sky."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] in ("same", "different") for line in lines] == [True, True]


def test_minilm_fine_tuned_on_a_few_docstrings_opens_in_transformers(minilm, tmp_path, capsys):
    """The real checkpoint (names without a prefix, a pretrained pooler) becomes BertForSequenceClassification."""
    docstrings = [(" ".join(text.split())[:200], path.split(os.sep)[0]) for path, text in stdlib_docstrings()]
    rows = [r for r in docstrings if r[1] == "json"][:6] + [r for r in docstrings if r[1] == "email"][:6]
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    out = tmp_path / "minilm-classifier"
    assert main(["finetune", "--model", minilm, "--task", "classify", "--train", str(tmp_path / "train.csv"),
                 "--eval", str(tmp_path / "train.csv"), "--out", str(out), "--epochs", "1", "--batch-size", "6",
                 "--max-length", "48", "--eval-every", "2", "--lr", "1e-4"]) == 0
    assert_opens_in_transformers_with_the_same_logits(out, [("Decode a JSON document.", "Parse an email message.")])
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "Serialize obj to a JSON formatted str."]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("json", "email")
