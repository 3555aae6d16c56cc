"""Worker processes for the trainer's parts (Linux, NumPy, pretraining without dropout): of a micro-batch cut
into one part of its rows per thread, this process computes the first part and a worker process each other one.

Why not threads: two threads each running a part of small arrays keep taking the interpreter lock from each
other (every NumPy call takes it) on every op of the update (measured in docs/performance.md).
Processes share only the parameters, the gradients and the parts' token ids, in one anonymous memory file
(memfd) that all of them map. Each part is computed as on a thread, and the gradients are summed in the same
order, so every bit of the update is the same (tests/test_workers.py).

A worker is a fresh interpreter (`python -m minroberta.engine.workers`), not a fork of this one, which already runs
threads (the pool's, the tokenizer's) that a fork could leave holding locks. It inherits the memory file's
descriptor, reads one line of JSON (the model's config and where each array lies in the file), maps the file and
answers "ready". Then, for each update, once its part's ids, mask and labels are in the file, it reads a line
"rows loss_scale", writes the part's gradients into its block of the file and answers with the loss (or "error"
and the reason). It runs in a session of its own, so Ctrl-C in a terminal reaches only the trainer, which
finishes the update and saves, and it exits when its input closes, so it never outlives the trainer.

Memory: the file holds the parameters and a gradient block per worker, about what the threads' parts hold as
gradients of their own; a worker also builds its part's gradients before copying them into its block.
"""

import json
import math
import mmap
import os
import signal
import subprocess
import sys
import weakref

import numpy as np

from .. import dispatch
from ..errors import MinRobertaError
from .flat import flat_views

_INPUTS = ("input_ids", "attention_mask", "labels")


def available():
    """Whether worker processes can run here: Linux's anonymous memory files (memfd) to share memory through."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def _layout(names, shapes, workers, rows, seq):
    """Byte offsets in the shared file: the float32 parameters at 0, a gradient block per worker, then per
    worker its part's (rows, seq) int64 ids, mask and labels."""
    size = sum(math.prod(shapes[n]) for n in names)
    grads = [4 * size * (1 + w) for w in range(workers)]
    start = 4 * size * (1 + workers)
    start += -start % 8
    block = 8 * len(_INPUTS) * rows * seq
    return {"size": size, "grads": grads, "inputs": [start + block * w for w in range(workers)],
            "bytes": start + block * workers}


def _views(buffer, offset, names, shapes):
    """name -> a float32 view of `buffer` at `offset`, laid out as the optimizer's flat buffers."""
    return flat_views(np.frombuffer(buffer, np.float32, sum(math.prod(shapes[n]) for n in names), offset), names,
                      shapes)


def _inputs(buffer, offset, rows, seq):
    block = np.frombuffer(buffer, np.int64, len(_INPUTS) * rows * seq, offset).reshape(len(_INPUTS), rows, seq)
    return dict(zip(_INPUTS, block))


