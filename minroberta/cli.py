"""The `minroberta` command: pretrain, fill-mask, finetune, predict, embed, and the pictures attention and masking.

Every user error ends as one line on stderr and exit status 2; no traceback.
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import time

import numpy as np

from . import backend, collection, precision
from .kernels import fused, threads
from .errors import MinRobertaError

DEFAULT_OUT = os.path.join("runs", "pretrain")
VOCAB_SIZES = {"micro": 2048, "mini": 1024, "tiny": 8192, "small": 16384, "base": 32768}
LR = 5e-3   # the default recipe's peak learning rate
PRETRAIN_WARMUP = 0.15   # share of the updates spent warming up, when --warmup is not given
SHAPE_FLAGS = {"--hidden-size": "hidden_size", "--layers": "num_hidden_layers", "--heads": "num_attention_heads",
               "--intermediate-size": "intermediate_size"}
# The flags that make a run what it is (argparse's names). Each checkpoint keeps their values (Trainer.recipe), and
# --resume takes back those the command line leaves out, so `--resume --out DIR` alone goes on with the run as it
# was started. One given with another value is used from the checkpoint on, and said: a lower --lr or
# --skip-nonfinite for a run that diverged, a longer --steps, files that have moved. The model's shape and
# parameter type (FIXED) cannot change under a checkpoint.
PRETRAIN_RECIPE = ("corpus", "preset", "hidden_size", "layers", "heads", "intermediate_size", "seq_len", "mask_prob",
                   "steps", "batch_size", "accumulate", "lr", "warmup", "beta2", "weight_decay", "clip_norm",
                   "dropout", "skip_nonfinite", "seed", "dtype")
PRETRAIN_RECIPE += ("prepared", "time_budget")   # where the prepared data is; the run's --time-budget
FINETUNE_RECIPE = ("model", "task", "train", "eval", "epochs", "batch_size", "accumulate", "lr", "warmup",
                   "weight_decay", "max_length", "seed")
RECIPES = {"pretrain": PRETRAIN_RECIPE, "finetune": FINETUNE_RECIPE}
FIXED = ("preset", "hidden_size", "layers", "heads", "intermediate_size", "seq_len", "dtype", "task")
PATH_FLAGS = ("corpus", "prepared", "model", "train", "eval")   # kept absolute, for a resume from another folder


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where there is none to show (None, off) or the help text
    already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default:" in (action.help or "") or \
                "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_device_arguments(command):
    """Where and how a command computes: the same three options on every command."""
    command.add_argument("--backend", choices=backend.BACKENDS, default=None,
                         help="array module (default: $MINROBERTA_BACKEND or numpy)")
    command.add_argument("--precision", choices=precision.MODES, default="float32",
                         help="matrix products: float32; tf32 (cupy, GPUs of compute capability 8.0+); fp16 (mixed "
                              "precision: float16 products, float32 master weights, dynamic loss scaling in training)")
    command.add_argument("--fused", action="store_true",
                         help="fused CUDA kernels for GELU, layer norm, softmax and AdamW (cupy backend only)")
    command.add_argument("--threads", type=int, default=None,
                         help="CPU threads for the numpy backend (default: $MINROBERTA_THREADS or every usable core)")


def build_parser():
    parser = argparse.ArgumentParser(prog="minroberta", description="A RoBERTa in plain NumPy: pretrain and use it.")
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain",
                              help="pretrain a masked LM (default: the mini model on the stdlib docstrings)",
                              formatter_class=HelpFormatter)
    pre.add_argument("--preset", default="mini", choices=list(VOCAB_SIZES),
                     help="model size: mini (128 wide, 2 layers) learns to fill masks in five minutes on two CPU "
                          "cores; tiny (256 x 4) and small (512 x 6) want longer runs; base is roberta-base's "
                          "shape; micro is for smoke tests")
    for flag, field in SHAPE_FLAGS.items():
        pre.add_argument(flag, type=int, default=None, help=f"override the preset's {field}")
    pre.add_argument("--init-range", type=float, default=0.05,
                     help="standard deviation of the initial weights (initializer_range; RoBERTa 0.02: the small "
                          "default model leaves the token-frequency plateau sooner from 0.05)")
    pre.add_argument("--corpus", nargs="+", metavar="PATH",
                     help="text files, directories or globs (blank lines separate documents); "
                          "default: the docstrings of this Python's standard library")
    pre.add_argument("--out", default=DEFAULT_OUT, help="run directory: checkpoints, metrics.jsonl, final model")
    pre.add_argument("--prepared", metavar="DIR", help="the corpus tokenized and packed (by `minroberta prepare`, "
                                                      "or prepared here when missing or stale; default: OUT/prepared)")
    pre.add_argument("--steps", type=int, default=2600, help="optimizer updates")
    pre.add_argument("--time-budget", metavar="DURATION",
                     help="instead of --steps: as many updates as end, with their evaluations and checkpoints, "
                          "within this time from the start (90s, 10m, 2h): decided after 22 updates, and again "
                          "after a tenth of them")
    pre.add_argument("--batch-size", type=int, default=64, help="sequences per micro-batch")
    pre.add_argument("--accumulate", type=int, default=1,
                     help="micro-batches per update (effective batch = batch-size x accumulate)")
    pre.add_argument("--lr", type=float, default=LR, help="peak learning rate")
    pre.add_argument("--warmup", type=int, default=-1,
                     help="warmup updates (-1: 15%% of --steps; RoBERTa's 6%% left the short default run on the "
                          "token-frequency plateau longer)")
    pre.add_argument("--beta2", type=float, default=0.99,
                     help="AdamW's second-moment decay (RoBERTa 0.98, for its large batches; the short default run "
                          "learns a little faster with 0.99)")
    pre.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (matrices only)")
    pre.add_argument("--clip-norm", type=float, default=1.0, help="global gradient-norm clip (0: off)")
    pre.add_argument("--seq-len", type=int, default=32, help="block length of the packed sequences, in tokens")
    pre.add_argument("--mask-prob", type=float, default=0.5,
                     help="share of the tokens chosen for the MLM loss in training (80%% <mask>, 10%% random, 10%% "
                          "kept); validation is always masked at 15%%")
    pre.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default by preset)")
    pre.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer (tokenizer.json or vocab.json + "
                                                         "merges.txt) instead of training one")
    pre.add_argument("--dropout", type=float, default=0.0,
                     help="dropout probability of hidden states and attention (RoBERTa used 0.1; a run of minutes "
                          "learns faster without)")
    pre.add_argument("--no-dropout", action="store_true", help="train without dropout (the same as --dropout 0)")
    pre.add_argument("--skip-nonfinite", action="store_true",
                     help="skip an update whose loss or gradient is NaN/inf and go on (default: stop, keeping "
                          "the last good checkpoint)")
    pre.add_argument("--eval-every", type=int, default=200, help="updates between validation runs")
    pre.add_argument("--eval-batches", type=int, default=16, help="validation batches per evaluation (0: all)")
    pre.add_argument("--save-every", type=int, default=400, help="updates between checkpoints (Ctrl-C saves too)")
    pre.add_argument("--log-every", type=int, default=10, help="updates between metric records")
    pre.add_argument("--seed", type=int, default=0, help="seed of the weights, data order, masks and dropout")
    pre.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    pre.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                     help="checkpoint and stop after update N (resume later with --resume); the schedule still "
                          "runs to --steps")
    add_device_arguments(pre)
    pre.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="parameter precision")
    pre.add_argument("--mpi-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="under mpiexec: how long a rank waits for the others before stopping the job")

    prep = commands.add_parser("prepare", help="tokenize and pack a corpus once, for many pretrain runs "
                                               "(pretrain --prepared DIR)", formatter_class=HelpFormatter)
    prep.add_argument("--corpus", nargs="+", metavar="PATH",
                      help="as for pretrain (default: the docstrings of this Python's standard library)")
    prep.add_argument("--out", required=True, metavar="DIR", help="where the prepared data goes")
    prep.add_argument("--seq-len", type=int, default=32, help="block length of the packed sequences, in tokens")
    prep.add_argument("--preset", default="mini", choices=list(VOCAB_SIZES), help="the vocabulary size's preset")
    prep.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default by preset)")
    prep.add_argument("--tokenizer", metavar="DIR", help="use this tokenizer instead of training one")

    fill = commands.add_parser("fill-mask", help="predict the masked tokens of a text (models with an MLM head)",
                               formatter_class=HelpFormatter)
    fill.add_argument("--model", required=True, metavar="DIR", help="a model directory (with tokenizer files)")
    fill.add_argument("--top-k", type=int, default=5, help="predictions shown per mask")
    add_device_arguments(fill)
    fill.add_argument("text", nargs="+", help='texts containing <mask> (or the tokenizer\'s own mask token, such as '
                                              '[MASK]), e.g. "Return the <mask> of x."')

    tune = commands.add_parser("finetune", help="fine-tune a pretrained model to classify texts or pairs, or "
                                                "to answer questions", formatter_class=HelpFormatter)
    tune.add_argument("--model", required=True, metavar="DIR", help="pretrained model directory (with tokenizer)")
    tune.add_argument("--task", required=True, choices=["classify", "pair", "regress", "qa"],
                      help="classify: text,label; pair: text_a,text_b,label; regress: text,label (numbers); "
                           "qa: JSON lines with context, question, answers")
    tune.add_argument("--train", required=True, metavar="FILE", help="training examples (.csv or .jsonl)")
    tune.add_argument("--eval", required=True, metavar="FILE", help="evaluation examples (.csv or .jsonl)")
    tune.add_argument("--out", default=os.path.join("runs", "finetune"), help="run directory; the best model lands here")
    tune.add_argument("--epochs", type=float, default=3.0, help="passes over the training examples")
    tune.add_argument("--batch-size", type=int, default=16)
    tune.add_argument("--accumulate", type=int, default=1, help="micro-batches per update")
    tune.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    tune.add_argument("--warmup", type=int, default=-1, help="warmup updates (-1: 6%% of the updates)")
    tune.add_argument("--weight-decay", type=float, default=0.01)
    tune.add_argument("--max-length", type=int, default=None, help="tokens per example (default: the model's limit); "
                                                                   "longer texts are truncated with a warning")
    tune.add_argument("--eval-every", type=int, default=50, help="updates between evaluations (and best-model checks)")
    tune.add_argument("--save-every", type=int, default=100, help="updates between checkpoints")
    tune.add_argument("--log-every", type=int, default=10)
    tune.add_argument("--seed", type=int, default=0, help="seed of the new head, the order and dropout")
    tune.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_device_arguments(tune)

    predict = commands.add_parser("predict", help="apply a fine-tuned model to texts, pairs or questions",
                                  formatter_class=HelpFormatter)
    predict.add_argument("--model", required=True, metavar="DIR", help="a fine-tuned model directory")
    predict.add_argument("--pair", metavar="TEXT_B", help="second text of a pair (pair classifiers), for every text")
    predict.add_argument("--context", metavar="TEXT", help="the passage to answer from (QA models); the texts are "
                                                           "the questions")
    add_collection_arguments(predict, "label, probability and text a line", "probabilities (.npy) or label, score "
                                                                            "and probabilities (.jsonl)")
    add_device_arguments(predict)
    predict.add_argument("text", nargs="*", help="texts to classify, or questions")

    embed = commands.add_parser("embed", help="contextual vectors of texts",
                                formatter_class=HelpFormatter)
    embed.add_argument("--model", required=True, metavar="DIR", help="a model directory (with tokenizer)")
    embed.add_argument("--pooling", choices=["cls", "mean", "max", "tokens"], default=None,
                       help="one vector per text (cls, mean or max), or one per token with its character offsets "
                            "(default: a sentence-transformers directory's 1_Pooling/config.json, else mean)")
    embed.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="scale pooled vectors to unit length (default: on where the directory's modules.json "
                            "lists Normalize)")
    add_collection_arguments(embed, "text and vector a line", "the vectors (.npy; .npz for --pooling tokens) or JSON "
                                                              "lines of text and vector (.jsonl)")
    add_device_arguments(embed)
    embed.add_argument("text", nargs="*", help="texts to embed")

    attention = commands.add_parser("attention", help="draw every layer's attention heads over a text (needs "
                                                      "matplotlib)", formatter_class=HelpFormatter)
    attention.add_argument("--model", required=True, metavar="DIR", help="a model directory (with tokenizer)")
    attention.add_argument("--out", default="attention.png", metavar="PNG", help="where to write the picture")
    add_device_arguments(attention)
    attention.add_argument("text", help='the text, e.g. "Return the number of items in the list."')

    masking = commands.add_parser("masking", help="draw one batch as dynamic masking leaves it: which tokens were "
                                                  "masked, replaced, kept (needs matplotlib)",
                                  formatter_class=HelpFormatter)
    masking.add_argument("--model", required=True, metavar="DIR", help="a model directory: its tokenizer and length")
    masking.add_argument("--corpus", nargs="+", metavar="PATH",
                         help="text files, directories or globs, as for pretrain (default: the standard library's "
                              "docstrings)")
    masking.add_argument("--out", default="masking.png", metavar="PNG", help="where to write the picture")
    masking.add_argument("--batch-size", type=int, default=6, help="sequences in the batch")
    masking.add_argument("--seq-len", type=int, default=None,
                         help="block length in tokens (default: the model's, at most 32)")
    masking.add_argument("--mask-prob", type=float, default=0.15,
                         help="share of tokens chosen (RoBERTa's 15%%; the default pretraining recipe uses 0.5)")
    masking.add_argument("--epochs", type=int, default=2, help="the same sequences masked for this many epochs, one "
                                                               "panel each: the masks are drawn afresh every epoch")
    masking.add_argument("--seed", type=int, default=0, help="the seed the masks are drawn from")
    parser.commands = {"pretrain": pre, "finetune": tune}   # for given_flags
    return parser


def given_flags(argv, command):
    """Which of the command's recipe flags the command line sets itself rather than leaving at their defaults:
    the same arguments parsed again with a marker for their defaults."""
    parser, unset = build_parser(), object()
    parser.commands[command].set_defaults(**dict.fromkeys(RECIPES[command], unset))
    parsed = vars(parser.parse_args(argv))
    return {dest for dest in RECIPES[command] if parsed[dest] is not unset}


def recipe_of(args):
    """The recipe flags' values as a checkpoint keeps them."""
    recipe = {}
    for dest in RECIPES[args.command]:
        value = getattr(args, dest)
        if dest in PATH_FLAGS and value is not None:
            value = [os.path.abspath(v) for v in value] if isinstance(value, list) else os.path.abspath(value)
        recipe[dest] = value
    return recipe


