"""Prepared pretraining data: a corpus read, tokenized and packed once into flat token files, which every later
run (a second run, a --resume, every MPI rank) reads in place instead of doing it all again.

A prepared directory holds
    prepared.json        what it was made from (corpus files by size and mtime, tokenizer, --seq-len) and counts
    tokenizer.json       the tokenizer the ids belong to
    train.tokens         every packed training sample back to back: uint16 while the vocabulary fits, else uint32
    train.index          int64 sample boundaries: sample i is tokens[index[i]:index[i + 1]]
    valid.tokens, valid.index   the same for validation
    valid-sample.jsonl   the first validation documents, for the held-out probes at the end of a run
Both kinds of file are headerless arrays, so `np.memmap(path, dtype)` opens them.
"""

import concurrent.futures
import hashlib
import itertools
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time

import numpy as np

from . import atomic, corpus
from .errors import MinRobertaError

FORMAT = 1                      # bump when the files' layout changes: older directories are prepared again
MANIFEST = "prepared.json"
SIDES = corpus.SIDES            # each side has its own files, named after it
CHUNK_BYTES = 2 << 20           # text per tokenizer call: bounded memory, and the next chunk's Python work overlaps it
TOKENIZER_SAMPLE_BYTES = 32 << 20   # at most this much training text teaches a new tokenizer its merges
PROBE_TEXT_BYTES = 1 << 20      # validation text kept for the held-out probes


# --- reading prepared samples

class TokenSamples:
    """One side's packed samples, read from its files on demand: len() and [i] -> 1-D int32 array.

    Each sample is fetched with two pread calls rather than through a memory map: a mapping's touched pages count
    toward this process's resident memory (and the kernel maps 64 KiB around each touch), so random reads over a
    large file would grow it toward the file's size. Read this way the file stays in the shared page cache alone."""

    def __init__(self, directory, side, dtype):
        self.dtype = np.dtype(dtype)
        self.tokens_path, self.index_path = (os.path.join(directory, f"{side}.{kind}") for kind in ("tokens", "index"))
        self._tokens = os.open(self.tokens_path, os.O_RDONLY)
        self._index = os.open(self.index_path, os.O_RDONLY)
        self.count = os.fstat(self._index).st_size // 8 - 1

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(f"sample {i} of {self.count}")
        start, end = np.frombuffer(os.pread(self._index, 16, 8 * i), dtype=np.int64)
        size = self.dtype.itemsize
        data = os.pread(self._tokens, int(end - start) * size, int(start) * size)
        return np.frombuffer(data, dtype=self.dtype).astype(np.int32)

    def memmaps(self):
        """(tokens, index) as read-only memory maps: the whole side as arrays, for a reader or a test."""
        return np.memmap(self.tokens_path, self.dtype, "r"), np.memmap(self.index_path, np.int64, "r")

    def __del__(self):
        for fd in (getattr(self, "_tokens", None), getattr(self, "_index", None)):
            if fd is not None:
                os.close(fd)


class Prepared:
    """An opened prepared directory: `train` and `valid` TokenSamples, the tokenizer and the manifest.
    `manifest`: the directory's, when the caller has read it already (read_manifest), so it is not read twice."""

    def __init__(self, directory, manifest=None):
        from .tokenizer import Tokenizer
        self.directory = directory
        self.manifest = manifest if manifest is not None else read_manifest(directory)
        if self.manifest is None:
            raise MinRobertaError(f"{directory}: holds no prepared data ({MANIFEST} missing or damaged)")
        self.tokenizer = Tokenizer.from_dir(os.path.join(directory, "tokenizer.json"))
        self.train, self.valid = (TokenSamples(directory, side, self.manifest["dtype"]) for side in SIDES)
        for side, samples in zip(SIDES, (self.train, self.valid)):
            if len(samples) != self.manifest["samples"][side]:
                raise MinRobertaError(f"{samples.index_path}: {len(samples)} samples, {MANIFEST} says "
                                      f"{self.manifest['samples'][side]}; prepare again")

    def probe_documents(self):
        """The validation documents kept for the held-out probes."""
        with open(os.path.join(self.directory, "valid-sample.jsonl"), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]


def read_manifest(directory):
    """The directory's prepared.json, or None when it has none (or one of another format)."""
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


# --- deciding whether prepared data can be reused

