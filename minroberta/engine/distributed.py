"""Data parallelism over MPI: rank and world size, the all-reduce of gradients in a few large buckets, and
a timeout on every collective so a dead rank stops the job instead of hanging it. One process: a no-op.

Launched as `mpiexec -n N minroberta pretrain ...`, each rank computes the gradient of its share of every
global micro-batch; the sum over ranks is the gradient of the whole batch, and every rank applies the same
update, so the replicas never drift apart. On CuPy the buffers stay on the device when MPI is CUDA-aware.
"""

import os
import sys
import time

import numpy as np

from .. import backend
from ..errors import MinRobertaError

BUCKET_BYTES = 32 << 20          # gradients travel in buckets of about 32 MiB: few calls, bounded memory
DEFAULT_TIMEOUT = 300.0          # seconds a collective may wait before the job is declared broken
MPI_ENVIRONMENT = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


class Single:
    """The world of one process: every collective is the identity."""

    rank, size, is_main = 0, 1, True

    def allreduce_grads(self, grads):
        return grads

    def allreduce_scalars(self, values):
        return list(values)

    def broadcast_bytes(self, data):
        return data

    def barrier(self):
        pass


class MPIWorld:
    """Ranks of an MPI job (mpi4py). Collectives are non-blocking calls polled against a deadline."""

    def __init__(self, timeout=DEFAULT_TIMEOUT):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_main = self.rank == 0
        self.timeout = timeout

    def _wait(self, request, what):
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                sys.stderr.write(f"error: rank {self.rank}: {what} did not complete within {self.timeout:.0f} s; "
                                 "another rank has probably died. Stopping the job; resume from the last "
                                 "checkpoint with --resume\n")
                sys.stderr.flush()
                self.comm.Abort(3)
            time.sleep(0.0005)

    def allreduce_grads(self, grads):
        """Sum every gradient over the ranks, in place, packed into flat buckets of about BUCKET_BYTES."""
        xp = backend.xp()
        names = list(grads)
        start = 0
        while start < len(names):
            bucket, size = [], 0
            while start < len(names) and (not bucket or size + grads[names[start]].nbytes <= BUCKET_BYTES):
                bucket.append(names[start])
                size += grads[names[start]].nbytes
                start += 1
            flat = xp.concatenate([grads[n].reshape(-1) for n in bucket])
            host = backend.to_host(flat) if backend.name() != "numpy" else flat
            host = np.ascontiguousarray(host)
            self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM), "the gradient all-reduce")
            flat = backend.to_device(host) if backend.name() != "numpy" else host
            offset = 0
            for n in bucket:
                count = grads[n].size
                grads[n] = flat[offset:offset + count].reshape(grads[n].shape)
                offset += count
        return grads

    def allreduce_scalars(self, values):
        buffer = np.array(values, dtype=np.float64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM), "a metric all-reduce")
        return buffer.tolist()

    def broadcast_bytes(self, data):
        """Rank 0's bytes to every rank, as raw buffers (no pickling)."""
        length = np.array([len(data) if self.is_main else 0], dtype=np.int64)
        self._wait(self.comm.Ibcast(length, root=0), "a broadcast")
        buffer = np.frombuffer(data, dtype=np.uint8).copy() if self.is_main else np.empty(int(length[0]), np.uint8)
        self._wait(self.comm.Ibcast(buffer, root=0), "a broadcast")
        return buffer.tobytes()

    def barrier(self):
        self._wait(self.comm.Ibarrier(), "a barrier")


def launched_by_mpi():
    return any(name in os.environ for name in MPI_ENVIRONMENT)


def world(timeout=DEFAULT_TIMEOUT):
    """The MPI world when this process was started by mpiexec with more than one rank, else `Single()`."""
    if not launched_by_mpi():
        return Single()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise MinRobertaError("started under mpiexec but mpi4py is not installed (pip install -e '.[mpi]')") from None
    mpi_world = MPIWorld(timeout)
    return mpi_world if mpi_world.size > 1 else Single()
