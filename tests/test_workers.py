"""The trainer's parts in worker processes (minroberta/engine/workers.py): the same updates as with the parts on threads,
bit for bit; a worker that dies is a one-line error; workers that cannot start leave the parts to the threads."""

import numpy as np
import pytest

import minroberta
from minroberta.engine import workers as worker_processes
from minroberta.errors import MinRobertaError
from minroberta.engine import threads
from minroberta.engine.trainer import TrainSettings, Trainer

pytestmark = pytest.mark.skipif(not worker_processes.available(), reason="worker processes need Linux's memfd_create")

CONFIG = minroberta.Config(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=26, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


class Batches:
    """Another masked batch of 7 rows every update (uneven parts: 3 rows here, 4 in the worker)."""

    def batches_per_epoch(self, batch_size):
        return 1000

    def train_batch(self, epoch, index, batch_size, shard=(0, 1)):
        rng = np.random.default_rng(index)
        ids = rng.integers(5, 60, size=(7, 24))
        labels = np.where(rng.random(ids.shape) < 0.4, ids, -100)
        mask = np.ones_like(ids)
        mask[-1, 20:] = 0
        return {"input_ids": np.where(labels != -100, 4, ids), "attention_mask": mask, "labels": labels}


def trainer(workers):
    made = Trainer(minroberta.Roberta(CONFIG, seed=0), Batches(), None,
                   TrainSettings(steps=5, lr=1e-2, warmup=1), None)
    made.use_workers = workers
    made.progress.quiet = True
    return made


@pytest.mark.parametrize("count", [2, 3])
def test_workers_make_the_same_updates_as_threads_bit_for_bit(numpy_backend, count):
    threads.use(count)
    runs = {}
    for workers in (False, True):
        t = trainer(workers)
        losses = [t.train_step()[0] for _ in range(5)]
        assert (len(t.workers.processes) if t.workers else 0) == (count - 1 if workers else 0)
        runs[workers] = (losses, {k: np.array(v) for k, v in t.model.params.items()})
        if t.workers:
            assert all(p.poll() is None for p in t.workers.processes)   # still there, waiting for the next
            t.workers.close()
    assert runs[True][0] == runs[False][0]
    for name, value in runs[False][1].items():
        assert np.array_equal(runs[True][1][name], value), name


def test_a_worker_that_dies_is_a_one_line_error(numpy_backend):
    threads.use(2)
    t = trainer(True)
    t.train_step()
    t.workers.processes[0].kill()
    t.workers.processes[0].wait()
    with pytest.raises(MinRobertaError, match="worker process ended") as caught:
        t.train_step()
    assert "\n" not in str(caught.value)


def test_workers_that_cannot_start_leave_the_parts_to_the_threads(numpy_backend, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("out of memory for the shared file")
    monkeypatch.setattr(worker_processes, "Workers", refuse)
    threads.use(2)
    t = trainer(True)
    said = []
    t.progress.message = said.append
    t.train_step()
    t.train_step()
    assert t.workers is None and len(said) == 1 and "out of memory for the shared file" in said[0]


def test_a_restored_optimizer_that_lists_the_parameters_otherwise_gets_workers_that_agree(numpy_backend):
    """A restore holds the parameters anew, perhaps in another order (load_pretrained's, not the model's): the
    workers must follow, or they would read one tensor's numbers as another's."""
    from minroberta.engine.flat import FlatAdamW
    threads.use(2)
    runs = {}
    for workers in (False, True):
        t = trainer(workers)
        t.train_step()
        reordered, before = dict(reversed(list(t.model.params.items()))), list(t.optimizer.names)
        t.optimizer = FlatAdamW(reordered, betas=t.settings.betas, eps=t.settings.eps,
                            weight_decay=t.settings.weight_decay)
        assert t.optimizer.names != before
        t.model.params = t.optimizer.hold(reordered)
        losses = [t.train_step()[0] for _ in range(2)]
        runs[workers] = losses, {k: np.array(v) for k, v in t.model.params.items()}
        if t.workers:
            t.workers.close()
    assert runs[True][0] == runs[False][0]
    for name, value in runs[False][1].items():
        assert np.array_equal(runs[True][1][name], value), name


def test_bad_input_in_a_workers_part_is_the_same_one_line_error(numpy_backend):
    class BadRow(Batches):
        def train_batch(self, epoch, index, batch_size, shard=(0, 1)):
            batch = super().train_batch(epoch, index, batch_size, shard)
            batch["input_ids"][5, 3] = 999   # row 5 is in the worker's part (rows 3-6)
            return batch
    threads.use(2)
    t = trainer(True)
    t.data = BadRow()
    with pytest.raises(MinRobertaError, match="999") as caught:
        t.train_step()
    assert "\n" not in str(caught.value) and t.workers is not None
