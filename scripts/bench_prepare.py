"""Preparation beside the tokenizer alone, and how soon a run on prepared data starts.

`raw DIR`: the throughput `minroberta prepare` reached on a corpus (its tokenize and pack pass, from
prepared.json), and raw `tokenizers` batch encoding of the same documents with the same tokenizer on the same
cores (encode_batch over chunks of prepared.CHUNK_BYTES, ids not read out; reading the files is not timed).
`ab DIR --mb N --rounds R`: the same two on the first N MB of the corpus, taking turns R times (a shared
machine's slow and fast minutes fall on both alike); raw is timed with and without reading the ids out, and
preparing is timed whole (reading, splitting, encoding, packing, writing).
`first-update ARGS`: runs `minroberta ARGS` in this process and exits when its first update is done, printing
the seconds from the start of the process.

    minroberta prepare --corpus big.txt --out /tmp/prep
    python scripts/bench_prepare.py raw /tmp/prep          # the corpus is the one prepared.json names
    python scripts/bench_prepare.py ab /tmp/prep --mb 16 --rounds 3
    python scripts/bench_prepare.py first-update pretrain --prepared /tmp/prep --out /tmp/run
"""

import time  # noqa: I001  (first: the clock of first-update starts here)
STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minroberta import corpus, prepared  # noqa: E402
from minroberta.tokenizer import Tokenizer  # noqa: E402


def first_update(argv):
    from minroberta import cli
    from minroberta.engine import trainer as train
    update = train.Trainer.train_step

    def timed(trainer):
        result = update(trainer)
        print(f"first update done {time.time() - STARTED:.2f} s after the start", file=sys.stderr, flush=True)
        os._exit(0)   # skip the rest of the run (and its worker processes' orderly shutdown)
        return result
    train.Trainer.train_step = timed
    sys.exit(cli.main(argv))


def chunks(documents):
    """`documents` in lists of about CHUNK_BYTES (prepare's chunk size), each as soon as it fills."""
    chunk, size = [], 0
    for document in documents:
        chunk.append(document)
        size += len(document)
        if size >= prepared.CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def raw_encoding(raw, documents, read_ids=True):
    """Seconds of encode_batch over chunks of about CHUNK_BYTES of `documents` (reading them is not timed), and
    those plus reading the ids out (when read_ids; else the ids are left alone and both figures are the same)."""
    encoding = reading = 0.0
    for chunk in chunks(documents):
        started = time.perf_counter()
        encodings = raw.encode_batch(chunk, add_special_tokens=False)
        if not read_ids:
            del encodings   # unread: freed before the clock stops, as a call's unused result is
        encoding += time.perf_counter() - started
        if read_ids:
            started = time.perf_counter()
            [e.ids for e in encodings]
            reading += time.perf_counter() - started
    return encoding, encoding + reading


def turns(args):
    import statistics
    import tempfile
    manifest = prepared.read_manifest(args.prepared)
    tokenizer = Tokenizer.from_dir(os.path.join(args.prepared, "tokenizer.json"))
    with open(manifest["sources"][0], "rb") as handle:
        head = handle.read(int(args.mb * 1e6))
    head = head[:head.rfind(b"\n") + 1]
    rows = []
    with tempfile.TemporaryDirectory() as scratch, open(os.devnull, "w") as devnull:
        path = os.path.join(scratch, "slice.txt")
        with open(path, "wb") as handle:
            handle.write(head)
        for _ in range(args.rounds):
            started = time.perf_counter()
            prepared.prepare([path], os.path.join(scratch, "prep"), manifest["seq_len"], tokenizer,
                             say=lambda text: None, progress_stream=devnull)
            prepare_s = time.perf_counter() - started
            documents = list(corpus.read_documents(path))   # read whole first, apart from the encoding
            encode_s, with_ids_s = raw_encoding(tokenizer.raw, documents)
            rows.append({"prepare_s": prepare_s, "raw_encode_s": encode_s, "raw_encode_ids_s": with_ids_s})
            print(json.dumps(rows[-1]), flush=True)
    mb = len(head) / 1e6
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    print(json.dumps({"mb": mb, **{k.replace("_s", "_mb_s"): mb / v for k, v in median.items()},
                      "ratio_to_encode": median["raw_encode_s"] / median["prepare_s"],
                      "ratio_to_encode_ids": median["raw_encode_ids_s"] / median["prepare_s"]}, indent=1))


def main():
    if sys.argv[1:2] == ["first-update"]:
        return first_update(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["raw", "ab"])
    parser.add_argument("prepared", help="a directory written by `minroberta prepare`")
    parser.add_argument("--mb", type=float, default=16, help="ab: megabytes of the corpus")
    parser.add_argument("--rounds", type=int, default=3, help="ab: turns each")
    args = parser.parse_args()
    if args.mode == "ab":
        return turns(args)
    manifest = prepared.read_manifest(args.prepared)
    if manifest is None or not manifest.get("sources"):
        sys.exit(f"{args.prepared}: no prepared data of a user's corpus")
    raw = Tokenizer.from_dir(os.path.join(args.prepared, "tokenizer.json")).raw
    size = sum(f["size"] for f in manifest["corpus"]["files"])
    encoding, _ = raw_encoding(raw, corpus.read_documents(manifest["sources"]), read_ids=False)   # files streamed
    prepare_s = max(manifest["seconds"], 1e-3)
    result = {"corpus_mb": size / 1e6, "prepare_s": prepare_s, "prepare_mb_s": size / 1e6 / prepare_s,
              "raw_encode_s": encoding, "raw_encode_mb_s": size / 1e6 / encoding,
              "ratio": encoding / prepare_s, "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
