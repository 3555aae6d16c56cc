"""The guards at a run's edges: what the commands read, the flags they take, the folder they write, the memory a
model needs, and the state they keep as good. Each refuses with one line naming the file, flag or key.

- files are read only when they are regular files, and at most a stated size (a FIFO would block, /dev/zero
  would never end);
- every numeric flag of every command is checked against one table (finite, in range) before any work, and the
  same table checks the recipe a checkpoint brings back;
- a run folder is locked while a run writes it, and a fresh run refuses a folder holding anything of another
  run's unless --overwrite;
- a model whose arrays cannot fit in this machine's memory is refused with the bytes it would need;
- tensors about to be saved as a good checkpoint or a best model must be finite.
"""

import dataclasses
import errno
import json
import math
import os
import shutil
import stat
import types

from .atomic import kind_of, remove_tree
from .errors import MinRobertaError

# --- files read ----------------------------------------------------------------------------------------

MiB, GiB = 1 << 20, 1 << 30
JSON_LIMIT = 64 * MiB          # config.json, trainer_state.json, special-token and sentence-transformers files
TOKENIZER_LIMIT = 1 * GiB      # tokenizer.json, vocab.json, merges.txt (roberta-base's tokenizer.json: 1.4 MB)
EXAMPLES_LIMIT = 2 * GiB       # a fine-tuning CSV or JSON-lines file
METRICS_LIMIT = 1 * GiB        # metrics.jsonl, read back on a resume
LINE_LIMIT = 16 * MiB          # one text of --file (a file or standard input is read a line at a time)


def one_line(message):
    """A message as one line, whatever the paths in it hold (a file name may contain a line break)."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


def human_bytes(count):
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def require_regular(path, limit=None, missing="no such file"):
    """os.stat of `path` (symlinks followed) when it is a regular file of at most `limit` bytes; else a one-line
    error that says what it is instead."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MinRobertaError(f"{path}: {missing}") from None
    except OSError as exc:   # a symlink loop, a permission denied on the way
        raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise MinRobertaError(f"{path}: is {kind_of(info.st_mode)}, not a regular file")
    if limit is not None and info.st_size > limit:
        raise MinRobertaError(f"{path}: {human_bytes(info.st_size)}, more than the {human_bytes(limit)} such a file "
                              "may hold")
    return info


def open_regular(path, limit=None, missing="no such file"):
    """A binary handle on a regular file (require_regular's checks). O_NONBLOCK so that a FIFO put in its place
    after the check fails the second check instead of blocking."""
    require_regular(path, limit, missing)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MinRobertaError(f"{path}: is not a regular file")
    return os.fdopen(fd, "rb")


def read_regular_file(path, limit):
    """The bytes of a regular file of at most `limit` bytes."""
    with open_regular(path, limit) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise MinRobertaError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > limit:   # it grew after the check
        raise MinRobertaError(f"{path}: more than the {human_bytes(limit)} such a file may hold")
    return data


