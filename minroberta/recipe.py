"""The recipes: every default of a training run, in one place. The command line builds its flags from these
fields, the trainer and the reference loop read them, and each checkpoint saves the whole recipe, so that
`--resume --out DIR` alone goes on with the run as it was started.

`TrainSettings` is what any training run needs; its defaults are the measured default pretraining run's
(docs/performance.md). `Pretraining` adds the corpus and the model; `Finetuning` the task and its files, and
its own defaults where fine-tuning differs.
"""

import dataclasses
import os

from .config import PRESETS, SIZE_LIMIT
from .errors import MinRobertaError
from .guards import COUNT, DROPOUT, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, SIZE, Range


def field(default, help, *rules, choices=None):
    """A recipe field: its default, its flag's help, and the rules (guards.Range) or choices `validate` holds it
    to."""
    return dataclasses.field(default=default, metadata={"help": help, "rules": rules, "choices": choices})


@dataclasses.dataclass
class TrainSettings:
    steps: int = field(2600, "optimizer updates", Range(int, 1, 10**9))
    batch_size: int = field(64, "sequences per micro-batch", SIZE)
    accumulate: int = field(1, "micro-batches per update (effective batch = batch-size x accumulate)", SIZE)
    lr: float = field(5e-3, "peak learning rate", POSITIVE)
    warmup: int = field(-1, "warmup updates (-1: a share of --steps: 15% in pretraining, where RoBERTa's 6% left the "
                            "short default run on the token-frequency plateau longer; 6% in fine-tuning)",
                       Range(int, -1))
    beta2: float = field(0.99, "AdamW's second-moment decay (RoBERTa 0.98, for its large batches; the short default "
                               "run learns a little faster with 0.99)", Range(float, 0.0, 1.0, high_open=True))
    eps: float = field(1e-6, "AdamW's epsilon", POSITIVE)
    weight_decay: float = field(0.01, "AdamW weight decay (matrices only)", NON_NEGATIVE)
    clip_norm: float = field(1.0, "global gradient-norm clip (0: off)", NON_NEGATIVE)
    skip_nonfinite: bool = field(False, "skip an update whose loss or gradient is NaN/inf and go on (default: stop, "
                                        "keeping the last good checkpoint)")
    eval_every: int = field(200, "updates between validation runs", COUNT)
    eval_batches: int = field(16, "validation batches per evaluation (0: all)", Range(int, 0))
    save_every: int = field(400, "updates between checkpoints (Ctrl-C saves too)", COUNT)
    keep_checkpoints: int = field(2, "checkpoints kept (the newest)", COUNT)
    log_every: int = field(10, "updates between metric records", COUNT)
    seed: int = field(0, "seed of the weights, data order, masks and dropout", SEED)

    WARMUP_SHARE = 0.15   # of the updates, when warmup is -1
    LAST_EVAL = ()        # the metrics a finished run's last evaluation holds besides its step

    @classmethod
    def from_saved(cls, state, source):
        """The recipe a checkpoint's trainer_state.json saved under "settings" (checkpoints written before this
        file kept the command's flags under "recipe": those count, over the settings). Fields it lacks keep their
        defaults."""
        settings, flags = state.get("settings") or {}, state.get("recipe") or {}
        if not isinstance(settings, dict) or not isinstance(flags, dict):
            raise MinRobertaError(f"{source}: its trainer state holds a damaged recipe (not a mapping of names)")
        saved = {**settings, **flags}
        if "precision" not in saved and state.get("precision") in ("float32", "tf32", "fp16"):
            saved["precision"] = state["precision"]   # kept beside the recipe before it joined it
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in saved.items() if k in names}).validate()
        except MinRobertaError as exc:
            raise MinRobertaError(f"{source}: settings: {exc}") from None

    @property
    def warmup_steps(self):
        return self.warmup if self.warmup >= 0 else max(1, round(self.WARMUP_SHARE * self.steps))

    @property
    def betas(self):
        return 0.9, self.beta2

    def validate(self):
        """Every field of its type, a number finite and within its rules (guards.Range, as for every other
        command's flags): a one-line error naming the flag."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            flag = "--" + f.name.replace("_", "-")
            if value is None:
                continue
            if f.type not in (int, float):
                if not isinstance(value, f.type):   # a damaged saved recipe
                    raise MinRobertaError(f"{flag} must be {f.type.__name__}, got {value!r}")
                if meta["choices"] and value not in meta["choices"]:
                    raise MinRobertaError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")
                continue
            for rule in meta["rules"] or (Range(f.type),):
                if problem := rule.problem(value, whole_floats=True):
                    raise MinRobertaError(f"{flag} {problem}")
            if f.type is int:
                setattr(self, f.name, int(value))   # 2600.0 read back from a JSON file counts as 2600
        return self


@dataclasses.dataclass
class Pretraining(TrainSettings):
    LAST_EVAL = ("valid_loss", "valid_ppl", "valid_accuracy")

    corpus: list = field(None, "text files, directories or globs (blank lines separate documents); default: the "
                               "docstrings of this Python's standard library")
    preset: str = field("mini", choices=tuple(PRESETS),
                        help="model size: mini (128 wide, 2 layers) learns to fill masks in five minutes on two CPU "
                             "cores; tiny (256 x 4) and small (512 x 6) want longer runs; base is roberta-base's "
                             "shape; micro is for smoke tests")
    hidden_size: int = field(None, "override the preset's hidden_size", SIZE)
    layers: int = field(None, "override the preset's num_hidden_layers", SIZE)
    heads: int = field(None, "override the preset's num_attention_heads", SIZE)
    intermediate_size: int = field(None, "override the preset's intermediate_size", SIZE)
    vocab_size: int = field(None, "BPE vocabulary size (default by preset)", SIZE)
    tokenizer: str = field(None, "use this tokenizer (tokenizer.json or vocab.json + merges.txt) instead of "
                                 "training one")
    init_range: float = field(0.05, "standard deviation of the initial weights (initializer_range; RoBERTa 0.02: "
                                    "the small default model leaves the token-frequency plateau sooner from 0.05)",
                              POSITIVE)
    seq_len: int = field(32, "block length of the packed sequences, in tokens", Range(int, 8, SIZE_LIMIT))
    mask_prob: float = field(0.5, "share of the tokens chosen for the MLM loss in training (80% <mask>, 10% random, "
                                  "10% kept); validation is always masked at 15%", PROBABILITY)
    dropout: float = field(0.0, "dropout probability of hidden states and attention (RoBERTa used 0.1; a run "
                                     "of minutes learns faster without)", DROPOUT)
    dtype: str = field("float32", "parameter precision", choices=("float32", "float64"))
    prepared: str = field(None, "the corpus tokenized and packed (by `minroberta prepare`, or prepared here when "
                                "missing or stale; default: OUT/prepared)")
    time_budget: str = field(None, "instead of --steps: as many updates as end, with their evaluations and "
                                   "checkpoints, within this time from the start (90s, 10m, 2h): decided after 22 "
                                   "updates, and again after a tenth of them")
    precision: str = field("float32", choices=("float32", "tf32", "fp16"),
                           help="matrix products: float32; tf32 (cupy, GPUs of compute capability 8.0+); fp16 (mixed "
                                "precision: float16 products, float32 master weights, dynamic loss scaling)")

    def validate(self):
        super().validate()
        if self.precision != "float32" and self.dtype != "float32":
            raise MinRobertaError(f"--precision {self.precision} works on float32 parameters; drop --dtype "
                                  f"{self.dtype}")
        return self


@dataclasses.dataclass
class Finetuning(TrainSettings):
    model: str = field(None, "pretrained model directory (with tokenizer)")
    task: str = field(None, choices=("classify", "pair", "regress", "qa"),
                      help="classify: text,label; pair: text_a,text_b,label; regress: text,label (numbers); qa: JSON "
                           "lines with context, question, answers")
    train: str = field(None, "training examples (.csv or .jsonl)")
    eval: str = field(None, "evaluation examples (.csv or .jsonl)")
    epochs: float = field(3.0, "passes over the training examples", POSITIVE, Range(float, high=10**6))
    max_length: int = field(None, "tokens per example (default: the model's limit); longer texts are truncated "
                                  "with a warning", COUNT)
    precision: str = field("float32", "matrix products (as pretrain's --precision)",
                           choices=("float32", "tf32", "fp16"))
    # where fine-tuning's defaults differ from pretraining's
    steps: int = field(0, "optimizer updates (set from --epochs)", Range(int, 0))
    batch_size: int = field(16, "sequences per micro-batch", SIZE)
    lr: float = field(1e-4, "peak learning rate", POSITIVE)
    beta2: float = field(0.98, "AdamW's second-moment decay", Range(float, 0.0, 1.0, high_open=True))
    eval_every: int = field(50, "updates between evaluations (and best-model checks)", COUNT)
    eval_batches: int = field(0, "evaluation batches per evaluation (0: all)", Range(int, 0))
    save_every: int = field(100, "updates between checkpoints", COUNT)
    seed: int = field(0, "seed of the new head, the order and dropout", SEED)

    WARMUP_SHARE = 0.06   # RoBERTa's fine-tuning ratio

    REQUIRED = ("model", "task", "train", "eval")


# The fields a checkpoint fixes: they made the model and its tokenizer what they are, so a resume cannot change them.
FIXED = ("preset", "hidden_size", "layers", "heads", "intermediate_size", "seq_len", "dtype", "task", "model",
         "tokenizer", "vocab_size", "init_range")
# Paths kept absolute, so that a run resumes from another folder.
PATHS = ("corpus", "model", "train", "eval", "tokenizer", "prepared")
RECIPES = {"pretrain": Pretraining, "finetune": Finetuning}   # by command


def names(recipe_class):
    return [f.name for f in dataclasses.fields(recipe_class)]


def absolute(name, value):
    if name not in PATHS or value is None:
        return value
    return [os.path.abspath(v) for v in value] if isinstance(value, list) else os.path.abspath(value)


def shown(value):
    """A recipe value as the command line would give it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "(none)" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


