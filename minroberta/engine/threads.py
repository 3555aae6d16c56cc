"""Every CPU core for the NumPy backend: heavy work cut into row chunks, one per thread of one pool.

NumPy runs an elementwise operation on one core; only matrix products use more, through the BLAS's own
threads. Those threads spin for a while after each product, waiting for the next, and so hold the other cores
exactly when the single-threaded elementwise work that follows could use them (docs/performance.md).

So with more than one thread the BLAS is pinned to one, and the model's heavy work (every matrix product,
products.py, and the large elementwise passes of rows.py: GELU, layer norm, softmax, bias adds,
AdamW) runs as contiguous chunks of rows, one per thread. NumPy lets go of the interpreter lock inside
operations on large arrays, so the chunks run in parallel. Many independent large tasks (inference on packs of
texts, the parts of a training batch) go to `each` instead: whole tasks side by side, nothing cut inside them,
no waiting between ops. The elementwise and row-wise work gives the same bits on any thread count (tested); a
product cut into row chunks can differ from the whole product in the last bit (the BLAS's kernels round a row by
where it falls), so results on different thread counts agree to float32 rounding, and runs on the same count
repeat exactly.

Choose with `threads.use(n)` (the command line's --threads) or MINROBERTA_THREADS; the default is the cores
this process may run on, shared among the MPI ranks on the machine. Only the numpy backend is threaded (CuPy
has the GPU). Once threaded work has run, NumPy's own products in the same process are single-threaded too;
`use(1)` gives the BLAS its threads back.
"""

import contextlib
import contextvars
import ctypes
import itertools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import backend, guards
from ..errors import MinRobertaError

_PREFIX = "minroberta-worker"   # the pool's thread names

# Below this many elements a chunk costs more to hand to a thread (tens of microseconds) than it saves.
MIN_CHUNK = 1 << 17

# set by MPICH's and Open MPI's launchers: how many ranks run on this machine
_LOCAL_RANKS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

# true inside a task of `each`: the task has its thread to itself, so the ops it runs do not cut their work again
_whole_task = contextvars.ContextVar("minroberta_whole_task", default=False)

_count = None        # threads in use; None until first asked
_pool = None         # ThreadPoolExecutor with _count - 1 workers (the calling thread takes a chunk too)
_blas_threads = None  # the BLAS's own thread count before it was pinned, to give back on use(1)


def use(count):
    """Run NumPy work on `count` threads (1: everything on the calling thread, the BLAS threading its products
    as it likes). More than one needs an OpenBLAS (NumPy's wheels bring one) that can be pinned to one thread."""
    global _count, _pool, _blas_threads
    if not isinstance(count, int) or count < 1:
        raise MinRobertaError(f"threads must be a whole number of at least 1, got {count!r}")
    if count > 1 and _blas_threads is None:
        found = _openblas()
        if not found:
            raise MinRobertaError(f"{count} threads need NumPy's OpenBLAS, to pin it to one thread; none found in "
                                  f"this process (use 1 thread)")
        set_threads, get_threads = found
        _blas_threads = get_threads()
        set_threads(1)
    elif count == 1 and _blas_threads is not None:
        _openblas()[0](_blas_threads)
        _blas_threads = None
    if _pool is not None:
        _pool.shutdown()
    _pool = ThreadPoolExecutor(count - 1, thread_name_prefix=_PREFIX) if count > 1 else None
    _count = count


