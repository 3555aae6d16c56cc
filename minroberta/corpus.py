"""Where pretraining text comes from: the standard library's docstrings (built in) or the user's files.

Documents stream one at a time; files are read as UTF-8 and any damage is an error naming the file.
The train/validation split is by document, decided by a hash of its text, so no text leaks across it.
"""

import ast
import glob
import hashlib
import inspect
import os
import re
import sysconfig

from .errors import MinRobertaError

MIN_DOCSTRING_CHARS = 40
TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
VALID_ONE_IN = 20   # about 5% of documents go to validation


def stdlib_documents():
    """Every module, class and function docstring of this Python's standard library (test folders excluded),
    cleaned of indentation, in sorted file order: real English prose present wherever Python is."""
    for _, text in stdlib_docstrings():
        yield text


def stdlib_docstrings():
    """(path relative to the standard library, docstring) pairs, in the order of stdlib_documents."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in TEST_DIRS and not d.startswith("test"))
        paths.extend(os.path.join(directory, f) for f in sorted(files) if f.endswith(".py"))
    for path in sorted(paths):
        try:
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue   # a few stdlib files are templates or deliberately broken; they are not prose
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=True)
                if text and len(text) >= MIN_DOCSTRING_CHARS:
                    yield os.path.relpath(path, root), text


def _expand(source):
    """A file, a directory (its text files, recursively) or a glob pattern -> sorted file paths."""
    if os.path.isfile(source):
        return [source]
    if os.path.isdir(source):
        found = []
        for directory, subdirs, files in os.walk(source):
            subdirs.sort()
            found.extend(os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(TEXT_SUFFIXES))
        if not found:
            raise MinRobertaError(f"{source}: directory holds no text files ({', '.join(TEXT_SUFFIXES)})")
        return found
    matches = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    if not matches:
        raise MinRobertaError(f"{source}: no such file, directory or matching glob")
    return matches


def _file_documents(path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise MinRobertaError(f"{path}: binary file (NUL byte at offset {nul}), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = block.strip()
        if block:
            yield block


def read_documents(sources):
    """Stream the documents of text files, directories and globs: blank lines separate documents."""
    if isinstance(sources, str):
        sources = [sources]
    for source in sources:
        for path in _expand(source):
            yield from _file_documents(path)


def require_nonempty(documents, source):
    if not documents:
        raise MinRobertaError(f"{source}: the corpus is empty (no non-blank text)")


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])|\n(?=\s*[-*]\s)|\n{2,}")


def split_sentences(document):
    """Sentences: a break after . ! or ? followed by space and a capital (or quote/bracket), at list items,
    and at blank lines. Good enough for docstrings; line breaks inside a sentence become spaces."""
    pieces = (" ".join(p.split()) for p in _SENTENCE_END.split(document))
    return [p for p in pieces if p]


def is_validation(document):
    """A document's side of the split, fixed by its text alone (stable across runs and corpus orderings)."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VALID_ONE_IN == 0


def train_valid_split(documents):
    """-> (train, valid) lists of documents; a document goes to one side only. With two or more documents,
    neither side is left empty (the last document moves over if the hash sent none to it)."""
    train, valid = [], []
    for document in documents:
        (valid if is_validation(document) else train).append(document)
    if len(train) + len(valid) >= 2:
        if not valid:
            valid.append(train.pop())
        elif not train:
            train.append(valid.pop())
    return train, valid
