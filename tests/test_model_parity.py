"""minroberta against transformers, from the same random weights: hidden states, logits, loss, every gradient.

Tolerances (relative to the largest reference value): float64 1e-10 for outputs and loss, 1e-8 for gradients;
float32 1e-4 for all. The figures reached are far tighter (float64 about 1e-15; see the closing note)."""

import numpy as np
import pytest

import minroberta
from minroberta import backend
from tests.reference import assert_gradients_match, reference_mlm, relative_error, transformers_or_skip

CONFIGS = {
    "small": dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24),
    "one_head_one_layer": dict(vocab_size=23, hidden_size=6, num_hidden_layers=1, num_attention_heads=1,
                               intermediate_size=10),
    "odd_sizes": dict(vocab_size=37, hidden_size=15, num_hidden_layers=3, num_attention_heads=5, intermediate_size=7),
    "token_types": dict(vocab_size=31, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=20, type_vocab_size=3),
}
BERT = dict(vocab_size=29, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
            model_type="bert", pad_token_id=0, layer_norm_eps=1e-12, type_vocab_size=2)
TOLERANCES = {"float64": (1e-10, 1e-8), "float32": (1e-4, 1e-4)}


def make_batch(config, seed, heavy_padding):
    rng = np.random.default_rng(seed)
    batch, seq = 3, 9
    ids = rng.integers(3, config.vocab_size, size=(batch, seq))
    lengths = [seq, 2, 1] if heavy_padding else [seq, seq - 2, 5]
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, config.pad_token_id)
    labels = np.where((rng.random((batch, seq)) < 0.3) & (mask == 1), rng.integers(0, config.vocab_size, (batch, seq)), -100)
    labels[2, 0] = 4   # every row scores something
    types = rng.integers(0, config.type_vocab_size, size=(batch, seq))
    return ids, mask, labels, types


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("heavy_padding", [False, True])
def test_forward_loss_and_gradients_match_transformers(xp, name, dtype, heavy_padding):
    torch, _ = transformers_or_skip()
    config = minroberta.Config(**{"max_position_embeddings": 20, "hidden_dropout_prob": 0.0,
                                  "attention_probs_dropout_prob": 0.0, **CONFIGS[name]})
    model = minroberta.Roberta(config, seed=3, dtype=dtype)
    reference = reference_mlm(model)
    ids, mask, labels, types = make_batch(config, seed=5, heavy_padding=heavy_padding)
    output_tol, grad_tol = TOLERANCES[dtype]

    out = model(ids, mask, types)
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         token_type_ids=torch.tensor(types), labels=torch.tensor(labels), output_hidden_states=True)
    assert relative_error(backend.to_host(out.hidden_states), expected.hidden_states[-1].detach().numpy()) <= output_tol
    assert relative_error(backend.to_host(out.logits), expected.logits.detach().numpy()) <= output_tol

    loss, grads = model.loss_and_grads(ids, mask, labels, types)
    assert relative_error(backend.to_host(loss), expected.loss.item()) <= output_tol
    expected.loss.backward()
    assert set(grads) == set(model.params)
    assert_gradients_match(grads, reference, grad_tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model_type", ["roberta", "bert"])
def test_encoder_backward_matches_autograd(xp, model_type, dtype):
    """The encoder alone (BERT-family too): hidden states, and the gradient of sum(hidden * dout)."""
    torch, _ = transformers_or_skip()
    settings = BERT if model_type == "bert" else CONFIGS["token_types"]
    config = minroberta.Config(**{"max_position_embeddings": 20, "hidden_dropout_prob": 0.0,
                                  "attention_probs_dropout_prob": 0.0, **settings})
    model = minroberta.Roberta(config, seed=7, dtype=dtype, prefix="", head=None, pooler=False)
    reference = reference_mlm(model)
    ids, mask, _, types = make_batch(config, seed=9, heavy_padding=True)
    output_tol, grad_tol = TOLERANCES[dtype]
    hidden, cache = model.encode(ids, mask, types)
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         token_type_ids=torch.tensor(types)).last_hidden_state
    assert relative_error(backend.to_host(hidden), expected.detach().numpy()) <= output_tol
    dout = np.random.default_rng(0).standard_normal(hidden.shape).astype(hidden.dtype)
    grads = model.encode_backward(backend.to_device(dout), cache, {})
    (expected * torch.tensor(dout)).sum().backward()
    assert_gradients_match(grads, reference, grad_tol)


