"""The HuggingFace reference, built from minroberta's own parameters, for the parity tests."""

import numpy as np
import pytest

from minroberta import backend


def transformers_or_skip():
    """torch and transformers come from the `parity` extra; without them the parity tests skip, saying why."""
    torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[parity]')")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers (the parity extra)")
    return torch, transformers


def reference_mlm(model):
    """A transformers model with exactly `model`'s weights and head, eager attention, eval mode, same dtype."""
    torch, transformers = transformers_or_skip()
    config = model.config.to_dict()
    config.pop("architectures", None)
    classes = {("roberta", "mlm"): transformers.RobertaForMaskedLM,
               ("roberta", "classification"): transformers.RobertaForSequenceClassification,
               ("roberta", "qa"): transformers.RobertaForQuestionAnswering,
               ("roberta", None): transformers.RobertaModel, ("bert", None): transformers.BertModel,
               ("bert", "mlm"): transformers.BertForMaskedLM,
               ("bert", "classification"): transformers.BertForSequenceClassification,
               ("bert", "qa"): transformers.BertForQuestionAnswering}
    config_class = transformers.RobertaConfig if model.config.model_type == "roberta" else transformers.BertConfig
    hf_config = config_class(**config, attn_implementation="eager")
    reference = classes[model.config.model_type, model.head](hf_config)
    reference = reference.to(torch.float64 if model.dtype == "float64" else torch.float32).eval()
    state = {k: torch.tensor(np.array(backend.to_host(v))) for k, v in model.params.items()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.decoder.weight", "lm_head.decoder.bias", "bert.pooler.dense.weight",
                            "bert.pooler.dense.bias", "pooler.dense.weight", "pooler.dense.bias",
                            "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}, missing
    reference.tie_weights()
    return reference


def relative_error(got, expected, floor=1e-6):
    """max |got - expected| / max(max |expected|, floor). For gradients pass `gradient_floor(...)`: it keeps
    tensors whose gradient is zero in exact arithmetic (the key bias: softmax ignores a shift shared by all
    keys; the last LayerNorm bias under a QA head, whose position gradients sum to zero) from dividing
    rounding noise by rounding noise."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(got - expected), initial=0.0) / max(float(np.max(np.abs(expected), initial=0.0)), floor))


def gradient_floor(reference_grads):
    """1e-5 of the model's largest gradient in float64; 1e-2 of it in float32, where a sum of a thousand
    float32 terms that cancels to zero leaves noise near 1e-8 of the terms' scale."""
    reference_grads = list(reference_grads)
    largest = max(float(np.max(np.abs(g))) for g in reference_grads)
    return largest * (1e-5 if reference_grads[0].dtype == np.float64 else 1e-2)


def assert_gradients_match(grads, reference, tolerance, skip=("pooler.",)):
    """Every parameter gradient of a transformers model (after .backward()) against minroberta's `grads`."""
    reference_grads = {k: p.grad.numpy() for k, p in reference.named_parameters()
                       if not any(part in k for part in skip)}
    floor = gradient_floor(reference_grads.values())
    for key, expected in reference_grads.items():
        assert relative_error(backend.to_host(grads[key]), expected, floor) <= tolerance, key
