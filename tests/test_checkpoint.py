"""Checkpoint directories in and out: round trips with transformers both ways, and every kind of damage a
checkpoint can carry ending in a one-line MinRobertaError that names the file and the key (hypothesis draws
truncations, header byte flips and config.json mutations). Also: no code path in the package reads a pickle."""

import ast
import json
import os
import pathlib
import pickle
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.numpy import load_file, save_file

import minroberta
from minroberta import backend
from minroberta.errors import MinRobertaError
from tests.reference import relative_error, transformers_or_skip

TINY = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
            max_position_embeddings=12)
PARITY = dict(TINY, num_hidden_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PARITY_TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
# the fuzzing tests below take their example count from MINROBERTA_FUZZ_EXAMPLES, as tests/test_fuzz.py does
FUZZ_EXAMPLES = int(os.environ.get("MINROBERTA_FUZZ_EXAMPLES", "100"))
EXAMPLES = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
QUERY_BIAS = "roberta.encoder.layer.0.attention.self.query.bias"
WORDS = "roberta.embeddings.word_embeddings.weight"


def randomised(model, seed):
    """Every parameter moved off its initial value (biases and LayerNorm too), so a swapped or dropped tensor
    shows in the outputs. The decoder stays tied: it is the word-embedding entry itself."""
    rng = np.random.default_rng(seed)
    for key, value in model.params.items():
        host = backend.to_host(value)
        model.params[key] = backend.to_device((host + rng.normal(0.0, 0.5, host.shape)).astype(host.dtype))
    return model


def batch(config, seed=0):
    """Two rows, the second padded: ids (2, 7) with <s> ... </s>, and the attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, config.vocab_size, size=(2, 7))
    ids[:, 0] = config.bos_token_id
    ids[0, -1] = ids[1, 4] = config.eos_token_id
    ids[1, 5:] = config.pad_token_id
    return ids, (ids != config.pad_token_id).astype(np.int64)


def valid_checkpoint(path, seed=0, **changes):
    """A tiny, valid MLM checkpoint directory; returns its (model.safetensors, config.json) paths."""
    model = minroberta.Roberta(minroberta.Config(**{**TINY, **changes}), seed=seed)
    minroberta.save_pretrained(randomised(model, seed), str(path))
    return path / "model.safetensors", path / "config.json"


def edit_tensors(path, change):
    tensors = load_file(str(path / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def edit_config(path, change):
    values = json.loads((path / "config.json").read_text())
    change(values)
    (path / "config.json").write_text(json.dumps(values))


def assert_one_line_error(exc, *fragments):
    message = str(exc)
    assert "\n" not in message and message.strip() == message and message, repr(message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- round trips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_minroberta_save_loads_in_transformers_with_the_same_logits(xp, tmp_path, dtype):
    torch, transformers = transformers_or_skip()
    config = minroberta.Config(**PARITY)
    model = randomised(minroberta.Roberta(config, seed=1, dtype=dtype), seed=2)
    minroberta.save_pretrained(model, str(tmp_path))
    reference, info = transformers.RobertaForMaskedLM.from_pretrained(
        str(tmp_path), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    assert reference.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    ids, mask = batch(config)
    with torch.no_grad():
        expected = reference.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = backend.to_host(model(ids, mask).logits)
    assert relative_error(got, expected) <= PARITY_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_transformers_save_loads_in_minroberta_with_the_same_logits(xp, tmp_path, dtype):
    torch, transformers = transformers_or_skip()
    hf_config = transformers.RobertaConfig(**PARITY, attn_implementation="eager")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    reference = transformers.RobertaForMaskedLM(hf_config).to(torch_dtype).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in reference.parameters():   # biases and LayerNorms too, not just the initialised matrices
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch_dtype) * 0.5)
    reference.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").exists()
    model = minroberta.load_pretrained(str(tmp_path))
    assert model.dtype == dtype and model.head == "mlm"
    config = model.config
    ids, mask = batch(config)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert relative_error(backend.to_host(model(ids, mask).logits), expected) <= PARITY_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_minroberta_save_then_load_is_bitwise_identical(xp, tmp_path, dtype):
    model = randomised(minroberta.Roberta(minroberta.Config(**TINY), seed=4, dtype=dtype), seed=5)
    minroberta.save_pretrained(model, str(tmp_path / "a"))
    again = minroberta.load_pretrained(str(tmp_path / "a"))
    assert again.config == model.config.replace(extra={**model.config.extra, "architectures": ["RobertaForMaskedLM"]})
    assert again.dtype == dtype and again.head == model.head and again.prefix == model.prefix
    assert set(again.params) == set(model.params)
    for key, value in model.params.items():
        original, loaded = backend.to_host(value), backend.to_host(again.params[key])
        assert loaded.dtype == original.dtype and loaded.tobytes() == original.tobytes(), key
    minroberta.save_pretrained(again, str(tmp_path / "b"))   # and a second generation writes the same bytes
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_position_ids_buffer_is_ignored_and_an_equal_decoder_is_tied(numpy_backend, tmp_path):
    valid_checkpoint(tmp_path)
    plain = minroberta.load_pretrained(str(tmp_path))

    def add_extras(tensors):
        tensors["roberta.embeddings.position_ids"] = np.arange(TINY["max_position_embeddings"], dtype=np.int64)[None]
        tensors["lm_head.decoder.weight"] = tensors[WORDS].copy()
        tensors["lm_head.decoder.bias"] = tensors["lm_head.bias"].copy()
    edit_tensors(tmp_path, add_extras)
    loaded = minroberta.load_pretrained(str(tmp_path))
    assert set(loaded.params) == set(plain.params)
    for key in plain.params:
        assert np.array_equal(loaded.params[key], plain.params[key]), key
    ids, mask = batch(loaded.config)
    assert np.array_equal(loaded(ids, mask).logits, plain(ids, mask).logits)


def test_a_decoder_that_differs_from_the_embeddings_is_refused(numpy_backend, tmp_path):
    weights, _ = valid_checkpoint(tmp_path)
    edit_tensors(tmp_path, lambda t: t.update({"lm_head.decoder.weight": t[WORDS] + 1.0}))
    with pytest.raises(MinRobertaError) as caught:
        minroberta.load_pretrained(str(tmp_path))
    assert_one_line_error(caught.value, str(weights), "lm_head.decoder.weight differs from " + WORDS)


def test_tokenizer_files_travel_with_save_pretrained(numpy_backend, tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    valid_checkpoint(source)
    contents = {name: f"dummy {name}\n".encode() for name in
                ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")}
    for name, data in contents.items():
        (source / name).write_bytes(data)
    minroberta.save_pretrained(minroberta.load_pretrained(str(source)), str(target), tokenizer=str(source))
    for name, data in contents.items():
        assert (target / name).read_bytes() == data, name
    minroberta.load_pretrained(str(target))   # and the new directory is itself a checkpoint


# --- damaged checkpoints: each a one-line error naming the file and the key -----------------------------

def drop_query_bias(path):
    edit_tensors(path, lambda t: t.pop(QUERY_BIAS))


def add_tensor(path):
    rotary = "roberta.encoder.layer.0.attention.self.rotary.weight"
    edit_tensors(path, lambda t: t.update({rotary: np.ones((8, 8), np.float32)}))


def reshape_query_bias(path):
    edit_tensors(path, lambda t: t.update({QUERY_BIAS: np.zeros((9,), np.float32)}))


def integer_query_bias(path):
    edit_tensors(path, lambda t: t.update({QUERY_BIAS: np.zeros((8,), np.int32)}))


def nan_in_weight(path):
    def poison(tensors):
        tensors["roberta.encoder.layer.0.output.dense.weight"][3, 2] = np.nan
    edit_tensors(path, poison)


def truncate_weights(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def garbage_weights(path):
    (path / "model.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def config_not_json(path):
    (path / "config.json").write_text('{"vocab_size": 20, "hidden_size": ')


def config_without_hidden_size(path):
    edit_config(path, lambda c: c.pop("hidden_size"))


def hidden_not_divisible_by_heads(path):
    edit_config(path, lambda c: c.update(num_attention_heads=3))


def unknown_activation(path):
    edit_config(path, lambda c: c.update(hidden_act="swish"))


def a_million_layers(path):
    edit_config(path, lambda c: c.update(num_hidden_layers=2**20))   # refused at once, not after naming 16M tensors


def num_labels_not_an_integer(path):
    edit_config(path, lambda c: c.update(num_labels="two"))


DAMAGE = {   # name -> (damage, file at fault, fragments the message must hold)
    "missing tensor": (drop_query_bias, "model.safetensors", ["missing tensor " + QUERY_BIAS, "(8,)"]),
    "extra tensor": (add_tensor, "model.safetensors",
                     ["unexpected tensor roberta.encoder.layer.0.attention.self.rotary.weight (8, 8)"]),
    "wrong shape": (reshape_query_bias, "model.safetensors", [f"tensor {QUERY_BIAS} has shape (9,), config says (8,)"]),
    "wrong dtype": (integer_query_bias, "model.safetensors", [f"tensor {QUERY_BIAS} has dtype int32"]),
    "nan weight": (nan_in_weight, "model.safetensors",
                   ["tensor roberta.encoder.layer.0.output.dense.weight holds NaN"]),
    "truncated": (truncate_weights, "model.safetensors", ["not a readable safetensors file"]),
    "garbage": (garbage_weights, "model.safetensors", ["not a readable safetensors file"]),
    "config not json": (config_not_json, "config.json", ["not valid JSON"]),
    "config missing field": (config_without_hidden_size, "config.json", ["missing field 'hidden_size'"]),
    "heads do not divide hidden": (hidden_not_divisible_by_heads, "config.json",
                                   ["hidden_size 8 is not divisible by num_attention_heads 3"]),
    "unknown activation": (unknown_activation, "config.json", ["hidden_act 'swish' is not supported"]),
    "config claims a million layers": (a_million_layers, "model.safetensors",
                                       ["missing tensor roberta.encoder.layer.1.attention.self.query.weight"]),
    "num_labels not an integer": (num_labels_not_an_integer, "config.json",
                                  ["num_labels must be an integer, got 'two'"]),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_checkpoint_is_a_one_line_error(numpy_backend, tmp_path, name):
    damage, at_fault, fragments = DAMAGE[name]
    valid_checkpoint(tmp_path)
    damage(tmp_path)
    with pytest.raises(MinRobertaError) as caught:
        minroberta.load_pretrained(str(tmp_path))
    assert_one_line_error(caught.value, str(tmp_path / at_fault), *fragments)


class _Trap:
    """Unpickling this creates a directory: proof, if it ever appears, that something read the pickle."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.mkdir, (self.sentinel,)


@pytest.mark.parametrize("contents", ["arbitrary bytes", "a booby-trapped pickle"])
def test_a_pickle_only_directory_says_to_convert_and_nothing_unpickles(numpy_backend, tmp_path, monkeypatch, contents):
    sentinel = tmp_path / "unpickled"
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    data = pickle.dumps(_Trap(str(sentinel))) if contents != "arbitrary bytes" else \
        b"\x80\x02}q\x00(X\x05\x00\x00\x00model" + bytes(range(256)) * 4
    (checkpoint / "pytorch_model.bin").write_bytes(data)

    def refuse(*args, **kwargs):
        raise AssertionError("minroberta tried to unpickle")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    with pytest.raises(MinRobertaError) as caught:
        minroberta.load_pretrained(str(checkpoint))
    assert_one_line_error(caught.value, str(checkpoint / "pytorch_model.bin"), "never loaded", "convert")
    assert not sentinel.exists()


def test_a_missing_directory_is_a_one_line_error(numpy_backend, tmp_path):
    with pytest.raises(MinRobertaError) as caught:
        minroberta.load_pretrained(str(tmp_path / "nowhere"))
    assert_one_line_error(caught.value, str(tmp_path / "nowhere"), "no such model directory", "downloads nothing")


# --- damage drawn by hypothesis: load correctly, or a one-line MinRobertaError; nothing else ------------

_VALID = {}


def valid_files():
    """(weights bytes, config bytes, params) of one tiny valid checkpoint, made once."""
    if not _VALID:
        with tempfile.TemporaryDirectory() as directory:
            weights, config = valid_checkpoint(pathlib.Path(directory))
            _VALID.update(weights=weights.read_bytes(), config=config.read_bytes(), params=load_file(str(weights)))
    return _VALID["weights"], _VALID["config"], _VALID["params"]


def load_or_fail_cleanly(weights_bytes, config_bytes):
    """Write the two files, load; a MinRobertaError must be one line naming one of them. Returns the model or
    None."""
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory)
        (path / "model.safetensors").write_bytes(weights_bytes)
        (path / "config.json").write_bytes(config_bytes)
        try:
            model = minroberta.load_pretrained(directory)
        except MinRobertaError as exc:
            assert "\n" not in str(exc), repr(str(exc))
            assert str(path / "model.safetensors") in str(exc) or str(path / "config.json") in str(exc), str(exc)
            return None
    return model


