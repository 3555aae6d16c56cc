"""Inference over collections of texts: read them from files or standard input, run the model on packs of
batches of texts of one token length each (so no compute is spent on padding), and write the results in input
order as they come (.npy rows or JSON lines), with a progress line on long inputs.

Memory stays flat however many texts there are: texts are read, encoded and answered a chunk at a time.
"""

import contextlib
import itertools
import json
import sys
import threading
import time

import numpy as np

from . import atomic, backend, guards
from .engine import threads
from .errors import MinRobertaError

CHUNK_TEXTS = 4096      # texts read, sorted by length and answered together; the rest wait unread
MAX_TOKENS = 4096       # tokens per pack (texts x length), one pack per thread: bounds the activations
OUTPUT_KINDS = (".npy", ".jsonl")


# --- texts in

def read_lines(path):
    """The lines of a UTF-8 file, or of standard input for "-", without their line ends, one at a time.
    Every line is a text, blank ones too, so result row i answers line i + 1. A line is at most
    guards.LINE_LIMIT bytes (standard input may be /dev/zero)."""
    if path == "-" and sys.stdin is None:   # started with its standard input closed
        raise MinRobertaError("--file -: standard input is closed")
    stream = sys.stdin.buffer if path == "-" else _open(path)
    name = "standard input" if path == "-" else path
    try:
        for number, raw in enumerate(iter(lambda: stream.readline(guards.LINE_LIMIT + 1), b""), 1):
            if len(raw) > guards.LINE_LIMIT:
                raise MinRobertaError(f"{name}:{number}: a line longer than {guards.human_bytes(guards.LINE_LIMIT)}")
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
                yield text.removeprefix("\ufeff") if number == 1 else text   # an editor's byte-order mark
            except UnicodeDecodeError as exc:
                raise MinRobertaError(f"{name}:{number}: invalid UTF-8 at byte {exc.start} of the line") from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _open(path):
    return guards.open_regular(path, missing="cannot read (no such file)")   # streamed by lines: no size bound


def texts_from(arguments, path):
    """The texts of a command: those given as arguments, then the lines of `path` ("-": standard input)."""
    return itertools.chain(arguments, read_lines(path) if path else ())


def chunks(items, size=None):
    """Lists of up to `size` (default CHUNK_TEXTS) consecutive items."""
    size = size or CHUNK_TEXTS
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


# --- packs of batches of one length

def packed_batches(encodings, max_tokens=MAX_TOKENS, max_rows=None):
    """Cut encodings (tokenizer.Ids) into packs of at most max_tokens tokens (and max_rows texts), each a list of
    batches whose texts all have the same number of tokens: sorted by length, the texts fill a pack in order, a
    new batch where the length changes (a text longer than max_tokens goes alone). No position is padding, so
    no batch needs an attention mask. -> lists of (indices into encodings, input_ids (b, T),
    token_type_ids (b, T))."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    pack, tokens, texts = [], 0, 0
    for length, group in itertools.groupby(order, key=lambda i: len(encodings[i].ids)):
        group = list(group)
        while group:
            room = (max_tokens - tokens) // max(1, length)
            if max_rows:
                room = min(room, max_rows - texts)
            if room < 1 and pack:   # full: the rest of the group starts the next pack
                yield pack
                pack, tokens, texts = [], 0, 0
                continue
            take = max(1, room)   # 1 only for a text longer than max_tokens, alone in its pack
            indices, group = group[:take], group[take:]
            ids = np.array([encodings[i].ids for i in indices], dtype=np.int64).reshape(len(indices), length)
            types = np.array([encodings[i].type_ids for i in indices], dtype=np.int64).reshape(len(indices), length)
            pack.append((indices, ids, types))
            tokens, texts = tokens + ids.size, texts + len(indices)
    if pack:
        yield pack


def infer(model, encodings, head, width, max_tokens=MAX_TOKENS, max_rows=None, on_batch=None, hidden_only=False):
    """The model over packs of equal-length batches of `encodings` (Roberta.outputs runs a pack's tokens
    together), a pack per thread at a time; head(model output) gives each batch's rows (b, width) on the device
    (hidden_only: from the hidden states, the model's own head not run). -> (N, width) float32 host array in the
    order of `encodings`."""
    out = np.empty((len(encodings), width), dtype=np.float32)
    counting = threading.Lock()

    def answer(pack):
        outputs = model.outputs([(ids, types) for _, ids, types in pack], head=not hidden_only)
        for (indices, _, _), output in zip(pack, outputs):
            out[indices] = backend.to_host(head(output))
        if on_batch is not None:
            with counting:
                on_batch(sum(len(indices) for indices, _, _ in pack))
    threads.each(answer, packed_batches(encodings, max_tokens, max_rows))
    return out


# --- results out

@contextlib.contextmanager
def results(path, width, line, record):
    """Where a command's results go, in input order: a .npy of (N, width) float32 rows, JSON lines of
    record(text, row), or (no path) line(text, row) on standard output. A file is written into a temporary
    one beside it, renamed into place when every text is answered. Yields write(texts, rows)."""
    if path is None:
        def to_stdout(texts, rows):
            sys.stdout.write("".join(line(text, row) + "\n" for text, row in zip(texts, rows)))
            sys.stdout.flush()
        yield to_stdout
        return
    if not path.endswith(OUTPUT_KINDS):
        raise MinRobertaError(f"--output {path}: must end in {' or '.join(OUTPUT_KINDS)} (embed's --pooling tokens: "
                              ".npz)")
    with atomic.replacing(path) as handle:
        if path.endswith(".jsonl"):
            yield lambda texts, rows: handle.write("".join(
                json.dumps(record(text, row), ensure_ascii=False) + "\n" for text, row in zip(texts, rows)).encode())
            return
        count = 0
        handle.write(npy_header((0, width)))

        def to_npy(texts, rows):
            nonlocal count
            handle.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
            count += len(rows)
        yield to_npy
        handle.seek(0)
        handle.write(npy_header((count, width)))   # the same size: only the row count changes


def say_truncated(count, total, limit, what="texts"):
    """One warning line on standard error when `count` of `total` texts were cut to `limit` tokens (finetune's
    words for the same thing): a cut text is answered from its first part only."""
    if count:
        print(f"warning: {count} of {total} {what} were longer than {limit} tokens and were truncated",
              file=sys.stderr, flush=True)


NPY_HEADER_BYTES = 128   # magic, version, length and the header dict padded with spaces: a multiple of 64


def npy_header(shape, dtype="<f4"):
    """A .npy (format 1.0) header of a fixed size, so the final row count can be written over the first."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class Progress:
    """Texts done and texts/s on standard error, once a run has lasted `delay` seconds: rewritten in place on
    a terminal, a line every `every` seconds otherwise (logs)."""

    def __init__(self, what, stream=None, delay=2.0, every=10.0):
        self.what, self.stream, self.delay, self.every = what, stream or sys.stderr, delay, every
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.shown = False

    def add(self, count):
        self.done += count
        now = time.perf_counter()
        if now - self.start >= self.delay and now - self.last >= (0.5 if self.stream.isatty() else self.every):
            self._show(now)

    def finish(self):
        if self.shown:
            self._show(time.perf_counter())
            if self.stream.isatty():
                self.stream.write("\n")

    def _show(self, now):
        line = f"{self.what}: {self.done:,} texts, {self.done / max(now - self.start, 1e-9):,.1f} texts/s"
        self.stream.write("\r" + line.ljust(60) if self.stream.isatty() else line + "\n")
        self.stream.flush()
        self.shown, self.last = True, now
