"""The corpus: the built-in stdlib docstrings, the user's files (and every way they can be wrong), sentence
splitting and the train/validation split."""

import inspect
import itertools
import os

import pytest
from hypothesis import given, settings, strategies as st

from minroberta import corpus
from minroberta.corpus import read_documents, require_nonempty, split_sentences, train_valid_split
from minroberta.errors import MinRobertaError


@pytest.fixture(scope="module")
def stdlib():
    return list(corpus.stdlib_docstrings())


# --- the built-in corpus

def test_stdlib_docstrings_are_many_clean_and_from_no_test_folder(stdlib):
    assert len(stdlib) > 3000
    assert sum(len(text) for _, text in stdlib) > 500_000    # 1.75 MB on CPython 3.11
    for path, text in stdlib:
        folders = path.split(os.sep)[:-1]
        assert not any(f.startswith("test") or f in corpus.SKIPPED_STDLIB_DIRS for f in folders), path
        assert len(text) >= corpus.MIN_DOCSTRING_CHARS, path
    assert list(itertools.islice(corpus.stdlib_documents(), 50)) == [text for _, text in stdlib[:50]]
    import json
    module_docstring = next(text for path, text in stdlib if path == os.path.join("json", "__init__.py"))
    assert module_docstring == inspect.cleandoc(json.__doc__)


def test_stdlib_order_is_deterministic(stdlib):
    paths = [path for path, _ in stdlib]
    assert paths == sorted(paths)     # files in sorted order, so a second run reads them the same way
    assert list(itertools.islice(corpus.stdlib_docstrings(), 1000)) == stdlib[:1000]


def test_docstrings_come_in_source_order_including_nested_blocks():
    import ast
    source = '''"""Module docstring, long enough to be kept in the corpus."""
if True:
    def inner():
        """A function defined inside an if block still counts."""
    try:
        pass
    except ImportError:
        class Fallback:
            """A class in an except handler counts too, and after the function."""
lambda: None
'''
    texts = list(corpus._docstrings(ast.parse(source)))
    assert [t.split()[0] for t in texts] == ["Module", "A", "A"] and "except handler" in texts[2]


# --- the user's files

def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return str(path)


def test_blank_lines_separate_documents(tmp_path):
    text = "First doc, line one.\nLine two.\n\n\n  \nSecond doc.\r\n\r\nThird\tdoc.\n \t \nFourth.\n"
    assert list(read_documents([write(tmp_path / "a.txt", text)])) == [
        "First doc, line one.\nLine two.", "Second doc.", "Third\tdoc.", "Fourth."]


def test_a_file_without_blank_lines_is_one_document_and_a_bom_is_dropped(tmp_path):
    path = write(tmp_path / "notes", "\ufeffone\ntwo\nthree")   # a named file is read whatever its suffix
    assert list(read_documents(path)) == ["one\ntwo\nthree"]


def test_directories_recurse_over_text_files_in_sorted_order(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a.md", "A")
    write(tmp_path / "sub" / "c.rst", "C")
    write(tmp_path / "sub" / "image.png", b"\x89PNG\x00")
    write(tmp_path / ".git" / "HEAD.txt", "hidden")
    write(tmp_path / ".hidden.txt", "hidden")
    assert list(read_documents([str(tmp_path)])) == ["A", "B", "C"]


def test_globs_and_several_sources(tmp_path):
    write(tmp_path / "x1.txt", "one")
    write(tmp_path / "x2.txt", "two\n\nthree")
    write(tmp_path / "deep" / "x3.txt", "four")
    write(tmp_path / "y.txt", "other")
    assert list(read_documents([str(tmp_path / "x*.txt")])) == ["one", "two", "three"]
    assert list(read_documents([str(tmp_path / "**" / "x*.txt"), str(tmp_path / "y.txt")])) == [
        "four", "one", "two", "three", "other"]


def assert_one_line_error(sources, *fragments):
    with pytest.raises(MinRobertaError) as caught:
        list(read_documents(sources))
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_invalid_utf8_names_the_file_and_byte(tmp_path):
    path = write(tmp_path / "bad.txt", b"fine text\n\xff broken")
    assert_one_line_error([path], path, "invalid UTF-8", "byte 10")


def test_binary_file_is_an_error(tmp_path):
    path = write(tmp_path / "data.txt", b"text\x00\x01\x02")
    assert_one_line_error([path], path, "binary")


def test_a_source_matching_nothing_is_an_error_before_any_reading(tmp_path):
    good = write(tmp_path / "good.txt", "text")
    missing = str(tmp_path / "nope" / "*.txt")
    documents = read_documents([good, missing])
    with pytest.raises(MinRobertaError, match="nope"):
        next(documents)        # the typo in the second source stops the run before the first is read


def test_a_directory_without_text_files_is_an_error(tmp_path):
    write(tmp_path / "pics" / "image.png", b"\x89PNG")
    assert_one_line_error([str(tmp_path / "pics")], str(tmp_path / "pics"), "no text files")


def test_an_empty_corpus_is_an_error(tmp_path):
    path = write(tmp_path / "empty.txt", "\n\n   \n")
    documents = list(read_documents([path]))
    assert documents == []
    with pytest.raises(MinRobertaError, match="empty.txt: the corpus is empty"):
        require_nonempty(documents, path)
    assert require_nonempty(["x"], path) == ["x"]


# --- sentences

def test_split_sentences_on_docstring_prose():
    document = ("Return the value, e.g. Foo bar. It may raise ValueError! Does it? Yes (sometimes).\n"
                "Wrapped lines\n    are joined.\n\nArgs:\n- first: the first.\n* second item")
    assert split_sentences(document) == [
        "Return the value, e.g. Foo bar.", "It may raise ValueError!", "Does it?", "Yes (sometimes).",
        "Wrapped lines are joined.", "Args:", "- first: the first.", "* second item"]
    assert split_sentences('He said "Stop." Then 3.5 seconds passed.') == ['He said "Stop."',
                                                                          "Then 3.5 seconds passed."]
    assert split_sentences("   \n\n ") == []


@given(st.text(st.sampled_from("ab .!?\n\t-*\"'(A"), max_size=60))
def test_splitting_loses_only_whitespace(document):
    sentences = split_sentences(document)
    assert " ".join(sentences) == " ".join(document.split())
    assert all(s and s == s.strip() for s in sentences)


# --- train / validation

def test_split_is_by_content_deterministic_and_disjoint(stdlib):
    documents = [text for _, text in stdlib[:2000]]
    train, valid = train_valid_split(documents)
    assert (train, valid) == train_valid_split(documents)
    assert sorted(train + valid) == sorted(documents)
    assert not set(train) & set(valid)
    assert 0.02 < len(valid) / len(documents) < 0.09          # 1 in 20 expected
    reversed_train, reversed_valid = train_valid_split(documents[::-1])
    assert set(reversed_valid) == set(valid)                  # a document's side does not depend on order


@settings(max_examples=50)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=6, unique=True))
def test_both_sides_are_nonempty_from_two_documents(documents):
    train, valid = train_valid_split(documents)
    assert train and valid and sorted(train + valid) == sorted(documents)


def test_a_single_document_goes_to_one_side():
    train, valid = train_valid_split(["only one"])
    assert len(train) + len(valid) == 1
