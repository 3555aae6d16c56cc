"""Which lines of minroberta one training update runs, from a call trace: the engine's update under
`minroberta pretrain`, and the reference loop's under `minroberta pretrain --reference`.

    python scripts/trace_step.py                # both, as a table by file
    python scripts/trace_step.py --engine-only  # for a checkout that has no reference loop

It runs the default recipe on a small slice of the built-in corpus for three updates and traces the second (the
first starts worker processes and warms caches). Two counts per file: the lines that ran, and the lines of the
functions that ran (what a reader must read to follow the update). Work done in worker processes is not traced;
their own code is the same step on another part of the batch.
"""

import argparse
import collections
import contextlib
import io
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minroberta  # noqa: E402
from minroberta import cli, corpus  # noqa: E402

PACKAGE = os.path.dirname(os.path.abspath(minroberta.__file__))


class Tracer:
    """Lines run and functions entered in the package's files, on every thread, while on."""

    def __init__(self):
        self.lines = collections.defaultdict(set)       # file -> line numbers that ran
        self.functions = collections.defaultdict(set)   # file -> code objects entered

    def trace(self, frame, event, arg):
        path = frame.f_code.co_filename
        if not path.startswith(PACKAGE):
            return None
        if event == "call":
            self.functions[path].add(frame.f_code)
        self.lines[path].add(frame.f_lineno)
        return self.trace

    def __enter__(self):
        threading.settrace(self.trace)
        sys.settrace(self.trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)
        threading.settrace(None)

    def table(self):
        """-> [(file, lines run, lines of the functions entered)], most first."""
        rows = []
        for path in self.lines:
            spans = set()
            for code in self.functions[path]:
                numbers = [line for _, _, line in code.co_lines() if line is not None]
                if code.co_name != "<module>" and numbers:
                    spans.update(range(code.co_firstlineno, max(numbers) + 1))
            rows.append((os.path.relpath(path, os.path.dirname(PACKAGE)), len(self.lines[path]), len(spans)))
        return sorted(rows, key=lambda row: -row[2])


def traced_update(owner, name, argv):
    """Run `minroberta pretrain argv`, tracing the second call of owner.name. -> Tracer."""
    original, calls, tracer = getattr(owner, name), [0], Tracer()

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] != 2:
            return original(*args, **kwargs)
        with tracer:
            return original(*args, **kwargs)
    setattr(owner, name, wrapped)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(argv)
    finally:
        setattr(owner, name, original)
    if code != 0 or calls[0] < 2:
        raise SystemExit(f"the run failed (exit {code}) or made fewer than two updates")
    return tracer


def show(title, tracer):
    rows = tracer.table()
    print(f"\n{title}: {sum(r[1] for r in rows)} lines run, {sum(r[2] for r in rows)} lines of the functions that "
          f"ran, in {len(rows)} files")
    print(f"  {'file':<36} {'run':>5} {'functions':>9}")
    for path, run, spans in rows:
        print(f"  {path:<36} {run:>5} {spans:>9}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-only", action="store_true", help="skip the reference loop (older checkouts)")
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minroberta-trace-")
    text = os.path.join(work, "corpus.txt")
    with open(text, "w", encoding="utf-8") as handle:
        for n, document in enumerate(corpus.stdlib_documents()):
            if n == 3000:
                break
            handle.write(document + "\n\n")
    common = ["--corpus", text, "--steps", "3", "--eval-every", "100", "--save-every", "100"]
    try:
        from minroberta.engine import trainer as engine_trainer
    except ImportError:   # before the reference core: the trainer was minroberta/train.py
        from minroberta import train as engine_trainer
    show("engine (minroberta pretrain)",
         traced_update(engine_trainer.Trainer, "train_step", ["pretrain", *common, "--out", os.path.join(work, "e")]))
    if not options.engine_only:
        from minroberta import loop
        show("reference (minroberta pretrain --reference)",
             traced_update(loop, "train_step", ["pretrain", "--reference", *common, "--out", os.path.join(work, "r")]))


if __name__ == "__main__":
    main()
