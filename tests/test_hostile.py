"""A campaign of hostile input against every command: damaged and odd files (FIFOs, devices, symlink loops, sparse
giants, deep JSON), shared and occupied run folders, out-of-range and non-finite flags, damaged checkpoint
state, and runs that blow up. Each case runs the command as a user would and expects either a refusal (exit
status 2, one last line `error: ...` naming the file, flag or key, no traceback, nothing of the user's lost) or a
correct result.

The table CASES holds them all. CI runs the cases marked fast; the whole battery:

    MINROBERTA_HOSTILE=all pytest -q tests/test_hostile.py

and MINROBERTA_HOSTILE_TABLE=FILE also writes the table of cases by command and verdict to FILE (markdown).
"""

import collections
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minroberta.checkpoint import load_pretrained, read_safetensors
from minroberta.cli import main
from minroberta.engine.trainer import list_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = os.environ.get("MINROBERTA_HOSTILE") == "all"
TIMEOUT_S = 90   # a subprocess case that takes longer has hung
RESULTS = []     # (command, verdict, passed) for the table


# --- the shared material: a corpus, a small pretrained model, fine-tuning files -------------------------

@pytest.fixture(scope="module")
def w(tmp_path_factory):
    from minroberta.corpus import stdlib_documents
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(d for _, d in zip(range(200), stdlib_documents())), encoding="utf-8")
    model = root / "model"
    assert main(["pretrain", "--preset", "micro", "--corpus", str(corpus), "--threads", "1", "--batch-size", "4",
                 "--steps", "2", "--seq-len", "16", "--vocab-size", "300", "--eval-batches", "2",
                 "--out", str(model)]) == 0
    rows = [(f"a text about {'cats' if i % 2 else 'dogs'} number {i}", "cat" if i % 2 else "dog") for i in range(12)]
    classify = root / "classify.csv"
    classify.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows), encoding="utf-8")
    regress = root / "regress.csv"
    regress.write_text("text,label\n" + "".join(f"{t},{i / 4}\n" for i, (t, _) in enumerate(rows)), encoding="utf-8")
    classifier = root / "classifier"
    assert main(["finetune", "--model", str(model), "--task", "classify", "--train", str(classify), "--eval",
                 str(classify), "--threads", "1", "--batch-size", "4", "--epochs", "1", "--out", str(classifier)]) == 0
    return Material(root=root, corpus=str(corpus), model=str(model), classify=str(classify), regress=str(regress),
                    classifier=str(classifier))


@dataclasses.dataclass
class Material:
    root: object
    corpus: str
    model: str
    classify: str
    regress: str
    classifier: str

    def pretrain(self, out, *extra):
        return ["pretrain", "--preset", "micro", "--corpus", self.corpus, "--threads", "1", "--batch-size", "4",
                "--steps", "4", "--seq-len", "16", "--vocab-size", "300", "--eval-batches", "2", "--out", str(out),
                *map(str, extra)]

    def finetune(self, out, *extra, train=None, eval=None, task="classify"):
        data = self.classify if task in ("classify",) else self.regress
        return ["finetune", "--model", self.model, "--task", task, "--train", str(train or data),
                "--eval", str(eval or data), "--threads", "1", "--batch-size", "4", "--epochs", "1",
                "--out", str(out), *map(str, extra)]

    def copy_model(self, where, without=("checkpoints", "metrics.jsonl")):
        shutil.copytree(self.model, where, ignore=shutil.ignore_patterns(*without))
        return str(where)


# --- running a case --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Ran:
    status: int
    out: str
    err: str

    @property
    def error(self):
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_here(argv, capsys):
    capsys.readouterr()
    status = main([str(a) for a in argv])
    printed = capsys.readouterr()
    return Ran(status, printed.out, printed.err)


