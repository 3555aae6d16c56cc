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
MASKING_FONT = 11   # points: the masking picture's text


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
    _, cache = model.encode(input_ids, attention_mask)
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


def select_heads(probs, layer=None, head=None):
    """probs (layers, heads, T, T) cut to one layer and/or one head -> (probs, layer numbers, head numbers), or a
    one-line error naming the flag when the model has no such layer or head."""
    layers, heads = probs.shape[:2]
    for flag, value, count in (("--layer", layer, layers), ("--head", head, heads)):
        if value is not None and not 0 <= value < count:
            raise MinRobertaError(f"{flag} {value} is outside the model's {count} {flag[2:]}s (0..{count - 1})")
    layer_ids = list(range(layers)) if layer is None else [layer]
    head_ids = list(range(heads)) if head is None else [head]
    return probs[layer_ids][:, head_ids], layer_ids, head_ids


def draw_attention(tokens, probs, path, title=None, layer_ids=None, head_ids=None):
    """probs (layers, heads, T, T) -> a PNG at `path`: one map per head, a row of heads per layer, the query
    tokens down the side and the key tokens along the bottom, darker = more attention. layer_ids and head_ids
    name the rows and columns (default 0, 1, ...). One map alone is drawn large, each cell with its number."""
    plt = pyplot()
    layers, heads, seq, _ = probs.shape
    layer_ids = range(layers) if layer_ids is None else layer_ids
    head_ids = range(heads) if head_ids is None else head_ids
    alone = layers * heads == 1
    panel = max(4.0, 0.5 * seq) if alone else max(1.6, min(3.2, 0.19 * seq))
    font = 10 if alone else 6
    figure, axes = plt.subplots(layers, heads, figsize=(panel * heads + 1.2, panel * layers + 0.8), squeeze=False,
                                layout="constrained" if alone else None)
    for row, layer in enumerate(layer_ids):
        for column, head in enumerate(head_ids):
            ax = axes[row, column]
            image = ax.imshow(probs[row, column], cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(seq))
            ax.set_yticks(range(seq))
            ax.set_xticklabels(tokens if row == layers - 1 else [], rotation=90, fontsize=font)
            ax.set_yticklabels(tokens if column == 0 else [], fontsize=font)
            ax.set_title(f"layer {layer}, head {head}", fontsize=font + 2)
            ax.tick_params(length=0)
            if alone and seq <= 24:   # big enough to print every probability in its cell
                for i in range(seq):
                    for j in range(seq):
                        p = probs[row, column, i, j]
                        ax.text(j, i, f"{p:.2f}"[1:] if p < 1 else "1", ha="center", va="center", fontsize=7,
                                color="white" if p > 0.5 else "#333333")
    figure.supylabel("query (attending from)", fontsize=font + 2)
    figure.supxlabel("key (attended to)", fontsize=font + 2)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    if title:
        figure.suptitle(title, fontsize=font + 3)
    save_figure(figure, path)
    plt.close(figure)


def require_format(path):
    """A picture path whose extension matplotlib writes (none: PNG), or a one-line error, before any work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    kind = picture_format(path)
    kinds = FigureCanvasAgg.get_supported_filetypes()
    if kind not in kinds:
        raise MinRobertaError(f"--out {path}: matplotlib cannot write .{kind} pictures (it writes "
                              f"{', '.join('.' + k for k in sorted(kinds))})")


def save_figure(figure, path):
    """Written atomically, as every file minroberta writes; the format from the file's extension (PNG if none)."""
    with atomic.replacing(path) as handle:
        figure.savefig(handle, format=picture_format(path), dpi=100)


