"""Fuzzing every input surface that is not a checkpoint (those are in test_checkpoint.py): tokenizer files,
corpora, token-id arrays, fine-tuning files, and the command line. Each input either works or ends in
MinRobertaError with a one-line message; nothing else escapes.

MINROBERTA_FUZZ_EXAMPLES sets the examples per surface (CI: 200; the long campaign in README: 1000+)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minroberta
from minroberta import backend
from minroberta.corpus import read_documents
from minroberta.errors import MinRobertaError
from minroberta.finetune import encode_examples
from minroberta.tokenizer import Tokenizer, train_tokenizer

EXAMPLES = int(os.environ.get("MINROBERTA_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(error):
    message = str(error)
    assert message and "\n" not in message, repr(message)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from minroberta.corpus import stdlib_documents
    texts = [t for _, t in zip(range(300), stdlib_documents())]
    tok = train_tokenizer(texts, vocab_size=600)
    directory = tmp_path_factory.mktemp("tokenizer")
    tok.save(str(directory))
    return tok, directory


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                              children, max_size=4),
                           max_leaves=12)


@FUZZ
@given(damage=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                        st.tuples(st.integers(0, 4000), st.binary(max_size=20))))
def test_damaged_tokenizer_files(tmp_path_factory, tokenizer, damage):
    _, source = tokenizer
    directory = tmp_path_factory.mktemp("damaged")
    original = (source / "tokenizer.json").read_bytes()
    if isinstance(damage, tuple):   # a valid file with a patch of garbage written into it
        offset, patch = damage
        data = original[:offset] + patch + original[offset + len(patch):]
    else:
        data = damage
    (directory / "tokenizer.json").write_bytes(data)
    try:
        loaded = Tokenizer.from_dir(str(directory))
        loaded.encode("a small test <mask>.")
    except MinRobertaError as exc:
        one_line(exc)


@FUZZ
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_corpus_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_bytes(data)
    try:
        documents = list(read_documents([str(path)]))
        assert all(isinstance(d, str) and d.strip() for d in documents)
    except MinRobertaError as exc:
        one_line(exc)
        assert str(path) in str(exc)


def test_one_giant_line_is_one_document(tmp_path):
    path = tmp_path / "giant.txt"
    path.write_text("word " * 200_000)
    assert len(list(read_documents([str(path)]))) == 1


@pytest.fixture(scope="module")
def small_model():
    previous = backend.name()
    backend.use("numpy")
    model = minroberta.Roberta(minroberta.Config(vocab_size=40, hidden_size=8, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=8,
                                                 max_position_embeddings=12), seed=0)
    yield model
    backend.use(previous)


ids_arrays = st.one_of(
    st.lists(st.lists(st.integers(-2**40, 2**40), max_size=12), max_size=3),
    st.integers(0, 3).flatmap(lambda ndim: st.tuples(
        st.sampled_from([np.int8, np.int32, np.int64, np.uint16, np.float32, np.float64, np.bool_, np.complex64]),
        st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim), st.integers(0, 2**31 - 1))),
    st.text(max_size=5), st.none())


@FUZZ
@given(values=ids_arrays)
def test_arbitrary_token_id_arrays(small_model, values):
    if isinstance(values, tuple):
        dtype, shape, seed = values
        values = (np.random.default_rng(seed).standard_normal(shape) * 30).astype(dtype)
    try:
        out = small_model(values)
        assert np.all(np.isfinite(out.logits))
    except MinRobertaError as exc:
        one_line(exc)
    except ValueError as exc:   # the ops' own argument errors (MinRobertaError is one) also name the problem
        one_line(exc)


csv_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(task=st.sampled_from(["classify", "pair", "regress", "qa"]),
       header=st.lists(st.sampled_from(["text", "text_a", "text_b", "label", "context", "question", "answers", "x"]),
                       max_size=4),
       rows=st.lists(st.lists(csv_cells, max_size=4), max_size=4), as_json=st.booleans(),
       raw=st.none() | st.binary(max_size=100))
def test_arbitrary_fine_tuning_files(tmp_path_factory, tokenizer, task, header, rows, as_json, raw):
    tok, _ = tokenizer
    path = tmp_path_factory.mktemp("finetune") / ("data.jsonl" if as_json else "data.csv")
    if raw is not None:
        path.write_bytes(raw)
    elif as_json:
        path.write_text("\n".join(json.dumps(dict(zip(header, row))) for row in rows), encoding="utf-8")
    else:
        path.write_text("\n".join(",".join(r) for r in [header] + rows), encoding="utf-8")
    try:
        examples = encode_examples(str(path), task, tok, max_length=32, warn=lambda message: None)
        assert len(examples) > 0
    except MinRobertaError as exc:
        one_line(exc)
        assert str(path) in str(exc)


@pytest.mark.parametrize("args", [
    ["pretrain", "--corpus", "/nonexistent/corpus.txt", "--steps", "1"],
    ["pretrain", "--steps", "0"],
    ["pretrain", "--seq-len", "3"],
    ["fill-mask", "--model", "/nonexistent", "a <mask>"],
    ["embed", "--model", "/nonexistent", "text"],
    ["predict", "--model", "/nonexistent", "text"],
    ["finetune", "--model", "/nonexistent", "--task", "classify", "--train", "a.csv", "--eval", "b.csv"],
])
def test_the_cli_answers_bad_input_with_status_2_and_no_traceback(tmp_path, args):
    done = subprocess.run([sys.executable, "-m", "minroberta.cli", *args, *(
        ["--out", str(tmp_path / "out")] if args[0] in ("pretrain", "finetune") else [])],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