def test_head_on_scored_rows_equals_head_on_all_rows(xp):
    """The fairseq trick changes the work, not the loss: cross-entropy over the full logits agrees."""
    config = minroberta.Config(**CONFIGS["small"], max_position_embeddings=20)
    model = minroberta.Roberta(config, seed=1, dtype="float64")
    ids, mask, labels, _ = make_batch(config, seed=2, heavy_padding=True)
    logits = backend.to_host(model(ids, mask).logits)
    scored = labels != -100
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    full_loss = -np.mean(np.take_along_axis(log_probs, np.where(scored, labels, 0)[..., None], -1)[..., 0][scored])
    loss, _ = model.loss_and_grads(ids, mask, labels)
    assert abs(backend.scalar(loss) - full_loss) <= 1e-12


def test_dropout_is_deterministic_per_key_and_changes_the_loss(xp):
    config = minroberta.Config(**CONFIGS["small"], max_position_embeddings=20)
    model = minroberta.Roberta(config, seed=1, dtype="float64")
    ids, mask, labels, _ = make_batch(config, seed=2, heavy_padding=False)
    a, _ = model.loss_and_grads(ids, mask, labels, dropout_key=(1, 2))
    b, _ = model.loss_and_grads(ids, mask, labels, dropout_key=(1, 2))
    c, _ = model.loss_and_grads(ids, mask, labels, dropout_key=(1, 3))
    plain, _ = model.loss_and_grads(ids, mask, labels)
    assert backend.scalar(a) == backend.scalar(b)
    assert backend.scalar(a) != backend.scalar(c) and backend.scalar(a) != backend.scalar(plain)


def test_dropout_gradients_are_exact(numpy_backend):
    """With dropout on, the analytic gradient still matches central differences (same key each time)."""
    from tests.gradcheck import numerical_gradient
    config = minroberta.Config(vocab_size=11, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=6, max_position_embeddings=10, hidden_dropout_prob=0.3,
                               attention_probs_dropout_prob=0.3)
    model = minroberta.Roberta(config, seed=0, dtype="float64")
    ids = np.array([[0, 5, 6, 7, 2]])
    labels = np.array([[-100, 5, -100, 9, -100]])
    _, grads = model.loss_and_grads(ids, None, labels, dropout_key=(4, 4))
    for key in ("roberta.encoder.layer.0.attention.self.query.weight", "roberta.encoder.layer.0.output.dense.weight",
                "roberta.embeddings.LayerNorm.weight", "lm_head.dense.weight"):
        numeric = numerical_gradient(
            lambda: float(model.loss_and_grads(ids, None, labels, dropout_key=(4, 4))[0]), model.params[key])
        assert np.max(np.abs(grads[key] - numeric)) <= 1e-7, key


def test_bad_inputs_are_clear_errors(xp):
    config = minroberta.Config(**CONFIGS["small"], max_position_embeddings=12)
    model = minroberta.Roberta(config, seed=0)
    with pytest.raises(minroberta.MinRobertaError, match="input_ids must have shape"):
        model([1, 2, 3])
    with pytest.raises(minroberta.MinRobertaError, match="sequence length 12 exceeds the model's 10 positions"):
        model(np.ones((1, 12), dtype=np.int64))
    with pytest.raises(ValueError, match=r"ids holds id 40, outside \[0, 40\)"):
        model([[0, 40, 2]])
    with pytest.raises(minroberta.MinRobertaError, match="must hold integers"):
        model([[0.5, 1.0]])
    with pytest.raises(minroberta.MinRobertaError, match=r"attention_mask has shape \(1, 2\), expected \(1, 3\)"):
        model([[0, 5, 2]], attention_mask=[[1, 1]])
