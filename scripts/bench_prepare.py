"""Preparation beside the tokenizer alone: the throughput `minroberta prepare` reached on a corpus (its tokenize
and pack pass, from prepared.json), and raw `tokenizers` batch encoding of the same documents with the same
tokenizer on the same cores (encode_batch over chunks of prepared.CHUNK_BYTES, ids not read out; reading the
files is not timed).

    minroberta prepare --corpus big.txt --out /tmp/prep
    python scripts/bench_prepare.py /tmp/prep          # the corpus is the one prepared.json names
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minroberta import corpus, prepared  # noqa: E402
from minroberta.tokenizer import Tokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    result = {"corpus_mb": size / 1e6, "prepare_s": manifest["seconds"], "prepare_mb_s": size / 1e6 / manifest["seconds"],
              "raw_encode_s": encoding, "raw_encode_mb_s": size / 1e6 / encoding,
              "ratio": encoding / manifest["seconds"], "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