def load_json(path, limit=JSON_LIMIT):
    """The JSON value of a UTF-8 file; unreadable, damaged or too deeply nested is one line naming it."""
    data = read_regular_file(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: not valid JSON (invalid UTF-8 at byte {exc.start})") from None
    except ValueError as exc:
        raise MinRobertaError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise MinRobertaError(f"{path}: not valid JSON (nested too deeply)") from None


def walk_error(error):
    """os.walk's onerror: a folder that cannot be listed is an error, never skipped."""
    raise MinRobertaError(f"{error.filename}: cannot read directory ({error.strerror})")


def unique_files(paths):
    """`paths` in order, each file once: a path that names a file already listed (through a symlink, a loop of
    them, or twice on the command line) is dropped."""
    seen, kept = set(), []
    for path in paths:
        try:
            info = os.stat(path)
            key = (info.st_dev, info.st_ino)
        except OSError:
            key = ("unreadable", os.path.abspath(path))   # kept: reading it says what is wrong
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


# --- flags ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric flag's allowed values: `kind` (int or float), low..high (None: unbounded), either end open."""
    kind: type = int
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""          # said after an upper bound
    message: str = None    # the whole message instead, with {value}

    def problem(self, value, whole_floats=False):
        """None when `value` is allowed, else what is wrong ('must be ..., got ...'). `whole_floats`: 2600.0 counts
        as a whole number (a recipe read back from JSON)."""
        whole = isinstance(value, int) or (whole_floats and isinstance(value, float) and math.isfinite(value)
                                           and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int and not whole):
            return f"must be {'a whole number' if self.kind is int else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (below or above):
            return None
        if self.message:
            return self.message.format(value=value)
        if self.low is not None and self.high is not None and self.kind is float:
            return (f"must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}, got {value}")
        if above:
            return f"must be at most {self.high}{self.why}, got {value}"
        if self.low_open and self.low == 0:
            return f"must be positive, got {value}"
        return f"must be {'above' if self.low_open else 'at least'} {self.low}, got {value}"


SIZE_LIMIT = 1 << 20   # config.SIZE_LIMIT: no size of a sane model reaches it
SEED = Range(int, 0, 2**63 - 1)
PROBABILITY = Range(float, 0.0, 1.0, low_open=True)   # --mask-prob
DROPOUT = Range(float, 0.0, 1.0, high_open=True)
POSITIVE = Range(float, 0.0, low_open=True)
NON_NEGATIVE = Range(float, 0.0)
COUNT = Range(int, 1)
SIZE = Range(int, 1, SIZE_LIMIT)
# the numeric flags of every command that are not a training recipe's (recipe.py checks those, by the same
# rules wherever a recipe comes from: the command line or a checkpoint); a flag not given (None) is not checked
FLAGS = {
    "pretrain": {"stop_at_step": COUNT, "mpi_timeout": POSITIVE},
    "fill-mask": {"top_k": COUNT},
    "predict": {"max_length": COUNT, "batch_tokens": COUNT},
    "embed": {"max_length": COUNT, "batch_tokens": COUNT},
    "attention": {},
    "masking": {"batch_size": Range(int, 1, 64, why=" (a picture of more sequences cannot be read)"),
                "seq_len": Range(int, 3, SIZE_LIMIT), "mask_prob": PROBABILITY,
                "epochs": Range(int, 1, 16, why=" (a picture of more panels cannot be read)"), "seed": SEED},
}
THREADS = Range(int, 1, message="threads must be a whole number of at least 1, got {value}")
PATHS = ("out", "corpus", "model", "train", "eval", "tokenizer", "file", "output")   # an empty one names nothing


def check_flags(args):
    """Every numeric flag of args.command against FLAGS (and --threads), before anything is read or written; a
    training command's recipe flags are its recipe's to check (cli.main)."""
    rules = dict(FLAGS.get(args.command, {}))
    for dest, rule in rules.items():
        value = getattr(args, dest, None)
        if value is not None and (problem := rule.problem(value)):
            raise MinRobertaError(f"--{dest.replace('_', '-')} {problem}")
    if getattr(args, "threads", None) is not None and (problem := THREADS.problem(args.threads)):
        raise MinRobertaError(problem if THREADS.message else f"--threads {problem}")
    for dest in PATHS:
        value = getattr(args, dest, None)
        if value is not None and any(not path.strip() for path in (value if isinstance(value, list) else [value])):
            raise MinRobertaError(f"--{dest} names no path (an empty string)")


def usable_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cap_threads(requested, say):
    """--threads at most the usable cores (more would only add interpreters and contention), said when cut."""
    cores = usable_cores()
    if requested > cores:
        say(f"--threads {requested}: this process may use {cores} core{'s' * (cores != 1)}; using {cores}")
        return cores
    return requested


# --- trainer state read back ---------------------------------------------------------------------------

STATE_NUMBERS = {"step": Range(int, 0), "optimizer_steps": Range(int, 0)}


def check_settings(state, path, settings_type):
    """The recipe a checkpoint keeps as its settings, read as a resume reads it (settings_type.from_saved,
    recipe.py): each value of its field's type and within its bounds."""
    settings = state.get("settings")
    if not isinstance(settings, dict):
        raise MinRobertaError(f"{path}: \"settings\" is missing or not a JSON object")
    for name in ("steps", "warmup", "batch_size"):   # an older checkpoint may lack a later setting, never these
        if name not in settings:
            raise MinRobertaError(f"{path}: settings has no {name!r}")
    settings_type.from_saved(state, path)


def check_trainer_state(state, path, settings_type, complete=True):
    """A checkpoint's trainer_state.json as written by Trainer.save_checkpoint: the step within the run's
    settings, every setting of the right type and range (recipe.py's rules). `complete`: the
    settings must be there (a checkpoint to resume from needs them)."""
    if not isinstance(state, dict):
        raise MinRobertaError(f"{path}: expected a JSON object, got {type(state).__name__}")
    settings = state.get("settings")
    if settings is not None or complete:
        check_settings(state, path, settings_type)
    for key, rule in STATE_NUMBERS.items():
        if key not in state:
            raise MinRobertaError(f"{path}: no {key!r}")
        if problem := rule.problem(state[key]):
            raise MinRobertaError(f"{path}: {key} {problem}")
    if settings is not None and state["step"] > settings["steps"]:
        raise MinRobertaError(f"{path}: step {state['step']} is past the run's {settings['steps']} steps")
    if state["optimizer_steps"] > state["step"]:
        raise MinRobertaError(f"{path}: optimizer_steps {state['optimizer_steps']} is more than step {state['step']}")
    for key in ("global_batch", "ranks"):
        if state.get(key) is not None and (problem := SIZE.problem(state[key])):
            raise MinRobertaError(f"{path}: {key} {problem}")
    if state.get("best") is not None and (problem := Range(float).problem(state["best"])):
        raise MinRobertaError(f"{path}: best {problem}")
    last = state.get("last_eval")
    if last is not None:   # a finished run reports it again on a resume
        needed = ("step",) + settings_type.LAST_EVAL
        if not isinstance(last, dict) or any(k not in last for k in needed) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in last.values()):
            raise MinRobertaError(f"{path}: last_eval must be a JSON object of numbers with {', '.join(needed)}, "
                                  f"got {json.dumps(last)[:80]}")


