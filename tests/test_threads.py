"""The NumPy work cut over threads (minroberta/engine/threads.py), with the engine installed: the same numbers as on one thread, errors and NumPy's
error state carried across, bad thread counts refused. Chunks are made tiny here so that small arrays are cut."""

import os
import threading
import time

import numpy as np
import pytest

import minroberta
from minroberta import MinRobertaError, engine, ops
from minroberta.engine import products, threads
from minroberta.optim import AdamW


@pytest.fixture(autouse=True)
def engine_installed():
    """The forms that cut their work over the threads are the engine's."""
    engine.install()


@pytest.fixture
def tiny_chunks(numpy_backend, monkeypatch):
    """Every array and product of more than a few elements is cut; counts the chunks handed to other threads."""
    monkeypatch.setattr(threads, "MIN_CHUNK", 8)
    monkeypatch.setattr(products, "PRODUCT_MIN_CHUNK", 64)
    handed = []
    submit = threads.ThreadPoolExecutor.submit
    monkeypatch.setattr(threads.ThreadPoolExecutor, "submit",
                        lambda pool, *args: handed.append(args) or submit(pool, *args))
    threads.use(2)
    return handed


def on_threads(count, compute):
    """compute() with `count` threads (3 on a 2-core machine still cuts in three: uneven chunks)."""
    threads.use(count)
    return compute()


def assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), f"largest difference {np.abs(x - y).max()}"


OPS = {   # name -> (arrays drawn, computation returning arrays)
    "gelu": ({"x": (6, 5, 16), "d": (6, 5, 16)},
             lambda a: (lambda y, c: (y, ops.gelu_backward(a["d"], c)))(*ops.gelu_forward(a["x"]))),
    "layernorm": ({"x": (7, 3, 16), "d": (7, 3, 16), "g": (16,), "b": (16,)},
                  lambda a: (lambda y, c: (y, *ops.layernorm_backward(a["d"], c)))(
                      *ops.layernorm_forward(a["x"], a["g"], a["b"], 1e-5))),
    "softmax": ({"x": (5, 3, 4, 9), "d": (5, 3, 4, 9)},
                lambda a: (lambda p, c: (p, ops.softmax_backward(a["d"], c)))(*ops.softmax_forward(a["x"] * 4))),
    "attention softmax and mask": ({"q": (5, 6, 8), "k": (5, 6, 8), "v": (5, 6, 8), "d": (5, 6, 8)},
                                   lambda a: (lambda ctx, c: (ctx, *ops.attention_backward(a["d"], c)))(
                                       *ops.attention_forward(a["q"], a["k"], a["v"], MASK, 2))),
}
MASK = np.array([[1] * 6, [1] * 6, [1, 1, 1, 0, 0, 0], [1] * 5 + [0], [1, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_ops_give_the_same_bits_on_any_thread_count(tiny_chunks, monkeypatch, name, dtype):
    shapes, compute = OPS[name]
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    if name == "attention softmax and mask":   # only the softmax, scaling and mask are cut: whole products
        monkeypatch.setattr(products, "PRODUCT_MIN_CHUNK", 1 << 40)
    one = on_threads(1, lambda: compute(arrays))
    for count in (2, 3):
        del tiny_chunks[:]
        assert_same_bits(one, on_threads(count, lambda: compute(arrays)))
        assert len(tiny_chunks) >= count - 1, "the work was not cut"


def test_adamw_gives_the_same_bits_on_any_thread_count(tiny_chunks):
    rng = np.random.default_rng(1)
    start = {"w": rng.standard_normal((9, 7)).astype(np.float32), "b": rng.standard_normal(40).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()} for _ in range(3)]

    def three_updates():
        params = {k: v.copy() for k, v in start.items()}
        optimizer = AdamW(params)
        for g in grads:
            optimizer.step(params, g, 1e-2)
        return [params["w"], params["b"], optimizer.exp_avg_sq["w"]]
    one = on_threads(1, three_updates)
    assert_same_bits(one, on_threads(3, three_updates))
    assert tiny_chunks


def test_the_model_on_several_threads_matches_one(tiny_chunks):
    """Products cut into row chunks may round a row differently from the whole product (the BLAS's kernels),
    so here the agreement is to float32 rounding, against a tolerance a misplaced chunk would far exceed."""
    config = minroberta.Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=20)
    model = minroberta.Roberta(config, seed=0)
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 64, size=(6, 16))
    mask = np.ones_like(ids)
    mask[3, 10:] = 0
    labels = np.where(rng.random(ids.shape) < 0.3, ids, -100)

    def run():
        loss, grads = model.loss_and_grads(ids, mask, labels, dropout_key=(0, 1, 2))
        return model(ids, mask).logits, float(loss), grads
    logits1, loss1, grads1 = on_threads(1, run)
    logits2, loss2, grads2 = on_threads(2, run)
    assert tiny_chunks
    assert np.abs(logits1 - logits2).max() <= 1e-5 * np.abs(logits1).max()
    assert abs(loss1 - loss2) <= 1e-6 * loss1
    for name, g in grads1.items():
        assert np.abs(g - grads2[name]).max() <= 1e-5 * max(np.abs(g).max(), 1e-6), name


