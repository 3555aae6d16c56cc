"""Embedding and prediction over collections: sentence-transformers directories read as sentence-transformers
reads them, vectors equal to sentence-transformers' and to transformers' (RoBERTa and BERT), batches of one
length, results in input order streamed to .npy / JSON lines / standard output, and one-line errors."""

import io
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minroberta
from minroberta import collection, embed
from minroberta.cli import main
from minroberta.corpus import stdlib_documents
from minroberta.errors import MinRobertaError
from minroberta.tokenizer import Ids, Tokenizer, train_tokenizer
from tests.bert import minilm  # noqa: F401 (a fixture)
from tests.reference import relative_error, transformers_or_skip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def docstrings(count):
    return [" ".join(text.split()) for text in itertools.islice(stdlib_documents(), count)]


def texts_for_minilm():
    """Real text of every length: docstrings (some past 256 tokens), a blank line, accents, a lone word."""
    return docstrings(24) + ["", "Crème brûlée, naïve café.", "word", "A man is playing a guitar."]


# --- sentence-transformers directories ----------------------------------------------------------------------

def st_dir(tmp_path, modules, pooling=None, sbert=None):
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (tmp_path / "1_Pooling").mkdir(exist_ok=True)
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if sbert is not None:
        (tmp_path / "sentence_bert_config.json").write_text(json.dumps(sbert))
    return str(tmp_path)


TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def test_the_minilm_directory_says_mean_normalised_256(minilm):
    assert embed.sentence_setup(minilm) == embed.SentenceSetup(pooling=("mean",), normalize=True, max_length=256)


@pytest.mark.parametrize("pooling,expected", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ("cls",)),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, ("max", "mean")),   # the legacy order
    ({"pooling_mode_mean_tokens": False}, ("mean",)),                                         # none: mean
    ({"embedding_dimension": 8, "pooling_mode": ["mean", "cls"]}, ("mean", "cls")),           # the newer form
    ({"embedding_dimension": 8, "pooling_mode": "max"}, ("max",)),
])
def test_pooling_configs_are_read_as_sentence_transformers_reads_them(tmp_path, pooling, expected):
    directory = st_dir(tmp_path, [TRANSFORMER, POOLING], pooling, {"max_seq_length": 77})
    assert embed.sentence_setup(directory) == embed.SentenceSetup(pooling=expected, normalize=False, max_length=77)


def test_a_plain_model_directory_has_the_default_setup(tmp_path):
    assert embed.sentence_setup(str(tmp_path)) == embed.SentenceSetup(("mean",), False, None)


@pytest.mark.parametrize("modules,pooling,sbert,message", [
    ([TRANSFORMER, POOLING, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
     {"pooling_mode": "mean"}, None, "modules.json: module sentence_transformers.models.Dense is not supported"),
    ([TRANSFORMER, POOLING], {"pooling_mode_weightedmean_tokens": True}, None,
     "1_Pooling/config.json: pooling weightedmean is not supported"),
    ([TRANSFORMER, POOLING], {"pooling_mode": 3}, None, "1_Pooling/config.json: pooling_mode must be a name"),
    ([TRANSFORMER], None, {"max_seq_length": -4}, "sentence_bert_config.json: max_seq_length must be a positive"),
    ({"not": "a list"}, None, None, "modules.json: expected a list of modules"),
])
def test_what_minroberta_cannot_run_is_named(tmp_path, modules, pooling, sbert, message):
    with pytest.raises(MinRobertaError) as caught:
        embed.sentence_setup(st_dir(tmp_path, modules, pooling, sbert))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_damaged_pooling_file_is_named(tmp_path):
    directory = st_dir(tmp_path, [TRANSFORMER, POOLING], {"pooling_mode": "mean"})
    (tmp_path / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(MinRobertaError, match="1_Pooling/config.json: not valid JSON"):
        embed.sentence_setup(directory)


@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("max",), ("mean", "cls"), ("cls", "max", "mean")])
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_equals_sentence_transformers_modules(numpy_backend, modes, normalize):
    torch, _ = transformers_or_skip()
    st_modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules",
                                     reason="sentence-transformers is the reference for pooling")
    hidden = np.random.default_rng(0).standard_normal((3, 7, 8)).astype(np.float32)    # no padding
    features = {"token_embeddings": torch.tensor(hidden), "attention_mask": torch.ones(3, 7, dtype=torch.int64)}
    features = st_modules.Pooling(8, pooling_mode=modes)(features)
    if normalize:
        features = st_modules.Normalize()(features)
    expected = features["sentence_embedding"].numpy()
    assert np.abs(embed.pool(hidden, modes, normalize) - expected).max() <= 1e-6