def keep_recipe(args, checkpoint, say):
    """On --resume: the checkpoint's recipe replaces the flags left at their defaults; one given with another
    value replaces the run's from here on, and is said (a FIXED one is a one-line error, as is a --steps that is
    not past the checkpoint). -> the checkpoint's trainer state."""
    from .train import read_state
    state = read_state(checkpoint)
    saved = state.get("recipe")
    if saved is None:   # written before checkpoints kept their recipe: the trainer settings, as far as they go
        settings = state.get("settings", {})
        saved = {k: settings[k] for k in ("steps", "batch_size", "accumulate", "lr", "weight_decay", "clip_norm",
                                          "seed", "skip_nonfinite") if k in settings}
    given, asked = getattr(args, "given", set()), recipe_of(args)
    for dest in RECIPES[args.command]:
        if dest not in saved or asked[dest] == saved[dest]:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest not in given:
            setattr(args, dest, saved[dest])
        elif dest in FIXED:
            raise MinRobertaError(f"{checkpoint} was trained with {flag} {shown(saved[dest])}; a checkpoint fixes "
                                  f"the model, so drop {flag} (or start a new run in another --out)")
        elif dest == "steps" and asked[dest] <= state["step"]:
            raise MinRobertaError(f"--steps {asked[dest]} is not past {checkpoint}'s step {state['step']}")
        else:
            say(f"{flag} {shown(asked[dest])} instead of the run's {shown(saved[dest])}, from step {state['step']} on")
    return state


