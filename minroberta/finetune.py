"""Fine-tuning: labelled examples from CSV or JSON lines, batches, and the classification, pair, regression and
extractive-QA tasks the shared trainer runs (loss, batch weight, evaluation, best metric).

Files: classify `text,label`; pair `text_a,text_b,label`; regress `text,label` with numeric labels;
qa JSON lines `{"context", "question", "answers": {"text": [...], "answer_start": [...]}}` (SQuAD style).
Texts longer than --max-length are truncated (a warning says how many); a QA example whose answer would be
cut off is dropped, with a warning.
"""

import collections
import csv
import io
import json
import math
import re
import string

import numpy as np

from . import backend, guards, heads
from .data import rank_share
from .errors import MinRobertaError
from .ops import cross_entropy_forward

TASKS = ("classify", "pair", "regress", "qa")
COLUMNS = {"classify": ("text", "label"), "pair": ("text_a", "text_b", "label"), "regress": ("text", "label"),
           "qa": ("context", "question", "answers")}
TEXTS = ("text", "text_a", "text_b", "context", "question")   # columns that must hold text


# --- reading ------------------------------------------------------------------------------------------

def read_examples(path, task):
    """-> list of (line number, row dict). CSV (with a header) or JSON lines, by the file's extension."""
    rows = []
    try:
        with io.TextIOWrapper(guards.open_regular(path, guards.EXAMPLES_LIMIT), encoding="utf-8-sig",
                              newline="") as handle:   # -sig: a spreadsheet's byte-order mark is not the header
            if path.endswith((".jsonl", ".json")):
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise MinRobertaError(f"{path}:{number}: not JSON ({exc.msg})") from None
                        except RecursionError:
                            raise MinRobertaError(f"{path}:{number}: not JSON (nested too deeply)") from None
                        if not isinstance(row, dict):
                            raise MinRobertaError(f"{path}:{number}: expected a JSON object per line")
                        rows.append((number, row))
            else:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None:
                    raise MinRobertaError(f"{path}: empty file")
                missing = [c for c in COLUMNS[task] if c not in reader.fieldnames]
                if missing:
                    raise MinRobertaError(f"{path}:1: missing column {missing[0]!r} (the {task} task needs "
                                          f"{', '.join(COLUMNS[task])}; found {', '.join(reader.fieldnames)})")
                rows = [(number, row) for number, row in enumerate(reader, 2)]
    except UnicodeDecodeError as exc:
        raise MinRobertaError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
    except csv.Error as exc:
        raise MinRobertaError(f"{path}: not readable as CSV ({exc})") from None
    if not rows:
        raise MinRobertaError(f"{path}: no examples")
    for number, row in rows:
        for column in COLUMNS[task]:
            value = row.get(column)
            if value is None:
                raise MinRobertaError(f"{path}:{number}: missing column {column!r}")
            if column in TEXTS and not isinstance(value, str):
                raise MinRobertaError(f"{path}:{number}: {column} must be text, got {json.dumps(value)[:40]}")
            if column == "label" and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise MinRobertaError(f"{path}:{number}: label must be text or a number, got {json.dumps(value)[:40]}")
            if column != "answers" and column != "label" and not str(value).strip():
                raise MinRobertaError(f"{path}:{number}: {column} is empty")
    return rows


def _answers(path, number, row):
    """SQuAD answers -> [(text, start)], each checked to lie in the context where it says."""
    answers = row["answers"]
    if isinstance(answers, dict):
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts:
            raise MinRobertaError(f"{path}:{number}: answers needs equal non-empty lists 'text' and 'answer_start'")
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list) and answers and all(isinstance(a, dict) for a in answers):
        pairs = [(a.get("text"), a.get("answer_start")) for a in answers]
    else:
        raise MinRobertaError(f"{path}:{number}: answers must be {{'text': [...], 'answer_start': [...]}}")
    context = row["context"]
    for text, start in pairs:
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool) or \
                context[start:start + len(text)] != text or not text:
            raise MinRobertaError(f"{path}:{number}: answer {text!r} is not in the context at {start!r}")
    return pairs


# --- encoded examples and batches ---------------------------------------------------------------------

class Examples:
    """Encoded examples of one file, host side: token ids and token types (the second text of a pair is type
    1 for BERT), and targets (label ids, values or spans)."""

    def __init__(self, ids, types, targets, source, contexts=None, offsets=None, answers=None):
        self.ids, self.types, self.targets, self.source = ids, types, targets, source
        self.contexts, self.offsets, self.answers = contexts, offsets, answers   # QA evaluation needs these

    def __len__(self):
        return len(self.ids)