def kind_of(state):
    """The recipe class of a checkpoint's trainer state: fine-tuning's names a task (in "recipe" in a checkpoint
    written before the recipe joined the settings)."""
    saved = [state.get(key) for key in ("settings", "recipe")] if isinstance(state, dict) else []
    return Finetuning if any(isinstance(part, dict) and "task" in part for part in saved) else Pretraining


def resolve(recipe_class, given, saved=None, saved_step=None, source="the checkpoint", say=print):
    """The run's recipe: the defaults, or on a resume the checkpoint's, with the flags the command line gave
    (`given`, name -> value) on top. On a resume each given flag that differs is said; one that would change the
    model (FIXED) is a one-line error, as is a --steps that is not past the checkpoint."""
    given = {name: absolute(name, value) for name, value in given.items()}
    base = recipe_class() if saved is None else saved
    for name, value in given.items():
        before = getattr(base, name)
        if saved is None or value == before:
            continue
        flag = "--" + name.replace("_", "-")
        if name in FIXED:
            raise MinRobertaError(f"{source} was trained with {flag} {shown(before)}; a checkpoint fixes the model, so "
                                  f"drop {flag} (or start a new run in another --out)")
        if name == "steps" and saved_step is not None and value <= saved_step:
            raise MinRobertaError(f"--steps {value} is not past {source}'s step {saved_step}")
        say(f"{flag} {shown(value)} instead of the run's {shown(before)}, from step {saved_step} on")
    if saved is not None and "steps" in given and "warmup" not in given and base.warmup < 0:
        given["warmup"] = base.warmup_steps          # the run's own warmup, also when --steps grows
    return dataclasses.replace(base, **given).validate()
