"""The engine: what makes the reference core fast, installed explicitly by whoever wants speed (the trainer, the
command line, embedding and prediction). A reader learning RoBERTa may skip all of it.

`install()` switches on the fast forms registered here; each computes what an op of ops/ (or the model's
inference layer) computes, faster: in place, on row chunks over the CPU threads, in cache-sized blocks, or in
fused CUDA kernels. tests/test_kernels.py holds every form to its reference. Without `install()`, or with
MINROBERTA_REFERENCE=1 in the environment, every op runs the reference as written.

  threads.py      the thread pool that the CPU forms cut their rows over, or that runs whole tasks side by side
  rows.py         linear's bias, layer norm, softmax, cross-entropy, GELU's products and AdamW in place, on every
                  backend (same bits; on row chunks over the threads on NumPy)
  gelu32.py       GELU's float32 normal CDF from a fitted erfc, in cache-sized blocks
  products.py     matrix products, one per thread
  precision.py    float16 mixed precision and TF32 products, and the loss scaler
  inference.py    attention blocked in the cache, layer norm and GELU in place: the cache-free encoder layer,
                  and the encoder over a pack of batches at once
  scored.py       the training forward's last layer on the scored tokens alone
  fused.py        CUDA kernels (--fused), and CuPy's own erf and normal CDF
  workers.py      worker processes that compute parts of a training batch side by side
  distributed.py  data parallelism over MPI ranks
  trainer.py      the production training loop (loop.py's update, re-implemented): resume, interrupts, metrics
"""

import os

from .. import dispatch
# the order is the order forms are tried in: fused first (it wins when switched on)
from . import fused, gelu32, inference, products, rows, scored, threads, precision  # noqa: F401,E402


_reference = False


def reference(on=True):
    """Ask for the reference core alone (the command line's --reference): `install` then installs nothing."""
    global _reference
    _reference = bool(on)


def reference_requested():
    """--reference, or MINROBERTA_REFERENCE=1 in the environment: whoever asks for the engine gets the core."""
    return _reference or os.environ.get("MINROBERTA_REFERENCE", "0") not in ("", "0")


def install():
    """Switch the fast forms on, or off where the reference was asked for. -> whether they are on."""
    dispatch.install(not reference_requested())
    return dispatch.installed()


def installed():
    return dispatch.installed()


def uninstall():
    """Back to the reference: every op runs as written."""
    dispatch.install(False)