# --- vectors against the references -------------------------------------------------------------------------

def test_embed_on_minilm_gives_sentence_transformers_vectors(minilm, tmp_path):
    """The command, texts from a file, the directory's own pooling, normalisation and 256 tokens."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is the reference for embeddings")
    from sentence_transformers import SentenceTransformer
    texts = texts_for_minilm()
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert max(len(Tokenizer.from_dir(minilm).encode(t).ids) for t in texts) > 256   # truncation is exercised
    out = tmp_path / "vectors.npy"
    assert main(["embed", "--model", minilm, "--file", str(tmp_path / "texts.txt"), "--output", str(out)]) == 0
    ours = np.load(out, allow_pickle=False)
    expected = SentenceTransformer(minilm, device="cpu").encode(texts, batch_size=32, normalize_embeddings=True)
    assert ours.shape == expected.shape == (len(texts), 384) and ours.dtype == np.float32
    cosine = (ours * expected).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999 and np.abs(ours - expected).max() <= 1e-5


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """A random RoBERTa encoder saved with a byte-level BPE trained here."""
    directory = tmp_path_factory.mktemp("roberta")
    tokenizer = train_tokenizer(docstrings(200), vocab_size=500)
    config = minroberta.Config(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=24, max_position_embeddings=66,
                               initializer_range=0.5)
    minroberta.save_pretrained(minroberta.Roberta(config, seed=4, head=None), str(directory), tokenizer=tokenizer)
    return str(directory)


@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("max", "mean")])
def test_roberta_embeddings_equal_a_padded_transformers_batch(roberta_dir, numpy_backend, modes):
    """Batches of one length (no padding, so RoBERTa's positions from pad + 1 on every row) against
    transformers on one padded batch, pooled over the real tokens in torch."""
    torch, transformers = transformers_or_skip()
    reference = transformers.RobertaModel.from_pretrained(roberta_dir, attn_implementation="eager").eval()
    tokenizer = Tokenizer.from_dir(roberta_dir)
    texts = docstrings(30)
    ids, mask = tokenizer.encode_batch(texts, max_length=64)
    with torch.no_grad():
        hidden = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    weights = torch.tensor(mask)[..., None].float()
    parts = {"cls": hidden[:, 0], "mean": (hidden * weights).sum(1) / weights.sum(1),
             "max": hidden.masked_fill(weights == 0, -1e9).max(1).values}
    expected = torch.cat([parts[m] for m in modes], dim=1).numpy()
    model = minroberta.load_pretrained(roberta_dir)
    got = embed.sentence_embeddings(model, tokenizer, texts, modes, max_length=64, max_tokens=200)
    assert got.shape == expected.shape and relative_error(got, expected) <= 1e-5


# --- word vectors -------------------------------------------------------------------------------------------

FOX = "The quick brown fox jumps over the lazy dog"
BANKS = "I sat on the bank of the river, then went to the bank to deposit my pay"


@pytest.fixture(scope="module")
def minilm_pair(minilm):
    return minroberta.load_pretrained(minilm), minroberta.load_tokenizer(minilm)


@pytest.fixture(scope="module")
def minilm_reference(minilm):
    """transformers' BertModel and tokenizer on the MiniLM folder."""
    torch, transformers = transformers_or_skip()
    return (transformers.BertModel.from_pretrained(minilm, attn_implementation="eager").eval(),
            transformers.AutoTokenizer.from_pretrained(minilm))


def word_vector_of(pair, text, word, occurrence=0):
    model, tokenizer = pair
    return embed.word_vector(model, tokenizer, text, word, occurrence)


@pytest.mark.parametrize("text,word,occurrence", [
    (FOX, "fox", 0),
    ("Unbelievably, the fox outran the hounds", "Unbelievably", 0),   # several WordPiece pieces
    (BANKS, "bank", 0),
    (BANKS, "bank", 1),
])
def test_a_word_vector_is_transformers_hidden_states_of_its_tokens_averaged(minilm_reference, minilm_pair,
                                                                            numpy_backend, text, word, occurrence):
    """transformers' own tokenizer finds the word's tokens by its offsets, BertModel gives their states."""
    torch, _ = transformers_or_skip()
    reference, reference_tokenizer = minilm_reference
    encoded = reference_tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    start = [i for i in range(len(text)) if text.startswith(word, i)][occurrence]
    pieces = [i for i, (s, e) in enumerate(encoded.pop("offset_mapping")[0].tolist())
              if start <= s < e <= start + len(word)]
    with torch.no_grad():
        expected = reference(**encoded).last_hidden_state[0, pieces].mean(0).numpy()         # (C,)
    got = word_vector_of(minilm_pair, text, word, occurrence)
    cosine = got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)
    assert got.shape == (384,) and cosine >= 0.99999 and np.abs(got - expected).max() <= 1e-4
    assert len(pieces) >= (3 if word == "Unbelievably" else 1)