def shown(value):
    """A recipe flag's value as the command line would give it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "(none)" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_collection_arguments(command, printed, saved):
    """Where the texts come from and where the answers go: the same options on embed and predict."""
    command.add_argument("--file", metavar="FILE", help="also read texts from this file, one per line (- for "
                                                        "standard input)")
    command.add_argument("--output", metavar="FILE", help=f"write {saved} in input order; default: print {printed}")
    command.add_argument("--max-length", type=int, default=None,
                         help="tokens per text; longer ones are cut (default: a sentence-transformers directory's "
                              "sentence_bert_config.json, else the model's limit)")
    command.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                         help=f"tokens run together: batches of texts of one length each, at most this many "
                              f"tokens in all (default {collection.MAX_TOKENS})")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command in RECIPES:
            args.given = given_flags(argv, args.command)
        if getattr(args, "backend", None):
            backend.use(args.backend)
        precision.use(getattr(args, "precision", "float32"))
        fused.use(getattr(args, "fused", False))
        if getattr(args, "threads", None) is not None:
            threads.use(args.threads)
        commands = {"pretrain": run_pretrain, "fill-mask": run_fill_mask, "finetune": run_finetune,
                    "predict": run_predict, "embed": run_embed, "attention": run_attention,
                    "masking": run_masking, "prepare": run_prepare}
        return commands[args.command](args)
    except MinRobertaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # a second Ctrl-C in training, or the first anywhere else
        from .train import list_checkpoints
        saved = list_checkpoints(args.out) if args.command in RECIPES else []
        if saved:
            print(f"interrupted: the last checkpoint, {saved[-1]}, is whole; continue with --resume --out {args.out}",
                  file=sys.stderr)
        elif args.command in RECIPES:
            print(f"interrupted before the first checkpoint: nothing in {args.out} to resume", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader of the output has gone (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so the exit's flush does not fail again
        if args.command in RECIPES:   # a training run cut short has failed
            with contextlib.suppress(OSError):
                print("error: the output pipe closed, so the run stopped", file=sys.stderr)
            return 2
        return 0   # a command that prints its results: the reader has what it wanted
    except OSError as exc:   # disk full, permission denied, ...: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


# --- fill-mask -----------------------------------------------------------------------------------------

def fill_mask(model, tokenizer, text, top_k=5):
    """For each mask in `text`: [(token, probability), ...] best first. The text may write the mask as
    `<mask>` whatever the tokenizer's own spelling ([MASK] for BERT)."""
    if not model.has_lm_head:
        raise MinRobertaError("this model has no masked-LM head, so it cannot fill masks")
    mask_id = tokenizer.require("mask", "fill-mask")
    mask_token = tokenizer.id_to_token(mask_id)
    encoding = tokenizer.encode(text.replace("<mask>", mask_token) if mask_token != "<mask>" else text)
    if len(encoding.ids) > model.config.max_sequence_length:
        raise MinRobertaError(f"text is {len(encoding.ids)} tokens, the model takes at most "
                              f"{model.config.max_sequence_length}")
    positions = [i for i, token in enumerate(encoding.ids) if token == mask_id]
    if not positions:
        raise MinRobertaError(f"no <mask> token in {text!r}")
    logits = backend.to_host(model(np.array([encoding.ids]), None, np.array([encoding.type_ids])).logits)
    logits = logits[0, positions].astype(np.float64)                                   # (M, V)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    results = []
    for row in probs:
        best = np.argsort(-row)[:top_k]
        results.append([(tokenizer.decode([int(i)], skip_special_tokens=False), float(row[i])) for i in best])
    return results


