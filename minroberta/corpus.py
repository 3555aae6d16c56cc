"""Where pretraining text comes from: the standard library's docstrings (built in) or the user's text files.

Documents stream one at a time from text files, JSON lines files and gzip files of either, read in pieces so
that memory does not grow with a file; any damage is an error naming the file and line. The train/validation
split is by document, decided by a hash of its text, so no text is on both sides.
"""

import ast
import glob
import gzip
import hashlib
import json
import os
import zlib
import re
import sysconfig

from . import guards
from .errors import MinRobertaError

MIN_DOCSTRING_CHARS = 40   # shorter ones are mostly "Return self." and the like: no sentences to learn from
SKIPPED_STDLIB_DIRS = {"idle_test", "__pycache__", "site-packages", "dist-packages"}   # and any "test*" folder
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")   # what a directory contributes; named files are read whatever
JSONL_SUFFIXES = (".jsonl", ".ndjson")             # JSON lines: one document a line, in its "text" field
GZIP_MAGIC = b"\x1f\x8b"                           # a gzip file is read through gzip whatever its name
READ_BYTES = 8 << 20                               # files stream in pieces of about this size
VALID_ONE_IN = 20   # about 5% of documents go to validation
SIDES = ("train", "valid")   # the split's two sides


# --- the built-in corpus

def stdlib_documents():
    """Every module, class and function docstring (at least MIN_DOCSTRING_CHARS long, indentation cleaned by
    inspect.cleandoc) of this Python's standard library, test folders and site-packages excluded, files in
    sorted order and docstrings in source order: real English prose present wherever Python is."""
    for _, text in stdlib_docstrings():
        yield text


def stdlib_docstrings():
    """(path relative to the standard library, docstring) pairs, in the order of stdlib_documents."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIPPED_STDLIB_DIRS and not d.startswith("test")]
        paths.extend(os.path.join(directory, f) for f in files if f.endswith(".py"))
    for path in sorted(paths):
        try:
            with open(path, "rb") as handle:
                tree = ast.parse(handle.read())   # bytes, so a coding cookie is honoured
        except (SyntaxError, ValueError, OSError):
            continue   # a few stdlib files are templates or deliberately broken; they are not prose
        for text in _docstrings(tree):
            if len(text) >= MIN_DOCSTRING_CHARS:
                yield os.path.relpath(path, root), text


def _docstrings(node):
    """Docstrings of `node` and the definitions inside it, in source order. Only compound statements are
    entered: definitions hide in `if`, `try` and `with` blocks, never in expressions or simple statements,
    which ast.walk would visit too. (Parsing, not this walk, is most of the corpus's load time.)"""
    if isinstance(node, _DEFINITIONS):
        text = ast.get_docstring(node, clean=True)
        if text:
            yield text
    for field in ("body", "handlers", "orelse", "finalbody", "cases"):
        for child in getattr(node, field, ()):
            if isinstance(child, _COMPOUND):
                yield from _docstrings(child)


_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_COMPOUND = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For, ast.AsyncFor, ast.While,
             ast.With, ast.AsyncWith, ast.Try, getattr(ast, "TryStar", ast.Try), ast.Match, ast.ExceptHandler,
             ast.match_case)


# --- the user's files

def read_documents(sources, on_bytes=None):
    """Stream the documents of `sources` (a path or a list of them). In a text file blank lines separate
    documents, so a file without blank lines is one document; in a JSON lines file (name ending in .jsonl or
    .ndjson, perhaps then .gz) each line is an object whose "text" field is one document. A gzip file (by its
    first bytes) is read through gzip. Each source is
      - a file: read whatever its name;
      - a directory: its files ending in TEXT_SUFFIXES or JSONL_SUFFIXES (or those plus .gz), recursively, in
        sorted order, hidden ones skipped;
      - otherwise a glob pattern (`**` recurses): the files it matches, in sorted order.
    All sources are checked before the first document is read, so a typo fails fast. Files are read in pieces
    of READ_BYTES, so memory does not grow with a file's size; `on_bytes(n)` is told each n bytes read from
    disk (for progress). Each file is read once, however many paths name it (links, a loop of them, a file
    given twice)."""
    yield from read_files(input_files(sources), on_bytes)