def corpus_identity(paths):
    """What the corpus is, cheaply: each file's path, size and modification time (nanoseconds) for the files
    `paths` (corpus.input_files' list), or for the built-in corpus (None) this Python's version and standard
    library. Size and mtime, not a hash of the contents: a hash would read the whole corpus on every start;
    any write through the file system changes the mtime."""
    if paths is None:
        return {"builtin": "stdlib docstrings", "python": sys.version, "stdlib": sysconfig.get_paths()["stdlib"]}
    files = []
    for path in paths:
        stat = os.stat(path)
        files.append({"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {"files": files}


def tokenizer_hash(tokenizer):
    return hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def why_stale(manifest, identity, seq_len, tokenizer=None, vocab_size=None):
    """Why a prepared directory does not fit this run, in a few words; None when it fits. `tokenizer`: the one
    the run must use (given, or a checkpoint's); else `vocab_size`, for the one preparation trains."""
    if manifest is None:
        return "nothing prepared yet"
    if manifest["corpus"] != identity:
        old = {f["path"]: f for f in manifest["corpus"].get("files", [])}
        for f in identity.get("files", []):
            if f["path"] in old and old[f["path"]] != f:
                return f"{f['path']} changed (size or modification time)"
        return "the corpus files are not the same"
    if manifest["seq_len"] != seq_len:
        return f"prepared for --seq-len {manifest['seq_len']}, not {seq_len}"
    if tokenizer is not None:
        if manifest["tokenizer_sha256"] != tokenizer_hash(tokenizer):
            return "prepared with another tokenizer"
    elif manifest["trained_vocab_size"] != vocab_size:
        return f"its tokenizer has a vocabulary of {manifest['trained_vocab_size']}, not {vocab_size}"
    return None


# --- progress

class PrepareProgress:
    """One line, rewritten in place on a terminal: bytes (or documents) done, MB/s and ETA. Quiet otherwise, as
    the trainer's step line is between its records."""

    def __init__(self, label, total_bytes=None, stream=None, every=0.5):
        self.label, self.total, self.every = label, total_bytes, every
        self.stream = stream or sys.stderr   # the one in place now, not the one at import
        self.interactive = self.stream.isatty()
        self.done = self.documents = 0
        self.started = self.shown = time.time()

    def add(self, read_bytes=0, documents=0):
        self.done += read_bytes
        self.documents += documents
        if self.interactive and time.time() - self.shown >= self.every:
            self.show()

    def show(self, end=""):
        self.shown = time.time()
        rate = self.done / max(self.shown - self.started, 1e-9) / 1e6
        line = f"{self.label}: {self.done / 1e6:,.1f} MB"
        if self.total:
            left = max(self.total - self.done, 0) / 1e6 / max(rate, 1e-9)
            line += (f" of {self.total / 1e6:,.1f} ({100 * self.done / self.total:.0f}%), {rate:.1f} MB/s, "
                     f"ETA {int(left // 60)}m{int(left % 60):02d}s")
        else:
            line += f", {rate:.1f} MB/s"
        line += f", {self.documents:,} documents"
        self.stream.write("\r" + line.ljust(79) + end)
        self.stream.flush()

    def close(self):
        if self.interactive:
            self.show(end="\n")


# --- preparing

def tokenizer_sample(documents, total_bytes, budget=TOKENIZER_SAMPLE_BYTES):
    """The training documents a new tokenizer learns from: all of them when the corpus holds no more than
    `budget` bytes; else every k-th (k = corpus bytes / budget, so the sample spans the corpus), at most `budget`
    bytes of them. -> (sample, {side: documents}) where the counts are whole only when the sample is."""
    stride = max(1, -(-total_bytes // budget)) if total_bytes else 1
    sample, size, count = [], 0, {side: 0 for side in SIDES}
    if stride == 1:
        for side, document in corpus.split_stream(documents):
            count[side] += 1
            if side == "train" and size < budget:
                sample.append(document)
                size += len(document)
        return sample, count
    for n, document in enumerate(documents):
        if n % stride == 0 and not corpus.is_validation(document):
            sample.append(document)
            size += len(document)
            if size >= budget:
                break
    return sample, None


def chunk_sentences(documents):
    """The sentences of a chunk's documents as data.sentence_texts gives them, and for each whether it opens
    its document."""
    from .data import sentence_texts   # here, not at the top: data brings in the model's operations
    texts, opens = [], []
    for document in documents:
        sentences = sentence_texts(document)
        texts.extend(sentences)
        opens.extend(i == 0 for i in range(len(sentences)))
    return texts, opens


class Packer:
    """data.pack_full_sentences over a stream of tokenized chunks, giving the same samples, with the token work
    done by NumPy: the greedy loop runs over sentence lengths only and says where <s> and </s> go into the
    chunk's token stream; np.insert puts them there. The sample still open at a chunk's end is carried over."""

    def __init__(self, block_size, bos_id, eos_id):
        self.room = block_size - 2   # tokens between <s> and </s>
        if self.room < 1:
            raise MinRobertaError(f"block_size {block_size} leaves no room between <s> and </s>")
        self.bos, self.eos = bos_id, eos_id
        self.body = 0                 # tokens in the open sample after its <s>
        self.new_document = False     # the next piece opens a document (a </s> goes before it in a sample)
        self.carry = np.array([bos_id], dtype=np.int64)   # the open sample's tokens so far

    def add(self, ids, opens):
        """ids: per sentence, its token ids; opens: per sentence, whether it opens a document.
        -> (tokens, lengths) of the samples finished: tokens back to back (1-D int64), lengths (1-D int64)."""
        lengths = [len(x) for x in ids]
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(lengths))
        at, what, starts = [], [], []   # insert what[k] before flat[at[k]]; starts: k of each new sample's <s>
        room, body, new_document, p = self.room, self.body, self.new_document, 0
        eos, bos = self.eos, self.bos
        for length, opening in zip(lengths, opens):
            new_document = new_document or opening
            while length:   # the sentence's pieces: `room` tokens each, the rest last
                piece = min(length, room)
                separator = new_document and body > 0
                if body + separator + piece > room:   # close the sample; its end separates the documents
                    at += (p, p)
                    what += (eos, bos)
                    starts.append(len(at) - 1)
                    body, separator = 0, False
                elif separator:
                    at.append(p)
                    what.append(eos)
                body += separator + piece
                p, length, new_document = p + piece, length - piece, False
        self.body, self.new_document = body, new_document
        stream = np.concatenate([self.carry, np.insert(flat, at, what)])
        bounds = [0] + [len(self.carry) + at[k] + k for k in starts]   # where each sample starts in stream
        self.carry = stream[bounds[-1]:]
        return stream[:bounds[-1]], np.diff(bounds)

    def finish(self):
        """(tokens, lengths) of the last sample, if it holds any tokens."""
        if not self.body:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        last = np.append(self.carry, self.eos)
        return last, np.array([len(last)])


class SampleWriter:
    """Appends packed samples to one side's .tokens and .index files."""

    def __init__(self, directory, side, dtype):
        self.dtype = dtype
        self.tokens = open(os.path.join(directory, f"{side}.tokens"), "wb")
        self.index = open(os.path.join(directory, f"{side}.index"), "wb")
        self.index.write(np.zeros(1, np.int64).tobytes())
        self.end, self.samples, self.documents = 0, 0, 0

    def write(self, tokens, lengths):
        self.tokens.write(tokens.astype(self.dtype).tobytes())
        self.index.write((self.end + np.cumsum(lengths, dtype=np.int64)).tobytes())
        self.end += len(tokens)
        self.samples += len(lengths)

    def close(self):
        for handle in (self.tokens, self.index):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def token_dtype(vocab_size):
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def prepare(sources, directory, seq_len, tokenizer=None, vocab_size=None, say=print, source_name=None,
            progress_stream=None, paths=None):
    """Read, split, tokenize and pack `sources` (None: the built-in corpus) into `directory`, replacing what is
    there as a whole (written beside it, then renamed). `tokenizer`: the one to use; else one of `vocab_size`
    is trained on tokenizer_sample. `paths`: corpus.input_files(sources), when the caller has found them
    already, so that a big corpus folder is walked once. -> the opened Prepared."""
    from .tokenizer import train_tokenizer
    if os.path.isdir(directory) and os.listdir(directory) and not os.path.exists(os.path.join(directory, MANIFEST)):
        raise MinRobertaError(f"{directory}: not prepared data, and not empty; give another directory to prepare into")
    source_name = source_name or ("the standard library's docstrings" if not sources else ", ".join(sources))
    if not sources:
        paths = None   # the built-in corpus
    elif paths is None:
        paths = corpus.input_files(sources)
    identity = corpus_identity(paths)
    total = sum(f["size"] for f in identity.get("files", [])) or None
    builtin = list(corpus.stdlib_documents()) if not sources else None

    def documents(progress=None):
        if builtin is not None:
            return iter(builtin)
        return corpus.read_files(paths, on_bytes=progress.add if progress else None)

    def too_little(count):
        if count["train"] + count["valid"] == 0:
            raise MinRobertaError(f"{source_name}: the corpus is empty (no non-blank text)")
        if not count["train"] or not count["valid"]:   # found now, not at the first evaluation
            raise MinRobertaError(
                f"{source_name}: too little text for a run (training gets {count['train']} document"
                f"{'s' * (count['train'] != 1)}, validation {count['valid']}); give it more documents (blank lines "
                "separate them)")

    trained_vocab = None
    if tokenizer is None:
        progress = PrepareProgress("reading a sample for the tokenizer", total, progress_stream)
        sample, count = tokenizer_sample(documents(progress), total or 0)
        progress.close()
        if count is not None:
            too_little(count)
        size = sum(map(len, sample))
        say(f"training a byte-level BPE tokenizer, vocabulary {vocab_size}, on {size / 1e6:.1f} MB of the training "
            "text" + ("" if count is not None else f" (one document in {max(1, -(-total // TOKENIZER_SAMPLE_BYTES))})"))
        tokenizer, trained_vocab = train_tokenizer(sample, vocab_size=vocab_size), vocab_size
        del sample

    parent = os.path.dirname(os.path.abspath(directory))
    made_parent = not os.path.isdir(parent)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(dir=parent, prefix=f".partial-{os.path.basename(os.path.abspath(directory))}-")
    os.chmod(partial, 0o777 & ~atomic._UMASK)   # mkdtemp's is private; the result should be like any new folder
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        started = time.time()
        progress = PrepareProgress("preparing", total, progress_stream)
        counts = _tokenize_and_pack(documents(progress), tokenizer, seq_len, partial, dtype, progress)
        progress.close()
        too_little(counts["documents"])
        atomic.write_text(os.path.join(partial, "tokenizer.json"), tokenizer.to_json())
        manifest = {"format": FORMAT, "corpus": identity, "sources": sources or None, "seq_len": seq_len,
                    "dtype": dtype, "vocab_size": tokenizer.vocab_size, "tokenizer_sha256": tokenizer_hash(tokenizer),
                    "trained_vocab_size": trained_vocab, **counts, "seconds": round(time.time() - started, 3)}
        atomic.write_json(os.path.join(partial, MANIFEST), manifest)
        atomic.sync_directory(partial)
        if os.path.exists(directory):
            atomic.remove_tree(directory)
        os.replace(partial, directory)
        atomic.sync_directory(parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if made_parent:
            shutil.rmtree(parent, ignore_errors=True)
        raise
    return Prepared(directory)


def _tokenize_and_pack(documents, tokenizer, seq_len, directory, dtype, progress):
    """The preparing pass: documents go to their side, in chunks of about CHUNK_BYTES; a chunk's sentences are
    encoded on a second thread (the tokenizer's batch encoder runs on every core, without the GIL) while this
    one splits the next chunk and packs the previous one. -> the counts for the manifest."""
    packers = {side: Packer(seq_len, tokenizer.bos_id, tokenizer.eos_id) for side in SIDES}
    writers = {side: SampleWriter(directory, side, dtype) for side in SIDES}
    buffered, sizes = {side: [] for side in SIDES}, {side: 0 for side in SIDES}
    probes, probe_bytes = [], 0

    def chunks():
        nonlocal probe_bytes
        for side, document in corpus.split_stream(documents):
            writers[side].documents += 1
            progress.add(documents=1)
            if side == "valid" and probe_bytes < PROBE_TEXT_BYTES:
                probes.append(document)
                probe_bytes += len(document)
            buffered[side].append(document)
            sizes[side] += len(document)
            if sizes[side] >= CHUNK_BYTES:
                yield side, buffered[side]
                buffered[side], sizes[side] = [], 0
        for side in SIDES:
            if buffered[side]:
                yield side, buffered[side]

    def pack(side, encoded, opens):
        writers[side].write(*packers[side].add(encoded.result(), opens))

    with concurrent.futures.ThreadPoolExecutor(1) as encoder:
        waiting = None
        for side, chunk in chunks():
            texts, opens = chunk_sentences(chunk)
            submitted = (side, encoder.submit(tokenizer.encode_plain_batch, texts), opens)
            if waiting is not None:
                pack(*waiting)
            waiting = submitted
        if waiting is not None:
            pack(*waiting)
    for side in SIDES:
        writers[side].write(*packers[side].finish())
        writers[side].close()
    with atomic.replacing(os.path.join(directory, "valid-sample.jsonl")) as handle:
        handle.write("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in probes).encode("utf-8"))
    return {"documents": {side: writers[side].documents for side in SIDES},
            "samples": {side: writers[side].samples for side in SIDES},
            "tokens": {side: writers[side].end for side in SIDES}}


def ready(sources, directory, seq_len, tokenizer=None, vocab_size=None, say=print, source_name=None):
    """The prepared data of `sources` in `directory`: reused when it was made from the same files (size and
    mtime), tokenizer and seq_len, else prepared again (saying why in one line). -> Prepared."""
    manifest = read_manifest(directory)
    paths = corpus.input_files(sources, say) if sources else None   # `say` hears of paths dropped as repeats
    reason = why_stale(manifest, corpus_identity(paths), seq_len, tokenizer, vocab_size)
    if reason is None:
        say(f"using the data prepared in {directory}")
        return Prepared(directory, manifest)
    if manifest is not None:
        say(f"{directory}: {reason}; preparing again")
    return prepare(sources, directory, seq_len, tokenizer, vocab_size, say, source_name, paths=paths)


def ready_on_every_rank(world, sources, directory, seq_len, tokenizer=None, vocab_size=None, say=print,
                        source_name=None):
    """`ready` under MPI: one copy of the prepared data per machine, not per rank. Rank 0 readies it (training
    the tokenizer if one is needed) while the others wait; then the first rank of each other machine readies
    its own copy with rank 0's tokenizer (finding rank 0's, and reusing it, when the machines share the
    directory); then every rank opens the same files. An error on a preparing rank stops every rank with it."""
    if world.size == 1:
        return ready(sources, directory, seq_len, tokenizer, vocab_size, say, source_name)
    from .tokenizer import Tokenizer
    node = world.comm.Split_type(world.MPI.COMM_TYPE_SHARED)   # the ranks of this machine
    first_on_node = node.Get_rank() == 0
    node.Free()
    with _patient(world):   # preparing may take far longer than a collective's usual timeout
        made, error = None, ""
        if world.is_main:
            try:
                made = ready(sources, directory, seq_len, tokenizer, vocab_size, say, source_name)
            except MinRobertaError as exc:
                error = str(exc)
        _raise_if_any(world.broadcast_bytes(error.encode("utf-8")))
        shared = world.broadcast_bytes(made.tokenizer.to_json().encode("utf-8") if made else b"").decode("utf-8")
        if first_on_node and not world.is_main:
            try:
                made = ready(sources, directory, seq_len, Tokenizer.from_json(shared), vocab_size, lambda text: None,
                             source_name)
            except MinRobertaError as exc:
                error = str(exc)
        failed = world.allreduce_scalars([1.0 if error else 0.0])[0]
        if failed:
            raise MinRobertaError(error or "preparing the data failed on another machine (see its error)")
    return made or Prepared(directory)


def _raise_if_any(error):
    if error:
        raise MinRobertaError(error.decode("utf-8"))


class _patient:
    """Within the block, a collective waits without the world's timeout (the other ranks are busy preparing)."""

    def __init__(self, world):
        self.world = world

    def __enter__(self):
        self.timeout, self.world.timeout = self.world.timeout, float("inf")

    def __exit__(self, *exc):
        self.world.timeout = self.timeout
        return False


def pretraining_data(prepared, seed, mask_prob=0.15):
    """data.PretrainingData over the prepared samples, read in place."""
    from .data import PretrainingData
    tokenizer = prepared.tokenizer
    return PretrainingData(prepared.train, prepared.valid, pad_id=tokenizer.pad_id, mask_id=tokenizer.mask_id,
                           special_ids=tokenizer.special_ids, vocab_size=tokenizer.vocab_size, seed=seed,
                           mask_prob=mask_prob)