def encode_examples(path, task, tokenizer, max_length, labels=None, warn=print):
    """Read and encode a file. For classification, `labels` (label -> id) comes from the training file;
    a label the training file lacks is an error naming the line."""
    rows = read_examples(path, task)
    ids, types, targets, contexts, offsets, answers = [], [], [], [], [], []
    truncated = dropped = 0
    for number, row in rows:
        if task == "qa":
            pairs = _answers(path, number, row)
            encoding = tokenizer.encode(row["question"], row["context"], max_length=max_length)
            in_context = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
            text, start = pairs[0]
            span = [i for i in in_context if encoding.offsets[i][0] < start + len(text) and
                    encoding.offsets[i][1] > start]
            if not span:
                dropped += 1
                continue
            ids.append(encoding.ids)
            types.append(encoding.type_ids)
            targets.append((span[0], span[-1]))
            contexts.append(row["context"])
            offsets.append([encoding.offsets[i] if s == 1 else None for i, s in enumerate(encoding.sequence_ids)])
            answers.append([t for t, _ in pairs])
            continue
        second = row["text_b"] if task == "pair" else None
        first = row["text_a"] if task == "pair" else row["text"]
        full = tokenizer.encode(first, second)
        encoding = tokenizer.encode(first, second, max_length=max_length) if len(full.ids) > max_length else full
        truncated += len(full.ids) > max_length
        label = str(row["label"]).strip()
        if task == "regress":
            try:
                value = float(label)
            except ValueError:
                raise MinRobertaError(f"{path}:{number}: label {label!r} is not a number") from None
            if not math.isfinite(value):
                raise MinRobertaError(f"{path}:{number}: label {label!r} is not a finite number")
            targets.append(value)
        elif labels is not None:
            if label not in labels:
                raise MinRobertaError(f"{path}:{number}: label {label!r} does not occur in the training file "
                                      f"(known: {', '.join(sorted(labels))})")
            targets.append(labels[label])
        else:
            targets.append(label)
        ids.append(encoding.ids)
        types.append(encoding.type_ids)
    if truncated:
        warn(f"warning: {path}: {truncated} of {len(rows)} examples were longer than {max_length} tokens and "
             "were truncated")
    if dropped:
        warn(f"warning: {path}: {dropped} of {len(rows)} examples were dropped: their answer lies past "
             f"{max_length} tokens")
    if not ids:
        raise MinRobertaError(f"{path}: no usable examples")
    return Examples(ids, types, targets, path, contexts or None, offsets or None, answers or None)


def label_vocabulary(examples):
    """Training labels (strings) -> ids, sorted so the mapping is stable; the examples' targets become ids."""
    names = sorted(set(examples.targets))
    if len(names) < 2:
        raise MinRobertaError(f"{examples.source}: a classifier needs at least two labels, found {names}")
    mapping = {name: i for i, name in enumerate(names)}
    examples.targets = [mapping[t] for t in examples.targets]
    return mapping


