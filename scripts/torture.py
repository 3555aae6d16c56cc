"""Fault-injection campaign for `minroberta pretrain`: kill runs, resume them, demand bit-identical results.

Each trial SIGKILLs a small pretraining run one to three times (at a random moment between startup and the end of
training, or just as it writes a checkpoint), resumes it each time, and compares its final parameters with those
of one uninterrupted reference run, bit for bit. After every kill each complete checkpoint must load. Three more
scenarios: the disk fills while a checkpoint is written, the checkpoint folder is read-only, the latest
checkpoint is corrupted before a resume.

    python scripts/torture.py --trials 20 --seed 0 [--steps 12] [--workdir DIR] [--corpus FILE] [--json FILE]

The runs use a copy of the minroberta package taken at the start, so the code can be edited while it runs.
Exit status 0 only when every trial ended identical, no checkpoint was unloadable, no run failed unexpectedly and
no scenario failed (a skipped scenario says why). Progress goes to stderr, the table to stdout.
"""

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import minroberta
from minroberta.checkpoint import read_safetensors
from minroberta.corpus import stdlib_documents
from minroberta.engine.trainer import CHECKPOINTS, METRICS, OPTIMIZER, list_checkpoints, read_state

SAVE_EVERY = 2
IN_WRITE_SHARE = 0.35      # the share of kills aimed at a checkpoint write rather than at a random moment
RUN_TIMEOUT_S = 600        # a run that takes longer is hung: killed and counted as an error
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2   # <linux/capability.h>: what lets root ignore file modes
PR_CAPBSET_DROP = 24                           # <linux/prctl.h>
POLL_S = 0.0005            # a checkpoint write lasts 10-30 ms on a micro model; poll well inside that


def say(text):
    print(text, file=sys.stderr, flush=True)


def write_corpus(path, documents=300):
    """The first `documents` stdlib docstrings as a text file, blank lines between documents."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(itertools.islice(stdlib_documents(), documents)) + "\n")


def checkpoint_step(path):
    return int(os.path.basename(path).split("-")[-1])


def unloadable_checkpoints(out):
    """[(checkpoint, reason)] for every complete checkpoint that a resume could not use."""
    bad = []
    for checkpoint in list_checkpoints(out):
        try:
            minroberta.load_pretrained(checkpoint)
            read_safetensors(os.path.join(checkpoint, OPTIMIZER))
            read_state(checkpoint)
        except Exception as exc:   # any failure at all makes it unusable; say which
            bad.append((checkpoint, f"{type(exc).__name__}: {exc}"))
    return bad


def compare_params(reference, out):
    """None when out/model.safetensors equals `reference` bit for bit, else the reason."""
    path = os.path.join(out, "model.safetensors")
    if not os.path.exists(path):
        return "no final model.safetensors"
    params = read_safetensors(path)
    if set(params) != set(reference):
        return f"different tensors: {sorted(set(params) ^ set(reference))[:3]}"
    differing = [k for k in sorted(reference) if not np.array_equal(reference[k], params[k])]
    if differing:
        return f"{len(differing)} of {len(reference)} tensors differ, e.g. {differing[0]}"
    return None


def training_metrics(out):
    """metrics.jsonl without its timings (the part a resumed run must reproduce); None if a line is torn."""
    records = []
    with open(os.path.join(out, METRICS), encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return None
            record.pop("tokens_per_s", None)
            records.append(record)
    return records


def _stat(path):
    """(inode, mtime) of a directory, or None: tells a stale .partial dir from one a new run recreated."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def kill_after(proc, delay):
    """SIGKILL `proc` `delay` seconds after its start. -> "killed", or "finished first" when it ended before."""
    try:
        proc.wait(timeout=delay)
        return "finished first"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"