def picture_format(path):
    return os.path.splitext(path)[1][1:].lower() or "png"   # from the extension; PNG when there is none


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
    """batches: [(caption, batch)] of masking the same samples (mask_batch), one panel each. Each sequence is
    written out as the text it holds, in a fixed-width font, every token a box coloured by what masking did:
    words read as words, and a word cut into pieces keeps its pieces side by side. A replaced token shows what
    replaced it under it. -> PNG."""
    from matplotlib.patches import Patch, Rectangle
    plt = pyplot()
    char, line = MASKING_FONT * 0.602 / 72, 0.5   # inches: a monospace character's advance (0.602 em), a sequence
    panels = [(caption, batch, _token_boxes(tokenizer, batch)) for caption, batch in batches]
    width = max(end for _, _, boxes in panels for row in boxes for _, end, _, _, _ in row) + 1   # characters
    rows = len(panels[0][2])
    left, right, top, legend = 1.0, 0.3, 0.5 if title else 0.2, 0.45
    panel_height = line * rows + 0.35
    size = (left + width * char + right, top + panel_height * len(panels) + legend)
    figure = plt.figure(figsize=size)
    for n, (caption, batch, boxes) in enumerate(panels):
        bottom = legend + panel_height * (len(panels) - 1 - n)
        ax = figure.add_axes((left / size[0], bottom / size[1], width * char / size[0], line * rows / size[1]))
        ax.set_xlim(0, width)
        ax.set_ylim(rows, 0)
        for row, tokens in enumerate(boxes):
            for start, end, shown, action, replacement in tokens:
                ax.add_patch(Rectangle((start, row + 0.08), end - start, 0.56, facecolor=ACTION_COLOURS[action],
                                       edgecolor="#999999", linewidth=0.3))
                ax.text((start + end) / 2, row + 0.37, shown, ha="center", va="center", fontsize=MASKING_FONT,
                        family="monospace")
                if replacement is not None:
                    ax.text(start, row + 0.86, "\u2192" + replacement, ha="left", va="center",
                            fontsize=MASKING_FONT - 2.5, family="monospace", color="#a0522d")
        ax.set_xticks([])
        ax.set_yticks([row + 0.37 for row in range(rows)])
        ax.set_yticklabels([f"sequence {row}" for row in range(rows)], fontsize=7)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(caption, fontsize=8, loc="left")
    figure.legend(handles=[Patch(facecolor=c, edgecolor="#888888", label=a) for a, c in zip(ACTIONS, ACTION_COLOURS)],
                  loc="lower center", ncol=len(ACTIONS), fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9, y=1 - 0.12 / size[1], va="top")
    save_figure(figure, path)
    plt.close(figure)


def _token_boxes(tokenizer, batch):
    """Per sequence, its tokens laid out as text: [(start, end, shown text, action, replacement or None)] in
    characters. A token that opens a word (byte-level BPE: a leading space; WordPiece: no leading "##") or a
    special token starts one character after the previous box; a piece that goes on a word touches it.
    Padding is left out."""
    actions = masking_actions(batch, tokenizer.special_ids, tokenizer.mask_id)
    special = set(tokenizer.special_ids)
    wordpiece = type(getattr(getattr(tokenizer, "raw", None), "model", None)).__name__ == "WordPiece"
    opens = lambda text: not text.startswith("##") if wordpiece else text[:1].isspace()
    shown_as = lambda text: (text[2:] if wordpiece and text.startswith("##") else text).strip() or repr(text)
    layout = []
    for row in range(batch["ids"].shape[0]):
        tokens, cursor, after_special = [], 0, False
        for column, token_id in enumerate(batch["ids"][row]):
            if batch["attention_mask"][row, column] == 0:
                continue
            text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
            is_special = int(token_id) in special
            if tokens and (opens(text) or is_special or after_special):
                cursor += 1
            shown = shown_as(text)
            replaced = actions[row, column] == 2
            replacement = shown_as(tokenizer.decode([int(batch["input_ids"][row, column])], skip_special_tokens=False)) \
                if replaced else None
            tokens.append((cursor, cursor + len(shown), shown, int(actions[row, column]), replacement))
            cursor += len(shown)
            after_special = is_special
        layout.append(tokens)
    return layout


def masking_counts(batch, special_ids, mask_id):
    """ACTIONS name -> how many tokens of the batch it names."""
    actions = masking_actions(batch, special_ids, mask_id)
    return {name: int(np.sum(actions == n)) for n, name in enumerate(ACTIONS)}