def run_fill_mask(args):
    from .checkpoint import HEAD_MARKERS, load_pretrained
    from .tokenizer import Tokenizer
    model = load_pretrained(args.model)
    if not model.has_lm_head:
        marker = dict(HEAD_MARKERS[model.config.model_type])["mlm"]
        raise MinRobertaError(f"{args.model}: has no masked-LM head (no {marker}* tensors), so it cannot fill masks; "
                              "embed and finetune use it as an encoder")
    tokenizer = Tokenizer.from_dir(args.model)
    tokenizer.require("mask", "fill-mask")
    for text in args.text:
        filled = fill_mask(model, tokenizer, text, args.top_k)   # before printing: an error is one line alone
        print(text)
        for n, predictions in enumerate(filled):
            shown = "  ".join(f"{token.strip() or repr(token)} {p:.3f}" for token, p in predictions)
            print(f"  <mask> {n + 1}: {shown}")
    return 0


# --- pretrain ------------------------------------------------------------------------------------------

PROBES = 6   # held-out sentences shown at the end of a pretraining run


def held_out_probes(tokenizer, documents, max_tokens, count=PROBES, seed=0):
    """`count` validation sentences of at most `max_tokens` tokens, each with one word masked: (masked text,
    true word). The word is a whole word of four letters or more that is one token (so one <mask> can name
    it), not the sentence's first; the sentences come from the user's own held-out text, so the probes speak
    of what was learned."""
    from .corpus import split_sentences
    candidates = []
    for document in documents:
        for sentence in split_sentences(document):
            words = sentence.split()
            if not 6 <= len(words) <= 20 or len(tokenizer.encode(sentence).ids) > max_tokens:
                continue
            maskable = [i for i, w in enumerate(words) if i > 0 and w.isalpha() and len(w) >= 4
                        and len(tokenizer.encode_plain(" " + w)) == 1]
            if maskable:
                candidates.append((words, maskable))
    rng = np.random.default_rng(seed)
    probes = []
    for n in rng.permutation(len(candidates))[:count]:
        words, maskable = candidates[n]
        i = maskable[rng.integers(len(maskable))]
        probes.append((" ".join(words[:i] + ["<mask>"] + words[i + 1:]), words[i]))
    return probes