def kill_in_write(proc, out, step, jitter):
    """SIGKILL `proc` `jitter` seconds after it starts writing checkpoint `step` (its .partial dir appears).
    -> "in write" (the .partial dir was still there: killed before the rename), "after rename" (too late, or
    the poll missed the write), or "finished first"."""
    root = os.path.join(out, CHECKPOINTS)
    partial, final = os.path.join(root, f".partial-step-{step:08d}"), os.path.join(root, f"step-{step:08d}")
    stale = _stat(partial)    # left by an earlier kill; the new run removes and recreates it
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        now = _stat(partial)
        if now is not None and now != stale:
            time.sleep(jitter)
            break
        if os.path.isdir(final):
            break
        time.sleep(POLL_S)
    else:
        if proc.poll() is not None:
            return "finished first"
    proc.kill()
    proc.wait()
    return "in write" if _stat(partial) not in (None, stale) else "after rename"


class Campaign:
    """The runs of one campaign: the command line, where logs go, the reference to compare with."""

    def __init__(self, workdir, corpus, steps):
        self.workdir, self.corpus, self.steps = workdir, corpus, steps
        self.logs = os.path.join(workdir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        # every run uses a copy of the package taken now: edits made while a long campaign runs must not leave
        # the reference and the trials computed by different code
        code = os.path.join(workdir, "code")
        shutil.copytree(os.path.dirname(os.path.abspath(minroberta.__file__)), os.path.join(code, "minroberta"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")])))
        self.reference, self.reference_metrics, self.reference_seconds, self.checkpoint_bytes = None, None, None, None
        self.names = itertools.count()

    def command(self, out, *extra):
        return [sys.executable, "-m", "minroberta.cli", "pretrain", "--preset", "micro", "--seq-len", "64",
                "--batch-size", "8", "--steps", str(self.steps), "--save-every", str(SAVE_EVERY), "--eval-every",
                str(self.steps), "--log-every", "1", "--corpus", self.corpus, "--out", out, *map(str, extra)]

    def start(self, out, *extra, **popen):
        """Start a run; its stdout and stderr go to numbered log files (read them back with `output`)."""
        log = os.path.join(self.logs, f"{next(self.names):04d}-{os.path.basename(out)}")
        with open(log + ".out", "w") as stdout, open(log + ".err", "w") as stderr:
            proc = subprocess.Popen(self.command(out, *extra), stdout=stdout, stderr=stderr, env=self.env,
                                    cwd=self.workdir, **popen)
        proc.log = log
        return proc

    def finish(self, out, *extra, **popen):
        """Run to the end. -> (exit status, stderr text)."""
        proc = self.start(out, *extra, **popen)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode, self.output(proc)

    @staticmethod
    def output(proc):
        with open(proc.log + ".err", encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def run_reference(self):
        out = os.path.join(self.workdir, "reference")
        started = time.monotonic()
        rc, err = self.finish(out)
        self.reference_seconds = time.monotonic() - started
        if rc != 0:
            raise SystemExit(f"torture: the reference run failed (exit {rc}):\n{err[-2000:]}")
        self.reference = read_safetensors(os.path.join(out, "model.safetensors"))
        self.reference_metrics = training_metrics(out)
        last = list_checkpoints(out)[-1]
        self.checkpoint_bytes = sum(os.path.getsize(os.path.join(last, n)) for n in os.listdir(last))
        say(f"reference: {self.steps} steps in {self.reference_seconds:.2f} s, checkpoints of "
            f"{self.checkpoint_bytes / 1e6:.2f} MB")

    def save_steps(self):
        return sorted(set(range(SAVE_EVERY, self.steps + 1, SAVE_EVERY)) | {self.steps})

    def restart(self, out, errors):
        """Start the next run of a killed one: --resume, or from scratch when no checkpoint exists yet (after
        checking that --resume then refuses with exit 2). -> (process, resumed?)."""
        if list_checkpoints(out):
            return self.start(out, "--resume"), True
        rc, err = self.finish(out, "--resume")
        if rc != 2 or "no checkpoint to resume from" not in err:
            errors.append(f"--resume without a checkpoint: exit {rc}, {last_line(err)!r}")
        return self.start(out), False

    # --- one trial
    def trial(self, number, rng):
        out = os.path.join(self.workdir, f"trial-{number:03d}")
        record = {"trial": number, "kills": [], "fresh_restarts": 0, "errors": [], "unloadable": []}
        for k in range(rng.randint(1, 3)):
            # the same draws every time, whatever the runs did: a seed always names the same kill plan
            aim, pick, jitter, moment = rng.random(), rng.random(), rng.uniform(0.0, 0.008), rng.random()
            latest = checkpoint_step(list_checkpoints(out)[-1]) if list_checkpoints(out) else 0
            targets = [s for s in self.save_steps() if s > latest]   # a resume saves after its checkpoint
            if k == 0:
                proc, resumed = self.start(out), False
            else:
                proc, resumed = self.restart(out, record["errors"])
                record["fresh_restarts"] += not resumed
            if targets and aim < IN_WRITE_SHARE:
                step = targets[int(pick * len(targets))]
                kill = {"mode": "in write", "step": step, "jitter_s": round(jitter, 4),
                        "outcome": kill_in_write(proc, out, step, jitter)}
            else:
                delay = moment * self.reference_seconds   # from startup to the end of training
                kill = {"mode": "random", "delay_s": round(delay, 3), "outcome": kill_after(proc, delay)}
            if proc.returncode != -signal.SIGKILL:   # it ended on its own before the kill landed
                kill["outcome"] = "finished first"
            if kill["outcome"] == "finished first" and proc.returncode != 0:
                record["errors"].append(f"run {k + 1} exited {proc.returncode} before the kill: "
                                        f"{last_line(self.output(proc))!r}")
            kill["checkpoints"] = [os.path.basename(c) for c in list_checkpoints(out)]
            kill["unloadable"] = [f"{os.path.basename(c)}: {reason}" for c, reason in unloadable_checkpoints(out)]
            record["unloadable"] += kill["unloadable"]
            record["kills"].append(kill)
        proc, resumed = self.restart(out, record["errors"])
        record["fresh_restarts"] += not resumed
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        record["final_exit"] = proc.returncode
        if proc.returncode != 0:
            record["errors"].append(f"final run exited {proc.returncode}: {last_line(self.output(proc))!r}")
        record["mismatch"] = compare_params(self.reference, out)
        record["identical"] = record["mismatch"] is None
        metrics = training_metrics(out) if os.path.exists(os.path.join(out, METRICS)) else None
        record["metrics_match"] = metrics == self.reference_metrics
        return record

    # --- the extra scenarios: each -> (status, reason), status "pass", "fail" or "skipped"
    def disk_full(self):
        """The disk fills while a checkpoint is written: exit 2 with one line, the previous checkpoint intact,
        and once there is room again the run resumes to the reference's parameters."""
        out = os.path.join(self.workdir, "disk-full")
        os.makedirs(out)
        size_kib = int(2.5 * self.checkpoint_bytes / 1024)   # two checkpoints fit, the third does not
        mounted, why_not = mount_tmpfs(out, size_kib)
        try:
            if mounted:
                how = f"tmpfs of {size_kib} KiB"
                rc, err = self.finish(out)
            else:
                limit = int(1.5 * os.path.getsize(os.path.join(self.workdir, "reference", "model.safetensors")))
                how = f"RLIMIT_FSIZE {limit // 1024} KiB ({why_not})"
                rc, err = self.finish(out, "--stop-at-step", 4)
                if rc != 0:
                    return "fail", f"{how}: the unlimited first leg exited {rc}: {last_line(err)!r}"
                rc, err = self.finish(out, "--resume", preexec_fn=lambda: limit_file_size(limit))
            problem = expect_one_line_error(rc, err)
            if problem:
                return "fail", f"{how}: {problem}"
            if not list_checkpoints(out):
                return "fail", f"{how}: no checkpoint left"
            bad = unloadable_checkpoints(out)
            if bad:
                return "fail", f"{how}: {os.path.basename(bad[0][0])} does not load: {bad[0][1]}"
            kept = os.path.basename(list_checkpoints(out)[-1])
            if mounted:
                subprocess.run(["mount", "-o", f"remount,size={8 * size_kib}k", out], check=True)
            rc, err_resumed = self.finish(out, "--resume")
            mismatch = compare_params(self.reference, out) if rc == 0 else f"exit {rc}: {last_line(err_resumed)!r}"
            if mismatch:
                return "fail", f"{how}: {kept} loads, but the resume with room again failed: {mismatch}"
            note = "" if out in last_line(err) else " (the message names no file)"
            return "pass", (f"{how}: exit 2, {last_line(err)!r}{note}; {kept} still loads; resumed with room "
                            "again: identical")
        finally:
            if mounted:
                subprocess.run(["umount", out], check=False)

    def read_only(self):
        """checkpoints/ made read-only (chmod 0o555) after a checkpoint: exit 2 with one line, the checkpoint
        intact; writable again, the run resumes to the reference's parameters. Root ignores the mode bits (the
        CAP_DAC_OVERRIDE capability), so a root campaign runs these legs with that capability dropped."""
        out = os.path.join(self.workdir, "read-only")
        rc, err = self.finish(out, "--stop-at-step", 4)
        if rc != 0:
            return "fail", f"the first leg exited {rc}: {last_line(err)!r}"
        root = os.path.join(out, CHECKPOINTS)
        os.chmod(root, 0o555)
        try:
            popen, how = {}, "chmod 0o555"
            if can_create_in(root):
                if os.geteuid() != 0:
                    return "skipped", "chmod 0o555 does not stop this user writing (the filesystem ignores modes?)"
                popen = dict(preexec_fn=drop_permission_override)
                problem = self.probe_refused(root, popen)
                if problem:
                    return "skipped", f"root bypasses permissions, and dropping CAP_DAC_OVERRIDE failed: {problem}"
                how = "chmod 0o555, run as root without CAP_DAC_OVERRIDE"
            rc, err = self.finish(out, "--resume", **popen)
            problem = expect_one_line_error(rc, err)
            if problem:
                return "fail", f"{how}: {problem}"
            names = [os.path.basename(c) for c in list_checkpoints(out)]
            if names != ["step-00000002", "step-00000004"]:
                return "fail", f"{how}: the checkpoints changed to {names}"
            bad = unloadable_checkpoints(out)
            if bad:
                return "fail", f"{how}: {os.path.basename(bad[0][0])} does not load: {bad[0][1]}"
            os.chmod(root, 0o755)
            rc, err_resumed = self.finish(out, "--resume", **popen)
            mismatch = compare_params(self.reference, out) if rc == 0 else f"exit {rc}: {last_line(err_resumed)!r}"
            if mismatch:
                return "fail", f"{how}: the resume once writable failed: {mismatch}"
            return "pass", (f"{how}: exit 2, {last_line(err)!r}; step-00000004 still loads; writable again: "
                            "identical")
        finally:
            os.chmod(root, 0o755)

    def probe_refused(self, root, popen):
        """None when a child started with `popen` can import minroberta and is refused a mkdir in `root`."""
        probe = ("import os, sys, minroberta\n"
                 "try:\n    os.mkdir(os.path.join(sys.argv[1], '.probe'))\nexcept PermissionError:\n    sys.exit(0)\n"
                 "os.rmdir(os.path.join(sys.argv[1], '.probe'))\nsys.exit('the child can still write there')\n")
        try:
            done = subprocess.run([sys.executable, "-c", probe, root], env=self.env, capture_output=True, text=True,
                                  timeout=120, **popen)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if done.returncode == 0 else last_line(done.stderr) or f"exit {done.returncode}"

    def corrupted_latest(self):
        """The latest checkpoint's model.safetensors truncated before --resume: the run falls back to the one
        before, says so, and ends with the reference's parameters."""
        out = os.path.join(self.workdir, "corrupted")
        stop = SAVE_EVERY * ((self.steps - 1) // SAVE_EVERY)
        rc, err = self.finish(out, "--stop-at-step", stop)
        if rc != 0:
            return "fail", f"the first leg exited {rc}: {last_line(err)!r}"
        latest, previous = f"step-{stop:08d}", f"step-{stop - SAVE_EVERY:08d}"
        weights = os.path.join(out, CHECKPOINTS, latest, "model.safetensors")
        os.truncate(weights, os.path.getsize(weights) // 2)
        rc, err = self.finish(out, "--resume")
        warned = [line for line in err.splitlines() if line.startswith("warning:") and latest in line]
        if rc != 0:
            return "fail", f"resume exited {rc}: {last_line(err)!r}"
        if not warned or "falling back" not in warned[0]:
            return "fail", f"no warning that {latest} is unusable and the run falls back"
        if f"resumed from {os.path.join(out, CHECKPOINTS, previous)} at step {stop - SAVE_EVERY}" not in err:
            return "fail", f"did not resume from {previous}"
        mismatch = compare_params(self.reference, out)
        if mismatch:
            return "fail", f"fell back to {previous}, but the final parameters differ: {mismatch}"
        return "pass", f"truncated {latest}/model.safetensors: warned, resumed from {previous}, identical"


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def expect_one_line_error(rc, err):
    """None when a run ended as the CLI promises for an environment failure: exit 2, one `error: ` line."""
    if rc != 2:
        return f"exit {rc} (expected 2): {last_line(err)!r}"
    if "Traceback" in err:
        return "printed a traceback"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if len(errors) != 1 or last_line(err) != errors[0]:
        return f"expected one final `error: ...` line, got {last_line(err)!r}"
    return None


def mount_tmpfs(path, size_kib):
    """Mount a tmpfs of `size_kib` at `path`. -> (mounted?, why not)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False, "not root, cannot mount a small filesystem"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", path], capture_output=True,
                          text=True)
    return done.returncode == 0, last_line(done.stderr) or f"mount exited {done.returncode}"


def limit_file_size(limit):
    """In the child: writes past `limit` bytes fail with EFBIG (an OSError), not with a SIGXFSZ death."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def drop_permission_override():
    """In the child, before exec: drop the capabilities that let root ignore file modes from the bounding set,
    so the program it runs (still root, still able to read root's files) meets permission checks."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")


def can_create_in(directory):
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory))
        return True
    except PermissionError:
        return False


def summarize(trials, scenarios):
    kills = [k for t in trials for k in t["kills"]]
    return {
        "trials": len(trials),
        "identical": sum(t["identical"] for t in trials),
        "mismatched": sum(not t["identical"] for t in trials),
        "unloadable_checkpoints": sum(len(t["unloadable"]) for t in trials),
        "errors": sum(len(t["errors"]) for t in trials),
        "kills": len(kills),
        "kills_random": sum(k["mode"] == "random" and k["outcome"] == "killed" for k in kills),
        "kills_in_write": sum(k["outcome"] == "in write" for k in kills),
        "kills_after_rename": sum(k["outcome"] == "after rename" for k in kills),
        "finished_first": sum(k["outcome"] == "finished first" for k in kills),
        "fresh_restarts": sum(t["fresh_restarts"] for t in trials),
        "checkpoints_checked": sum(len(k["checkpoints"]) for k in kills),
        "metrics_mismatched": sum(not t["metrics_match"] for t in trials),
        "scenarios_failed": sum(s["status"] == "fail" for s in scenarios),
    }


def print_table(summary, scenarios, trials):
    s = summary
    rows = [
        ("trials", s["trials"], f"{s['kills']} kills: {s['kills_random']} at random moments, {s['kills_in_write']} "
                                f"inside a checkpoint write, {s['kills_after_rename']} just after one, "
                                f"{s['finished_first']} too late (run already done); "
                                f"{s['fresh_restarts']} restarts from scratch"),
        ("identical", s["identical"], "final parameters bit-identical to the uninterrupted run"),
        ("mismatched", s["mismatched"], ""),
        ("unloadable checkpoints", s["unloadable_checkpoints"],
         f"of {s['checkpoints_checked']} complete checkpoints checked after the kills"),
        ("unexpected run errors", s["errors"], ""),
        ("metrics.jsonl differs", s["metrics_mismatched"],
         "informational: training records (step, loss, lr, evals) unlike the reference's"),
    ]
    for name, value, note in rows:
        print(f"{name:<24}{value:>5}  {note}".rstrip())
    for t in trials:
        for problem in ([t["mismatch"]] if t["mismatch"] else []) + t["unloadable"] + t["errors"]:
            print(f"  trial {t['trial']}: {problem}")
    print()
    print(f"{'scenario':<24}{'result':<9}reason")
    for scenario in scenarios:
        print(f"{scenario['name']:<24}{scenario['status']:<9}{scenario['reason']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="kill-and-resume trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and kill counts")
    parser.add_argument("--steps", type=int, default=12, help="updates per run (at least 6)")
    parser.add_argument("--workdir", help="keep the runs in a new folder under here (default: a temporary "
                                          "folder, removed when everything passed)")
    parser.add_argument("--corpus", help="text file to train on (default: 300 stdlib docstrings)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if args.steps < 6:
        parser.error("--steps must be at least 6 (the scenarios need two checkpoints before the last)")
    if args.trials < 0:
        parser.error("--trials must be at least 0")

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix="torture-", dir=os.path.abspath(args.workdir))
    else:
        workdir = tempfile.mkdtemp(prefix="minroberta-torture-")
    corpus = os.path.abspath(args.corpus) if args.corpus else os.path.join(workdir, "corpus.txt")
    if not args.corpus:
        write_corpus(corpus)
    say(f"torture: {args.trials} trials of {args.steps} steps, seed {args.seed}, in {workdir}")
    started = time.monotonic()
    campaign = Campaign(workdir, corpus, args.steps)
    campaign.run_reference()

    rng = random.Random(args.seed)
    trials = []
    for number in range(1, args.trials + 1):
        record = campaign.trial(number, rng)
        trials.append(record)
        kills = ", ".join(f"{k['mode']}{' step ' + str(k['step']) if 'step' in k else ''} -> {k['outcome']}"
                          for k in record["kills"])
        verdict = "identical" if record["identical"] else f"MISMATCH ({record['mismatch']})"
        problems = record["unloadable"] + record["errors"]
        say(f"trial {number}/{args.trials}: {kills}; {verdict}" + (f"; {problems}" if problems else ""))

    scenarios = []
    for name, check in (("disk full", campaign.disk_full), ("read-only checkpoints", campaign.read_only),
                        ("corrupted latest", campaign.corrupted_latest)):
        try:
            status, reason = check()
        except Exception as exc:   # a broken scenario is a failure to report, not a reason to lose the table
            status, reason = "fail", f"{type(exc).__name__}: {exc}"
        scenarios.append({"name": name, "status": status, "reason": reason})
        say(f"scenario {name}: {status}: {reason}")

    summary = summarize(trials, scenarios)
    passed = (summary["identical"] == summary["trials"] and summary["unloadable_checkpoints"] == 0
              and summary["errors"] == 0 and summary["scenarios_failed"] == 0)
    print_table(summary, scenarios, trials)
    seconds = time.monotonic() - started
    print(f"\n{'PASSED' if passed else 'FAILED'} in {seconds:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"settings": {**vars(args), "workdir": workdir, "reference_seconds": campaign.reference_seconds},
                       "summary": summary, "scenarios": scenarios, "trials": trials, "passed": passed,
                       "seconds": seconds}, handle, indent=2)
    if passed and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"runs and logs kept in {workdir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