def assert_loaded_as_written(model, params):
    assert model is not None
    assert set(model.params) == set(params)
    for key, value in params.items():
        assert np.array_equal(model.params[key], value), key


@EXAMPLES
@given(data=st.data())
def test_any_truncation_of_the_weights_is_a_clean_error(numpy_backend, data):
    weights, config, _ = valid_files()
    cut = data.draw(st.integers(0, len(weights) - 1), label="cut")
    assert load_or_fail_cleanly(weights[:cut], config) is None


@EXAMPLES
@given(data=st.data())
def test_byte_flips_in_the_header_load_as_written_or_fail_cleanly(numpy_backend, data):
    weights, config, params = valid_files()
    header_end = 8 + int.from_bytes(weights[:8], "little")
    damaged = bytearray(weights)
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        position = data.draw(st.integers(0, header_end - 1), label="position")
        damaged[position] ^= data.draw(st.integers(1, 255), label="xor")
    model = load_or_fail_cleanly(bytes(damaged), config)
    if model is not None:   # a flip in the metadata, say: the tensors must still be exactly the written ones
        assert_loaded_as_written(model, params)


CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id",
               "eos_token_id", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
               "initializer_range", "model_type", "num_labels", "id2label", "architectures", "tie_word_embeddings")
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(-2**70, 2**70),
    st.sampled_from([2**20, 2**20 + 1, 2**63]),
    st.floats(), st.text(max_size=6), st.sampled_from(["gelu", "relu", "bert", "roberta", "gelu_new"]),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2))


