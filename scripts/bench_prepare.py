"""Preparation beside the tokenizer alone, and how soon a run on prepared data starts.

`raw DIR`: the throughput `minroberta prepare` reached on a corpus (its tokenize and pack pass, from
prepared.json), and raw `tokenizers` batch encoding of the same documents with the same tokenizer on the same
cores (encode_batch over chunks of prepared.CHUNK_BYTES, ids not read out; reading the files is not timed).
`first-update ARGS`: runs `minroberta ARGS` in this process and exits when its first update is done, printing
the seconds from the start of the process.

    minroberta prepare --corpus big.txt --out /tmp/prep
    python scripts/bench_prepare.py raw /tmp/prep          # the corpus is the one prepared.json names
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
    from minroberta import cli, train
    update = train.Trainer.train_step

    def timed(trainer):
        result = update(trainer)
        print(f"first update done {time.time() - STARTED:.2f} s after the start", file=sys.stderr, flush=True)
        os._exit(0)   # skip the rest of the run (and its worker processes' orderly shutdown)
        return result
    train.Trainer.train_step = timed
    sys.exit(cli.main(argv))


def main():
    if sys.argv[1:2] == ["first-update"]:
        return first_update(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["raw"])
    parser.add_argument("prepared", help="a directory written by `minroberta prepare`")
    args = parser.parse_args()
    manifest = prepared.read_manifest(args.prepared)
    if manifest is None or not manifest.get("sources"):
        sys.exit(f"{args.prepared}: no prepared data of a user's corpus")
    raw = Tokenizer.from_dir(os.path.join(args.prepared, "tokenizer.json")).raw
    size = sum(f["size"] for f in manifest["corpus"]["files"])
    encoding, chunk, chunk_bytes = 0.0, [], 0
    for document in corpus.read_documents(manifest["sources"]):
        chunk.append(document)
        chunk_bytes += len(document)
        if chunk_bytes >= prepared.CHUNK_BYTES:
            started = time.perf_counter()
            raw.encode_batch(chunk, add_special_tokens=False)
            encoding += time.perf_counter() - started
            chunk, chunk_bytes = [], 0
    if chunk:
        started = time.perf_counter()
        raw.encode_batch(chunk, add_special_tokens=False)
        encoding += time.perf_counter() - started
    prepare_s = max(manifest["seconds"], 1e-3)
    result = {"corpus_mb": size / 1e6, "prepare_s": prepare_s, "prepare_mb_s": size / 1e6 / prepare_s,
              "raw_encode_s": encoding, "raw_encode_mb_s": size / 1e6 / encoding,
              "ratio": encoding / prepare_s, "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