def read_files(paths, on_bytes=None):
    """Stream the documents of the files `paths`, as input_files gives them, in order: read_documents for a
    caller that has found the files already."""
    for path in paths:
        yield from _file_documents(path, on_bytes)


def input_files(sources, say=None):
    """The paths of the files that `sources` (as for read_documents) name, in reading order, each file once;
    `say` hears how many paths were dropped as repeats."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    named = [path for source in sources for path in _expand(os.fspath(source))]
    paths = guards.unique_files(named)
    if say is not None and len(paths) < len(named):
        say(f"{len(named) - len(paths)} of {len(named)} corpus paths name a file already read (a link or a repeat); "
            "each file is read once")
    return paths


def _ends_in(name, suffixes):
    """Whether `name` ends in one of `suffixes`, in any case, perhaps followed by .gz."""
    return name.lower().removesuffix(".gz").endswith(suffixes)


def _expand(source):
    """A file, a directory or a glob pattern -> the paths of the files it names."""
    if os.path.isfile(source):
        return [source]
    if os.path.isdir(source):
        found, readable = [], TEXT_SUFFIXES + JSONL_SUFFIXES
        for directory, subdirs, files in os.walk(source, onerror=guards.walk_error):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            found.extend(os.path.join(directory, f) for f in files if _ends_in(f, readable) and not f.startswith("."))
        if not found:
            raise MinRobertaError(f"{source}: directory holds no text files ({' '.join(readable)}, or those .gz)")
        return sorted(found)
    if os.path.lexists(source):   # neither a file nor a folder: a FIFO, a device, a broken link
        guards.require_regular(source)
    matches = sorted(p for p in glob.glob(source, recursive=True) if not os.path.isdir(p))
    if not matches:
        raise MinRobertaError(f"{source}: no such file or directory, and no file matches it as a glob pattern")
    return matches


def _file_documents(path, on_bytes=None):
    pieces = _pieces(path, on_bytes)
    if _ends_in(path, JSONL_SUFFIXES):
        return _jsonl_documents(path, pieces)
    return _text_documents(path, pieces)


def _pieces(path, on_bytes):
    """(byte offset, bytes) pieces of a file's contents (uncompressed, for gzip), each ending at a newline
    (the last perhaps not), so no piece cuts a UTF-8 character or a line."""
    handle = guards.open_regular(path)   # a FIFO or a device in a corpus folder is named, never read
    with handle:
        compressed = handle.read(2) == GZIP_MAGIC
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle) if compressed else handle
        offset, rest, reported = 0, b"", 0
        while True:
            try:
                data = stream.read(READ_BYTES)
            except (OSError, EOFError, zlib.error) as exc:
                if not compressed:
                    raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
                raise MinRobertaError(f"{path}: damaged gzip data after {offset + len(rest):,} uncompressed "
                                      f"bytes ({exc})") from None
            if on_bytes is not None:
                position = handle.tell()
                on_bytes(position - reported)
                reported = position
            if not data:
                if rest:
                    yield offset, rest
                return
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:   # no line end yet: read on, up to a bound (a file of one giant line is not text)
                if len(data) > guards.LINE_LIMIT:
                    raise MinRobertaError(f"{path}: no line break in {guards.human_bytes(len(data))} from byte "
                                          f"{offset:,}; a corpus is text, read a line at a time (lines of at most "
                                          f"{guards.human_bytes(guards.LINE_LIMIT)})")
                rest = data
                continue
            yield offset, data[:cut]
            offset, rest = offset + cut, data[cut:]


def _decoded(path, offset, raw, line):
    """A piece's text; damage is an error naming the file, byte and line (`line`: the piece's first)."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise MinRobertaError(f"{path}: binary file (NUL byte at byte {offset + nul}, line "
                              f"{line + raw.count(NEWLINE, 0, nul)}), not UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: invalid UTF-8 at byte {offset + exc.start}, line "
                              f"{line + raw.count(NEWLINE, 0, exc.start)} (corpus files must be UTF-8 text)") from None
    if offset == 0:
        text = text.removeprefix("\ufeff")   # an editor's byte order mark
    return _unix_line_ends(text)


