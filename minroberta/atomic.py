"""Atomic file writes: a temporary file in the same directory, flushed to disk, then renamed over the target.

A reader (or a resumed run after a crash) sees either the old file or the new one, never half of one.
"""

import contextlib
import json
import os
import stat
import tempfile

# the process's umask, read once (reading it means setting it): a temporary file is created private (0600), and
# the renamed result should get the mode any new file of the user's gets
_UMASK = os.umask(0o022)
os.umask(_UMASK)


KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode):
    """What a file that is not a regular one is, by its st_mode."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


@contextlib.contextmanager
def replacing(path):
    """A binary handle on a temporary file beside `path`, renamed over it when the block ends (and removed if
    the block raises): for a file written piece by piece, such as a stream of results."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isfile(path):   # a folder, a FIFO, /dev/null: never renamed over
        from .errors import MinRobertaError
        raise MinRobertaError(f"{path}: is {kind_of(os.stat(path).st_mode)}, not a file to write; nothing written")
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    except FileNotFoundError:   # name the folder the user gave, not the temporary file
        raise FileNotFoundError(2, "no such directory to write into", directory) from None
    except OSError as exc:      # a read-only folder, a full disk: the file the user knows, again
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(exc, OSError) and exc.filename in (None, temporary):   # disk full: name the file the user
            raise OSError(exc.errno, exc.strerror, path) from None                # knows, never the temporary one
        raise
    sync_directory(directory)


def write_bytes(path, data):
    with replacing(path) as handle:
        handle.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def remove_tree(path):
    """Delete a directory so that a kill midway never leaves a half-deleted one under its name: it is first
    renamed to a hidden sibling, then removed."""
    import shutil
    parent, name = os.path.split(os.path.abspath(path))
    doomed = os.path.join(parent, f".trash-{name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def sync_directory(directory):
    """Make a rename durable: fsync the directory entry too (a no-op where the OS does not allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
