"""Where an op may hand its work to a fast form: the registry that the engine fills, and that stays off until the
engine is installed.

An op in ops/ is the plain reference. One line near its top asks `fast_form(name, ...)`. Until
`minroberta.engine.install()` has run, that answer is always None, so the reference runs exactly as written.
Once installed, a form registered for the op that applies to the active backend and settings does the work and
returns what the reference would. `reference_only()` turns the forms off again for a block.
"""

import contextlib

_forms = {}        # op name -> [(applies, form)], tried in registration order
_installed = False

# how the error ends for an engine setting asked for with the engine off; the asker raises it (this module imports
# nothing of the package, not even errors.py: tests/test_imports.py)
ENGINE_OFF = ("the engine's, which is off (--reference, MINROBERTA_REFERENCE=1, or minroberta.engine.install() "
              "not called)")


def register(op, applies):
    """Decorator: `form` may stand in for `op` whenever applies(*args given to fast_form) is true, once installed."""
    def add(form):
        _forms.setdefault(op, []).append((applies, form))
        return form
    return add


def always(*_):
    """A form's `applies` when it stands in on every backend and setting."""
    return True


def install(on=True):
    """Switch the registered forms on (or off): the engine's `install` calls this, nothing else should."""
    global _installed
    _installed = bool(on)


def installed():
    return _installed


def fast_form(op, *args):
    """The first registered fast form of `op` that applies to `args` now, or None: run the reference."""
    if _installed:
        for applies, form in _forms.get(op, ()):
            if applies(*args):
                return form
    return None


def registered():
    """op name -> the fast forms registered for it (for the tests that hold each to its reference)."""
    return {op: [form for _, form in entries] for op, entries in _forms.items()}


@contextlib.contextmanager
def reference_only():
    """Every op runs its reference inside this block, installed or not."""
    global _installed
    previous, _installed = _installed, False
    try:
        yield
    finally:
        _installed = previous