def _unix_line_ends(text):
    """`text` with DOS (CR LF) and old Mac (CR) line ends made LF, as every other step expects."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


NEWLINE = b"\n"
_BLANK_LINE = re.compile(r"\n[ \t\f\v]*\n")


def _text_documents(path, pieces):
    """Blank-line separated documents. The text after a piece's last blank line may go on in the next
    piece, so it is carried over."""
    carry, line = "", 1
    for offset, raw in pieces:
        blocks = _BLANK_LINE.split(carry + _decoded(path, offset, raw, line))
        line += raw.count(b"\n")
        carry = blocks.pop()
        for block in blocks:
            block = block.strip()
            if block:
                yield block
    carry = carry.strip()
    if carry:
        yield carry


def _jsonl_documents(path, pieces):
    """One document per line: the "text" field of the JSON object on it (blank lines skipped)."""
    number = 0
    for offset, raw in pieces:
        lines = _decoded(path, offset, raw, number + 1).split("\n")
        if lines[-1] == "":   # the piece ended with a newline
            lines.pop()
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise MinRobertaError(f"{path}: line {number} is not JSON ({getattr(exc, 'msg', exc)})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise MinRobertaError(f'{path}: line {number} has no "text" string (JSON lines corpora hold one '
                                      'object a line, its "text" field a document)')
            text = _unix_line_ends(text).strip()
            if text:
                yield text


def require_nonempty(documents, source):
    """`documents` (a list) unchanged, or an error naming `source` when it holds no text at all."""
    if not documents:
        raise MinRobertaError(f"{source}: the corpus is empty (no non-blank text)")
    return documents


# --- sentences

_SENTENCE_BREAK = re.compile(r"""
      (?:(?<=[.!?])|(?<=[.!?]["')\]]))        # after an end mark, perhaps closing a quote or bracket,
      (?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)    # (not an abbreviation that docstrings use mid-sentence)
      \s+(?=["'(`]?[A-Z0-9])                   # space, then what can start a sentence
    | \n[ \t]*\n\s*                            # a blank line
    | \n(?=[ \t]*[-*][ \t])                    # a bulleted list item
    """, re.VERBOSE)


def split_sentences(document):
    """The sentences of a document, for FULL-SENTENCES packing. A sentence ends at `.`, `!` or `?` (perhaps
    followed by a closing quote or bracket) when whitespace and a capital, digit or opening quote/bracket
    follow; blank lines and bulleted list items also start a new one. Runs of whitespace inside a sentence
    (docstrings wrap lines) become one space. Good enough for docstrings and ordinary prose; "Dr. Who" splits."""
    pieces = (" ".join(piece.split()) for piece in _SENTENCE_BREAK.split(document))
    return [piece for piece in pieces if piece]


# --- train / validation

def is_validation(document):
    """A document's side of the split, fixed by its text alone (stable across runs, corpus orders and
    machines); identical documents always land on the same side."""
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VALID_ONE_IN == 0


def split_stream(documents):
    """(side, document) pairs in corpus order, each document on its is_validation side. With two or more
    documents neither side is left empty: the last document of the other side moves over when the hash sent
    none to one. So each side's last document is held back one step, until the end shows whether it moves."""
    held, count = {}, {side: 0 for side in SIDES}
    for document in documents:
        side = "valid" if is_validation(document) else "train"
        if side in held:
            yield side, held[side]
        held[side] = document
        count[side] += 1
    if count["train"] + count["valid"] >= 2:
        for side, other in (("valid", "train"), ("train", "valid")):
            if count[side] == 0:
                held[side] = held.pop(other)
    for side in SIDES:
        if side in held:
            yield side, held[side]


def train_valid_split(documents):
    """-> (train, valid) lists of the documents, in their original order: split_stream's sides, so each
    document goes to one side only (about 1 in VALID_ONE_IN to validation), and neither side is left empty
    from two documents on."""
    sides = {side: [] for side in SIDES}
    for side, document in split_stream(documents):
        sides[side].append(document)
    return sides["train"], sides["valid"]