def test_context_moves_the_fox(minilm_pair, numpy_backend):
    """The point of a contextual vector: the animal in two sentences is close, the news channel is not."""
    cosine = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    fox = word_vector_of(minilm_pair, FOX, "fox")
    animal = word_vector_of(minilm_pair, "A fox crept into the henhouse at night", "fox")
    news = word_vector_of(minilm_pair, "She watched the evening report on Fox News", "Fox")
    assert cosine(fox, animal) > cosine(fox, news) + 0.1


@pytest.mark.parametrize("text,word,occurrence,message", [
    (FOX, "", 0, "word_vector needs a word, got ''"),
    (FOX, "  ", 0, "word_vector needs a word"),
    (FOX, "he", 0, "'he' does not occur as a whole word in 'The quick brown fox"),   # inside "The"
    (FOX, "ox", 0, "'ox' does not occur as a whole word"),                            # inside "fox"
    (FOX, "cat", 0, "'cat' does not occur as a whole word"),
    (FOX, "fox", 1, "'fox' occurs 1 time in 'The quick brown fox jumps over the lazy dog'; occurrence 1 "
                    "(counted from 0) is not there"),
    (FOX, "fox", -1, "occurrence must be an index from 0, got -1"),
    ("word " * 600 + "fox", "fox", 0, "'fox' ends at token 601 of 'word word"),
    ("word " * 600 + "fox", "fox", 0, "past the model's 512 positions (special tokens included); cut the text"),
])
def test_a_word_that_is_not_there_is_a_one_line_error(minilm_pair, text, word, occurrence, message):
    with pytest.raises(MinRobertaError) as caught:
        word_vector_of(minilm_pair, text, word, occurrence)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_word_within_the_positions_of_a_long_text_is_read(minilm_pair):
    vector = word_vector_of(minilm_pair, "fox " + "word " * 600, "fox")
    assert vector.shape == (384,) and np.all(np.isfinite(vector))


def test_the_python_api_names_the_tokenizer_and_the_head_options(minilm, roberta_dir):
    assert minroberta.load_tokenizer(minilm).encode("fox").tokens == ["[CLS]", "fox", "[SEP]"]
    model = minroberta.load_pretrained(roberta_dir)
    assert model.with_head("classification", num_labels=2).params["classifier.out_proj.weight"].shape == (2, 16)
    with pytest.raises(MinRobertaError, match="config has no field 'labels'"):
        model.with_head("classification", labels=2)


# --- batches, order, streaming ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), max_size=60), max_tokens=st.integers(1, 100),
       max_rows=st.one_of(st.none(), st.integers(1, 5)))
