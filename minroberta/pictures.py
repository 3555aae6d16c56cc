"""Pictures for learning what the model does: every head's attention over a text, and which tokens dynamic
masking chose in a batch (masked, replaced, kept). Drawing needs matplotlib (the `plot` extra); reading the
numbers does not.
"""

import os

import numpy as np

from . import atomic, backend
from .corpus import is_validation
from .data import IGNORE_INDEX, mask_tokens, pack_full_sentences, pad_samples, tokenize_documents
from .errors import MinRobertaError

INSTALL_HINT = "drawing needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')"

# what dynamic masking did to a token, as masking_actions labels it; colours of the masking picture
ACTIONS = ("not chosen", "chosen: <mask>", "chosen: random token", "chosen: kept", "special or padding")
ACTION_COLOURS = ("#ffffff", "#e4572e", "#f3a712", "#76b041", "#d9d9d9")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MinRobertaError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def attention_probabilities(model, input_ids, attention_mask=None):
    """Every layer's attention probabilities softmax(q k^T / sqrt(hd) + mask), on the host:
    (layers, B, heads, T, T), row i of a head's map is how query token i shares its attention among the keys.

    The one place that reads the model's internals: the training forward keeps each layer's probabilities
    (before dropout) in its cache for the backward."""
    _, cache = model.encode(input_ids, attention_mask, keep_cache=True)
    return np.stack([backend.to_host(layer.attention.attention.probs) for layer in cache.layers])


def token_labels(tokenizer, ids):
    """Each id as the text it stands for, special tokens by name; a piece that starts a word (byte-level BPE's
    'Ġ', a leading space) gets a '·' in front, so the words stay readable when they are cut into pieces."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i], skip_special_tokens=False)
        labels.append(("·" if text[:1].isspace() and text.strip() else "") + (text.strip() or
                                                                             repr(tokenizer.id_to_token(i))))
    return labels


def encode_for_picture(model, tokenizer, text):
    """One text -> its ids with special tokens, or a one-line error when the model cannot read it whole."""
    ids = tokenizer.encode(text).ids
    limit = model.config.max_sequence_length
    if len(ids) > limit:
        raise MinRobertaError(f"text is {len(ids)} tokens, the model takes at most {limit}; shorten it")
    return ids


def draw_attention(tokens, probs, path, title=None):
    """probs (layers, heads, T, T) -> a PNG at `path`: one map per head, a row of heads per layer, the query
    tokens down the side and the key tokens along the bottom, darker = more attention."""
    plt = pyplot()
    layers, heads, seq, _ = probs.shape
    panel = max(1.6, min(3.2, 0.19 * seq))
    figure, axes = plt.subplots(layers, heads, figsize=(panel * heads + 1.2, panel * layers + 0.8), squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            image = ax.imshow(probs[layer, head], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(seq))
            ax.set_yticks(range(seq))
            ax.set_xticklabels(tokens if layer == layers - 1 else [], rotation=90, fontsize=6)
            ax.set_yticklabels(tokens if head == 0 else [], fontsize=6)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.tick_params(length=0)
    figure.supylabel("query (attending from)", fontsize=8)
    figure.supxlabel("key (attended to)", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    if title:
        figure.suptitle(title, fontsize=9)
    save_figure(figure, path)
    plt.close(figure)


def require_format(path):
    """A picture path whose extension matplotlib writes (none: PNG), or a one-line error, before any work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    kind = os.path.splitext(path)[1][1:].lower() or "png"
    kinds = FigureCanvasAgg.get_supported_filetypes()
    if kind not in kinds:
        raise MinRobertaError(f"--out {path}: matplotlib cannot write .{kind} pictures (it writes "
                              f"{', '.join('.' + k for k in sorted(kinds))})")


def save_figure(figure, path):
    """Written atomically, as every file minroberta writes; the format from the file's extension (PNG if none)."""
    with atomic.replacing(path) as handle:
        figure.savefig(handle, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=100)


# --- a masked batch ------------------------------------------------------------------------------------

