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

from . import backend, collection, engine, guards, recipe
from .engine import fused, precision, threads
from .errors import MinRobertaError

DEFAULT_OUT = os.path.join("runs", "pretrain")
VOCAB_SIZES = {"micro": 2048, "mini": 1024, "tiny": 8192, "small": 16384, "base": 32768}
PREPARE_FLAGS = ("corpus", "preset", "vocab_size", "tokenizer", "seq_len")   # pretrain's, for the data alone
RECIPE_FLAGS = {**recipe.RECIPES, "prepare": recipe.Pretraining}   # the commands whose flags a recipe checks
SHAPE_FLAGS = {"hidden_size": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads",
               "intermediate_size": "intermediate_size"}   # recipe field -> the Config field it overrides


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where there is none to show (None, off) or the help text
    already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default:" in (action.help or "") or \
                "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_device_arguments(command, with_precision=True):
    """Where and how a command computes: the same options on every command (a training command's --precision
    is a recipe flag: it is kept in the run)."""
    command.add_argument("--backend", choices=backend.BACKENDS, default=None,
                         help="array module (default: $MINROBERTA_BACKEND or numpy)")
    if with_precision:
        command.add_argument("--precision", choices=precision.MODES, default="float32",
                             help="matrix products: float32; tf32 (cupy, GPUs of compute capability 8.0+); fp16 "
                                  "(float16 products)")
    command.add_argument("--reference", action="store_true",
                         help="every op runs its reference as written, no fast form (as MINROBERTA_REFERENCE=1); "
                              "pretrain then trains with the reference loop (loop.py)")
    command.add_argument("--fused", action="store_true",
                         help="fused CUDA kernels for GELU, layer norm, softmax and AdamW (cupy backend only)")
    command.add_argument("--threads", type=int, default=None,
                         help="CPU threads for the numpy backend (default: $MINROBERTA_THREADS or every usable core)")


def add_recipe_arguments(command, recipe_class, skip=(), metavars=None, only=None, helps=None):
    """One flag per field of the recipe (or of the fields `only` names), named after it. Each defaults to None
    (not given), so that the recipe knows which flags the command line set: the defaults live in recipe.py
    alone, and --help shows them. `helps`: field -> a help text for this command instead of the field's."""
    metavars, helps = metavars or {}, helps or {}
    common = set(recipe.names(recipe.TrainSettings))   # the command's own fields first, then the optimizer's
    for f in sorted(dataclasses.fields(recipe_class), key=lambda f: f.name in common):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag, meta = "--" + f.name.replace("_", "-"), f.metadata
        shown_default = "" if f.default is None or f.default is False else f" (default: {recipe.shown(f.default)})"
        help_text = helps.get(f.name, meta["help"]).replace("%", "%%") + shown_default
        if f.type is bool:
            command.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        elif f.type is list:
            command.add_argument(flag, nargs="+", metavar=metavars.get(f.name, "PATH"), default=None, help=help_text)
        else:
            command.add_argument(flag, type=f.type, default=None, choices=meta.get("choices"),
                                 metavar=metavars.get(f.name), help=help_text)


def given_recipe(args, recipe_class):
    """The recipe flags the command line gave: field name -> value."""
    return {name: getattr(args, name) for name in recipe.names(recipe_class) if getattr(args, name, None) is not None}