def test_packs_hold_batches_of_one_length_and_every_text_once(lengths, max_tokens, max_rows):
    encodings = [Ids(list(range(n)), [0] * n) for n in lengths]
    seen = []
    for pack in collection.packed_batches(encodings, max_tokens, max_rows):
        assert pack
        for indices, ids, types in pack:
            assert ids.shape == types.shape == (len(indices), lengths[indices[0]])
            assert {lengths[i] for i in indices} == {ids.shape[1]}
            assert np.array_equal(ids, [encodings[i].ids for i in indices])
            seen += indices
        texts, tokens = sum(len(b[0]) for b in pack), sum(b[1].size for b in pack)
        assert texts == 1 or tokens <= max_tokens
        assert max_rows is None or texts <= max_rows
        assert len({b[1].shape[1] for b in pack}) == len(pack)   # one batch per length
    assert sorted(seen) == list(range(len(lengths)))
    assert [lengths[i] for i in seen] == sorted(lengths)          # shortest first, packs filled in order


def test_texts_are_read_a_chunk_at_a_time_and_answered_in_order(roberta_dir, tmp_path, monkeypatch):
    """With chunks of 3, the fourth line is read only after the first three are embedded; every row is the
    vector of its own line (blank lines included), as if embedded alone."""
    monkeypatch.setattr(collection, "CHUNK_TEXTS", 3)
    texts = docstrings(5) + ["", "short", docstrings(8)[7]]
    events, real_read, real_embed = [], collection.read_lines, embed.sentence_embeddings

    def read_lines(path):
        for line in real_read(path):
            events.append("read")
            yield line

    def sentence_embeddings(model, tokenizer, chunk, *args, **kwargs):
        events.append(f"embed {len(chunk)}")
        return real_embed(model, tokenizer, chunk, *args, **kwargs)
    monkeypatch.setattr(collection, "read_lines", read_lines)
    monkeypatch.setattr(embed, "sentence_embeddings", sentence_embeddings)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert main(["embed", "--model", roberta_dir, "--file", str(tmp_path / "texts.txt"), "--output", str(out)]) == 0
    assert events == ["read"] * 3 + ["embed 3"] + ["read"] * 3 + ["embed 3"] + ["read"] * 2 + ["embed 2"]
    model, tokenizer = minroberta.load_pretrained(roberta_dir), Tokenizer.from_dir(roberta_dir)
    alone = np.concatenate([real_embed(model, tokenizer, [text]) for text in texts])
    assert relative_error(np.load(out), alone) <= 1e-6