@settings(EXAMPLES, max_examples=3 * FUZZ_EXAMPLES)   # a field that fails only when no other fails first needs more draws
@given(data=st.data())
def test_any_config_json_loads_or_fails_cleanly(numpy_backend, data):
    weights, config_bytes, params = valid_files()
    if data.draw(st.integers(0, 9), label="whole file") == 0:
        values = data.draw(JSON_VALUES, label="not an object")
    else:
        values = json.loads(config_bytes)
        for _ in range(data.draw(st.integers(1, 2), label="mutations")):
            key = data.draw(st.sampled_from(CONFIG_KEYS), label="key")
            if data.draw(st.booleans(), label="delete"):
                values.pop(key, None)
            else:
                values[key] = data.draw(JSON_VALUES, label=key)
    model = load_or_fail_cleanly(weights, json.dumps(values).encode())
    if model is not None:   # a harmless change (a dropout rate, an extra key): the model must also run
        assert_loaded_as_written(model, params)
        ids, mask = batch(model.config)
        length = min(5, model.config.max_sequence_length)   # a larger pad id leaves fewer RoBERTa positions
        assert np.all(np.isfinite(model(ids[:, :length], mask[:, :length]).logits))


# --- the package never reads a pickle --------------------------------------------------------------------

PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "torch"}


