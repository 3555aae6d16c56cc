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


def clip_or_norm(grads, clip_norm):
    """The gradients clipped in place to clip_norm, or left as they are when it is 0. -> their global norm before
    clipping, a float (the training loops check it is finite)."""
    norm = clip_by_global_norm(grads, clip_norm) if clip_norm > 0 else global_norm(grads)
    return backend.scalar(norm)


def adamw_update(p, g, m, v, decay, beta1, beta2, eps, step_size, bias_correction2_sqrt):
    """One tensor's AdamW update, p, m and v in place (the same operations, in the same order, as torch's):
    p <- p * decay;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - m / (sqrt(v) / sqrt(1 - b2^t) + eps) * lr / (1 - b1^t)."""
    if fast := fast_form("adamw_update", p):         # engine/: blocks over the threads, or one CUDA kernel
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

    One pair of moments per parameter, updated tensor by tensor. (The engine's FlatAdamW keeps them in flat
    buffers and updates all the parameters at once, with the same arithmetic: engine/flat.py.)"""

    def __init__(self, params, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01):
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step_count = 0
        self.decays = {name: p.ndim >= 2 for name, p in params.items()}   # matrices only: not biases or norms
        self.names = self.names_in_order(params)
        self.shapes = {n: tuple(params[n].shape) for n in self.names}
        self.exp_avg, self.exp_avg_sq = self.zero_moments(params)

    def names_in_order(self, params):
        """The order the moments are kept and saved in: the parameters' own."""
        return list(params)

    def zero_moments(self, params):
        """The first and second moments, zero: one array per parameter, keyed like params."""
        xp = backend.xp()
        return ({name: xp.zeros_like(p) for name, p in params.items()},
                {name: xp.zeros_like(p) for name, p in params.items()})

    def hyperparameters(self, lr):
        """This update's step size lr / (1 - b1^t), sqrt(1 - b2^t) and the weight-decay factor 1 - lr wd."""
        self.step_count += 1
        step_size = lr / (1.0 - self.beta1 ** self.step_count)
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2 ** self.step_count)
        decay = 1.0 - lr * self.weight_decay if self.weight_decay else 1.0
        return step_size, bias_correction2_sqrt, decay

    def step(self, params, grads, lr):
        """One update of every parameter, in place. grads: keyed like params."""
        step_size, bias_correction2_sqrt, decay = self.hyperparameters(lr)
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
        """The moments copied in place; a missing or misshapen one is an error naming it."""
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