def test_json_lines_stdin_and_stdout_give_the_same_vectors(roberta_dir, tmp_path):
    texts = docstrings(7)
    source = "\n".join(texts) + "\n"
    run = lambda *args: subprocess.run([sys.executable, "-m", "minroberta.cli", "embed", "--model", roberta_dir,
                                        "--file", "-", *args], input=source, capture_output=True, text=True,
                                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    done = run("--output", str(tmp_path / "v.jsonl"))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == texts
    assert run("--output", str(tmp_path / "v.npy")).returncode == 0
    vectors = np.load(tmp_path / "v.npy")
    assert relative_error(np.array([r["vector"] for r in records]), vectors) <= 1e-7
    printed = run().stdout.splitlines()
    assert [line.split("\t")[0] for line in printed] == texts
    assert np.abs(np.array([[float(v) for v in line.split("\t")[1].split()] for line in printed]) - vectors).max() <= 6e-5


@pytest.mark.parametrize("rows", [0, 1, 1000])
def test_a_streamed_npy_file_reads_back_whole(tmp_path, rows):
    path = str(tmp_path / "rows.npy")
    data = np.random.default_rng(0).standard_normal((rows, 5)).astype(np.float32)
    with collection.results(path, 5, None, None) as write:
        for start in range(0, rows, 300):
            write([""] * len(data[start:start + 300]), data[start:start + 300])
    assert np.array_equal(np.load(path), data) and np.array_equal(np.load(path, mmap_mode="r"), data)


def test_a_run_that_fails_midway_leaves_no_output(tmp_path):
    path = tmp_path / "rows.npy"
    with pytest.raises(RuntimeError):
        with collection.results(str(path), 2, None, None) as write:
            write(["a"], np.ones((1, 2), np.float32))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_the_progress_line_says_texts_per_second():
    stream = io.StringIO()
    progress = collection.Progress("embed", stream=stream, delay=0.0, every=0.0)
    progress.add(10)
    progress.add(5)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("embed: 10 texts, ") and lines[-1].startswith("embed: 15 texts, ")
    assert all(line.endswith(" texts/s") for line in lines)


# --- prediction over a collection ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def roberta_classifier(roberta_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("classifier")
    model = minroberta.load_pretrained(roberta_dir).with_head(
        "classification", seed=2, extra={"id2label": {"0": "no", "1": "yes", "2": "maybe"}})
    minroberta.save_pretrained(model, str(directory), tokenizer=roberta_dir)
    return str(directory)


def test_predict_over_a_file_gives_transformers_probabilities_in_order(roberta_classifier, tmp_path, capsys):
    torch, transformers = transformers_or_skip()
    texts = docstrings(9)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", "--model", roberta_classifier, "--file", str(tmp_path / "texts.txt"), "--output",
                 str(tmp_path / "p.jsonl")]) == 0
    assert main(["predict", "--model", roberta_classifier, "--file", str(tmp_path / "texts.txt"), "--output",
                 str(tmp_path / "p.npy")]) == 0
    reference = transformers.RobertaForSequenceClassification.from_pretrained(
        roberta_classifier, attn_implementation="eager").eval()
    ids, mask = Tokenizer.from_dir(roberta_classifier).encode_batch(texts, max_length=64)   # the model's limit
    with torch.no_grad():
        expected = torch.softmax(reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits,
                                 -1).numpy()
    assert relative_error(np.load(tmp_path / "p.npy"), expected) <= 1e-5
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    names = ["no", "yes", "maybe"]
    assert [r["text"] for r in records] == texts
    assert [r["label"] for r in records] == [names[i] for i in expected.argmax(1)]
    assert relative_error([[r["probabilities"][n] for n in names] for r in records], expected) <= 1e-5
    capsys.readouterr()
    assert main(["predict", "--model", roberta_classifier, *texts[:2]]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == \
        [names[i] for i in expected[:2].argmax(1)]


@pytest.mark.parametrize("command", [["embed"], ["embed", "--pooling", "tokens"], ["predict"],
                                     ["predict", "--context", "short"]])
def test_embed_and_predict_say_when_they_cut_a_text(roberta_dir, roberta_classifier, tmp_path, capsys, command):
    long_text = " ".join(docstrings(40))                                              # far past 64 tokens
    model = roberta_classifier if command[0] == "predict" else roberta_dir
    if command[1:2] == ["--context"]:   # a QA model: the question and the context are cut together
        qa = minroberta.load_pretrained(roberta_dir).with_head("qa")
        model = str(tmp_path / "qa")
        minroberta.save_pretrained(qa, model, tokenizer=roberta_dir)
    assert main([command[0], "--model", model, *command[1:], "short text", long_text]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    what = "questions with the context" if "--context" in command else "texts"
    assert err == [f"warning: 1 of 2 {what} were longer than 64 tokens and were truncated"]


# --- one-line errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["embed"], "no texts to embed (give them as arguments or with --file)"),
    (["predict"], "no texts to predict"),
    (["embed", "--output", "v.csv", "a"], "--output v.csv: must end in .npy or .jsonl"),
    (["embed", "--pooling", "tokens", "--output", "v.csv", "a"], "--output v.csv: --pooling tokens saves named "
                                                                 "arrays, so it must end in .npz"),
    (["embed", "--max-length", "999", "a"], "--max-length 999 is outside the model's 1..64 positions"),
    (["embed", "--batch-tokens", "0", "a"], "--batch-tokens must be at least 1"),
    (["embed", "--file", "absent.txt"], "absent.txt: cannot read"),
    (["embed", "--file", "BAD"], ":2: invalid UTF-8"),
])
def test_bad_collection_arguments_are_one_line_errors(roberta_dir, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_bytes(b"fine\n\xff\xfe broken\n")
    command, rest = args[0], args[1:]
    assert main([command, "--model", roberta_dir, *rest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "v.csv").exists()


def test_output_into_a_closed_pipe_ends_quietly(roberta_dir, tmp_path):
    """`minroberta embed ... | head -1`: once the reader has gone, the command stops without an error."""
    texts = tmp_path / "many.txt"
    texts.write_text("".join(f"text number {i} of many\n" for i in range(400)))   # past a pipe's 64 KiB
    process = subprocess.Popen([sys.executable, "-m", "minroberta.cli", "embed", "--model", str(roberta_dir),
                                "--pooling", "tokens", "--file", str(texts)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err