def pickle_paths(source, filename="<source>"):
    """Every place in `source` that could read a pickle: an import of a pickling module (torch included: its
    loader is pickle), a call through one, an `allow_pickle` that is not literally False, a `*pickle*` attribute
    (pandas.read_pickle, pickle.Unpickler), a dynamic import of a pickling module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Name) and node.id in PICKLING_MODULES:
            found.append(f"{where} uses {node.id}")
        elif isinstance(node, ast.Attribute) and "pickle" in node.attr.lower():
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                literal_false = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                if keyword.arg == "allow_pickle" and not literal_false:
                    found.append(f"{where} allow_pickle={ast.unparse(keyword.value)}")
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in PICKLING_MODULES:
                found.append(f"{where} dynamic import of {node.args[0].value}")
    return found


def test_the_pickle_scanner_catches_each_pattern():
    planted = ["import pickle", "import torch.serialization", "from torch import load", "import joblib as j",
               "x = np.load(path, allow_pickle=True)", "x = np.load(path, allow_pickle=flag)",
               "x = pandas.read_pickle(path)", "m = importlib.import_module('pickle')", "m = __import__('dill')",
               "x = torch.load(path)"]
    for line in planted:
        assert pickle_paths(line), line
    safe = "np.save(buffer, value, allow_pickle=False)\nx = np.load(path)\n'''pickles are never read'''\n"
    assert not pickle_paths(safe)


def test_no_code_path_in_the_package_reads_a_pickle():
    package = pathlib.Path(minroberta.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) > 10 and package / "checkpoint.py" in files
    found = [hit for path in files for hit in pickle_paths(path.read_text(encoding="utf-8"), str(path))]
    assert not found, found


def test_atomic_writes_get_the_users_file_mode_and_name_a_missing_folder(tmp_path):
    """The temporary file starts private (0600); what is renamed into place gets the mode of any new file of the
    user's (0666 less the umask), and a folder that does not exist is named, not the temporary file."""
    from minroberta import atomic
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileNotFoundError) as raised:
        atomic.write_text(tmp_path / "missing" / "out.txt", "x")
    assert raised.value.filename == str(tmp_path / "missing")
    assert os.listdir(tmp_path) == ["out.json"]