class Workers:
    """`count` worker processes for parts of at most `rows` x `seq` tokens of `model`, whose parameters move
    into the shared file (through `optimizer.hold`; `bind` moves them again after a restore)."""

    def __init__(self, model, optimizer, count, rows, seq):
        self.names, self.shapes, self.rows, self.seq = list(optimizer.names), dict(optimizer.shapes), rows, seq
        self.installed = dispatch.installed()   # the workers run the fast forms exactly when this process does
        self.layout = _layout(self.names, self.shapes, count, rows, seq)
        descriptor = os.memfd_create("minroberta-workers")   # memory with no name to leave behind if killed
        self.processes = []
        try:
            os.ftruncate(descriptor, self.layout["bytes"])
            self.buffer = mmap.mmap(descriptor, self.layout["bytes"])
            self.params = np.frombuffer(self.buffer, np.float32, self.layout["size"], 0)
            self.grads = [_views(self.buffer, offset, self.names, self.shapes) for offset in self.layout["grads"]]
            self.inputs = [_inputs(self.buffer, offset, rows, seq) for offset in self.layout["inputs"]]
            self.bound = None
            self.bind(model, optimizer)
            # the workers import this very package (the working directory comes first on their path), on NumPy
            package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", MINROBERTA_THREADS="1",
                               MINROBERTA_BACKEND="numpy")
            setup = {"descriptor": descriptor, "config": model.config.to_dict(), "dtype": model.dtype,
                     "prefix": model.prefix, "head": model.head, "names": self.names, "installed": self.installed,
                     "shapes": {n: list(s) for n, s in self.shapes.items()}, "layout": self.layout, "rows": rows,
                     "seq": seq}
            for index in range(count):
                process = subprocess.Popen([sys.executable, "-m", "minroberta.engine.workers"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=environment, cwd=package_parent, text=True,
                                           bufsize=1, pass_fds=(descriptor,), start_new_session=True)
                self.processes.append(process)
                process.stdin.write(json.dumps(dict(setup, index=index)) + "\n")
            for process in self.processes:
                if (said := self._answer(process, "starting")) != "ready":
                    raise MinRobertaError(f"a worker process failed to start: {said.removeprefix('error ')}")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(descriptor)   # the mappings keep the memory; the workers have descriptors of their own
        self._finalizer = weakref.finalize(self, _stop, self.processes)

    def fits(self, optimizer, parts):
        """Whether these workers can take parts[1:] of a model held by `optimizer`: as many workers, parts no
        larger, the same parameters in the same order (a restored optimizer may list them otherwise), and the engine
        still installed or not as when they started."""
        return (len(parts) - 1 <= len(self.processes) and optimizer.names == self.names
                and self.installed == dispatch.installed()
                and optimizer.shapes == self.shapes and parts[0]["input_ids"].shape[1] == self.seq
                and all(len(part["input_ids"]) <= self.rows for part in parts[1:]))

    def bind(self, model, optimizer):
        """Make the model's parameters views of the shared file (copying them in), unless they are already."""
        if model.params is not self.bound:
            model.params = optimizer.hold(model.params, flat=self.params)
            self.bound = model.params

    def run(self, parts, scales, compute_here):
        """Hand parts[1:] to the workers, compute parts[0] here with compute_here(part, scale) -> (loss, grads),
        and return [(loss, grads)] in the order of parts (a worker's gradients are views of the shared file,
        valid until the next call). Anything that leaves the exchange half done (a Ctrl-C while waiting, a worker
        gone) stops the workers, so none is left with a stale part."""
        busy = self.processes[:len(parts) - 1]
        try:
            for process, inputs, part, scale in zip(busy, self.inputs, parts[1:], scales[1:]):
                rows = len(part["input_ids"])
                for name in _INPUTS:
                    inputs[name][:rows] = part[name]
                try:
                    process.stdin.write(f"{rows} {scale!r}\n")
                except OSError:   # its end of the pipe is closed: it has ended
                    self._ended(process, "computing a part")
            try:
                results = [compute_here(parts[0], scales[0])]
            finally:   # every worker answers either way, so the exchange stays in step
                answers = [self._answer(process, "computing a part") for process in busy]
        except BaseException:
            self.close()
            raise
        losses = []
        for said in answers:
            try:
                losses.append(float(said))
            except ValueError:   # the worker's own error, the exchange still in step: the run stops with it
                raise MinRobertaError(said.removeprefix("error ")) from None
        return results + [(np.float32(loss), grads) for loss, grads in zip(losses, self.grads)]

    def _answer(self, process, doing):
        said = process.stdout.readline().strip()
        if not said:
            self._ended(process, doing)
        return said

    def _ended(self, process, doing):
        if process.poll() is None:   # its pipe broke some other way: it cannot be trusted with the next part
            process.kill()
        code = process.wait()
        self.close()
        raise MinRobertaError(f"a worker process ended while {doing} (exit status {code}); MINROBERTA_SLICE_WORKERS=0 "
                              "runs the parts on threads instead")

    def close(self):
        _stop(self.processes)
        self.processes = []


def _stop(processes):
    """Close each worker's input (it exits at the end of it), wait for it, a few seconds at most, then kill it."""
    for process in processes:
        try:
            process.stdin.close()
        except OSError:
            pass
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def serve(stdin=sys.stdin):
    """A worker's loop (see the module's docstring). Its answers go out on a copy of stdout; stdout itself is
    pointed at stderr, so that nothing a library prints can be taken for an answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    np.seterr(over="ignore", invalid="ignore")   # as the trainer's step: a non-finite loss is its to report
    try:
        from ..config import Config
        from ..model import Roberta
        setup = json.loads(stdin.readline())
        shapes = {n: tuple(s) for n, s in setup["shapes"].items()}
        layout, index = setup["layout"], setup["index"]
        buffer = mmap.mmap(setup["descriptor"], layout["bytes"])   # the trainer's memory file (pass_fds)
        params = _views(buffer, 0, setup["names"], shapes)
        grads = _views(buffer, layout["grads"][index], setup["names"], shapes)
        inputs = _inputs(buffer, layout["inputs"][index], setup["rows"], setup["seq"])
        model = Roberta(Config.from_dict(setup["config"]), dtype=setup["dtype"], params=params,
                        prefix=setup["prefix"], head=setup["head"])
        dispatch.install(setup["installed"])   # the engine's forms on here exactly when they are in the trainer
        answers.write("ready\n")
    except Exception as error:   # noqa: BLE001 (reported to the trainer, which stops with it)
        answers.write(f"error {type(error).__name__}: {error}".replace("\n", " ") + "\n")
        return 1
    for line in stdin:
        try:
            rows, scale = line.split()
            rows = int(rows)
            loss, part_grads = model.loss_and_grads(*(inputs[name][:rows] for name in _INPUTS),
                                                     loss_scale=float(scale))
            for name, g in part_grads.items():
                grads[name][...] = g
            answer = repr(float(loss))
        except MinRobertaError as error:   # bad input, said as the trainer would say it
            answer = f"error {error}".replace("\n", " ")
        except Exception as error:   # noqa: BLE001
            answer = f"error a worker process failed: {type(error).__name__}: {error}".replace("\n", " ")
        answers.write(answer + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve())