def packed_samples(tokenizer, documents, block_size, count):
    """The first `count` FULL-SENTENCES samples of the training side of `documents` (validation documents
    are skipped, as pretraining trains without them), packed as pretraining packs them. Reads the documents
    a few at a time, so a long corpus is not read to the end for a handful of samples."""
    def tokenized():
        chunk = []
        for document in documents:
            if not is_validation(document):
                chunk.append(document)
            if len(chunk) == 16:
                yield from tokenize_documents(tokenizer, chunk)
                chunk = []
        yield from tokenize_documents(tokenizer, chunk)
    samples = []
    for sample in pack_full_sentences(tokenized(), block_size, tokenizer.bos_id, tokenizer.eos_id):
        samples.append(sample)
        if len(samples) == count:
            break
    if not samples:
        raise MinRobertaError("the corpus gives no training sequence to mask")
    return samples


def mask_batch(tokenizer, samples, seed, epoch, mask_prob):
    """Pad the samples into one batch and mask it for `epoch` with data.mask_tokens, as the trainer does.
    -> dict of (B, T) arrays: ids (before masking), attention_mask, input_ids (after), labels."""
    ids, attention_mask = pad_samples(samples, tokenizer.pad_id)                       # (B, T) each
    input_ids, labels = mask_tokens(ids, attention_mask, special_ids=tokenizer.special_ids,
                                    mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, seed=seed,
                                    epoch=epoch, indices=np.arange(len(samples)), mask_prob=mask_prob)
    return {"ids": ids, "attention_mask": attention_mask, "input_ids": input_ids, "labels": labels}


def masking_actions(batch, special_ids, mask_id):
    """(B, T) indices into ACTIONS: what masking did to each token. A chosen token (label not -100) shown as
    <mask>, as another token, or as itself; an unchosen one; a special token or padding (never chosen).
    A random replacement that drew the token itself reads as kept: the model sees no difference either."""
    chosen = batch["labels"] != IGNORE_INDEX
    special = np.isin(batch["ids"], special_ids) | (batch["attention_mask"] == 0)
    actions = np.where(special, 4, 0)
    actions = np.where(chosen & (batch["input_ids"] == mask_id), 1, actions)
    actions = np.where(chosen & (batch["input_ids"] != mask_id) & (batch["input_ids"] != batch["ids"]), 2, actions)
    return np.where(chosen & (batch["input_ids"] == batch["ids"]), 3, actions)


def draw_masking(tokenizer, batches, path, title=None):
    """batches: [(caption, batch)] of masking the same samples (mask_batch), one panel each, drawn as a grid
    of tokens coloured by what masking did; a replaced token shows what replaced it under it. -> PNG."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    plt = pyplot()
    rows, width = batches[0][1]["ids"].shape
    size = (0.62 * width + 0.6, (0.45 * rows + 0.7) * len(batches) + 0.6)
    figure, axes = plt.subplots(len(batches), 1, figsize=size, squeeze=False)
    for ax, (caption, batch) in zip(axes[:, 0], batches):
        actions = masking_actions(batch, tokenizer.special_ids, tokenizer.mask_id)
        ax.imshow(actions, cmap=ListedColormap(ACTION_COLOURS), vmin=-0.5, vmax=len(ACTIONS) - 0.5, aspect="auto")
        for row in range(rows):
            words = token_labels(tokenizer, batch["ids"][row])
            shown = token_labels(tokenizer, batch["input_ids"][row])
            for column in range(width):
                if batch["attention_mask"][row, column] == 0:
                    continue
                replaced = actions[row, column] == 2
                text = f"{words[column]}\n\u2192{shown[column]}" if replaced else words[column]
                ax.text(column, row, text, ha="center", va="center", fontsize=5.5 if replaced else 6.5)
        ax.set_xticks(np.arange(width + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="#bbbbbb", linewidth=0.4)
        ax.set_xticks([])
        ax.set_yticks(range(rows))
        ax.set_yticklabels([f"sequence {row}" for row in range(rows)], fontsize=6)
        ax.tick_params(which="both", length=0)
        ax.set_title(caption, fontsize=8)
    figure.legend(handles=[Patch(facecolor=c, edgecolor="#888888", label=a) for a, c in zip(ACTIONS, ACTION_COLOURS)],
                  loc="lower center", ncol=len(ACTIONS), fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(figure, path)
    plt.close(figure)


def masking_counts(batch, special_ids, mask_id):
    """ACTIONS name -> how many tokens of the batch it names."""
    actions = masking_actions(batch, special_ids, mask_id)
    return {name: int(np.sum(actions == n)) for n, name in enumerate(ACTIONS)}
