"""AdamW with bias correction and decoupled weight decay, the warmup-then-linear-decay schedule, and clipping.

RoBERTa's defaults: betas (0.9, 0.98), eps 1e-6, weight decay 0.01 on matrices only (never on biases or
LayerNorm weights, which are the 1-D parameters). The update follows torch.optim.AdamW operation for operation,
so the two agree to rounding.
"""

import math

from . import backend
from .dispatch import fast_form
from .errors import MinRobertaError


def linear_schedule(update, peak_lr, warmup, total):
    """Learning rate of update number `update` (0-based): linear warmup to peak over `warmup` updates,
    then linear decay that would reach zero at update `total` (so the last update still moves)."""
    if update < warmup:
        return peak_lr * (update + 1) / warmup
    return peak_lr * max(0.0, (total - update) / max(1, total - warmup))


def global_norm(grads):
    """sqrt of the sum of squares of every gradient, as a 0-d device array (no host round-trip). Each sum of
    squares is a dot product of the gradient with itself: no squares array is made."""
    xp = backend.xp()
    return xp.sqrt(sum(xp.vdot(g, g) for g in grads.values()))


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)), as torch's clip_grad_norm_. Returns the norm."""
    xp = backend.xp()
    norm = global_norm(grads)
    scale = xp.minimum(1.0, max_norm / (norm + 1e-6)).astype(next(iter(grads.values())).dtype)
    for g in grads.values():
        g *= scale
    return norm


def flat_views(flat, names, shapes):
    """name -> the view of `flat` (1-D, the tensors laid end to end in the order of `names`) in its shape."""
    views, offset = {}, 0
    for name in names:
        size = math.prod(shapes[name])
        views[name] = flat[offset:offset + size].reshape(shapes[name])
        offset += size
    return views


def adamw_update(p, g, m, v, decay, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """One tensor's AdamW update, p, m and v in place (the same operations, in the same order, as torch's):
    p <- p * decay;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - m / (sqrt(v) / sqrt(1 - b2^t) + eps) * lr / (1 - b1^t)."""
    if fast := fast_form("adamw_update", p):         # kernels/: blocks over the threads, or one CUDA kernel
        return fast(p, g, m, v, decay, beta1, beta2, eps, step_size, bias_correction2_sqrt)
    if decay != 1.0:
        p *= decay
    m *= beta1
    m += g * (1.0 - beta1)
    v *= beta2
    v += g * g * (1.0 - beta2)
    p -= m / (backend.xp().sqrt(v) / bias_correction2_sqrt + eps) * step_size


class AdamW:
    """m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  p <- p (1 - lr wd) - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).

    The moments live in one flat buffer each, a view per parameter, the decayed matrices first. Parameters
    handed to `hold` move into a third such buffer, and gradients into a fourth (`gather`); a step on those
    is then one update over the decayed block and one over the rest, instead of one per tensor (dozens of
    small tensors in a small model, each a round of calls). Parameters held otherwise are updated tensor by
    tensor, with the same arithmetic."""

    def __init__(self, params, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01):
        xp = backend.xp()
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step_count = 0
        self.decays = {name: p.ndim >= 2 for name, p in params.items()}
        self.names = [n for n in params if self.decays[n]] + [n for n in params if not self.decays[n]]
        self.shapes = {n: tuple(params[n].shape) for n in self.names}
        self.decayed_size = sum(params[n].size for n in self.names if self.decays[n])
        dtypes = {params[n].dtype for n in self.names}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else None          # one flat buffer needs one dtype
        dtype = self.dtype or next(iter(params.values())).dtype
        self._flat_exp_avg, self._flat_exp_avg_sq = (xp.zeros(self._size(), dtype=dtype) for _ in range(2))
        self.exp_avg, self.exp_avg_sq = self._views(self._flat_exp_avg), self._views(self._flat_exp_avg_sq)
        self.held, self.gradients = None, None

    def _size(self):
        return sum(math.prod(shape) for shape in self.shapes.values())

    def _views(self, flat):
        return flat_views(flat, self.names, self.shapes)

    def hold(self, params, flat=None):
        """params copied into one flat buffer (`flat`, 1-D, if given: memory another process maps, say): -> a dict
        of views into it, to use as the model's parameters (the dict given is left as it was). With several
        dtypes, params itself."""
        if self.dtype is None:
            return params
        if flat is None:
            flat = backend.xp().empty(self._size(), dtype=self.dtype)
        elif flat.shape != (self._size(),) or flat.dtype != self.dtype:
            raise MinRobertaError(f"a flat parameter buffer must be ({self._size()},) {self.dtype}, got "
                                  f"{flat.shape} {flat.dtype}")
        self.held = self._views(flat)
        for name in self.names:
            self.held[name][...] = params[name]
        self._flat_params = flat
        self.gradients = backend.xp().empty_like(flat)
        self._gradient_views = self._views(self.gradients)
        return dict(self.held)

    def gather(self, grads):
        """grads copied into the flat gradient buffer (laid out as the held parameters): -> that 1-D buffer,
        for clipping and `step` in one pass each. None when no parameters are held."""
        if self.held is None:
            return None
        for name in self.names:
            self._gradient_views[name][...] = grads[name]
        return self.gradients

    def step(self, params, grads, lr):
        """One update of every parameter, in place. grads: keyed like params, or the buffer `gather` gave (with
        params the dict `hold` gave): then one update over all of them."""
        self.step_count += 1
        step_size = lr / (1.0 - self.beta1 ** self.step_count)
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** self.step_count)
        decay = 1.0 - lr * self.weight_decay if self.weight_decay else 1.0
        if grads is self.gradients and self.held is not None:
            if any(params[name] is not self.held[name] for name in self.names):
                raise MinRobertaError("the gathered gradients need the parameters AdamW.hold gave")
            m, v = self._flat_exp_avg, self._flat_exp_avg_sq
            for part, part_decay in ((slice(0, self.decayed_size), decay), (slice(self.decayed_size, None), 1.0)):
                adamw_update(self._flat_params[part], grads[part], m[part], v[part], part_decay, self.beta1,
                             self.beta2, self.eps, step_size, bias_correction2_sqrt)
            return
        for name, p in params.items():
            adamw_update(p, grads[name], self.exp_avg[name], self.exp_avg_sq[name],
                         decay if self.decays[name] else 1.0, self.beta1, self.beta2, self.eps, step_size,
                         bias_correction2_sqrt)

    # --- checkpointing: the moments as named arrays, the rest as plain numbers
    def state_arrays(self):
        arrays = {f"exp_avg.{k}": v for k, v in self.exp_avg.items()}
        arrays.update({f"exp_avg_sq.{k}": v for k, v in self.exp_avg_sq.items()})
        return arrays

    def load_state_arrays(self, arrays, step_count, source="optimizer state"):
        """The moments copied into their flat buffers; a missing or misshapen one is an error naming it."""
        for moments, prefix in ((self.exp_avg, "exp_avg."), (self.exp_avg_sq, "exp_avg_sq.")):
            for name in self.names:
                key = prefix + name
                if key not in arrays:
                    raise MinRobertaError(f"{source}: no tensor {key}")
                if tuple(arrays[key].shape) != self.shapes[name]:
                    raise MinRobertaError(f"{source}: tensor {key} has shape {tuple(arrays[key].shape)}, "
                                          f"expected {self.shapes[name]}")
                moments[name][...] = backend.to_device(arrays[key])
        self.step_count = step_count
