"""AdamW, the schedule and clipping against torch; ten training steps against a transformers + torch trainer."""

import numpy as np
import pytest

import minroberta
from minroberta import backend
from minroberta.engine.flat import FlatAdamW
from minroberta.optim import AdamW, clip_by_global_norm, linear_schedule
from tests.reference import reference_mlm, relative_error, transformers_or_skip


def test_schedule_warms_up_then_decays_linearly():
    lrs = [linear_schedule(t, 1.0, 4, 10) for t in range(10)]
    np.testing.assert_allclose(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert linear_schedule(10, 1.0, 4, 10) == 0.0
    assert linear_schedule(0, 2.0, 0, 5) == 2.0


def test_adamw_and_clipping_match_torch(xp):
    torch, _ = transformers_or_skip()
    rng = np.random.default_rng(0)
    host = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    params = {k: backend.to_device(v.copy()) for k, v in host.items()}
    optimizer = AdamW(params, weight_decay=0.1)
    torch_params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in host.items()}
    torch_optimizer = torch.optim.AdamW([{"params": [torch_params["w"]], "weight_decay": 0.1},
                                         {"params": [torch_params["b"]], "weight_decay": 0.0}],
                                        lr=1.0, betas=(0.9, 0.98), eps=1e-6)
    for step in range(6):
        grad_host = {k: rng.standard_normal(v.shape) * 3 for k, v in host.items()}
        grads = {k: backend.to_device(v.copy()) for k, v in grad_host.items()}
        norm = clip_by_global_norm(grads, 1.0)
        for k, p in torch_params.items():
            p.grad = torch.tensor(grad_host[k])
        torch_norm = torch.nn.utils.clip_grad_norm_(list(torch_params.values()), 1.0)
        assert abs(backend.scalar(norm) - torch_norm.item()) <= 1e-12 * torch_norm.item()
        lr = linear_schedule(step, 1e-2, 2, 6)
        for group in torch_optimizer.param_groups:
            group["lr"] = lr
        optimizer.step(params, grads, lr)
        torch_optimizer.step()
    for k in host:
        assert relative_error(backend.to_host(params[k]), torch_params[k].detach().numpy()) <= 1e-14


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-9), ("float32", 1e-4)])
def test_ten_steps_match_a_transformers_trainer(numpy_backend, dtype, tolerance):
    """Same initial weights, same masked batches, same AdamW hyperparameters and schedule: same per-step
    losses and the same final parameters as RobertaForMaskedLM + torch.optim.AdamW."""
    torch, _ = transformers_or_skip()
    from minroberta.engine.trainer import TrainSettings, Trainer

    config = minroberta.Config(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=18, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    model = minroberta.Roberta(config, seed=0, dtype=dtype)
    reference = reference_mlm(model)
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(10):
        ids = rng.integers(5, 40, size=(4, 16))
        ids[:, 0], ids[1, 10:] = 0, 1
        mask = (ids != 1).astype(np.int64)
        labels = np.where((rng.random(ids.shape) < 0.2) & (mask == 1), ids, -100)
        labels[0, 3] = ids[0, 3]
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})

    class FixedBatches:
        def batches_per_epoch(self, batch_size):
            return len(batches)

        def train_batch(self, epoch, index, batch_size, shard=(0, 1)):
            return batches[index]

    settings = TrainSettings(steps=10, batch_size=4, lr=1e-3, warmup=3, beta2=0.98, weight_decay=0.01, clip_norm=1.0)
    trainer = Trainer(model, FixedBatches(), None, settings, out_dir=None)
    decay = [p for n, p in reference.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in reference.named_parameters() if p.ndim < 2]
    torch_optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                         {"params": no_decay, "weight_decay": 0.0}],
                                        lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda t: linear_schedule(t, 1.0, 3, 10))
    for step in range(10):
        loss, _, _ = trainer.train_step()
        batch = {k: torch.tensor(v) for k, v in batches[step].items()}
        torch_optimizer.zero_grad()
        expected = reference(**batch).loss
        expected.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        torch_optimizer.step()
        scheduler.step()
        assert abs(loss - expected.item()) <= tolerance * abs(expected.item()), step
    for name, parameter in reference.named_parameters():
        assert relative_error(backend.to_host(model.params[name]), parameter.detach().numpy()) <= tolerance * 10, name


def test_held_parameters_take_the_same_updates_as_separate_ones(xp):
    """hold + gather: one update over the flat buffers gives the per-tensor update's bits, decay on matrices only."""
    rng = np.random.default_rng(3)
    host = {"b": rng.standard_normal(5), "w": rng.standard_normal((4, 3)), "v": rng.standard_normal((2, 2)),
            "g": rng.standard_normal(3)}
    separate = {k: backend.to_device(v.copy()) for k, v in host.items()}
    plain, flat = AdamW(separate, weight_decay=0.1), FlatAdamW(separate, weight_decay=0.1)
    held = flat.hold({k: backend.to_device(v.copy()) for k, v in host.items()})
    for step in range(4):
        grads = {k: backend.to_device(rng.standard_normal(v.shape)) for k, v in host.items()}
        plain.step(separate, grads, 1e-2)
        flat.step(held, flat.gather(grads), 1e-2)
    for k in host:
        np.testing.assert_array_equal(backend.to_host(held[k]), backend.to_host(separate[k]))
        np.testing.assert_array_equal(backend.to_host(flat.exp_avg_sq[k]), backend.to_host(plain.exp_avg_sq[k]))
    assert not np.array_equal(backend.to_host(held["w"]), host["w"])


def test_a_misshapen_or_missing_moment_is_named():
    params = {"w": np.zeros((4, 3)), "b": np.zeros(3)}
    optimizer = AdamW(params)
    arrays = {f"{m}.{k}": np.zeros(v.shape) for m in ("exp_avg", "exp_avg_sq") for k, v in params.items()}
    with pytest.raises(minroberta.MinRobertaError, match=r"opt.safetensors: tensor exp_avg_sq\.w has shape \(3, 4\)"):
        optimizer.load_state_arrays({**arrays, "exp_avg_sq.w": np.zeros((3, 4))}, 1, "opt.safetensors")
    del arrays["exp_avg.b"]
    with pytest.raises(minroberta.MinRobertaError, match=r"no tensor exp_avg\.b"):
        optimizer.load_state_arrays(arrays, 1, "opt.safetensors")
