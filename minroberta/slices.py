"""The trainer's slices in worker processes (Linux, NumPy, pretraining without dropout): of a micro-batch cut
into one slice of rows per thread, this process computes the first slice and a worker process each other one.

Why not threads: two threads each running a slice of small arrays keep taking the interpreter lock from each
other (every NumPy call takes it), which cost 3-5 ms of a 40 ms update of the default run; processes share only
the parameters, the gradients and the slices' token ids, in one anonymous memory file (memfd) that all of them
map (docs/performance.md). Each slice is computed as on a thread, so every bit of the update is the same (tested).

A worker is a fresh interpreter (`python -m minroberta.slices`), not a fork of this one, which already runs
threads (the pool's, the tokenizer's) that a fork could leave holding locks. It inherits the memory file's
descriptor, reads one line of JSON (the model's config and where each array lies in the file), maps the file and
answers "ready". Then, for each update,
once its slice's ids, mask and labels are in the file, it reads a line "rows loss_scale", writes the slice's
gradients into its part of the file and answers with the loss. It ignores Ctrl-C (the trainer finishes the
update, then saves) and exits when its input closes, so it never outlives the trainer.
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

from .errors import MinRobertaError

_INPUTS = ("input_ids", "attention_mask", "labels")


def available():
    """Whether worker processes can run here: Linux's anonymous memory files (memfd) to share memory through."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def _layout(names, shapes, workers, rows, seq):
    """Byte offsets in the shared file: the float32 parameters, a gradient block per worker, then per worker
    its slice's (rows, seq) int64 ids, mask and labels."""
    size = sum(math.prod(shapes[n]) for n in names)
    params = 0
    grads = [params + 4 * size * (1 + w) for w in range(workers)]
    start = params + 4 * size * (1 + workers)
    start += -start % 8
    inputs = [start + 8 * rows * seq * len(_INPUTS) * w for w in range(workers)]
    return {"size": size, "params": params, "grads": grads, "inputs": inputs,
            "bytes": start + 8 * rows * seq * len(_INPUTS) * workers}


def _views(buffer, offset, names, shapes):
    """name -> a float32 view of `buffer` at `offset`, laid out as the optimizer's flat buffers."""
    views = {}
    for name in names:
        count = math.prod(shapes[name])
        views[name] = np.frombuffer(buffer, np.float32, count, offset).reshape(shapes[name])
        offset += 4 * count
    return views


def _inputs(buffer, offset, rows, seq):
    block = np.frombuffer(buffer, np.int64, len(_INPUTS) * rows * seq, offset).reshape(len(_INPUTS), rows, seq)
    return dict(zip(_INPUTS, block))