def count():
    """Threads in use, chosen on first use: MINROBERTA_THREADS, else the cores this process may run on divided
    among the MPI ranks on this machine."""
    if _count is None:
        cores = guards.usable_cores()
        requested = os.environ.get("MINROBERTA_THREADS")
        if requested is not None:
            if not requested.isdigit() or int(requested) < 1:
                raise MinRobertaError(f"MINROBERTA_THREADS must be a whole number of at least 1, got {requested!r}")
            if int(requested) > cores:   # more would only add contention (and slice worker processes)
                print(f"MINROBERTA_THREADS={requested}: this process may use {cores} cores; using {cores}",
                      file=sys.stderr)
            use(min(int(requested), cores))
        else:   # under MPI, the ranks on this machine share its cores
            ranks_here = next((int(os.environ[name]) for name in _LOCAL_RANKS if os.environ.get(name, "").isdigit()), 1)
            share = max(1, cores // max(1, ranks_here))
            use(share if share > 1 and _openblas() else 1)
    return _count


def over_rows(work, rows, row_cost, min_chunk=None):
    """Call work(slice) on contiguous chunks of range(rows), one per thread, and wait for all of them.
    row_cost is the work of one row (elements, or multiply-adds for a product); no chunk gets less than
    min_chunk of it (default MIN_CHUNK), so small arrays stay on the calling thread. On CuPy and the stand-in:
    one call, all rows."""
    chunks = 1
    # a chunk that itself asks for threads runs its work whole: waiting on the pool from inside it could wait forever
    if backend.name() == "numpy" and count() > 1 and not threading.current_thread().name.startswith(_PREFIX) \
            and not _whole_task.get():
        chunks = max(1, min(_count, rows, rows * row_cost // (min_chunk or MIN_CHUNK)))
    if chunks == 1:
        work(slice(0, rows))
        return
    bounds = [rows * i // chunks for i in range(chunks + 1)]
    # each worker runs in a copy of the caller's context, which carries NumPy's errstate
    futures = [_pool.submit(contextvars.copy_context().run, work, slice(start, stop))
               for start, stop in zip(bounds[1:-1], bounds[2:])]
    try:
        work(slice(bounds[0], bounds[1]))
    finally:
        errors = [f.exception() for f in futures]   # waits: no chunk may still be writing when we return
    for error in errors:
        if error is not None:
            raise error


def each(work, items):
    """work(item) for every item of an iterable, the threads each taking the next item as they become free, and
    wait for all of them: for many independent tasks, each large (inference on packs of texts, the parts of a
    training batch), where running whole tasks side by side beats cutting every op of each. Inside a task
    nothing is cut again. With fewer tasks than threads, off NumPy, or inside a task or chunk already, the tasks
    run one at a time on the calling thread, their ops cut as usual. Items are drawn under a lock; after an error
    (or Ctrl-C) no new item is started, and the calling thread's error is raised, else the first in the order
    the threads were started."""
    items = iter(items)
    nested = _whole_task.get() or threading.current_thread().name.startswith(_PREFIX)   # the pool is busy
    sharing = count() if backend.name() == "numpy" and not nested else 1
    first = list(itertools.islice(items, sharing)) if sharing > 1 else []
    if len(first) < sharing:   # sharing 1 included: first is empty
        for item in itertools.chain(first, items):
            work(item)
        return
    items, lock, stop = itertools.chain(first, items), threading.Lock(), threading.Event()

    def run_tasks():
        _whole_task.set(True)
        try:
            while not stop.is_set():
                with lock:
                    item = next(items, stop)
                if item is stop:
                    return
                work(item)
        except BaseException:
            stop.set()
            raise
    futures = []
    try:
        for _ in range(sharing - 1):
            futures.append(_pool.submit(contextvars.copy_context().run, run_tasks))
        contextvars.copy_context().run(run_tasks)
    finally:
        stop.set()
        errors = [f.exception() for f in futures]   # waits: no task may still be running when we return
    for error in errors:
        if error is not None:
            raise error


@contextlib.contextmanager
def alone():
    """Inside, ops run whole on the calling thread, as inside a task of `each`: for work that other processes
    run beside (workers.py), which have the other cores."""
    token = _whole_task.set(True)
    try:
        yield
    finally:
        _whole_task.reset(token)


def elementwise(compute, out, *inputs):
    """compute(out_part, *input_parts) on matching contiguous parts of out and the inputs (all of out's shape),
    one part per thread, as over_rows cuts them. out must be C-contiguous; returns it."""
    flat = [a.reshape(-1) for a in (out,) + inputs]
    over_rows(lambda part: compute(*(a[part] for a in flat)), out.size, 1)
    return out


def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS loaded in this process, or None. NumPy's wheels
    bring it under a prefixed name (scipy_openblas_set_num_threads64_); a system build has the plain name."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):   # NumPy's own first
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            try:
                set_threads = getattr(library, f"{prefix}openblas_set_num_threads{suffix}")
                get_threads = getattr(library, f"{prefix}openblas_get_num_threads{suffix}")
            except AttributeError:
                continue
            set_threads.argtypes, set_threads.restype, get_threads.restype = [ctypes.c_int], None, ctypes.c_int
            return set_threads, get_threads
    return None