def first_nonfinite(tensors):
    """The name of the first tensor holding a NaN or an infinity, or None."""
    from . import backend
    xp = backend.xp()
    for name, value in tensors.items():
        if not bool(backend.to_host(xp.isfinite(value).all())):
            return name
    return None


def require_finite_tensors(tensors, path):
    if (name := first_nonfinite(tensors)) is not None:
        raise MinRobertaError(f"{path}: tensor {name} holds NaN or infinite values")


# --- memory --------------------------------------------------------------------------------------------

def memory_bytes():
    """The memory this process may use: physical memory, or less under a cgroup limit."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def training_bytes(config, batch_size, seq_len, itemsize, lm_head=True):
    """A lower bound on the bytes a training run holds at once: parameters, their gradients and AdamW's two
    moments, and one micro-batch's activations (each layer keeps its input, attention probabilities and the
    intermediate layer for the backward pass; a masked LM, vocabulary-wide logits). -> (total, parameters and
    optimizer, activations)."""
    V, C, F, L = config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    H, P = config.num_attention_heads, config.max_position_embeddings
    parameters = (V + P + config.type_vocab_size) * C + 2 * C + L * (4 * C * C + 2 * C * F + 9 * C + F) \
        + C * C + 3 * C + V                                                        # embeddings, layers, MLM head
    B, T = batch_size, seq_len
    activations = L * (B * H * T * T + 2 * B * T * C + B * T * F) + (B * T * V if lm_head else 0)
    held = 4 * parameters * itemsize
    return held + activations * itemsize, held, activations * itemsize


def stand_in_tokenizer(vocab_size):
    """What a model's config reads of a tokenizer, before there is one: its size and RoBERTa's special ids."""
    return types.SimpleNamespace(vocab_size=max(4, vocab_size), pad_id=1, bos_id=0, eos_id=2)


def flags_text(args, dests):
    """'--preset micro --seq-len 32': the flags of `dests` that are set, as the command line gives them."""
    return " ".join(f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest in dests
                    if getattr(args, dest, None) is not None)


def require_room(config, batch_size, seq_len, dtype, described, lm_head=True):
    """Refuse, before anything is allocated, a model and micro-batch that cannot fit in memory."""
    import numpy as np
    total, held, activations = training_bytes(config, batch_size, seq_len, np.dtype(dtype).itemsize, lm_head)
    available = memory_bytes()
    if total > available:
        raise MinRobertaError(f"{described} needs at least {human_bytes(total)} of memory (parameters and AdamW "
                              f"state {human_bytes(held)}, one micro-batch's activations {human_bytes(activations)}); "
                              f"this machine has {human_bytes(available)}")


# --- the run folder ------------------------------------------------------------------------------------

LOCK = ".minroberta.lock"
# what a run writes at the top of its folder (and checkpoints/): an earlier run's, refused without --overwrite
RUN_FILES = ("model.safetensors", "config.json", "tokenizer.json", "vocab.json", "merges.txt", "vocab.txt",
             "tokenizer_config.json", "special_tokens_map.json", "metrics.jsonl", "checkpoints")
PREPARED = "prepared"   # the run's own prepared corpus, reused by the next run, never another run's output
# what a killed write leaves at the top of a run folder: atomic.py's temporary files and trash, prepared.py's
# half-made corpus
LEFTOVER_PREFIXES = (".tmp-", f".partial-{PREPARED}-")
LEFTOVER_NAMES = frozenset(f".trash-{name}" for name in RUN_FILES + (PREPARED,))
_held = []   # (fd, path) of the locks this process holds
_made = []   # run folders this process created, deepest first: removed at release if the run left them empty


class RunFolder:
    """The --out folder of a training run: locked while the run writes it, and, for a fresh run, holding
    nothing of another run's (unless --overwrite, which removes the files an earlier run wrote, and only those).
    Leftovers of an attempt that never reached a checkpoint (metrics.jsonl, half-written checkpoints, a
    half-prepared corpus, a stale lock) are this run's to replace."""

    def __init__(self, path, resume=False, overwrite=False, say=print, reads=(), main=True):
        self.path, self.resume, self.overwrite, self.say, self.main = path, resume, overwrite, say, main
        if resume and overwrite:
            raise MinRobertaError("--resume continues the run in --out and --overwrite replaces it; give one")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise MinRobertaError(f"--out {path}: is {describe(path)}, not a folder")
        for other in reads:   # folders the run reads from, which it must not write over
            if other and os.path.isdir(other) and os.path.isdir(path) and os.path.samefile(other, path):
                raise MinRobertaError(f"--out {path} is the folder the run reads its model from; writing there "
                                      "would replace it: choose another --out")
        if main:   # under MPI rank 0 alone guards and writes the folder, locked before the run's first write
            missing, folder = [], os.path.abspath(path)
            while not os.path.isdir(folder):
                missing.append(folder)
                folder = os.path.dirname(folder)
            os.makedirs(path, exist_ok=True)
            _made.extend(missing)
            self.take()

    def check_fresh(self):
        if self.resume or self.overwrite:
            return
        found = others_files(self.path)
        if not found:
            return
        if found[0] == "checkpoints":
            raise MinRobertaError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                                  "start over, or choose another --out")
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise MinRobertaError(f"{self.path} already holds {shown}; pass --overwrite to replace them or choose "
                              "another --out")

    def create(self):
        """Make the folder on every rank just before the run writes its checkpoints; with --overwrite, clear an
        earlier run's files now, after every input has been read and checked."""
        os.makedirs(self.path, exist_ok=True)
        if not self.main:
            return
        if self.overwrite and not self.resume:
            removed = [name for name in RUN_FILES if os.path.lexists(os.path.join(self.path, name))]
            for name in removed:
                target = os.path.join(self.path, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    remove_tree(target)
                else:
                    os.unlink(target)
            if removed:
                self.say(f"--overwrite: removed the earlier run's {', '.join(removed)} from {self.path}")

    def take(self):
        """Lock the folder, refuse another run's files, then remove what a killed write of this folder left (a
        half-prepared corpus, a half-removed checkpoints folder, a temporary file): with the lock held, no live
        write can own them."""
        acquire(os.path.join(self.path, LOCK), self.path, self.say)
        self.check_fresh()
        for name in os.listdir(self.path):
            if interrupted_write(name):
                full = os.path.join(self.path, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full, ignore_errors=True)
                else:
                    os.unlink(full)


def describe(path):
    try:
        return kind_of(os.stat(path).st_mode) if not os.path.isfile(path) else "a file"
    except OSError:
        return "a broken link"


def interrupted_write(name):
    return name.startswith(LEFTOVER_PREFIXES) or name in LEFTOVER_NAMES


def others_files(path):
    """Names of what `path` holds that is not the leftover of an attempt without a checkpoint: checkpoints/
    first when it holds one."""
    found = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name == LOCK or interrupted_write(name):
            continue
        if name == "metrics.jsonl" and os.path.isfile(full) and not os.path.islink(full):
            continue
        if name == PREPARED and os.path.isdir(full) and not os.path.islink(full):
            continue   # a prepared corpus (prepared.py) is reused, not another run's output
        if name == "checkpoints" and os.path.isdir(full) and not os.path.islink(full):
            if all(n.startswith((".partial-", ".trash-", ".tmp-")) for n in os.listdir(full)):
                continue
            found.insert(0, name)
            continue
        found.append(name + "/" if os.path.isdir(full) else name)
    return found


def acquire(lock_path, folder, say):
    """An exclusive flock on `lock_path`, held until release_locks (or the process ends: the kernel lets go of a
    killed run's lock, so a folder is never left locked). The holder's pid is written in the file."""
    import fcntl
    lock_path = os.path.abspath(lock_path)
    while True:
        try:   # never through a link, never waiting on a FIFO put there
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise MinRobertaError(f"{lock_path}: cannot open the run's lock file ({exc.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            kind = kind_of(os.fstat(fd).st_mode)
            os.close(fd)
            raise MinRobertaError(f"{lock_path}: is {kind}, not the run's lock file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MinRobertaError(f"{folder} is in use by another run (pid {holder or 'unknown'}); wait for it "
                                      "to end or choose another --out") from None
            say(f"warning: {folder}: cannot lock it ({exc.strerror}); do not start a second run on it")
            return
        try:   # a holder that ended between our open and flock removed the file: lock the one now there
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    if previous and previous != str(os.getpid()):
        say(f"{folder}: the lock of run pid {previous}, which ended without releasing it, is taken over")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held.append((fd, lock_path))


def release_locks():
    """Let go of this process's run locks (removing their files: a folder left by a finished run holds none),
    then remove the folders this process made that a refused run left empty."""
    while _held:
        fd, path = _held.pop()
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
    for folder in _made:
        try:
            os.rmdir(folder)
        except OSError:   # not empty: the run wrote there
            pass
    _made.clear()