def pretrain_settings(args):
    """The trainer's settings from `minroberta pretrain`'s arguments (scripts/race.py reads the same)."""
    from .train import TrainSettings
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                             warmup=args.warmup if args.warmup >= 0 else max(1, round(PRETRAIN_WARMUP * args.steps)),
                             betas=(0.9, args.beta2), weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                             dropout=dropout_prob(args) > 0, skip_nonfinite=args.skip_nonfinite,
                             eval_every=args.eval_every, eval_batches=args.eval_batches,
                             save_every=args.save_every, log_every=args.log_every, seed=args.seed)
    settings.validate()
    return settings


def pretrain_config(args, tokenizer):
    """The model's Config from `minroberta pretrain`'s arguments: the preset, its overrides, the tokenizer."""
    from .config import Config, preset
    shape = preset(args.preset)
    for flag, field in SHAPE_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            shape[field] = value
    config = Config(vocab_size=tokenizer.vocab_size, max_position_embeddings=args.seq_len + 2,
                    pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                    initializer_range=args.init_range, **shape)
    return config.replace(hidden_dropout_prob=dropout_prob(args), attention_probs_dropout_prob=dropout_prob(args))


def check_mask_prob(value):
    """pretrain and masking take the same --mask-prob."""
    if not 0.0 < value <= 1.0:
        raise MinRobertaError(f"--mask-prob must be in (0, 1], got {value}")


def dropout_prob(args):
    if not 0.0 <= args.dropout < 1.0:
        raise MinRobertaError(f"--dropout must be in [0, 1), got {args.dropout}")
    return 0.0 if args.no_dropout else args.dropout


