"""AdamW over flat buffers: the parameters, their gradients and both moments each laid end to end in one 1-D
array, the decayed matrices first. A step is then one update over the decayed block and one over the rest,
instead of one per tensor (dozens of small tensors in a small model, each a round of NumPy calls). The update
is elementwise, so it gives the per-tensor AdamW's bits (tests/test_optim.py)."""

import math

from .. import backend
from ..errors import MinRobertaError
from ..optim import AdamW, adamw_update


def flat_views(flat, names, shapes):
    """name -> the view of `flat` (1-D, the tensors laid end to end in the order of `names`) in its shape."""
    views, offset = {}, 0
    for name in names:
        size = math.prod(shapes[name])
        views[name] = flat[offset:offset + size].reshape(shapes[name])
        offset += size
    return views


class FlatAdamW(AdamW):
    """optim.AdamW with its moments in one flat buffer each, a view per parameter. Parameters handed to `hold`
    move into a third such buffer, and gradients into a fourth (`gather`); `step` on those is one update per
    block. Parameters held otherwise are updated tensor by tensor, as AdamW does."""

    def __init__(self, params, **settings):
        super().__init__(params, **settings)
        self.decayed_size = sum(params[n].size for n in self.names if self.decays[n])
        dtypes = {params[n].dtype for n in self.names}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else None          # one flat buffer needs one dtype
        self.held, self.gradients = None, None                            # set together, by `hold`

    def names_in_order(self, params):
        """The decayed matrices first: one update covers them, one the rest."""
        return [n for n in params if self.decays[n]] + [n for n in params if not self.decays[n]]

    def zero_moments(self, params):
        """Both moments in one flat buffer each, laid out in names_in_order, and a view per parameter. (With
        several dtypes, the buffers take the first parameter's.)"""
        xp = backend.xp()
        dtype = next(iter(params.values())).dtype
        self._flat_exp_avg, self._flat_exp_avg_sq = (xp.zeros(self._size(), dtype=dtype) for _ in range(2))
        return self._views(self._flat_exp_avg), self._views(self._flat_exp_avg_sq)

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
        if grads is not self.gradients:   # None before `hold`, which sets it together with self.held
            return super().step(params, grads, lr)
        if any(params[name] is not self.held[name] for name in self.names):
            raise MinRobertaError("the gathered gradients need the parameters FlatAdamW.hold gave")
        step_size, bias_correction2_sqrt, decay = self.hyperparameters(lr)
        m, v = self._flat_exp_avg, self._flat_exp_avg_sq
        for part, part_decay in ((slice(0, self.decayed_size), decay), (slice(self.decayed_size, None), 1.0)):
            adamw_update(self._flat_params[part], grads[part], m[part], v[part], part_decay, self.beta1,
                         self.beta2, self.eps, step_size, bias_correction2_sqrt)