class FinetuneData:
    """Shuffled training batches (pure functions of (seed, epoch, index)) and in-order evaluation batches."""

    def __init__(self, train, valid, pad_id, seed):
        self.train, self.valid, self.pad_id, self.seed = train, valid, pad_id, seed

    def batches_per_epoch(self, batch_size):
        return max(1, -(-len(self.train) // batch_size))

    def _collate(self, examples, indices):
        longest = max(len(examples.ids[i]) for i in indices)
        ids = np.full((len(indices), longest), self.pad_id, dtype=np.int64)              # (B, T)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for row, i in enumerate(indices):
            ids[row, :len(examples.ids[i])] = examples.ids[i]
            types[row, :len(examples.ids[i])] = examples.types[i]
            mask[row, :len(examples.ids[i])] = 1
        targets = [examples.targets[i] for i in indices]
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "indices": np.asarray(indices)}
        if isinstance(targets[0], tuple):
            batch["start_positions"] = np.array([t[0] for t in targets])
            batch["end_positions"] = np.array([t[1] for t in targets])
        else:
            batch["labels"] = np.array(targets)
        return batch

    def train_batch(self, epoch, batch_index, batch_size, shard=(0, 1)):
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
        picked = rank_share(order[batch_index * batch_size:(batch_index + 1) * batch_size], *shard)
        return self._collate(self.train, picked)

    def valid_batches(self, batch_size):
        for start in range(0, len(self.valid), batch_size):
            yield self._collate(self.valid, list(range(start, min(start + batch_size, len(self.valid)))))


# --- tasks for the trainer ----------------------------------------------------------------------------

def macro_f1(predicted, actual, num_labels):
    scores = []
    for label in range(num_labels):
        tp = np.sum((predicted == label) & (actual == label))
        fp = np.sum((predicted == label) & (actual != label))
        fn = np.sum((predicted != label) & (actual == label))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


class Classification:
    """Single texts or pairs into classes: cross-entropy; accuracy and macro-F1 (the best metric: accuracy)."""

    best_metric = "accuracy"

    def weight(self, batch):
        return len(batch["labels"])

    def loss_and_grads(self, model, batch, dropout_key, loss_scale=1.0):
        return heads.classification_loss_and_grads(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                   batch["token_type_ids"], dropout_key=dropout_key,
                                                   loss_scale=loss_scale)

    def evaluate(self, model, batches):
        predicted, actual, loss_sum = [], [], 0.0
        for batch in batches:
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
            loss, _ = cross_entropy_forward(logits, backend.to_device(batch["labels"]))
            loss_sum += backend.scalar(loss) * len(batch["labels"])
            predicted.append(backend.to_host(logits.argmax(axis=1)))
            actual.append(batch["labels"])
        predicted, actual = np.concatenate(predicted), np.concatenate(actual)
        return {"valid_loss": loss_sum / len(actual), "accuracy": float(np.mean(predicted == actual)),
                "macro_f1": macro_f1(predicted, actual, model.config.num_labels)}

    def describe(self, metrics):
        return f"loss {metrics['valid_loss']:.4f} | accuracy {metrics['accuracy']:.3f} | macro-F1 {metrics['macro_f1']:.3f}"


class Regression(Classification):
    """One number per text: mean squared error (the best metric: negative MSE, so higher is better)."""

    best_metric = "neg_mse"

    def evaluate(self, model, batches):
        errors = []
        for batch in batches:
            predictions = backend.to_host(model(batch["input_ids"], batch["attention_mask"],
                                                batch["token_type_ids"]).logits)[:, 0]
            errors.append((predictions - batch["labels"]) ** 2)
        mse = float(np.mean(np.concatenate(errors)))
        return {"valid_mse": mse, "neg_mse": -mse}

    def describe(self, metrics):
        return f"MSE {metrics['valid_mse']:.4f}"


def normalize_answer(text):
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answer_f1(prediction, truth):
    predicted, actual = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(actual)).values())
    if common == 0:
        return float(predicted == actual)
    precision, recall = common / len(predicted), common / len(actual)
    return 2 * precision * recall / (precision + recall)


def best_span(start_logits, end_logits, offsets, max_answer_tokens=30):
    """The (start, end) token pair inside the context maximising start + end score, end - start below the
    limit; `offsets` is None outside the context."""
    allowed = np.array([o is not None for o in offsets] + [False] * (len(start_logits) - len(offsets)))
    best, best_score = None, -np.inf
    starts = np.argsort(-np.where(allowed, start_logits, -np.inf))[:20]
    ends = np.argsort(-np.where(allowed, end_logits, -np.inf))[:20]
    for s in starts:
        for e in ends:
            if allowed[s] and allowed[e] and s <= e < s + max_answer_tokens:
                score = start_logits[s] + end_logits[e]
                if score > best_score:
                    best, best_score = (int(s), int(e)), score
    return best


class QuestionAnswering:
    """Extractive QA: mean of start and end cross-entropies; exact match and F1 (the best metric: F1)."""

    best_metric = "f1"

    def __init__(self, examples, max_answer_tokens=30):
        self.examples = examples                     # the evaluation examples: contexts, offsets, answers
        self.max_answer_tokens = max_answer_tokens

    def weight(self, batch):
        return len(batch["start_positions"])

    def loss_and_grads(self, model, batch, dropout_key, loss_scale=1.0):
        return heads.qa_loss_and_grads(model, batch["input_ids"], batch["attention_mask"], batch["start_positions"],
                                       batch["end_positions"], batch["token_type_ids"], dropout_key=dropout_key,
                                       loss_scale=loss_scale)

    def evaluate(self, model, batches):
        exact, f1, count = 0.0, 0.0, 0
        for batch in batches:
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            starts, ends = backend.to_host(out.start_logits), backend.to_host(out.end_logits)
            for row, index in enumerate(batch["indices"]):
                answer = self.answer(starts[row], ends[row], self.examples.offsets[index], self.examples.contexts[index])
                truths = self.examples.answers[index]
                exact += max(float(normalize_answer(answer) == normalize_answer(t)) for t in truths)
                f1 += max(answer_f1(answer, t) for t in truths)
                count += 1
        return {"exact_match": exact / count, "f1": f1 / count}

    def answer(self, start_logits, end_logits, offsets, context):
        span = best_span(start_logits, end_logits, offsets, self.max_answer_tokens)
        return "" if span is None else context[offsets[span[0]][0]:offsets[span[1]][1]]

    def describe(self, metrics):
        return f"exact match {metrics['exact_match']:.3f} | F1 {metrics['f1']:.3f}"
