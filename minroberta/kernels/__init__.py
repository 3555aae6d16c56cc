"""The fast forms: machinery a reader learning RoBERTa may skip. Each computes what an op of ops/ (or the model's
inference layer) computes, faster: in place, on row chunks over the CPU threads, in cache-sized blocks, or in
fused CUDA kernels. Importing this package registers them (dispatch.py); tests/test_kernels.py holds every
registered form to its reference.

  threads.py     the thread pool that the CPU forms cut their rows over, or that runs whole tasks side by side
  rows.py        linear's bias, layer norm, softmax, cross-entropy, GELU's products and AdamW in place, on every
                 backend (same bits; on row chunks over the threads on NumPy)
  gelu32.py      GELU's float32 normal CDF from a fitted erfc, in cache-sized blocks
  products.py    matrix products, one per thread
  inference.py   attention blocked in the cache, layer norm and GELU in place: the cache-free encoder layer,
                 and the encoder over a pack of batches at once
  fused.py       CUDA kernels (--fused), and CuPy's own erf and normal CDF
"""

from . import fused, gelu32, inference, products, rows, threads  # noqa: F401  (fused first: it wins when on)