def run_apart(argv, **popen):
    """The command in its own interpreter (FIFOs, locks, closed standard input): a hang is a failure."""
    env = popen.pop("env", {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    try:
        done = subprocess.run([sys.executable, "-m", "minroberta.cli", *map(str, argv)], capture_output=True,
                              text=True, timeout=TIMEOUT_S, env=env, **popen)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {argv}")
    return Ran(done.returncode, done.stdout, done.stderr)


def refused(ran, *names):
    """Exit 2, one `error:` line and last, no traceback, naming each of `names`."""
    assert "Traceback" not in ran.err, ran.err
    assert ran.status == 2, (ran.status, ran.err[-2000:])
    errors = [line for line in ran.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and ran.error == errors[0], ran.err[-2000:]
    for name in names:
        assert str(name) in ran.error, (name, ran.error)
    assert ".tmp-" not in ran.error and ".partial-" not in ran.error, ran.error


def worked(ran):
    assert "Traceback" not in ran.err, ran.err
    assert ran.status == 0, (ran.status, ran.err[-2000:])


def all_checkpoints_load(out):
    for checkpoint in list_checkpoints(out):
        load_pretrained(checkpoint)   # raises on a NaN or infinite tensor
        moments = read_safetensors(os.path.join(checkpoint, "optimizer.safetensors"))
        assert all(np.all(np.isfinite(v)) for v in moments.values()), checkpoint


def fifo(path):
    os.mkfifo(path)
    return str(path)


def sparse(path, size):
    with open(path, "wb") as handle:
        handle.truncate(size)
    return str(path)


def nested(depth=100_000):
    return "[" * depth + "]" * depth


def mean_sequences(err):
    """The "N training and M validation sequences" line of a pretraining run."""
    return next(line for line in err.splitlines() if "validation sequences" in line)


# --- the cases ---------------------------------------------------------------------------------------------
# Each case: case(w, tmp, capsys) -> None, raising on failure. `command` and `verdict` ("refused" or "works")
# are for the table; `fast` ones run in CI.

Case = collections.namedtuple("Case", "name command verdict fast run")
CASES = []


def case(command, verdict, fast=True):
    def register(function):
        CASES.append(Case(function.__name__, command, verdict, fast, function))
        return function
    return register


def flag_case(command, name, argv_of, *names, fast=True):
    """A numeric flag outside its range: refused before anything is written."""
    def run(w, tmp, capsys):
        argv = argv_of(w, tmp)
        ran = run_here(argv, capsys)
        refused(ran, *names)
        if "--out" in argv:
            out = argv[argv.index("--out") + 1]
            assert not os.path.exists(out) or not os.listdir(out), os.listdir(out)
    CASES.append(Case(name, command, "refused", fast, run))


# numeric flags of every command: (command, flag, value, what the error names)
BAD_FLAGS = [
    ("pretrain", "--lr", "inf", "--lr must be a finite number"), ("pretrain", "--lr", "nan", "--lr"),
    ("pretrain", "--lr", "0", "--lr must be positive"), ("pretrain", "--lr", "-1e-3", "--lr"),
    ("pretrain", "--weight-decay", "nan", "--weight-decay"), ("pretrain", "--weight-decay", "-0.1", "--weight-decay"),
    ("pretrain", "--clip-norm", "nan", "--clip-norm"), ("pretrain", "--clip-norm", "-inf", "--clip-norm"),
    ("pretrain", "--beta2", "nan", "--beta2"), ("pretrain", "--mask-prob", "nan", "--mask-prob"),
    ("pretrain", "--mask-prob", "1.5", "--mask-prob"), ("pretrain", "--dropout", "nan", "--dropout"),
    ("pretrain", "--dropout", "-0.1", "--dropout"), ("pretrain", "--init-range", "inf", "--init-range"),
    ("pretrain", "--init-range", "0", "--init-range"), ("pretrain", "--eval-batches", "-1", "--eval-batches"),
    ("pretrain", "--stop-at-step", "0", "--stop-at-step"), ("pretrain", "--stop-at-step", "-3", "--stop-at-step"),
    ("pretrain", "--steps", "0", "--steps"), ("pretrain", "--steps", "10000000000", "--steps must be at most"),
    ("pretrain", "--batch-size", "0", "--batch-size"), ("pretrain", "--batch-size", "-4", "--batch-size"),
    ("pretrain", "--accumulate", "0", "--accumulate"), ("pretrain", "--warmup", "-2", "--warmup"),
    ("pretrain", "--seed", "-1", "--seed"), ("pretrain", "--save-every", "0", "--save-every"),
    ("pretrain", "--log-every", "0", "--log-every"), ("pretrain", "--eval-every", "-1", "--eval-every"),
    ("pretrain", "--mpi-timeout", "nan", "--mpi-timeout"), ("pretrain", "--mpi-timeout", "0", "--mpi-timeout"),
    ("pretrain", "--vocab-size", "0", "--vocab-size"), ("pretrain", "--hidden-size", "0", "--hidden-size"),
    ("pretrain", "--layers", "-1", "--layers"), ("pretrain", "--heads", "0", "--heads"),
    ("pretrain", "--intermediate-size", "0", "--intermediate-size"), ("pretrain", "--seq-len", "4", "--seq-len"),
    ("pretrain", "--seq-len", "2000000", "--seq-len"), ("pretrain", "--threads", "0", "threads"),
    ("pretrain", "--threads", "-5", "threads"),
    ("finetune", "--epochs", "nan", "--epochs must be a finite number"), ("finetune", "--epochs", "inf", "--epochs"),
    ("finetune", "--epochs", "0", "--epochs"), ("finetune", "--epochs", "-1", "--epochs"),
    ("finetune", "--seed", "-1", "--seed"), ("finetune", "--lr", "inf", "--lr"), ("finetune", "--lr", "nan", "--lr"),
    ("finetune", "--weight-decay", "nan", "--weight-decay"), ("finetune", "--weight-decay", "inf", "--weight-decay"),
    ("finetune", "--batch-size", "0", "--batch-size"), ("finetune", "--max-length", "0", "--max-length"),
    ("finetune", "--accumulate", "0", "--accumulate"), ("finetune", "--warmup", "-5", "--warmup"),
    ("finetune", "--eval-every", "0", "--eval-every"), ("finetune", "--save-every", "-1", "--save-every"),
    ("finetune", "--log-every", "0", "--log-every"), ("finetune", "--threads", "0", "threads"),
    ("fill-mask", "--top-k", "-1", "--top-k"), ("fill-mask", "--top-k", "0", "--top-k"),
    ("predict", "--max-length", "0", "--max-length"), ("predict", "--batch-tokens", "0", "--batch-tokens"),
    ("predict", "--batch-tokens", "-1", "--batch-tokens"),
    ("embed", "--max-length", "-1", "--max-length"), ("embed", "--batch-tokens", "0", "--batch-tokens"),
    ("masking", "--batch-size", "100000", "--batch-size must be at most 64"),
    ("masking", "--batch-size", "0", "--batch-size"),
    ("masking", "--epochs", "100", "--epochs"), ("masking", "--epochs", "0", "--epochs"),
    ("masking", "--mask-prob", "2", "--mask-prob"), ("masking", "--mask-prob", "nan", "--mask-prob"),
    ("masking", "--seed", "-1", "--seed"), ("masking", "--seq-len", "2", "--seq-len"),
]


@case("pretrain", "refused", fast=False)
def pretrain_out_empty(w, tmp, capsys):
    refused(run_here(w.pretrain(""), capsys), "--out", "empty")


@case("embed", "refused", fast=False)
def embed_file_empty_name(w, tmp, capsys):
    refused(run_here(["embed", "--model", w.model, "--file", "", "a text"], capsys), "--file", "empty")


@case("embed", "refused", fast=False)
def embed_max_length_past_the_model(w, tmp, capsys):
    refused(run_here(["embed", "--model", w.model, "--max-length", 10**9, "a text"], capsys), "--max-length")


@case("finetune", "refused", fast=False)
def finetune_max_length_past_the_model(w, tmp, capsys):
    refused(run_here(w.finetune(tmp / "run", "--max-length", 100000), capsys), "--max-length 100000")
    assert not (tmp / "run").exists()


@case("pretrain", "refused", fast=False)
def pretrain_tokenizer_is_dev_null(w, tmp, capsys):
    refused(run_here(w.pretrain(tmp / "run", "--tokenizer", "/dev/null"), capsys), "/dev/null", "character device")


@case("finetune", "refused", fast=False)
def finetune_resume_without_a_checkpoint(w, tmp, capsys):
    refused(run_here(w.finetune(tmp / "run", "--resume"), capsys), "no checkpoint to resume from")


@case("pretrain", "works", fast=False)
def pretrain_corpus_the_same_file_twice_and_through_a_link(w, tmp, capsys):
    os.symlink(w.corpus, tmp / "link.txt")
    twice = run_here(w.pretrain(tmp / "twice", "--corpus", w.corpus, tmp / "link.txt", w.corpus, "--steps", 1),
                     capsys)
    worked(twice)
    once = run_here(w.pretrain(tmp / "once", "--corpus", w.corpus, "--steps", 1), capsys)
    assert mean_sequences(twice.err) == mean_sequences(once.err)
    assert "2 of 3 corpus paths name a file already read" in twice.err


@case("pretrain", "works", fast=False)
def pretrain_stop_at_step_past_the_steps(w, tmp, capsys):
    ran = run_here(w.pretrain(tmp / "run", "--stop-at-step", 1000), capsys)
    worked(ran)
    assert "done in" in ran.out and (tmp / "run" / "model.safetensors").exists()


@case("pretrain", "works", fast=False)
def pretrain_out_with_a_trailing_slash_and_dots(w, tmp, capsys):
    worked(run_here(w.pretrain(f"{tmp}/./run/"), capsys))
    assert load_pretrained(str(tmp / "run")).config.hidden_size == 64


@case("finetune", "works", fast=False)
def finetune_csv_with_a_byte_order_mark_and_crlf(w, tmp, capsys):
    path = tmp / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + open(w.classify, "rb").read().replace(b"\n", b"\r\n"))
    worked(run_here(w.finetune(tmp / "run", train=path), capsys))


@case("finetune", "works", fast=False)
def finetune_jsonl_numeric_labels(w, tmp, capsys):
    path = tmp / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    ran = run_here(w.finetune(tmp / "run", train=path, eval=path), capsys)
    worked(ran)
    assert json.load(open(tmp / "run" / "config.json"))["label2id"] == {"0": 0, "1": 1}


@case("finetune", "works", fast=False)
def finetune_a_hundredth_of_an_epoch(w, tmp, capsys):
    ran = run_here(w.finetune(tmp / "run", "--epochs", 0.01), capsys)
    worked(ran)
    assert json.loads(open(tmp / "run" / "metrics.jsonl").readline())["step"] == 1


@case("finetune", "works", fast=False)
def finetune_overwrite_a_finished_run(w, tmp, capsys):
    out = tmp / "run"
    worked(run_here(w.finetune(out), capsys))
    refused(run_here(w.finetune(out), capsys), "already holds a run")
    ran = run_here(w.finetune(out, "--overwrite", "--seed", 3), capsys)
    worked(ran)
    assert "--overwrite: removed" in ran.err and load_pretrained(str(out)).head == "classification"


@case("masking", "works", fast=False)
def masking_the_largest_batch(w, tmp, capsys):
    ran = run_here(["masking", "--model", w.model, "--corpus", w.corpus, "--batch-size", 64, "--epochs", 1,
                    "--out", tmp / "m.png"], capsys)
    worked(ran)
    assert open(tmp / "m.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@case("embed", "works", fast=False)
def embed_control_characters_and_emoji(w, tmp, capsys):
    texts = tmp / "texts.txt"
    texts.write_text("\x07bell\x1b[31mred\n\U0001f600 smile\n\u202eright to left\n", encoding="utf-8")
    ran = run_here(["embed", "--model", w.model, "--file", texts, "--output", tmp / "v.npy"], capsys)
    worked(ran)
    vectors = np.load(tmp / "v.npy")
    assert vectors.shape == (3, 64) and np.all(np.isfinite(vectors))


@case("attention", "works", fast=False)
def attention_svg(w, tmp, capsys):
    worked(run_here(["attention", "--model", w.model, "--out", tmp / "a.svg", "a text"], capsys))
    assert (tmp / "a.svg").read_text().lstrip().startswith("<?xml")


def command_line(command, w, tmp, *extra):
    if command == "pretrain":
        return w.pretrain(tmp / "run", *extra)
    if command == "finetune":
        return w.finetune(tmp / "run", *extra)
    if command == "fill-mask":
        return ["fill-mask", "--model", w.model, *extra, "The <mask> of it."]
    if command in ("predict", "embed"):
        return [command, "--model", w.classifier if command == "predict" else w.model, *extra, "a text"]
    if command == "masking":
        return ["masking", "--model", w.model, "--corpus", w.corpus, "--out", str(tmp / "m.png"), *extra]
    raise AssertionError(command)


for number, (command, flag, value, message) in enumerate(BAD_FLAGS):
    flag_case(command, f"{command} {flag} {value}",
              lambda w, tmp, c=command, f=flag, v=value: command_line(c, w, tmp, f"{f}={v}"), message,
              fast=number % 3 == 0)


# --- sizes that cannot be allocated ---------------------------------------------------------------------

@case("pretrain", "refused")
def pretrain_hidden_size_1048576(w, tmp, capsys):
    ran = run_here(w.pretrain(tmp / "run", "--hidden-size", 1048576), capsys)
    refused(ran, "--hidden-size 1048576", "needs at least", "TiB")
    assert not (tmp / "run").exists()


@case("pretrain", "refused")
def pretrain_seq_len_60000(w, tmp, capsys):
    refused(run_here(w.pretrain(tmp / "run", "--seq-len", 60000), capsys), "--seq-len 60000", "needs at least")


@case("pretrain", "refused", fast=False)
def pretrain_batch_size_1048576_with_base(w, tmp, capsys):
    refused(run_here(w.pretrain(tmp / "run", "--preset", "base", "--batch-size", 1048576), capsys),
            "--batch-size 1048576", "needs at least")


@case("pretrain", "refused", fast=False)
def pretrain_heads_not_dividing_hidden_size(w, tmp, capsys):
    refused(run_here(w.pretrain(tmp / "run", "--heads", 3), capsys), "num_attention_heads 3")


@case("pretrain", "works", fast=False)
def pretrain_threads_24_on_fewer_cores(w, tmp, capsys):
    cores = len(os.sched_getaffinity(0))
    if cores >= 24:
        pytest.skip("this machine has 24 cores or more")
    ran = run_here(w.pretrain(tmp / "run", "--threads", 24), capsys)
    worked(ran)
    assert f"--threads 24: this process may use {cores} core" in ran.err


@case("pretrain", "works", fast=False)
def pretrain_minroberta_threads_24_on_fewer_cores(w, tmp, capsys):
    cores = len(os.sched_getaffinity(0))
    if cores >= 24:
        pytest.skip("this machine has 24 cores or more")
    argv = w.pretrain(tmp / "run")
    argv.remove("--threads")
    argv.remove("1")
    ran = run_apart(argv, env={**os.environ, "MINROBERTA_THREADS": "24", "PYTHONPATH": ROOT})
    worked(ran)
    assert f"MINROBERTA_THREADS=24: this process may use {cores} cores" in ran.err


@case("pretrain", "refused", fast=False)
def pretrain_corpus_name_with_a_line_break(w, tmp, capsys):
    ran = run_here(w.pretrain(tmp / "run", "--corpus", tmp / "two\nlines.txt"), capsys)
    refused(ran, "two\\nlines.txt")   # the break written as \n: the error stays one line


@case("embed", "works", fast=False)
def embed_file_with_a_byte_order_mark(w, tmp, capsys):
    texts = tmp / "texts.txt"
    texts.write_bytes("\ufeffa text\r\n".encode())
    with_mark = run_here(["embed", "--model", w.model, "--file", texts], capsys)
    worked(with_mark)
    plain = run_here(["embed", "--model", w.model, "a text"], capsys)
    assert with_mark.out == plain.out


# --- the run folder: nothing of another run's overwritten; one run at a time ------------------------------

@case("pretrain", "refused")
def pretrain_out_holds_a_model_without_checkpoints(w, tmp, capsys):
    out = w.copy_model(tmp / "model")
    before = open(os.path.join(out, "model.safetensors"), "rb").read()
    refused(run_here(w.pretrain(out), capsys), out, "config.json", "--overwrite")
    assert open(os.path.join(out, "model.safetensors"), "rb").read() == before


@case("pretrain", "refused", fast=False)
def pretrain_out_holds_only_a_config(w, tmp, capsys):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text("{}")
    refused(run_here(w.pretrain(tmp / "run"), capsys), "config.json")
    assert (tmp / "run" / "config.json").read_text() == "{}"


@case("pretrain", "refused", fast=False)
def pretrain_out_holds_only_a_tokenizer(w, tmp, capsys):
    (tmp / "run").mkdir()
    shutil.copy(os.path.join(w.model, "tokenizer.json"), tmp / "run")
    refused(run_here(w.pretrain(tmp / "run"), capsys), "tokenizer.json")


@case("pretrain", "refused")
def pretrain_out_holds_someone_elses_file(w, tmp, capsys):
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("mine")
    refused(run_here(w.pretrain(tmp / "run"), capsys), "notes.txt")


@case("pretrain", "refused")
def pretrain_out_holds_a_run(w, tmp, capsys):
    refused(run_here(w.pretrain(w.copy_model(tmp / "run", without=())), capsys), "already holds a run", "--resume")


@case("pretrain", "refused", fast=False)
def pretrain_out_is_a_file(w, tmp, capsys):
    (tmp / "run").write_text("a file")
    refused(run_here(w.pretrain(tmp / "run"), capsys), "--out", "not a folder")
    assert (tmp / "run").read_text() == "a file"


@case("pretrain", "works")
def pretrain_overwrite_replaces_a_model_folder(w, tmp, capsys):
    out = w.copy_model(tmp / "model")
    (tmp / "model" / "notes.txt").write_text("mine")
    before = open(os.path.join(out, "model.safetensors"), "rb").read()
    ran = run_here(w.pretrain(out, "--overwrite", "--seed", 1), capsys)
    worked(ran)
    assert "--overwrite: removed the earlier run's model.safetensors" in ran.err
    assert open(os.path.join(out, "model.safetensors"), "rb").read() != before
    assert (tmp / "model" / "notes.txt").read_text() == "mine"   # not the run's: left alone


@case("pretrain", "refused", fast=False)
def pretrain_overwrite_with_resume(w, tmp, capsys):
    refused(run_here(w.pretrain(w.copy_model(tmp / "run", without=()), "--overwrite", "--resume"), capsys),
            "--resume", "--overwrite")


@case("pretrain", "refused", fast=False)
def pretrain_overwrite_keeps_the_old_run_when_the_input_is_bad(w, tmp, capsys):
    out = w.copy_model(tmp / "run", without=())
    refused(run_here(w.pretrain(out, "--overwrite", "--corpus", tmp / "absent.txt"), capsys), "absent.txt")
    assert list_checkpoints(out) and os.path.exists(os.path.join(out, "model.safetensors"))


@case("pretrain", "works")
def pretrain_after_a_killed_attempt_without_a_checkpoint(w, tmp, capsys):
    """What a run killed before its first checkpoint leaves: metrics, a half-written checkpoint, a half-prepared
    corpus, a half-removed folder, its lock."""
    out = tmp / "run"
    (out / "checkpoints" / ".partial-step-00000002").mkdir(parents=True)
    (out / ".partial-prepared-k1ll3d").mkdir()
    (out / ".partial-prepared-k1ll3d" / "train.bin").write_bytes(b"\0" * 64)
    (out / ".trash-checkpoints").mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    (out / ".minroberta.lock").write_text("999999999\n")
    ran = run_here(w.pretrain(out), capsys)
    worked(ran)
    assert "pid 999999999, which ended without releasing it, is taken over" in ran.err
    assert not (out / ".minroberta.lock").exists()
    assert '"loss": 5.0' not in (out / "metrics.jsonl").read_text()   # the attempt's records went
    assert not (out / ".partial-prepared-k1ll3d").exists() and not (out / ".trash-checkpoints").exists()


@case("finetune", "refused")
def finetune_model_folder_as_out(w, tmp, capsys):
    model = w.copy_model(tmp / "model")
    before = open(os.path.join(model, "model.safetensors"), "rb").read()
    argv = w.finetune(model)
    argv[argv.index("--model") + 1] = model
    refused(run_here(argv, capsys), model, "--out")
    assert open(os.path.join(model, "model.safetensors"), "rb").read() == before


@case("finetune", "refused", fast=False)
def finetune_model_folder_as_out_even_with_overwrite(w, tmp, capsys):
    model = w.copy_model(tmp / "model")
    argv = w.finetune(model, "--overwrite")
    argv[argv.index("--model") + 1] = model
    refused(run_here(argv, capsys), "reads its model from")


@case("finetune", "refused", fast=False)
def finetune_out_holds_a_pretrained_model(w, tmp, capsys):
    refused(run_here(w.finetune(w.copy_model(tmp / "other")), capsys), "model.safetensors")


LOCK_HOLDER = """
import sys, time
from minroberta import guards
guards.acquire(sys.argv[1] + "/.minroberta.lock", sys.argv[1], print)
print("locked", flush=True)
time.sleep(60)
"""


@case("pretrain", "refused")
def pretrain_on_a_folder_another_run_holds(w, tmp, capsys):
    out = tmp / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(run_here(w.pretrain(out), capsys), f"pid {holder.pid}", "in use")
        refused(run_here(w.pretrain(out, "--resume"), capsys), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    worked(run_here(w.pretrain(out), capsys))   # the kernel let go of the killed holder's lock


def lock_case(name, make, *names):
    """The lock file itself replaced by something else: refused, naming it."""
    def run(w, tmp, capsys):
        (tmp / "run").mkdir()
        make(str(tmp / "run" / ".minroberta.lock"))
        refused(run_apart(w.pretrain(tmp / "run")), ".minroberta.lock", *names)
    CASES.append(Case(name, "pretrain", "refused", False, run))


lock_case("pretrain lock file is a FIFO", fifo, "FIFO")
lock_case("pretrain lock file is a directory", os.mkdir, "directory")
lock_case("pretrain lock file is a symlink", lambda p: os.symlink("/etc/passwd", p), "cannot open")


@case("pretrain", "works", fast=False)
def pretrain_two_runs_on_one_folder_at_once(w, tmp, capsys):
    out = tmp / "run"
    env = {**os.environ, "PYTHONPATH": ROOT}
    argv = [sys.executable, "-m", "minroberta.cli", *w.pretrain(out, "--steps", 400, "--save-every", 100)]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + TIMEOUT_S   # the second starts once the first holds the folder: a run of 400 updates
    while not (out / ".minroberta.lock").exists() and time.time() < deadline:   # lasts past its start-up
        time.sleep(0.01)
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ends = [p.communicate(timeout=TIMEOUT_S) for p in (first, second)]
    statuses = sorted(p.returncode for p in (first, second))
    assert statuses == [0, 2], (statuses, ends)
    loser = [e for p, (_, e) in zip((first, second), ends) if p.returncode == 2][0]
    refused(Ran(2, "", loser), "in use", "pid ")
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl") if '"loss"' in line]
    assert steps == sorted(set(steps)), steps   # one run's records alone
    all_checkpoints_load(out)


@case("pretrain", "works", fast=False)
def pretrain_killed_then_resumed_takes_over_the_lock(w, tmp, capsys):
    out = tmp / "run"
    env = {**os.environ, "PYTHONPATH": ROOT}
    argv = [sys.executable, "-m", "minroberta.cli", *w.pretrain(out, "--steps", 400, "--save-every", 5)]
    run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + TIMEOUT_S
    while not list_checkpoints(out) and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    ran = run_here(w.pretrain(out, "--steps", 400, "--save-every", 5, "--resume", "--stop-at-step", 6), capsys)
    worked(ran)
    assert f"pid {run.pid}" in ran.err and "taken over" in ran.err


# --- non-finite state is never saved as good ------------------------------------------------------------

@case("pretrain", "refused")
def pretrain_lr_that_overflows_float32_with_save_every_1(w, tmp, capsys):
    out = tmp / "run"
    ran = run_here(w.pretrain(out, "--lr", "1e39", "--save-every", 1), capsys)
    refused(ran, "NaN or infinite", "not saved")
    all_checkpoints_load(out)
    assert not (out / "model.safetensors").exists()


@case("finetune", "refused")
def finetune_weight_decay_that_overflows(w, tmp, capsys):
    out = tmp / "run"
    ran = run_apart(w.finetune(out, "--weight-decay", "1e39", "--lr", "1e-3", "--eval-every", 1, "--save-every", 1))
    refused(ran)
    assert "non-finite" in ran.error or "NaN or infinite" in ran.error, ran.error
    assert "new best" not in ran.err and "not kept as the best model" in ran.err
    all_checkpoints_load(out)


@case("finetune", "refused")
def finetune_regression_nan_label_in_eval(w, tmp, capsys):
    bad = tmp / "eval.csv"
    bad.write_text("text,label\na text,1.5\nanother text,nan\n")
    refused(run_here(w.finetune(tmp / "run", task="regress", eval=bad), capsys), f"{bad}:3", "finite")


@case("finetune", "refused", fast=False)
def finetune_regression_inf_label_in_train(w, tmp, capsys):
    bad = tmp / "train.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": Infinity}\n')
    refused(run_here(w.finetune(tmp / "run", task="regress", train=bad), capsys), f"{bad}:2")


# --- fine-tuning files ----------------------------------------------------------------------------------

def jsonl_case(name, task, line, *names, fast=False):
    def run(w, tmp, capsys):
        path = tmp / "train.jsonl"
        path.write_text(line + "\n", encoding="utf-8")
        refused(run_here(w.finetune(tmp / "run", task=task, train=path), capsys), f"{path}:1", *names)
    CASES.append(Case(name, "finetune", "refused", fast, run))


jsonl_case("finetune jsonl text is a number", "classify", '{"text": 5, "label": "a"}', "text must be text", fast=True)
jsonl_case("finetune jsonl text is a list", "classify", '{"text": ["a"], "label": "a"}', "text")
jsonl_case("finetune jsonl question is an object", "qa",
           '{"context": "c", "question": {}, "answers": {"text": ["c"], "answer_start": [0]}}', "question", fast=True)
jsonl_case("finetune jsonl context is a number", "qa",
           '{"context": 7, "question": "q", "answers": {"text": ["7"], "answer_start": [0]}}', "context")
jsonl_case("finetune jsonl label is an object", "classify", '{"text": "a", "label": {"x": 1}}', "label")
jsonl_case("finetune jsonl label is true", "classify", '{"text": "a", "label": true}', "label")
jsonl_case("finetune jsonl nested too deeply", "classify", nested(), "nested too deeply", fast=True)


@case("finetune", "refused", fast=False)
def finetune_train_is_a_directory(w, tmp, capsys):
    refused(run_here(w.finetune(tmp / "run", train=tmp), capsys), str(tmp), "a directory")


@case("finetune", "refused")
def finetune_train_is_dev_zero(w, tmp, capsys):
    link = tmp / "train.csv"
    os.symlink("/dev/zero", link)
    refused(run_here(w.finetune(tmp / "run", train=link), capsys), str(link), "character device")


@case("finetune", "refused", fast=False)
def finetune_train_is_a_fifo(w, tmp, capsys):
    refused(run_apart(w.finetune(tmp / "run", train=fifo(tmp / "train.csv"))), "train.csv", "FIFO")


# --- corpora --------------------------------------------------------------------------------------------

@case("pretrain", "refused")
def pretrain_corpus_folder_with_a_fifo(w, tmp, capsys):
    (tmp / "corpus").mkdir()
    shutil.copy(w.corpus, tmp / "corpus" / "a.txt")
    path = fifo(tmp / "corpus" / "b.txt")
    ran = run_apart(w.pretrain(tmp / "run", "--corpus", tmp / "corpus"))
    refused(ran, path, "FIFO")
    assert "no such" not in ran.error


@case("pretrain", "refused", fast=False)
def pretrain_corpus_is_a_fifo(w, tmp, capsys):
    path = fifo(tmp / "corpus.txt")
    ran = run_apart(w.pretrain(tmp / "run", "--corpus", path))
    refused(ran, path, "FIFO")
    assert "no such" not in ran.error


@case("pretrain", "refused")
def pretrain_corpus_folder_with_a_dev_zero_link(w, tmp, capsys):
    (tmp / "corpus").mkdir()
    shutil.copy(w.corpus, tmp / "corpus" / "a.txt")
    os.symlink("/dev/zero", tmp / "corpus" / "zero.txt")
    refused(run_here(w.pretrain(tmp / "run", "--corpus", tmp / "corpus"), capsys), "zero.txt", "character device")


@case("pretrain", "refused", fast=False)
def pretrain_corpus_sparse_giant(w, tmp, capsys):
    path = sparse(tmp / "giant.txt", 3 << 30)
    refused(run_here(w.pretrain(tmp / "run", "--corpus", path), capsys), path, "no line break", "16.0 MiB")


@case("pretrain", "works")
def pretrain_corpus_glob_through_a_symlink_loop(w, tmp, capsys):
    """A folder linking to itself: `**` would find the one file dozens of times; it is read once."""
    (tmp / "corpus").mkdir()
    shutil.copy(w.corpus, tmp / "corpus" / "a.txt")
    os.symlink(tmp / "corpus", tmp / "corpus" / "loop")
    looped = run_here(w.pretrain(tmp / "run", "--corpus", str(tmp / "corpus" / "**" / "*.txt"), "--steps", 1), capsys)
    worked(looped)
    once = run_here(w.pretrain(tmp / "once", "--corpus", w.corpus, "--steps", 1), capsys)
    worked(once)
    assert mean_sequences(looped.err) == mean_sequences(once.err)
    assert "name a file already read (a link or a repeat); each file is read once" in looped.err


@case("pretrain", "refused")
def pretrain_corpus_with_an_unreadable_sub_folder(w, tmp, capsys):
    (tmp / "corpus" / "locked").mkdir(parents=True)
    shutil.copy(w.corpus, tmp / "corpus" / "a.txt")
    (tmp / "corpus" / "locked" / "b.txt").write_text("hidden text")
    os.chmod(tmp / "corpus" / "locked", 0)
    try:
        ran = run_apart(w.pretrain(tmp / "run", "--corpus", tmp / "corpus"), preexec_fn=mode_bits_apply)
    finally:
        os.chmod(tmp / "corpus" / "locked", 0o755)
    refused(ran, "locked", "cannot read directory", "Permission denied")
    assert not (tmp / "run").exists()


@case("pretrain", "refused", fast=False)
def pretrain_corpus_broken_symlink(w, tmp, capsys):
    os.symlink(tmp / "gone.txt", tmp / "corpus.txt")
    refused(run_here(w.pretrain(tmp / "run", "--corpus", tmp / "corpus.txt"), capsys), "corpus.txt", "no such file")


# --- model and tokenizer folders ------------------------------------------------------------------------

def model_file_case(name, command, filename, make, *names, apart=False, fast=False):
    """A model folder whose `filename` is replaced by make(path)."""
    def run(w, tmp, capsys):
        model = w.copy_model(tmp / "model")
        target = os.path.join(model, filename)
        if os.path.lexists(target):
            os.unlink(target)
        make(target)
        argv = {"fill-mask": ["fill-mask", "--model", model, "The <mask> of it."],
                "embed": ["embed", "--model", model, "a text"],
                "predict": ["predict", "--model", model, "a text"],
                "attention": ["attention", "--model", model, "--out", str(tmp / "a.png"), "a text"],
                "finetune": w.finetune(tmp / "run"),
                "pretrain": w.pretrain(tmp / "run", "--tokenizer", model)}[command]
        if command == "finetune":
            argv[argv.index("--model") + 1] = model
        ran = run_apart(argv) if apart else run_here(argv, capsys)
        refused(ran, filename, *names)
        assert "no such" not in ran.error or "no such" in names
    CASES.append(Case(name, command, "refused", fast, run))


model_file_case("fill-mask config.json is a FIFO", "fill-mask", "config.json", fifo, "FIFO", apart=True, fast=True)
model_file_case("fill-mask model.safetensors is a FIFO", "fill-mask", "model.safetensors", fifo, "FIFO", apart=True)
model_file_case("embed tokenizer.json is a FIFO", "embed", "tokenizer.json", fifo, "FIFO", apart=True)
model_file_case("pretrain --tokenizer's tokenizer.json is a FIFO", "pretrain", "tokenizer.json", fifo, "FIFO",
                apart=True)
model_file_case("fill-mask config.json is /dev/zero", "fill-mask", "config.json",
                lambda p: os.symlink("/dev/zero", p), "character device", fast=True)
model_file_case("predict model.safetensors is /dev/zero", "predict", "model.safetensors",
                lambda p: os.symlink("/dev/zero", p), "character device")
model_file_case("embed tokenizer.json is /dev/zero", "embed", "tokenizer.json",
                lambda p: os.symlink("/dev/zero", p), "character device", fast=True)
model_file_case("pretrain --tokenizer's tokenizer.json is /dev/zero", "pretrain", "tokenizer.json",
                lambda p: os.symlink("/dev/zero", p), "character device")
model_file_case("finetune vocab.json is /dev/zero", "finetune", "special_tokens_map.json",
                lambda p: os.symlink("/dev/zero", p), "character device")
model_file_case("fill-mask config.json nested too deeply", "fill-mask", "config.json",
                lambda p: open(p, "w").write(nested()), "nested too deeply", fast=True)
model_file_case("attention config.json nested too deeply", "attention", "config.json",
                lambda p: open(p, "w").write('{"a": ' * 50_000 + "1" + "}" * 50_000), "nested too deeply")
model_file_case("embed tokenizer.json nested too deeply", "embed", "tokenizer.json",
                lambda p: open(p, "w").write(nested()), "nested too deeply")
model_file_case("fill-mask config.json sparse 100 MB", "fill-mask", "config.json",
                lambda p: sparse(p, 100 << 20), "100.0 MiB")
model_file_case("embed tokenizer.json sparse 1.5 GB", "embed", "tokenizer.json",
                lambda p: sparse(p, 3 << 29), "1.5 GiB")
model_file_case("fill-mask config.json is a directory", "fill-mask", "config.json", os.mkdir, "a directory")
model_file_case("predict model.safetensors is a directory", "predict", "model.safetensors", os.mkdir, "a directory")
model_file_case("embed model.safetensors is a broken link", "embed", "model.safetensors",
                lambda p: os.symlink("/nonexistent/weights", p), "no such")


@case("embed", "refused", fast=False)
def embed_modules_json_is_a_fifo(w, tmp, capsys):
    model = w.copy_model(tmp / "model")
    fifo(os.path.join(model, "modules.json"))
    refused(run_apart(["embed", "--model", model, "a text"]), "modules.json", "FIFO")


# --- texts in, pictures out -----------------------------------------------------------------------------

@case("embed", "refused")
def embed_file_dev_zero(w, tmp, capsys):
    refused(run_here(["embed", "--model", w.model, "--file", "/dev/zero"], capsys), "/dev/zero", "character device")


@case("embed", "refused", fast=False)
def embed_file_is_a_fifo(w, tmp, capsys):
    refused(run_apart(["embed", "--model", w.model, "--file", fifo(tmp / "texts.txt")]), "texts.txt", "FIFO")


@case("embed", "refused", fast=False)
def embed_file_is_a_directory(w, tmp, capsys):
    refused(run_here(["embed", "--model", w.model, "--file", tmp], capsys), str(tmp), "a directory")


@case("embed", "refused")
def embed_file_stdin_closed(w, tmp, capsys):
    refused(run_apart(["embed", "--model", w.model, "--file", "-"], preexec_fn=lambda: os.close(0)),
            "--file -", "standard input is closed")


@case("embed", "refused", fast=False)
def embed_file_stdin_is_dev_zero(w, tmp, capsys):
    with open("/dev/zero", "rb") as zero:
        refused(run_apart(["embed", "--model", w.model, "--file", "-"], stdin=zero), "standard input:1",
                "longer than 16.0 MiB")


@case("embed", "works", fast=False)
def embed_file_stdin_empty(w, tmp, capsys):
    ran = run_apart(["embed", "--model", w.model, "--file", "-", "one text"], stdin=subprocess.DEVNULL)
    worked(ran)
    assert len(ran.out.splitlines()) == 1


@case("embed", "refused")
def embed_output_is_a_fifo(w, tmp, capsys):
    path = fifo(tmp / "vectors.npy")
    refused(run_apart(["embed", "--model", w.model, "--output", path, "a text"]), path, "FIFO", "nothing written")
    assert os.path.exists(path) and not os.path.isfile(path)


@case("predict", "refused", fast=False)
def predict_output_is_a_directory(w, tmp, capsys):
    (tmp / "out.jsonl").mkdir()
    refused(run_here(["predict", "--model", w.classifier, "--output", tmp / "out.jsonl", "a text"], capsys),
            "out.jsonl", "a directory")


@case("predict", "works")
def predict_file_with_blank_and_odd_lines(w, tmp, capsys):
    texts = tmp / "texts.txt"
    texts.write_bytes("one\n\n<mask> </s> <s>\n\ttabs\tand\ttabs\r\nlast without end".encode())
    ran = run_here(["predict", "--model", w.classifier, "--file", texts], capsys)
    worked(ran)
    lines = ran.out.splitlines()
    assert len(lines) == 5 and all(line.split("\t")[0] in ("cat", "dog") for line in lines)


@case("predict", "refused", fast=False)
def predict_file_is_a_fifo(w, tmp, capsys):
    refused(run_apart(["predict", "--model", w.classifier, "--file", fifo(tmp / "texts.txt")]), "texts.txt", "FIFO")


def mode_bits_apply():
    """In a child before exec (preexec_fn): root drops the capabilities that let it ignore file modes from its
    bounding set, so the command it runs meets permission checks as a user would (scripts/torture.py does the
    same)."""
    if os.geteuid() == 0:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@case("embed", "refused", fast=False)
def embed_output_into_a_read_only_folder(w, tmp, capsys):
    folder = tmp / "read-only"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        ran = run_apart(["embed", "--model", w.model, "--output", folder / "v.npy", "a text"],
                        preexec_fn=mode_bits_apply)
    finally:
        os.chmod(folder, 0o755)
    refused(ran, str(folder / "v.npy"), "Permission denied")
    assert os.listdir(folder) == []


@case("pretrain", "refused", fast=False)
def pretrain_out_is_a_read_only_folder(w, tmp, capsys):
    (tmp / "run").mkdir()
    os.chmod(tmp / "run", 0o555)
    try:
        ran = run_apart(w.pretrain(tmp / "run"), preexec_fn=mode_bits_apply)
    finally:
        os.chmod(tmp / "run", 0o755)
    refused(ran, str(tmp / "run"), "Permission denied")


@case("pretrain", "refused", fast=False)
def pretrain_corpus_file_unreadable(w, tmp, capsys):
    path = tmp / "corpus.txt"
    shutil.copy(w.corpus, path)
    os.chmod(path, 0)
    try:
        ran = run_apart(w.pretrain(tmp / "run", "--corpus", path), preexec_fn=mode_bits_apply)
    finally:
        os.chmod(path, 0o644)
    refused(ran, str(path), "Permission denied")


@case("attention", "refused")
def attention_out_txt(w, tmp, capsys):
    refused(run_here(["attention", "--model", w.model, "--out", tmp / "x.txt", "a text"], capsys), "x.txt", ".png")
    assert not (tmp / "x.txt").exists()


@case("attention", "refused", fast=False)
def attention_out_in_a_missing_folder(w, tmp, capsys):
    refused(run_here(["attention", "--model", w.model, "--out", tmp / "nowhere" / "a.png", "a text"], capsys),
            "nowhere")


@case("masking", "refused", fast=False)
def masking_out_txt(w, tmp, capsys):
    refused(run_here(["masking", "--model", w.model, "--corpus", w.corpus, "--out", tmp / "x.txt"], capsys), "x.txt")


@case("fill-mask", "works")
def fill_mask_top_k_3(w, tmp, capsys):
    ran = run_here(["fill-mask", "--model", w.model, "--top-k", 3, "The <mask> of it."], capsys)
    worked(ran)
    shown = [line for line in ran.out.splitlines() if "<mask> 1:" in line][0]
    assert len(shown.split(":", 1)[1].split("  ")) == 3


@case("fill-mask", "works", fast=False)
def fill_mask_top_k_past_the_vocabulary(w, tmp, capsys):
    ran = run_here(["fill-mask", "--model", w.model, "--top-k", 100000, "The <mask> of it."], capsys)
    worked(ran)


# --- checkpoint state read back on --resume ---------------------------------------------------------------

def stopped_run(w, tmp, capsys):
    out = tmp / "run"
    worked(run_here(w.pretrain(out, "--save-every", 2, "--stop-at-step", 2), capsys))
    return out, list_checkpoints(out)[-1]


def state_case(name, damage, *names, fast=False):
    """A run stopped at step 2 whose only checkpoint is damaged by damage(state dict or path): --resume says why
    the checkpoint is unusable (naming the file and key) and refuses: there is none to resume from."""
    def run(w, tmp, capsys):
        out, checkpoint = stopped_run(w, tmp, capsys)
        path = os.path.join(checkpoint, "trainer_state.json")
        state = json.load(open(path))
        if callable(damage):
            damage(state, path, checkpoint)
        if state is not None and not os.path.exists(path + ".kept"):
            json.dump(state, open(path, "w"))
        ran = run_here(w.pretrain(out, "--resume"), capsys)
        refused(ran, "no checkpoint to resume from")
        warning = [line for line in ran.err.splitlines() if line.startswith("warning:")]
        assert warning and all(str(n) in warning[0] for n in names), (names, ran.err)
    CASES.append(Case(name, "pretrain", "refused", fast, run))


def set_in(*keys, value):
    def damage(state, path, checkpoint):
        target = state
        for key in keys[:-1]:
            target = target[key]
        if value is KeyError:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return damage


def write_raw(text):
    def damage(state, path, checkpoint):
        open(path, "w").write(text)
        open(path + ".kept", "w").close()
    return damage


def nan_moment(state, path, checkpoint):
    from safetensors.numpy import save_file
    optimizer = os.path.join(checkpoint, "optimizer.safetensors")
    moments = read_safetensors(optimizer)
    name = sorted(moments)[0]
    moments[name] = moments[name].copy()
    moments[name].flat[0] = np.nan
    save_file(moments, optimizer)


state_case("resume step negative", set_in("step", value=-3), "trainer_state.json", "step", fast=True)
state_case("resume step 10**12", set_in("step", value=10**12), "trainer_state.json", "past the run's", fast=True)
state_case("resume step is text", set_in("step", value="2"), "step", "whole number")
state_case("resume step is 2.5", set_in("step", value=2.5), "step")
state_case("resume no settings", set_in("settings", value=KeyError), "settings", fast=True)
state_case("resume settings lr NaN", set_in("settings", "lr", value=float("nan")), "settings", "--lr")
state_case("resume settings steps text", set_in("settings", "steps", value="many"), "settings", "--steps")
state_case("resume settings lr text", set_in("settings", "lr", value="fast"), "settings", "--lr", fast=True)
state_case("resume settings seed -1", set_in("settings", "seed", value=-1), "settings", "--seed")
state_case("resume settings corpus a number", set_in("settings", "corpus", value=5), "settings", "--corpus")
state_case("resume settings preset unknown", set_in("settings", "preset", value="huge"), "settings", "--preset")
state_case("resume optimizer_steps past step", set_in("optimizer_steps", value=7), "optimizer_steps")
state_case("resume best is NaN", set_in("best", value=float("nan")), "best")
state_case("resume last_eval empty", set_in("last_eval", value={}), "last_eval")
state_case("resume last_eval a list", set_in("last_eval", value=[1]), "last_eval")
state_case("resume loss_scale damaged", set_in("loss_scale", value={"scale": "x", "good_steps": 1}), "not a trainer state")
state_case("resume state not JSON", write_raw("{torn"), "not valid JSON")
state_case("resume state nested too deeply", write_raw(nested()), "nested too deeply")
state_case("resume state a list", write_raw("[1, 2]"), "expected a JSON object")
state_case("resume optimizer moment NaN", nan_moment, "optimizer.safetensors", "exp_avg", fast=True)


@case("pretrain", "refused", fast=False)
def resume_state_is_a_fifo(w, tmp, capsys):
    out, checkpoint = stopped_run(w, tmp, capsys)
    os.unlink(os.path.join(checkpoint, "trainer_state.json"))
    fifo(os.path.join(checkpoint, "trainer_state.json"))
    ran = run_apart(w.pretrain(out, "--resume"))
    refused(ran, "no checkpoint to resume from")
    assert "trainer_state.json: is a FIFO" in ran.err


@case("pretrain", "works", fast=False)
def resume_falls_back_past_a_damaged_latest_checkpoint(w, tmp, capsys):
    out = tmp / "run"
    worked(run_here(w.pretrain(out, "--save-every", 1, "--stop-at-step", 2), capsys))
    latest = list_checkpoints(out)[-1]
    set_state = json.load(open(os.path.join(latest, "trainer_state.json")))
    set_state["step"] = -1
    json.dump(set_state, open(os.path.join(latest, "trainer_state.json"), "w"))
    ran = run_here(w.pretrain(out, "--save-every", 1, "--resume"), capsys)
    worked(ran)
    assert "step-00000001 at step 1" in ran.err


@case("pretrain", "refused", fast=False)
def resume_a_finished_run_whose_last_eval_is_empty(w, tmp, capsys):
    out = tmp / "run"
    worked(run_here(w.pretrain(out), capsys))
    path = os.path.join(list_checkpoints(out)[-1], "trainer_state.json")
    state = json.load(open(path))
    state["last_eval"] = {}
    json.dump(state, open(path, "w"))
    refused(run_here(w.pretrain(out, "--resume"), capsys), "no checkpoint to resume from")


@case("pretrain", "works", fast=False)
def resume_a_finished_run_reports_it_again(w, tmp, capsys):
    out = tmp / "run"
    first = run_here(w.pretrain(out), capsys)
    worked(first)
    again = run_here(w.pretrain(out, "--resume"), capsys)
    worked(again)
    assert first.out.splitlines()[0].split(": ", 1)[1] == again.out.splitlines()[0].split(": ", 1)[1]


@case("pretrain", "works", fast=False)
def pretrain_metrics_jsonl_torn_and_odd_lines_on_resume(w, tmp, capsys):
    out, _ = stopped_run(w, tmp, capsys)
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": "x"}\n[1]\n' + nested(1000) + '\n{"step": 3, "lo')
    worked(run_here(w.pretrain(out, "--resume"), capsys))
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert all(isinstance(r, dict) and isinstance(r["step"], int) for r in records)


# --- the battery -------------------------------------------------------------------------------------------

def params():
    for c in CASES:
        marks = () if c.fast or ALL else (pytest.mark.skip(reason="MINROBERTA_HOSTILE=all runs it"),)
        yield pytest.param(c, id=f"{c.command}: {c.name}".replace(" ", "_"), marks=marks)


@pytest.fixture(scope="module")
def table():
    yield
    path = os.environ.get("MINROBERTA_HOSTILE_TABLE")
    if not path or not RESULTS:
        return
    counts = collections.Counter((command, verdict, passed) for command, verdict, passed in RESULTS)
    commands = sorted({command for command, _, _ in RESULTS})
    lines = ["| command | refused (exit 2, one line) | works (correct result) | failed |", "|---|---|---|---|"]
    for command in commands:
        lines.append(f"| {command} | {counts[command, 'refused', True]} | {counts[command, 'works', True]} | "
                     f"{counts[command, 'refused', False] + counts[command, 'works', False]} |")
    total = lambda verdict, passed: sum(n for (_, v, p), n in counts.items() if v == verdict and p == passed)
    lines.append(f"| all {len(RESULTS)} | {total('refused', True)} | {total('works', True)} | "
                 f"{total('refused', False) + total('works', False)} |")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_the_battery_holds_every_command():
    assert {c.command for c in CASES} >= {"pretrain", "finetune", "fill-mask", "predict", "embed", "attention",
                                          "masking"}
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("hostile", list(params()))
def test_hostile(hostile, tmp_path, capsys, w, table):
    passed = False
    try:
        hostile.run(w, tmp_path, capsys)
        passed = True
    finally:
        RESULTS.append((hostile.command, hostile.verdict, passed))