def run_pretrain(args):
    from . import budget, distributed, prepared
    from .config import Config
    from .model import Roberta
    from .tokenizer import Tokenizer
    from .train import Trainer, checkpoint_to_resume, list_checkpoints

    started = time.time()
    world = distributed.world(args.mpi_timeout)
    say = lambda text: print(text, file=sys.stderr, flush=True) if world.is_main else None
    if args.no_dropout:   # the same as --dropout 0, and kept in the recipe as that
        args.dropout, args.no_dropout = 0.0, False
        args.given = getattr(args, "given", set()) | {"dropout"}
    checkpoint = checkpoint_to_resume(args.out, args.resume, report=say)
    state = keep_recipe(args, checkpoint, say) if checkpoint is not None else None
    settings = pretrain_settings(args)
    if state is not None and "warmup" not in getattr(args, "given", set()):   # the run's own count, also when
        settings = dataclasses.replace(settings, warmup=state["settings"]["warmup"])   # --steps grows
    budget_seconds = budget.parse_duration(args.time_budget) if args.time_budget else None
    if args.prepared and not args.corpus:   # the corpus it was prepared from (checked there for changes)
        args.corpus = (prepared.read_manifest(args.prepared) or {}).get("sources")
    check_mask_prob(args.mask_prob)
    if not args.init_range > 0:
        raise MinRobertaError(f"--init-range must be positive, got {args.init_range}")
    if not 0.0 <= args.beta2 < 1.0:
        raise MinRobertaError(f"--beta2 must be in [0, 1), got {args.beta2}")
    if args.seq_len < 8:
        raise MinRobertaError(f"--seq-len must be at least 8, got {args.seq_len}")
    if args.precision != "float32" and args.dtype != "float32":
        raise MinRobertaError(f"--precision {args.precision} works on float32 parameters; drop --dtype {args.dtype}")
    if world.size > 1:
        say(f"data parallel over {world.size} MPI ranks: global batch {world.size} x {args.batch_size} sequences")

    source = "the standard library's docstrings" if not args.corpus else ", ".join(args.corpus)
    if checkpoint is not None:
        tokenizer = Tokenizer.from_dir(checkpoint)
    else:
        tokenizer = Tokenizer.from_dir(args.tokenizer) if args.tokenizer else None
    ready = prepared.ready_on_every_rank(world, args.corpus, args.prepared or os.path.join(args.out, "prepared"),
                                         args.seq_len, tokenizer, args.vocab_size or VOCAB_SIZES[args.preset], say,
                                         source)
    tokenizer = tokenizer or ready.tokenizer
    valid_docs = ready.probe_documents()

    config = pretrain_config(args, tokenizer)
    if checkpoint is not None:
        saved = Config.load(os.path.join(checkpoint, "config.json"))
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings"):
            if getattr(saved, field) != getattr(config, field):
                raise MinRobertaError(f"{checkpoint} was trained with {field} = {getattr(saved, field)}, this run "
                                      f"asks for {getattr(config, field)}; use the same --preset/--seq-len, or "
                                      "another --out")
    data = prepared.pretraining_data(ready, seed=args.seed, mask_prob=args.mask_prob)
    say(f"{data.num_train:,} training and {data.num_valid:,} validation sequences of at most {args.seq_len} tokens")

    os.makedirs(args.out, exist_ok=True)
    model = Roberta(config, seed=args.seed, dtype=args.dtype)
    trainer = Trainer(model, data, tokenizer, settings, args.out, world=world)
    trainer.recipe = recipe_of(args)
    plan = ((state or {}).get("recipe") or {}).get("time_budget_plan") or {}
    if budget_seconds and not plan.get("final"):   # else the count is decided, and is the recipe's --steps
        trainer.on_update = budget.TimeBudget(budget_seconds, started, None if args.warmup >= 0 else PRETRAIN_WARMUP,
                                              say=trainer.progress.message)
    elif plan:
        trainer.recipe["time_budget_plan"] = plan
    trainer.begin(checkpoint, report=say)
    parameters = sum(int(np.prod(p.shape)) for p in model.params.values())
    where = backend.name() + (f" on {threads.count()} threads" if backend.name() == "numpy" else "")
    say(f"model: {args.preset}, {parameters / 1e6:.1f}M parameters, backend {where}, {args.dtype}"
        f"{'' if args.precision == 'float32' else ', ' + args.precision + ' products'}; "
        f"{settings.steps} updates of {trainer.global_batch * settings.accumulate} sequences"
        f"{' until the time budget decides their number' if trainer.on_update else ''}")
    result = trainer.run(stop_at=args.stop_at_step)
    settings = trainer.settings   # a time budget sets the number of updates
    if not world.is_main:
        return 0
    if trainer.interrupted:
        print(f"interrupted after update {trainer.step} of {settings.steps}: saved "
              f"{list_checkpoints(args.out)[-1]}; continue with --resume --out {args.out}")
        return 130
    if trainer.step < settings.steps:
        print(f"stopped at step {trainer.step} of {settings.steps}; continue with --resume --out {args.out}")
        return 0

    seconds = time.time() - started
    took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
    print(f"done in {took}: validation loss {result['valid_loss']:.4f}, perplexity "
          f"{result['valid_ppl']:.2f}, accuracy at <mask> {result.get('valid_mask_accuracy', float('nan')):.3f} "
          f"(all scored tokens {result['valid_accuracy']:.3f})")
    print(f"model saved to {args.out} (HF layout: transformers.RobertaForMaskedLM.from_pretrained opens it)")
    probes = held_out_probes(tokenizer, valid_docs, config.max_sequence_length)
    if probes:
        print("held-out sentences, one word masked [true word] -> the model's top 3:")
    hits = 0
    for text, word in probes:
        predictions = fill_mask(trainer.model, tokenizer, text, top_k=3)[0]
        hits += word in [t.strip() for t, _ in predictions]
        print(f"  {text}  [{word}]  ->  " + ", ".join(f"{t.strip()} ({p:.2f})" for t, p in predictions))
    if probes:
        print(f"true word in the top 3: {hits} of {len(probes)}")
    return 0



def run_prepare(args):
    from . import prepared
    from .tokenizer import Tokenizer
    if args.seq_len < 8:
        raise MinRobertaError(f"--seq-len must be at least 8, got {args.seq_len}")
    say = lambda text: print(text, file=sys.stderr, flush=True)
    tokenizer = Tokenizer.from_dir(args.tokenizer) if args.tokenizer else None
    ready = prepared.ready(args.corpus, args.out, args.seq_len, tokenizer, args.vocab_size or VOCAB_SIZES[args.preset],
                           say, "the standard library's docstrings" if not args.corpus else ", ".join(args.corpus))
    samples = ready.manifest["samples"]
    print(f"{samples['train']:,} training and {samples['valid']:,} validation sequences of at most {args.seq_len} "
          f"tokens in {args.out}; pretrain on them with --prepared {args.out}")
    return 0


# --- finetune, predict, embed --------------------------------------------------------------------------

