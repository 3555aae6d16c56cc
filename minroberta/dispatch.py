"""Where an op may hand its work to a fast form: the registry that minroberta/kernels/ fills and the ops consult.

An op in ops/ is the plain reference. One line near its top asks `fast_form(name, ...)`; when a fast form is
registered for the active backend and settings, that form does the work and returns what the reference would.
With nothing registered, or inside `reference_only()`, every op runs its reference.
"""

import contextlib

_forms = {}        # op name -> [(applies, form)], tried in registration order
_enabled = True


def register(op, applies):
    """Decorator: `form` may stand in for `op` whenever applies(*args given to fast_form) is true."""
    def add(form):
        _forms.setdefault(op, []).append((applies, form))
        return form
    return add


def fast_form(op, *args):
    """The first registered fast form of `op` that applies to `args` now, or None: run the reference."""
    if _enabled:
        for applies, form in _forms.get(op, ()):
            if applies(*args):
                return form
    return None


def registered():
    """op name -> the fast forms registered for it (for the tests that hold each to its reference)."""
    return {op: [form for _, form in entries] for op, entries in _forms.items()}


@contextlib.contextmanager
def reference_only():
    """Every op runs its reference inside this block."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