def build_parser():
    parser = argparse.ArgumentParser(prog="minroberta", description="A RoBERTa in plain NumPy: pretrain and use it.")
    commands = parser.add_subparsers(dest="command", required=True)

    pre = commands.add_parser("pretrain",
                              help="pretrain a masked LM (default: the mini model on the stdlib docstrings)",
                              formatter_class=HelpFormatter)
    add_recipe_arguments(pre, recipe.Pretraining,
                         metavars={"tokenizer": "DIR", "prepared": "DIR", "time_budget": "DURATION"})
    pre.add_argument("--no-dropout", dest="dropout", action="store_const", const=0.0,
                     help="train without dropout (the same as --dropout 0)")
    pre.add_argument("--out", default=DEFAULT_OUT, help="run directory: checkpoints, metrics.jsonl, final model")
    pre.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest checkpoint, with the recipe it was started with")
    pre.add_argument("--overwrite", action="store_true",
                     help="start over in an --out that holds an earlier run or model (its files are removed)")
    pre.add_argument("--stop-at-step", type=int, default=None, metavar="N",
                     help="checkpoint and stop after update N (resume later with --resume); the schedule still "
                          "runs to --steps")
    add_device_arguments(pre, with_precision=False)
    pre.add_argument("--mpi-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="under mpiexec: how long a rank waits for the others before stopping the job")

    prep = commands.add_parser("prepare", help="tokenize and pack a corpus once, for many pretrain runs "
                                               "(pretrain --prepared DIR)", formatter_class=HelpFormatter)
    add_recipe_arguments(prep, recipe.Pretraining, only=PREPARE_FLAGS, metavars={"tokenizer": "DIR"},
                         helps={"preset": "the pretrain preset the data is for: it sets the vocabulary size"})
    prep.add_argument("--out", required=True, metavar="DIR", help="where the prepared data goes")

    fill = commands.add_parser("fill-mask", help="predict the masked tokens of a text (models with an MLM head)",
                               formatter_class=HelpFormatter)
    fill.add_argument("--model", required=True, metavar="DIR", help="a model directory (with tokenizer files)")
    fill.add_argument("--top-k", type=int, default=5, help="predictions shown per mask")
    add_device_arguments(fill)
    fill.add_argument("text", nargs="+", help='texts containing <mask> (or the tokenizer\'s own mask token, such as '
                                              '[MASK]), e.g. "Return the <mask> of x."')

    tune = commands.add_parser("finetune", help="fine-tune a pretrained model to classify texts or pairs, or "
                                                "to answer questions", formatter_class=HelpFormatter)
    add_recipe_arguments(tune, recipe.Finetuning, skip=("steps",),
                         metavars={"model": "DIR", "train": "FILE", "eval": "FILE"})
    tune.add_argument("--out", default=os.path.join("runs", "finetune"), help="run directory; the best model lands here")
    tune.add_argument("--resume", action="store_true",
                      help="continue the run in --out, with the recipe it was started with (no other flag needed)")
    tune.add_argument("--overwrite", action="store_true",
                      help="start over in an --out that holds an earlier run or model (its files are removed)")
    add_device_arguments(tune, with_precision=False)

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
    attention.add_argument("--layer", type=int, default=None, metavar="N", help="draw this layer only (from 0)")
    attention.add_argument("--head", type=int, default=None, metavar="N",
                           help="draw this head only (from 0); with --layer, one large map with its numbers")
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
    return parser


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
        guards.check_flags(args)   # every numeric flag, before any work
        if recipe_class := RECIPE_FLAGS.get(args.command):   # a recipe's flags, by the recipe's rules
            recipe_class(**given_recipe(args, recipe_class)).validate()
        if getattr(args, "backend", None):
            backend.use(args.backend)
        engine.reference(getattr(args, "reference", False))
        if engine.install():   # the fast forms; with --reference, every op runs as written
            if getattr(args, "threads", None) is not None:   # the engine's threads (the core has none)
                threads.use(guards.cap_threads(args.threads, lambda text: print(text, file=sys.stderr)))
        fused.use(getattr(args, "fused", False))
        precision.use(getattr(args, "precision", None) or "float32")   # a run's own is set from its recipe
        commands = {"pretrain": run_pretrain, "fill-mask": run_fill_mask, "finetune": run_finetune,
                    "predict": run_predict, "embed": run_embed, "attention": run_attention,
                    "masking": run_masking, "prepare": run_prepare}
        return commands[args.command](args)
    except MinRobertaError as exc:
        print(f"error: {guards.one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:   # what guards.require_room could not foresee
        print(f"error: out of memory in {args.command}; try a smaller --batch-size (or --batch-tokens, --max-length)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # a second Ctrl-C in training, or the first anywhere else
        from .engine.trainer import list_checkpoints
        saved = list_checkpoints(args.out) if args.command in recipe.RECIPES else []
        if saved:
            print(f"interrupted: the last checkpoint, {saved[-1]}, is whole; continue with --resume --out {args.out}",
                  file=sys.stderr)
        elif args.command in recipe.RECIPES and engine.reference_requested():
            print("interrupted: the reference loop keeps no checkpoints, so nothing is saved", file=sys.stderr)
        elif args.command in recipe.RECIPES:
            print(f"interrupted before the first checkpoint: nothing in {args.out} to resume", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # the reader of the output has gone (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so the exit's flush does not fail again
        if args.command in recipe.RECIPES:   # a training run cut short has failed
            with contextlib.suppress(OSError):
                print("error: the output pipe closed, so the run stopped", file=sys.stderr)
            return 2
        return 0   # a command that prints its results: the reader has what it wanted
    except OSError as exc:   # disk full, permission denied, ...: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {guards.one_line(where + str(exc.strerror or exc))}", file=sys.stderr)
        return 2
    finally:
        engine.reference(False)   # for the next caller in this process (the environment variable still counts)
        guards.release_locks()


# --- fill-mask -----------------------------------------------------------------------------------------

def fill_mask(model, tokenizer, text, top_k=5):
    """For each mask in `text`: [(token, probability), ...] best first. The text may write the mask as
    `<mask>` whatever the tokenizer's own spelling ([MASK] for BERT)."""
    if not model.has_lm_head:
        raise MinRobertaError("this model has no masked-LM head, so it cannot fill masks")
    mask_id = tokenizer.require("mask", "fill-mask")
    mask_token = tokenizer.id_to_token(mask_id)
    if "[MASK]" in text and mask_token != "[MASK]":   # BERT's spelling would be read as three plain pieces
        raise MinRobertaError(f"{text!r} writes its mask [MASK], as BERT does; this model's tokenizer writes it "
                              f"{mask_token} (RoBERTa's spelling), so write {mask_token} instead")
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
    told = False
    for text in args.text:
        filled = fill_mask(model, tokenizer, text, args.top_k)   # before printing: an error is one line alone
        if len(filled) > 1 and not told:
            print("note: the masks of one text are predicted independently, each with every mask in place; "
                  "the top words of two masks need not fit together", file=sys.stderr)
            told = True
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
    """The recipe of a new `minroberta pretrain` run: the defaults with the flags given on top (scripts/race.py
    reads the same)."""
    return recipe.resolve(recipe.Pretraining, given_recipe(args, recipe.Pretraining))


def pretrain_config(settings, tokenizer):
    """The model's Config from a pretraining recipe: the preset, its overrides, the tokenizer."""
    from .config import Config, preset
    shape = preset(settings.preset)
    for name, config_field in SHAPE_FLAGS.items():
        if getattr(settings, name) is not None:
            shape[config_field] = getattr(settings, name)
    return Config(vocab_size=tokenizer.vocab_size, max_position_embeddings=settings.seq_len + 2,
                  pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                  initializer_range=settings.init_range, hidden_dropout_prob=settings.dropout,
                  attention_probs_dropout_prob=settings.dropout, **shape)


def training_recipe(args, recipe_class, say):
    """-> (the run's recipe, the checkpoint to resume from or None). A new run takes the defaults with the flags
    given on top; --resume takes the checkpoint's recipe with them on top, each change said (recipe.resolve)."""
    from .engine.trainer import checkpoint_to_resume
    checkpoint, state = (None, None) if args.overwrite else checkpoint_to_resume(args.out, args.resume, report=say)
    if checkpoint is None:
        return recipe.resolve(recipe_class, given_recipe(args, recipe_class)), None
    saved = recipe_class.from_saved(state, checkpoint)
    return recipe.resolve(recipe_class, given_recipe(args, recipe_class), saved, state["step"], checkpoint, say), \
        checkpoint


def run_pretrain(args):
    from . import budget, loop, prepared
    from .checkpoint import save_pretrained
    from .config import Config
    from .engine import distributed
    from .engine.trainer import Trainer, list_checkpoints
    from .model import Roberta
    from .tokenizer import Tokenizer

    started = time.time()
    world = distributed.world(args.mpi_timeout)
    say = lambda text: print(text, file=sys.stderr, flush=True) if world.is_main else None
    reference = not engine.installed()
    if reference:   # the reference loop honours the recipe's training flags, nothing around them
        around = [flag for flag, given in (("--resume", args.resume), ("--stop-at-step", args.stop_at_step is not None),
                                           ("--skip-nonfinite", args.skip_nonfinite),
                                           ("--save-every", args.save_every is not None),
                                           ("--keep-checkpoints", args.keep_checkpoints is not None),
                                           ("--time-budget", args.time_budget is not None),
                                           ("mpiexec", world.size > 1)) if given]
        if around:
            raise MinRobertaError(f"the reference loop (--reference or MINROBERTA_REFERENCE=1) keeps no checkpoints, "
                                  f"skips no update and runs on one process, so {', '.join(around)} cannot apply; "
                                  "drop one or the other")
    run_folder = guards.RunFolder(args.out, args.resume, args.overwrite, say, main=world.is_main)   # lock, no clobber
    settings, checkpoint = training_recipe(args, recipe.Pretraining, say)
    precision.use(settings.precision)
    budget_seconds = budget.parse_duration(settings.time_budget) if settings.time_budget else None
    if settings.prepared and not settings.corpus:   # the corpus it was prepared from (checked there for changes)
        settings = dataclasses.replace(settings, corpus=(prepared.read_manifest(settings.prepared) or {}).get("sources"))
    vocab_size = settings.vocab_size or VOCAB_SIZES[settings.preset]   # of a tokenizer trained here
    guards.require_room(pretrain_config(settings, guards.stand_in_tokenizer(vocab_size)),
                        settings.batch_size, settings.seq_len, settings.dtype, guards.flags_text(settings, (
                            "preset", "hidden_size", "layers", "heads", "intermediate_size", "seq_len", "batch_size")))
    if world.size > 1:
        say(f"data parallel over {world.size} MPI ranks: global batch {world.size} x {settings.batch_size} sequences")

    if checkpoint is not None:
        tokenizer = Tokenizer.from_dir(checkpoint)
    else:
        tokenizer = Tokenizer.from_dir(settings.tokenizer) if settings.tokenizer else None
    ready = prepared.ready_on_every_rank(world, settings.corpus,
                                         settings.prepared or os.path.join(args.out, guards.PREPARED),
                                         settings.seq_len, tokenizer, vocab_size, say)
    tokenizer = tokenizer or ready.tokenizer
    valid_docs = ready.probe_documents()

    config = pretrain_config(settings, tokenizer)
    if checkpoint is not None:
        saved = Config.load(os.path.join(checkpoint, "config.json"))
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings"):
            if getattr(saved, field) != getattr(config, field):
                raise MinRobertaError(f"{checkpoint} was trained with {field} = {getattr(saved, field)}, this run "
                                      f"asks for {getattr(config, field)}; use the same --preset/--seq-len, or "
                                      "another --out")
    data = prepared.pretraining_data(ready, seed=settings.seed, mask_prob=settings.mask_prob)
    say(f"{data.num_train:,} training and {data.num_valid:,} validation sequences of at most {settings.seq_len} "
        "tokens")

    run_folder.create()
    model = Roberta(config, seed=settings.seed, dtype=settings.dtype)
    parameters = sum(int(np.prod(p.shape)) for p in model.params.values())
    if reference:
        where = f"{backend.name()}, the reference core (loop.py, no fast form)"
    else:
        where = backend.name() + (f" on {threads.count()} threads" if backend.name() == "numpy" else "")
    say(f"model: {settings.preset}, {parameters / 1e6:.1f}M parameters, backend {where}, {settings.dtype}"
        f"{'' if settings.precision == 'float32' else ', ' + settings.precision + ' products'}; "
        f"{settings.steps} updates of {world.size * settings.batch_size * settings.accumulate} sequences"
        f"{' until the time budget decides their number' if budget_seconds else ''}")
    if reference:
        result = loop.train(model, data, settings, say=say)
        save_pretrained(model, args.out, tokenizer=tokenizer)
    else:
        trainer = Trainer(model, data, tokenizer, settings, args.out, world=world)
        if budget_seconds:   # until the budget's final count, which the recipe then keeps as its --steps
            trainer.on_update = budget.TimeBudget(budget_seconds, started, settings.WARMUP_SHARE if settings.warmup < 0
                                                  else None, say=trainer.progress.message)
        trainer.begin(checkpoint, report=say)
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
        model = trainer.model

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
        predictions = fill_mask(model, tokenizer, text, top_k=3)[0]
        hits += word in [t.strip() for t, _ in predictions]
        print(f"  {text}  [{word}]  ->  " + ", ".join(f"{t.strip()} ({p:.2f})" for t, p in predictions))
    if probes:
        print(f"true word in the top 3: {hits} of {len(probes)}")
    return 0



def run_prepare(args):
    from . import prepared
    from .tokenizer import Tokenizer
    say = lambda text: print(text, file=sys.stderr, flush=True)
    settings = recipe.Pretraining(**given_recipe(args, recipe.Pretraining))   # pretrain's defaults for its flags
    tokenizer = Tokenizer.from_dir(settings.tokenizer) if settings.tokenizer else None
    ready = prepared.ready(settings.corpus, args.out, settings.seq_len, tokenizer,
                           settings.vocab_size or VOCAB_SIZES[settings.preset], say)
    samples = ready.manifest["samples"]
    print(f"{samples['train']:,} training and {samples['valid']:,} validation sequences of at most "
          f"{settings.seq_len} tokens in {args.out}; pretrain on them with --prepared {args.out}")
    return 0


# --- finetune, predict, embed --------------------------------------------------------------------------

def run_finetune(args):
    import math

    from . import finetune
    from .checkpoint import load_pretrained
    from .engine.trainer import Trainer, list_checkpoints
    from .tokenizer import Tokenizer
    say = lambda text: print(text, file=sys.stderr, flush=True)
    run_folder = guards.RunFolder(args.out, args.resume, args.overwrite, say, reads=(args.model,))
    settings, checkpoint = training_recipe(args, recipe.Finetuning, say)
    missing = [name for name in recipe.Finetuning.REQUIRED if getattr(settings, name) is None]
    if missing:
        raise MinRobertaError(f"finetune needs {', '.join('--' + name for name in missing)} (or --resume --out DIR "
                              "to continue a run)")
    precision.use(settings.precision)
    pretrained = load_pretrained(settings.model)
    tokenizer = Tokenizer.from_dir(settings.model)
    pad_id = tokenizer.require("pad", "fine-tuning (its batches are padded)")
    max_length = tokens_per_text(settings.max_length, pretrained)
    train = finetune.encode_examples(settings.train, settings.task, tokenizer, max_length, warn=say)
    if settings.task in ("classify", "pair"):
        labels = finetune.label_vocabulary(train)
        valid = finetune.encode_examples(settings.eval, settings.task, tokenizer, max_length, labels=labels, warn=say)
        config_changes = {"extra": {**pretrained.config.extra, "id2label": {str(i): name for name, i in labels.items()},
                                    "label2id": labels}}
        task, head = finetune.Classification(), "classification"
    elif settings.task == "regress":
        valid = finetune.encode_examples(settings.eval, settings.task, tokenizer, max_length, warn=say)
        config_changes = {"extra": {**pretrained.config.extra, "num_labels": 1, "problem_type": "regression"}}
        config_changes["extra"].pop("id2label", None)
        task, head = finetune.Regression(), "classification"
    else:
        valid = finetune.encode_examples(settings.eval, settings.task, tokenizer, max_length, warn=say)
        config_changes, task, head = {}, finetune.QuestionAnswering(valid), "qa"
    model = pretrained.with_head(head, seed=settings.seed, **config_changes)
    data = finetune.FinetuneData(train, valid, pad_id, settings.seed)
    guards.require_room(model.config, min(settings.batch_size, len(train)), max(map(len, train.ids)), model.dtype,
                        guards.flags_text(settings, ("model", "batch_size", "max_length")), lm_head=False)
    steps = max(1, math.ceil(settings.epochs * data.batches_per_epoch(settings.batch_size) / settings.accumulate))
    settings = dataclasses.replace(settings, steps=steps)
    run_folder.create()
    trainer = Trainer(model, data, tokenizer, settings, args.out, task=task)
    trainer.begin(checkpoint, report=say)
    say(f"fine-tuning for {settings.task}: {len(train)} training and {len(valid)} evaluation examples, {steps} "
        "updates")
    trainer.run()
    if trainer.interrupted:
        print(f"interrupted after update {trainer.step} of {steps}: saved {list_checkpoints(args.out)[-1]}; "
              f"continue with --resume --out {args.out}")
        return 130
    if trainer.best is None:   # every evaluation had non-finite metrics
        raise MinRobertaError(f"no evaluation of the run gave finite metrics, so no model was saved to {args.out}")
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
        cut = total = 0
        for question in texts:
            total += 1
            encoding = tokenizer.encode(question, args.context, max_length=limit)
            cut += encoding.truncated
            out = model(np.array([encoding.ids]), None, np.array([encoding.type_ids]))
            offsets = [o if s == 1 else None for o, s in zip(encoding.offsets, encoding.sequence_ids)]
            answer = qa.answer(backend.to_host(out.start_logits)[0], backend.to_host(out.end_logits)[0], offsets,
                               args.context)
            print(f"{answer}\t{question}")
        collection.say_truncated(cut, total, limit, "questions with the context")
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
    cut = total = 0
    with collection.results(args.output, num_labels, line, record) as write:
        for chunk in collection.chunks(texts):
            pairs = None if args.pair is None else [args.pair] * len(chunk)
            encodings = tokenizer.encode_many(chunk, pairs, max_length=limit)
            cut, total = cut + sum(e.truncated for e in encodings), total + len(chunk)
            logits = collection.infer(model, encodings, lambda out: out.logits, num_labels, batch_tokens(args),
                                      on_batch=progress.add)                              # (n, L)
            if num_labels > 1:   # probabilities
                logits = np.exp(logits - logits.max(axis=1, keepdims=True))
                logits /= logits.sum(axis=1, keepdims=True)
            write(chunk, logits)
    progress.finish()
    collection.say_truncated(cut, total, limit)
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
        texts = list(texts)
        limit = model.config.max_sequence_length
        collection.say_truncated(sum(e.truncated for e in tokenizer.encode_many(texts, max_length=limit)),
                                 len(texts), limit)
        return print_token_embeddings(model, tokenizer, texts, args.output)
    modes = setup.pooling if args.pooling is None else (args.pooling,)
    normalize = setup.normalize if args.normalize is None else args.normalize
    width = model.config.hidden_size * len(modes)
    line = lambda text, row: f"{text}\t" + " ".join(f"{v:.4f}" for v in row)
    record = lambda text, row: {"text": text, "vector": row.tolist()}
    progress = collection.Progress("embed")
    count, cut = 0, []
    with collection.results(args.output, width, line, record) as write:
        for chunk in collection.chunks(texts):
            write(chunk, embed.sentence_embeddings(model, tokenizer, chunk, modes, normalize=normalize,
                                                   max_length=max_length, max_tokens=batch_tokens(args),
                                                   on_batch=progress.add, on_truncated=cut.append))
            count += len(chunk)
    progress.finish()
    collection.say_truncated(sum(cut), count, max_length)
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
    pictures.require_format(args.out)
    model = load_pretrained(args.model)
    tokenizer = Tokenizer.from_dir(args.model)
    ids = pictures.encode_for_picture(model, tokenizer, args.text)
    probs = pictures.attention_probabilities(model, np.array([ids]))[:, 0]            # (layers, heads, T, T)
    probs, layer_ids, head_ids = pictures.select_heads(probs, args.layer, args.head)
    pictures.draw_attention(pictures.token_labels(tokenizer, ids), probs, args.out, title=args.text,
                            layer_ids=layer_ids, head_ids=head_ids)
    print(f"drew {probs.shape[0]} layer{'s' * (probs.shape[0] != 1)} x {probs.shape[1]} "
          f"head{'s' * (probs.shape[1] != 1)} over {len(ids)} tokens to {args.out}")
    return 0


def run_masking(args):
    from . import corpus, pictures
    from .checkpoint import require_model_dir
    from .config import Config
    from .tokenizer import Tokenizer
    pictures.pyplot()
    pictures.require_format(args.out)
    require_model_dir(args.model)   # the same words as the commands that load the weights
    config = Config.load(os.path.join(args.model, "config.json"))
    tokenizer = Tokenizer.from_dir(args.model)
    tokenizer.require("mask", "masking")
    tokenizer.require("pad", "a padded batch")
    limit = config.max_sequence_length
    seq_len = args.seq_len if args.seq_len is not None else min(limit, 32)
    if not 3 <= seq_len <= limit:
        raise MinRobertaError(f"--seq-len {seq_len} is outside 3..{limit} (the model's positions)")
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