def test_an_error_in_another_thread_reaches_the_caller(tiny_chunks):
    def work(rows):
        if rows.start > 0:
            raise ValueError(f"chunk at {rows.start}")
    with pytest.raises(ValueError, match="chunk at"):
        threads.over_rows(work, 10, 100)


def test_work_cut_inside_a_chunk_runs_whole_instead_of_waiting_on_the_busy_pool(tiny_chunks):
    seen = []

    def outer(rows):
        threads.over_rows(lambda inner: seen.append((rows.start, inner.start, inner.stop)), 10, 100)
    threads.over_rows(outer, 10, 100)   # with one worker, a nested wait on the pool would never return
    assert sorted(seen) == [(0, 0, 5), (0, 5, 10), (5, 0, 10)]


def test_each_runs_every_task_once_side_by_side_and_the_ops_inside_whole(tiny_chunks):
    meet = threading.Barrier(2, timeout=10)   # the first two tasks wait for each other: two threads, or it breaks
    seen, chunks = [], []

    def work(item):
        if item < 2:
            meet.wait()
        threads.over_rows(lambda rows: chunks.append((item, rows.start, rows.stop)), 10, 100)
        seen.append(item)
    threads.each(work, range(7))
    assert sorted(seen) == list(range(7))
    assert sorted(chunks) == [(item, 0, 10) for item in range(7)]   # not cut again inside a task


def test_each_with_fewer_tasks_than_threads_cuts_the_ops_instead(tiny_chunks):
    chunks = []
    threads.each(lambda item: threads.over_rows(lambda rows: chunks.append((rows.start, rows.stop)), 10, 100), [0])
    assert sorted(chunks) == [(0, 5), (5, 10)]


def test_an_error_in_a_task_stops_new_tasks_and_reaches_the_caller(tiny_chunks):
    """The pool's thread fails at its first task; the calling thread, slower, must stop drawing soon after."""
    drawn = []

    def items():
        for item in range(100):
            drawn.append(item)
            yield item

    def work(item):
        if threading.current_thread().name.startswith(threads._PREFIX):   # a thread of the pool
            raise ValueError(f"task {item}")
        time.sleep(0.005)
    with pytest.raises(ValueError, match="task"):
        threads.each(work, items())
    assert len(drawn) < 20


def test_each_inside_a_task_and_off_numpy_runs_one_task_at_a_time(tiny_chunks, monkeypatch):
    seen = []
    threads.each(lambda i: threads.each(seen.append, [10 * i, 10 * i + 1]), [0, 1])   # no wait on the busy pool
    assert sorted(seen) == [0, 1, 10, 11]
    monkeypatch.setattr(threads, "_count", None)          # as in a process that never chose a thread count
    previous = minroberta.backend.name()
    minroberta.backend.use("standin")
    try:
        seen.clear()
        threads.each(seen.append, [1, 2, 3])
    finally:
        minroberta.backend.use(previous)
    assert seen == [1, 2, 3]


def test_numpys_error_state_is_carried_to_the_other_threads(tiny_chunks):
    x = np.full((4, 8), 1e30, dtype=np.float32)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        threads.elementwise(lambda out, x: np.multiply(x, x, out=out), np.empty_like(x), x)
    with np.errstate(over="ignore"):   # and quiet where the caller asked for quiet
        out = threads.elementwise(lambda out, x: np.multiply(x, x, out=out), np.empty_like(x), x)
    assert np.isinf(out).all() and len(tiny_chunks) >= 2


@pytest.mark.parametrize("count", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_refused(count):
    with pytest.raises(MinRobertaError, match="threads must be a whole number"):
        threads.use(count)


def test_a_bad_environment_thread_count_is_refused(monkeypatch):
    monkeypatch.setattr(threads, "_count", None)
    monkeypatch.setenv("MINROBERTA_THREADS", "two")
    with pytest.raises(MinRobertaError, match="MINROBERTA_THREADS must be a whole number"):
        threads.count()


@pytest.mark.parametrize("variable", ["MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"])
def test_mpi_ranks_on_one_machine_share_its_cores(monkeypatch, variable):
    monkeypatch.setattr(threads, "_count", None)
    monkeypatch.delenv("MINROBERTA_THREADS", raising=False)
    monkeypatch.setenv(variable, "64")
    assert threads.count() == 1
    monkeypatch.setattr(threads, "_count", None)
    monkeypatch.setenv(variable, "1")
    assert threads.count() == len(os.sched_getaffinity(0))


def test_one_thread_gives_the_blas_its_threads_back(numpy_backend):
    set_threads, get_threads = threads._openblas()
    threads.use(1)
    own = get_threads()
    threads.use(2)
    assert get_threads() == 1
    threads.use(1)
    assert get_threads() == own


def test_several_threads_without_an_openblas_to_pin_are_refused_and_the_default_is_one(monkeypatch):
    monkeypatch.setattr(threads, "_openblas", lambda: None)
    monkeypatch.setattr(threads, "_blas_threads", None)
    with pytest.raises(MinRobertaError, match="2 threads need NumPy's OpenBLAS"):
        threads.use(2)
    monkeypatch.setattr(threads, "_count", None)
    monkeypatch.delenv("MINROBERTA_THREADS", raising=False)
    assert threads.count() == 1
