"""The classification and QA heads: gradient checks, and parity with transformers' task models."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minroberta
from minroberta import backend, heads, ops
from minroberta.model import Dropout
from tests.gradcheck import check_gradients
from tests.reference import assert_gradients_match, reference_mlm, relative_error, transformers_or_skip

EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
             max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def values(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


@EXAMPLES
@given(batch=st.integers(1, 3), seq=st.integers(1, 4), channels=st.integers(1, 4), labels=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), p=st.sampled_from([0.0, 0.3]))
def test_classifier_head_gradients(xp, batch, seq, channels, labels, seed, p):
    config = minroberta.Config(**{**SMALL, "hidden_size": channels, "num_attention_heads": 1,
                                  "hidden_dropout_prob": p})
    names = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
             "classifier.out_proj.bias"]
    shapes = heads.classifier_shapes(config, labels)
    inputs = {"hidden": values(seed, batch, seq, channels)}
    inputs.update({name: values(seed + i + 1, *shapes[name]) for i, name in enumerate(names)})

    def forward(hidden, **params):
        dropout = Dropout(config, backend.generator(seed)) if p else None
        return heads.classifier_forward(params, hidden, dropout)

    def backward(dlogits, cache):
        grads = {}
        grads["hidden"] = heads.classifier_backward(dlogits, cache, grads)
        return grads
    check_gradients(forward, backward, inputs, ["hidden"] + names)


@EXAMPLES
@given(batch=st.integers(1, 3), seq=st.integers(1, 4), channels=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_qa_head_gradients(xp, batch, seq, channels, seed):
    inputs = {"hidden": values(seed, batch, seq, channels), "qa_outputs.weight": values(seed + 1, 2, channels),
              "qa_outputs.bias": values(seed + 2, 2)}

    def forward(hidden, **params):
        start, end, cache = heads.qa_forward(params, hidden)
        return backend.xp().stack([start, end]), cache

    def backward(dout, cache):
        grads = {}
        grads["hidden"] = heads.qa_backward(dout[0], dout[1], cache, grads)
        return grads
    check_gradients(forward, backward, inputs, ["hidden", "qa_outputs.weight", "qa_outputs.bias"])


@EXAMPLES
@given(rows=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_mse_gradients(xp, rows, seed):
    check_gradients(ops.mse_forward, lambda d, c: {"predictions": ops.mse_backward(d, c)},
                    {"predictions": values(seed, rows), "targets": values(seed + 1, rows)}, ["predictions"])


def batch(config, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, config.vocab_size, size=(3, 10))
    ids[:, 0] = 0
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = np.where(mask == 1, ids, config.pad_token_id)
    return ids, mask


@pytest.mark.parametrize("dtype,output_tol,grad_tol", [("float64", 1e-10, 1e-8), ("float32", 1e-4, 1e-4)])
@pytest.mark.parametrize("num_labels", [1, 2, 5])
def test_classification_matches_transformers(xp, dtype, output_tol, grad_tol, num_labels):
    torch, _ = transformers_or_skip()
    config = minroberta.Config(**SMALL, extra={"id2label": {str(i): f"L{i}" for i in range(num_labels)}})
    model = minroberta.Roberta(config, seed=2, dtype=dtype, head="classification")
    reference = reference_mlm(model)
    ids, mask = batch(config, 1)
    labels = np.array([0.5, -1.0, 2.0]) if num_labels == 1 else np.array([0, num_labels - 1, 1 % num_labels])
    out = model(ids, mask)
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         labels=torch.tensor(labels, dtype=torch.float64 if dtype == "float64" else torch.float32)
                         if num_labels == 1 else torch.tensor(labels))
    assert relative_error(backend.to_host(out.logits), expected.logits.detach().numpy()) <= output_tol
    loss, grads = heads.classification_loss_and_grads(model, ids, mask, labels)
    assert relative_error(backend.to_host(loss), expected.loss.item()) <= output_tol
    expected.loss.backward()
    assert_gradients_match(grads, reference, grad_tol)


@pytest.mark.parametrize("dtype,output_tol,grad_tol", [("float64", 1e-10, 1e-8), ("float32", 1e-4, 1e-4)])
def test_question_answering_matches_transformers(xp, dtype, output_tol, grad_tol):
    torch, _ = transformers_or_skip()
    config = minroberta.Config(**SMALL)
    model = minroberta.Roberta(config, seed=4, dtype=dtype, head="qa")
    reference = reference_mlm(model)
    ids, mask = batch(config, 3)
    starts, ends = np.array([2, 4, 11]), np.array([3, 5, 12])   # the third lies past the end: ignored
    out = model(ids, mask)
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         start_positions=torch.tensor(starts), end_positions=torch.tensor(ends))
    assert relative_error(backend.to_host(out.start_logits), expected.start_logits.detach().numpy()) <= output_tol
    assert relative_error(backend.to_host(out.end_logits), expected.end_logits.detach().numpy()) <= output_tol
    loss, grads = heads.qa_loss_and_grads(model, ids, mask, starts, ends)
    assert relative_error(backend.to_host(loss), expected.loss.item()) <= output_tol
    expected.loss.backward()
    assert_gradients_match(grads, reference, grad_tol)


def test_a_head_saved_by_minroberta_loads_in_transformers(tmp_path, numpy_backend):
    torch, transformers = transformers_or_skip()
    config = minroberta.Config(**SMALL, extra={"id2label": {"0": "no", "1": "yes"}, "label2id": {"no": 0, "yes": 1}})
    model = minroberta.Roberta(config, seed=5, head="classification")
    minroberta.save_pretrained(model, str(tmp_path))
    loaded, info = transformers.RobertaForSequenceClassification.from_pretrained(
        str(tmp_path), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = batch(config, 0)
    expected = loaded.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    assert relative_error(model(ids, mask).logits, expected) <= 1e-5
    again = minroberta.load_pretrained(str(tmp_path))
    assert again.head == "classification" and again.config.num_labels == 2


def test_with_head_keeps_the_encoder(numpy_backend):
    model = minroberta.Roberta(minroberta.Config(**SMALL), seed=0)
    classifier = model.with_head("classification", seed=1, extra={"id2label": {"0": "a", "1": "b", "2": "c"}})
    assert classifier.params["classifier.out_proj.weight"].shape == (3, 8)
    assert classifier.params["roberta.embeddings.word_embeddings.weight"] is \
        model.params["roberta.embeddings.word_embeddings.weight"]
    assert not any(k.startswith("lm_head.") for k in classifier.params)


def test_wrong_head_and_bad_labels_are_clear_errors(numpy_backend):
    model = minroberta.Roberta(minroberta.Config(**SMALL), seed=0)
    with pytest.raises(minroberta.MinRobertaError, match="has a mlm head; the loss asked for needs the classification"):
        heads.classification_loss_and_grads(model, [[0, 5, 2]], None, [1])
    classifier = model.with_head("classification")
    with pytest.raises(ValueError, match=r"labels holds id 2, outside \[0, 2\)"):
        heads.classification_loss_and_grads(classifier, [[0, 5, 2]], None, [2])
    with pytest.raises(minroberta.MinRobertaError, match=r"labels has shape \(2,\), expected \(1,\)"):
        heads.classification_loss_and_grads(classifier, [[0, 5, 2]], None, [1, 0])


# --- BERT's heads: the pooler + classifier, the MLM head under cls.predictions, QA --------------------------

BERT = dict(SMALL, model_type="bert", pad_token_id=0, layer_norm_eps=1e-12, type_vocab_size=2)


@EXAMPLES
@given(batch=st.integers(1, 3), seq=st.integers(1, 4), channels=st.integers(1, 4), labels=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), p=st.sampled_from([0.0, 0.3]))
def test_bert_classifier_head_gradients(xp, batch, seq, channels, labels, seed, p):
    config = minroberta.Config(**{**BERT, "hidden_size": channels, "num_attention_heads": 1, "hidden_dropout_prob": p})
    layout = heads.classifier_layout(config, "bert.")
    assert layout == ("bert.pooler.dense", "classifier", False)
    shapes = heads.classifier_shapes(config, labels, "bert.")
    names = sorted(shapes)
    inputs = {"hidden": values(seed, batch, seq, channels)}
    inputs.update({name: values(seed + i + 1, *shapes[name]) for i, name in enumerate(names)})

    def forward(hidden, **params):
        dropout = Dropout(config, backend.generator(seed)) if p else None
        return heads.classifier_forward(params, hidden, dropout, layout)

    def backward(dlogits, cache):
        grads = {}
        grads["hidden"] = heads.classifier_backward(dlogits, cache, grads)
        return grads
    check_gradients(forward, backward, inputs, ["hidden"] + names)


def bert_batch(config, seed):
    """ids with [CLS]-like first token, padding, and a second segment of token type 1."""
    ids, mask = batch(config, seed)
    ids = np.where(mask == 1, ids, config.pad_token_id)
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    types[1, 3:6] = 1
    return ids, mask, types


# float32 gradients within 1e-3: through BERT's pooler the float32 sums cancel, and transformers' float32
# gradients are as far from its float64 ones as these are (6e-5 and 6e-5 on classifier.weight)
@pytest.mark.parametrize("dtype,output_tol,grad_tol", [("float64", 1e-10, 1e-8), ("float32", 1e-4, 1e-3)])
@pytest.mark.parametrize("head,num_labels", [("classification", 3), ("classification", 1), ("qa", 2), ("mlm", 2)])
def test_bert_heads_match_transformers(xp, dtype, output_tol, grad_tol, head, num_labels):
    torch, _ = transformers_or_skip()
    config = minroberta.Config(**BERT, extra={"id2label": {str(i): f"L{i}" for i in range(num_labels)}})
    model = minroberta.Roberta(config, seed=6, dtype=dtype, head=head, prefix="bert.", pooler=head == "classification")
    reference = reference_mlm(model)
    ids, mask, types = bert_batch(config, 2)
    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    torch_float = torch.float64 if dtype == "float64" else torch.float32
    if head == "classification":
        labels = np.array([0.5, -1.0, 2.0]) if num_labels == 1 else np.array([0, 2, 1])
        expected = reference(**inputs, labels=torch.tensor(labels, dtype=torch_float if num_labels == 1 else None))
        loss, grads = heads.classification_loss_and_grads(model, ids, mask, labels, types)
        outputs = [(model(ids, mask, types).logits, expected.logits)]
    elif head == "qa":
        starts, ends = np.array([2, 4, 11]), np.array([3, 5, 12])
        expected = reference(**inputs, start_positions=torch.tensor(starts), end_positions=torch.tensor(ends))
        loss, grads = heads.qa_loss_and_grads(model, ids, mask, starts, ends, types)
        out = model(ids, mask, types)
        outputs = [(out.start_logits, expected.start_logits), (out.end_logits, expected.end_logits)]
    else:
        labels = np.where(np.random.default_rng(0).random(ids.shape) < 0.3, ids, -100)
        labels[0, 1] = ids[0, 1]
        expected = reference(**inputs, labels=torch.tensor(labels))
        loss, grads = model.loss_and_grads(ids, mask, labels, types)
        outputs = [(model(ids, mask, types).logits, expected.logits)]
    for got, want in outputs:
        assert relative_error(backend.to_host(got), want.detach().numpy()) <= output_tol
    assert relative_error(backend.to_host(loss), expected.loss.item()) <= output_tol
    expected.loss.backward()
    assert_gradients_match(grads, reference, grad_tol, skip=() if head == "classification" else ("pooler.",))


def test_with_head_gives_a_bert_encoder_the_head_models_names_and_keeps_its_pooler(numpy_backend):
    encoder = minroberta.Roberta(minroberta.Config(**BERT), seed=0, prefix="", head=None)   # as MiniLM is stored
    classifier = encoder.with_head("classification", seed=1, extra={"id2label": {"0": "a", "1": "b"}})
    assert classifier.prefix == "bert." and classifier.params["classifier.weight"].shape == (2, 8)
    assert classifier.params["bert.pooler.dense.weight"] is encoder.params["pooler.dense.weight"]
    assert classifier.params["bert.encoder.layer.1.output.dense.weight"] is \
        encoder.params["encoder.layer.1.output.dense.weight"]
    assert not any(k.startswith(("pooler.", "embeddings.", "encoder.")) for k in classifier.params)
    qa = encoder.with_head("qa", seed=1)
    assert "qa_outputs.weight" in qa.params and not any("pooler" in k for k in qa.params)


def test_a_bert_classifier_saved_by_minroberta_loads_in_transformers(tmp_path, numpy_backend):
    torch, transformers = transformers_or_skip()
    config = minroberta.Config(**BERT, extra={"id2label": {"0": "no", "1": "yes"}, "label2id": {"no": 0, "yes": 1}})
    model = minroberta.Roberta(config, seed=5, head="classification")
    minroberta.save_pretrained(model, str(tmp_path))
    loaded, info = transformers.BertForSequenceClassification.from_pretrained(
        str(tmp_path), attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types = bert_batch(config, 0)
    expected = loaded.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).logits.detach().numpy()
    assert relative_error(model(ids, mask, types).logits, expected) <= 1e-5
    again = minroberta.load_pretrained(str(tmp_path))
    assert again.head == "classification" and again.prefix == "bert." and "bert.pooler.dense.weight" in again.params


@pytest.mark.parametrize("architecture,head", [("BertForMaskedLM", "mlm"), ("BertForPreTraining", "mlm"),
                                               ("BertForQuestionAnswering", "qa")])
def test_bert_head_checkpoints_written_by_transformers_load_with_their_head(tmp_path, numpy_backend, architecture,
                                                                           head):
    """transformers' own files (the tied decoder, BertForPreTraining's next-sentence head, no pooler): the same
    logits from minroberta."""
    torch, _ = transformers_or_skip()
    from tests.bert import write_tiny_bert
    reference = write_tiny_bert(tmp_path, architecture)
    model = minroberta.load_pretrained(str(tmp_path))
    assert model.head == head and model.config.model_type == "bert"
    ids = np.array([[2, 40, 41, 42, 3, 50, 51, 3], [2, 60, 61, 3, 0, 0, 0, 0]])
    mask, types = (ids != 0).astype(np.int64), np.array([[0] * 5 + [1] * 3, [0] * 8])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types))
    out = model(ids, mask, types)
    if head == "mlm":
        want = expected.logits if architecture == "BertForMaskedLM" else expected.prediction_logits
        assert relative_error(out.logits, want.numpy()) <= 1e-5
    else:
        assert relative_error(out.start_logits, expected.start_logits.numpy()) <= 1e-5