class Workers:
    """`count` worker processes for slices of at most `rows` x `seq` tokens of `model`, whose parameters move
    into the shared file (through `optimizer.hold`; `bind` moves them again after a restore)."""

    def __init__(self, model, optimizer, count, rows, seq):
        self.names, self.shapes, self.rows, self.seq = list(optimizer.names), dict(optimizer.shapes), rows, seq
        self.layout = _layout(self.names, self.shapes, count, rows, seq)
        descriptor = os.memfd_create("minroberta-slices")   # memory with no name to leave behind if killed
        self.processes = []
        try:
            os.ftruncate(descriptor, self.layout["bytes"])
            self.buffer = mmap.mmap(descriptor, self.layout["bytes"])
            self.params = np.frombuffer(self.buffer, np.float32, self.layout["size"], self.layout["params"])
            self.grads = [_views(self.buffer, offset, self.names, self.shapes) for offset in self.layout["grads"]]
            self.inputs = [_inputs(self.buffer, offset, rows, seq) for offset in self.layout["inputs"]]
            self.bound = None
            self.bind(model, optimizer)
            package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", MINROBERTA_THREADS="1",
                               PYTHONPATH=os.pathsep.join(filter(None, [package_parent,
                                                                        os.environ.get("PYTHONPATH")])))
            setup = {"descriptor": descriptor, "config": model.config.to_dict(), "dtype": model.dtype,
                     "prefix": model.prefix, "head": model.head, "names": self.names,
                     "shapes": {n: list(s) for n, s in self.shapes.items()}, "layout": self.layout, "rows": rows,
                     "seq": seq}
            for index in range(count):
                process = subprocess.Popen([sys.executable, "-m", "minroberta.slices"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=environment, text=True, bufsize=1,
                                           pass_fds=(descriptor,), start_new_session=True)   # Ctrl-C is for the trainer
                self.processes.append(process)
                process.stdin.write(json.dumps(dict(setup, index=index)) + "\n")
            for process in self.processes:
                self._answer(process, "starting")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(descriptor)   # the mappings keep the memory; the workers have their own descriptors
        self._finalizer = weakref.finalize(self, _stop, self.processes)

    def bind(self, model, optimizer):
        """Make the model's parameters views of the shared file (copying them in), unless they are already."""
        if model.params is not self.bound:
            model.params = optimizer.hold(model.params, flat=self.params)
            self.bound = model.params

    def run(self, parts, scales, compute_here):
        """Hand parts[1:] to the workers, compute parts[0] here with compute_here(part, scale) -> (loss, grads),
        and return [(loss, grads)] in the order of parts (a worker's gradients are views of the shared file,
        valid until the next call)."""
        for process, inputs, part, scale in zip(self.processes, self.inputs, parts[1:], scales[1:]):
            rows = len(part["input_ids"])
            if rows > self.rows or part["input_ids"].shape[1] != self.seq:
                raise MinRobertaError(f"a slice of {part['input_ids'].shape} does not fit the workers' "
                                      f"({self.rows}, {self.seq})")
            for name in _INPUTS:
                inputs[name][:rows] = part[name]
            try:
                process.stdin.write(f"{rows} {scale!r}\n")
            except OSError:   # its end of the pipe is closed: it has ended
                self._ended(process, "computing a slice")
        try:
            results = [compute_here(parts[0], scales[0])]
        finally:   # the workers are answered either way, so none is left mid-slice
            losses = [self._answer(process, "a slice") for process in self.processes[:len(parts) - 1]]
        return results + [(np.float32(loss), grads) for loss, grads in zip(losses, self.grads)]

    def _answer(self, process, doing):
        said = process.stdout.readline().strip()
        if said.startswith("error "):
            self.close()
            raise MinRobertaError(f"a slice worker failed {doing}: {said[6:]}")
        if not said:
            self._ended(process, "starting" if doing == "starting" else "computing a slice")
        return 0.0 if said == "ready" else float(said)

    def _ended(self, process, doing):
        if process.poll() is None:   # its pipe broke some other way: it cannot be trusted with the next slice
            process.kill()
        code = process.wait()
        self.close()
        raise MinRobertaError(f"a slice worker ended while {doing} (exit status {code}); MINROBERTA_SLICE_WORKERS=0 "
                              "runs the slices on threads instead")

    def close(self):
        _stop(self.processes)
        self.processes = []


def _stop(processes):
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


def serve(stdin=sys.stdin, stdout=sys.stdout):
    """A worker's loop (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from .config import Config
        from .model import Roberta
        setup = json.loads(stdin.readline())
        shapes = {n: tuple(s) for n, s in setup["shapes"].items()}
        layout, index = setup["layout"], setup["index"]
        buffer = mmap.mmap(setup["descriptor"], layout["bytes"])   # the trainer's memory file (pass_fds)
        params = _views(buffer, layout["params"], setup["names"], shapes)
        grads = _views(buffer, layout["grads"][index], setup["names"], shapes)
        inputs = _inputs(buffer, layout["inputs"][index], setup["rows"], setup["seq"])
        model = Roberta(Config.from_dict(setup["config"]), dtype=setup["dtype"], params=params,
                        prefix=setup["prefix"], head=setup["head"])
    except Exception as error:   # noqa: BLE001 (reported to the trainer, which stops with it)
        stdout.write(f"error {type(error).__name__}: {error}\n".replace("\n", " ").rstrip() + "\n")
        stdout.flush()
        return 1
    stdout.write("ready\n")
    stdout.flush()
    for line in stdin:
        try:
            rows, scale = line.split()
            rows = int(rows)
            loss, slice_grads = model.loss_and_grads(*(inputs[name][:rows] for name in _INPUTS),
                                                     loss_scale=float(scale))
            for name, g in slice_grads.items():
                grads[name][...] = g
            answer = repr(float(loss))
        except Exception as error:   # noqa: BLE001
            answer = f"error {type(error).__name__}: {error}".replace("\n", " ")
        stdout.write(answer + "\n")
        stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
