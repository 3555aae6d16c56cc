"""The HuggingFace reference, built from minroberta's own parameters, for the parity tests."""

import numpy as np
import pytest

from minroberta import backend


def transformers_or_skip():
    """torch and transformers come from the `parity` extra; without them the parity tests skip, saying why."""
    torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[parity]')")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers (the parity extra)")
    return torch, transformers


def reference_mlm(model, head="mlm"):
    """A transformers RoBERTa/BERT model with exactly `model`'s weights, eager attention, eval mode, same dtype."""
    torch, transformers = transformers_or_skip()
    config = model.config.to_dict()
    config.pop("architectures", None)
    classes = {"roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM, transformers.RobertaModel),
               "bert": (transformers.BertConfig, transformers.BertForMaskedLM, transformers.BertModel)}
    config_class, mlm_class, base_class = classes[model.config.model_type]
    hf_config = config_class(**config, attn_implementation="eager")
    reference = (mlm_class if model.has_lm_head else base_class)(hf_config)
    reference = reference.to(torch.float64 if model.dtype == "float64" else torch.float32).eval()
    state = {k: torch.tensor(np.array(backend.to_host(v))) for k, v in model.params.items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.decoder.weight", "lm_head.decoder.bias", "bert.pooler.dense.weight",
                            "bert.pooler.dense.bias", "pooler.dense.weight", "pooler.dense.bias"}, missing
    reference.tie_weights()
    return reference


def relative_error(got, expected, floor=1e-6):
    """max |got - expected| / max(max |expected|, floor). For gradients pass floor = 1e-5 x the largest
    gradient of the model: it keeps tensors whose gradient is zero in exact arithmetic (the key bias: softmax
    ignores a shift shared by all keys) from dividing rounding noise by rounding noise."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(got - expected), initial=0.0) / max(float(np.max(np.abs(expected), initial=0.0)), floor))


def gradient_floor(reference_grads):
    return 1e-5 * max(float(np.max(np.abs(g))) for g in reference_grads)