def run_finetune(args):
    import math

    from . import finetune
    from .checkpoint import load_pretrained
    from .tokenizer import Tokenizer
    from .train import TrainSettings, Trainer, checkpoint_to_resume, list_checkpoints
    say = lambda text: print(text, file=sys.stderr, flush=True)
    checkpoint = checkpoint_to_resume(args.out, args.resume, report=say)
    if checkpoint is not None:
        keep_recipe(args, checkpoint, say)
    pretrained = load_pretrained(args.model)
    tokenizer = Tokenizer.from_dir(args.model)
    pad_id = tokenizer.require("pad", "fine-tuning (its batches are padded)")
    max_length = tokens_per_text(args.max_length, pretrained)
    train = finetune.encode_examples(args.train, args.task, tokenizer, max_length, warn=say)
    if args.task in ("classify", "pair"):
        labels = finetune.label_vocabulary(train)
        valid = finetune.encode_examples(args.eval, args.task, tokenizer, max_length, labels=labels, warn=say)
        config_changes = {"extra": {**pretrained.config.extra, "id2label": {str(i): name for name, i in labels.items()},
                                    "label2id": labels}}
        task, head = finetune.Classification(), "classification"
    elif args.task == "regress":
        valid = finetune.encode_examples(args.eval, args.task, tokenizer, max_length, warn=say)
        config_changes = {"extra": {**pretrained.config.extra, "num_labels": 1, "problem_type": "regression"}}
        config_changes["extra"].pop("id2label", None)
        task, head = finetune.Regression(), "classification"
    else:
        valid = finetune.encode_examples(args.eval, args.task, tokenizer, max_length, warn=say)
        config_changes, task, head = {}, finetune.QuestionAnswering(valid), "qa"
    model = pretrained.with_head(head, seed=args.seed, **config_changes)
    data = finetune.FinetuneData(train, valid, pad_id, args.seed)
    steps = max(1, math.ceil(args.epochs * data.batches_per_epoch(args.batch_size) / args.accumulate))
    settings = TrainSettings(steps=steps, batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                             warmup=args.warmup, weight_decay=args.weight_decay, eval_every=args.eval_every,
                             eval_batches=0, save_every=args.save_every, log_every=args.log_every, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    trainer = Trainer(model, data, tokenizer, settings, args.out, task=task)
    trainer.recipe = recipe_of(args)
    trainer.begin(checkpoint, report=say)
    say(f"fine-tuning for {args.task}: {len(train)} training and {len(valid)} evaluation examples, {steps} updates")
    trainer.run()
    if trainer.interrupted:
        print(f"interrupted after update {trainer.step} of {steps}: saved {list_checkpoints(args.out)[-1]}; "
              f"continue with --resume --out {args.out}")
        return 130
    print(f"best {task.best_metric}: {trainer.best:.4f}; model saved to {args.out}")
    return 0


def tokens_per_text(requested, model, default=None):
    """--max-length if given (an error past the model's positions), else the directory's default (at most the
    model's limit), else the model's limit."""
    limit = model.config.max_sequence_length
    if requested is not None:
        if not 1 <= requested <= limit:
            raise MinRobertaError(f"--max-length {requested} is outside the model's 1..{limit} positions")
        return requested
    return min(default or limit, limit)


def batch_tokens(args):
    if args.batch_tokens is not None and args.batch_tokens < 1:
        raise MinRobertaError(f"--batch-tokens must be at least 1, got {args.batch_tokens}")
    return args.batch_tokens or collection.MAX_TOKENS


def require_texts(args, what):
    if not args.text and not args.file:
        raise MinRobertaError(f"no texts to {what} (give them as arguments or with --file)")


def run_predict(args):
    from . import finetune
    from .checkpoint import load_pretrained
    from .tokenizer import Tokenizer
    require_texts(args, "predict")
    model = load_pretrained(args.model)
    tokenizer = Tokenizer.from_dir(args.model)
    limit = tokens_per_text(args.max_length, model)
    texts = collection.texts_from(args.text, args.file)
    if model.head == "qa":
        if args.context is None:
            raise MinRobertaError("a QA model needs --context (the passage); the texts are the questions")
        qa = finetune.QuestionAnswering(None)
        for question in texts:
            encoding = tokenizer.encode(question, args.context, max_length=limit)
            out = model(np.array([encoding.ids]), None, np.array([encoding.type_ids]))
            offsets = [o if s == 1 else None for o, s in zip(encoding.offsets, encoding.sequence_ids)]
            answer = qa.answer(backend.to_host(out.start_logits)[0], backend.to_host(out.end_logits)[0], offsets,
                               args.context)
            print(f"{answer}\t{question}")
        return 0
    if model.head != "classification":
        raise MinRobertaError(f"{args.model} has no classification or QA head; fine-tune it first "
                              "(minroberta finetune), or use fill-mask / embed")
    num_labels = model.config.num_labels
    id2label = model.config.extra.get("id2label", {})
    names = [str(id2label.get(str(i), i)) for i in range(num_labels)]
    if num_labels == 1:   # regression: the value itself
        line = lambda text, row: f"{row[0]:.4f}\t{text}"
        record = lambda text, row: {"text": text, "value": float(row[0])}
    else:
        line = lambda text, row: f"{names[int(row.argmax())]}\t{row.max():.3f}\t{text}"
        record = lambda text, row: {"text": text, "label": names[int(row.argmax())], "score": float(row.max()),
                                    "probabilities": dict(zip(names, row.tolist()))}
    progress = collection.Progress("predict")
    with collection.results(args.output, num_labels, line, record) as write:
        for chunk in collection.chunks(texts):
            pairs = None if args.pair is None else [args.pair] * len(chunk)
            encodings = tokenizer.encode_many(chunk, pairs, max_length=limit)
            logits = collection.infer(model, encodings, lambda out: out.logits, num_labels, batch_tokens(args),
                                      on_batch=progress.add)                              # (n, L)
            if num_labels > 1:   # probabilities
                logits = np.exp(logits - logits.max(axis=1, keepdims=True))
                logits /= logits.sum(axis=1, keepdims=True)
            write(chunk, logits)
    progress.finish()
    return 0


def run_embed(args):
    require_texts(args, "embed")
    return embed_texts(args, *load_encoder(args.model))


def load_encoder(directory):
    """-> (model, tokenizer, embed.SentenceSetup) of a model directory."""
    from . import embed
    from .checkpoint import load_pretrained
    from .tokenizer import Tokenizer
    return load_pretrained(directory), Tokenizer.from_dir(directory), embed.sentence_setup(directory)


def embed_texts(args, model, tokenizer, setup):
    """The texts of `args` embedded, printed or written to args.output, a chunk at a time."""
    from . import embed
    max_length = tokens_per_text(args.max_length, model, setup.max_length)
    texts = collection.texts_from(args.text, args.file)
    if args.pooling == "tokens":
        if args.output and not args.output.endswith(".npz"):
            raise MinRobertaError(f"--output {args.output}: --pooling tokens saves named arrays, so it must end in .npz")
        return print_token_embeddings(model, tokenizer, list(texts), args.output)
    modes = setup.pooling if args.pooling is None else (args.pooling,)
    normalize = setup.normalize if args.normalize is None else args.normalize
    width = model.config.hidden_size * len(modes)
    line = lambda text, row: f"{text}\t" + " ".join(f"{v:.4f}" for v in row)
    record = lambda text, row: {"text": text, "vector": row.tolist()}
    progress = collection.Progress("embed")
    count = 0
    with collection.results(args.output, width, line, record) as write:
        for chunk in collection.chunks(texts):
            write(chunk, embed.sentence_embeddings(model, tokenizer, chunk, modes, normalize=normalize,
                                                   max_length=max_length, max_tokens=batch_tokens(args),
                                                   on_batch=progress.add))
            count += len(chunk)
    progress.finish()
    if args.output:
        print(f"saved {count} vector{'s' * (count != 1)} of {width} dimensions to {args.output}")
    return 0


def print_token_embeddings(model, tokenizer, texts, output):
    """--pooling tokens: every token's vector with its character span, printed, and saved as .npz."""
    from . import embed
    per_text = [embed.token_embeddings(model, tokenizer, text) for text in texts]
    if output:
        arrays = {}
        for n, rows in enumerate(per_text):
            arrays[f"vectors_{n}"] = np.stack([v for _, _, v in rows])
            arrays[f"offsets_{n}"] = np.array([o for _, o, _ in rows])
            arrays[f"tokens_{n}"] = np.array([t for t, _, _ in rows])
        _save_numpy(output, arrays)
        print(f"saved the token vectors of {len(per_text)} text{'s' * (len(per_text) != 1)} to {output}",
              file=sys.stderr)
    for text, rows in zip(texts, per_text):
        print(text)
        for token, (start, end), vector in rows:
            print(f"  {token!r:>16} [{start:>3}, {end:>3}) |v| = {np.linalg.norm(vector):.3f}")
    return 0


def _save_numpy(path, value):
    """.npz of named arrays, written atomically, never pickled."""
    import io

    from . import atomic
    buffer = io.BytesIO()
    np.savez(buffer, **value)
    atomic.write_bytes(path, buffer.getvalue())


# --- pictures ------------------------------------------------------------------------------------------

def run_attention(args):
    from . import pictures
    from .checkpoint import load_pretrained
    from .tokenizer import Tokenizer
    pictures.pyplot()   # before the model is read: without matplotlib, say so at once
    model = load_pretrained(args.model)
    tokenizer = Tokenizer.from_dir(args.model)
    ids = pictures.encode_for_picture(model, tokenizer, args.text)
    probs = pictures.attention_probabilities(model, np.array([ids]))[:, 0]            # (layers, heads, T, T)
    pictures.draw_attention(pictures.token_labels(tokenizer, ids), probs, args.out, title=args.text)
    print(f"drew {probs.shape[0]} layers x {probs.shape[1]} heads over {len(ids)} tokens to {args.out}")
    return 0


def run_masking(args):
    from . import corpus, pictures
    from .checkpoint import require_model_dir
    from .config import Config
    from .tokenizer import Tokenizer
    pictures.pyplot()
    require_model_dir(args.model)   # the same words as the commands that load the weights
    config = Config.load(os.path.join(args.model, "config.json"))
    tokenizer = Tokenizer.from_dir(args.model)
    tokenizer.require("mask", "masking")
    tokenizer.require("pad", "a padded batch")
    limit = config.max_sequence_length
    seq_len = args.seq_len if args.seq_len is not None else min(limit, 32)
    if not 3 <= seq_len <= limit:
        raise MinRobertaError(f"--seq-len {seq_len} is outside 3..{limit} (the model's positions)")
    if args.batch_size < 1 or args.epochs < 1:
        raise MinRobertaError("--batch-size and --epochs must be at least 1")
    check_mask_prob(args.mask_prob)
    if args.seed < 0:
        raise MinRobertaError(f"--seed must be >= 0, got {args.seed}")
    documents = corpus.stdlib_documents() if not args.corpus else corpus.read_documents(args.corpus)
    samples = pictures.packed_samples(tokenizer, documents, seq_len, args.batch_size)
    panels = []
    for epoch in range(args.epochs):
        batch = pictures.mask_batch(tokenizer, samples, args.seed, epoch, args.mask_prob)
        counts = pictures.masking_counts(batch, tokenizer.special_ids, tokenizer.mask_id)
        summary = ", ".join(f"{name} {count}" for name, count in counts.items())
        print(f"epoch {epoch}: {summary}")
        panels.append((f"epoch {epoch}: " + summary, batch))
    pictures.draw_masking(tokenizer, panels, args.out, title=f"{len(samples)} sequences masked at "
                                                             f"{args.mask_prob:g} (80% <mask>, 10% random, 10% kept)")
    print(f"drew {len(samples)} sequences x {args.epochs} epochs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
