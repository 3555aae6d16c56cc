"""Side-by-side benchmark: minroberta against HuggingFace RobertaForMaskedLM on PyTorch, same machine, same run.

Each measurement is one workload in a fresh process (so peak memory is that workload's own), and the two
implementations alternate, several repetitions each: the machine's noise falls on both alike. Both get the same
config, weights seed, inputs and masks, float32, dropout 0, the same thread count.

    python scripts/bench.py                       # tiny preset, train and infer, 3 repetitions
    python scripts/bench.py --preset base --mode train --repeats 5 --json out.json
    python scripts/bench.py --profile --mode train  # minroberta alone: the time of each op

Columns: tokens/s of each (median over repetitions), their ratio (median and range), peak RSS, the time split
(forward / backward / optimizer, train mode), the achieved GFLOP/s of the matrix work (counted analytically:
every GEMM of the model) and the GEMM peak this process measures for a large float32 product.
Needs torch and transformers (the `parity` extra) for the reference column. With --backend cupy the
reference runs on the same GPU through PyTorch-CUDA (then the GEMM-peak column is the CPU's, not the GPU's, and
the JSON adds the GPU memory each allocator held).
--precision tf32 / fp16 applies to both: minroberta's precision modes against PyTorch's allow_tf32 and its
float16 autocast with a GradScaler; --fused turns on minroberta's fused CUDA kernels.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    # smoke runs only (gpu_check.sh --dry-run): too small to say anything about speed
    "micro": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=256, batch=4, seq=32),
    # the default pretraining recipe's step (minroberta pretrain with no flags): 50% of the tokens scored
    "mini": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=512, batch=64, seq=32, mask_rate=0.5),
    "tiny": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024, batch=16, seq=128),
    "base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, batch=8, seq=128),
}
MASK_RATE = 0.15   # unless the preset names its own


def matrix_flops(p, mode, masked_rows):
    """Multiply-adds x 2 of every matrix product in one forward (x3 for forward + backward)."""
    C, F, L, V, B, T = (p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"], p["vocab_size"],
                        p["batch"], p["seq"])
    tokens = B * T
    per_layer = 2 * tokens * (4 * C * C + 2 * C * F) + 2 * 2 * B * T * T * C   # projections, FFN, QK^T and PV
    head_rows = masked_rows if mode == "train" else tokens
    head = 2 * head_rows * (C * C + C * V)
    forward = L * per_layer + head
    return forward * (3 if mode == "train" else 1)


def gemm_peak(numpy):
    a = numpy.random.rand(2048, 2048).astype(numpy.float32)
    b = numpy.random.rand(2048, 2048).astype(numpy.float32)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048 ** 3 / min(times) / 1e9


def inputs(p, numpy):
    rng = numpy.random.default_rng(0)
    ids = rng.integers(5, p["vocab_size"], size=(p["batch"], p["seq"]))
    ids[:, 0] = 0
    ids[:, -1] = 2
    labels = numpy.where(rng.random(ids.shape) < p.get("mask_rate", MASK_RATE), ids, -100)
    masked_input = numpy.where(labels != -100, p["vocab_size"] - 1, ids)
    return masked_input, numpy.ones_like(ids), labels


def minroberta_model(p):
    """The preset's model, dropout off, seeded."""
    import minroberta
    config = minroberta.Config(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"],
                               num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
                               intermediate_size=p["intermediate_size"], max_position_embeddings=p["seq"] + 2,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return minroberta.Roberta(config, seed=0)


def worker_minroberta(p, mode, steps, warmup, precision_mode="float32", use_fused=False):
    import numpy as np

    from minroberta import backend, engine
    from minroberta.engine import fused, precision, threads
    from minroberta.ops import cross_entropy_forward
    from minroberta.optim import AdamW
    engine.install()   # the fast forms, as `minroberta pretrain` runs them (MINROBERTA_REFERENCE=1: the core alone)
    precision.use(precision_mode)
    fused.use(use_fused)
    scaler = precision.LossScaler() if precision_mode == "fp16" else None
    model, (ids, mask, labels) = minroberta_model(p), inputs(p, np)
    ids_d, mask_d, labels_d = (backend.to_device(a) for a in (ids, mask, labels))
    optimizer = AdamW(model.params) if mode == "train" else None   # its moments would inflate infer's peak RSS
    split = {"forward": [], "backward": [], "optimizer": []}
    totals = []

    def sync():
        if backend.name() == "cupy":
            import cupy
            cupy.cuda.Device().synchronize()

    for step in range(warmup + steps):
        start = time.perf_counter()
        if mode == "infer":
            model(ids_d, mask_d).logits
            sync()
        else:
            logits, targets = model.mlm_logits(ids_d, mask_d, labels_d)
            cross_entropy_forward(logits, targets)
            sync()
            forward_done = time.perf_counter()
            _, grads = model.loss_and_grads(ids_d, mask_d, labels_d, loss_scale=scaler.scale if scaler else 1.0)
            if scaler:
                scaler.unscale(grads)
            sync()
            backward_done = time.perf_counter()
            optimizer.step(model.params, grads, 1e-4)
            del grads   # released before the next step, as the reference's zero_grad(set_to_none=True) does
            sync()
            if step >= warmup:
                split["forward"].append(forward_done - start)
                # loss_and_grads repeats the forward: its backward share is its time less a forward
                split["backward"].append(backward_done - forward_done - (forward_done - start))
                split["optimizer"].append(time.perf_counter() - backward_done)
        if step >= warmup:
            totals.append(time.perf_counter() - start - (split["forward"][-1] if mode == "train" else 0.0))
    threads.use(1)   # the GEMM peak is the BLAS's own, on all its threads
    return totals, split, int((labels != -100).sum()), gemm_peak(np)


def worker_reference(p, mode, steps, warmup, threads, device="cpu", precision_mode="float32"):
    import contextlib

    import numpy as np
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = precision_mode == "tf32"
    half = precision_mode == "fp16"
    autocast = (lambda: torch.autocast(device_type=device, dtype=torch.float16)) if half else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device, enabled=half)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"],
                                        num_hidden_layers=p["num_hidden_layers"],
                                        num_attention_heads=p["num_attention_heads"],
                                        intermediate_size=p["intermediate_size"],
                                        max_position_embeddings=p["seq"] + 2, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = transformers.RobertaForMaskedLM(config).to(device)
    ids, mask, labels = (torch.tensor(a).to(device) for a in inputs(p, np))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    split = {"forward": [], "backward": [], "optimizer": []}
    totals = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        if mode == "infer":
            model.eval()
            with torch.no_grad(), autocast():
                model(input_ids=ids, attention_mask=mask).logits
            sync()
        else:
            model.train()
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            sync()
            forward_done = time.perf_counter()
            scaler.scale(loss).backward()
            sync()
            backward_done = time.perf_counter()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if step >= warmup:
                split["forward"].append(forward_done - start)
                split["backward"].append(backward_done - forward_done)
                split["optimizer"].append(time.perf_counter() - backward_done)
        if step >= warmup:
            totals.append(time.perf_counter() - start)
    return totals, split, int((labels != -100).sum()), gemm_peak(np)


PROFILED_OPS = ("embedding_forward", "embedding_backward", "layernorm_forward", "layernorm_backward", "linear_forward",
                 "linear_backward", "attention_forward", "attention_backward", "gelu_forward", "gelu_backward",
                 "gelu_output", "cross_entropy_forward", "cross_entropy_backward")


def profile_minroberta(p, mode, steps, warmup):
    """Where minroberta's step time goes: each op's own wall time (time inside an op it calls is that op's), all
    matrix products as one line, the rest of the step as "other". Median over the timed steps, ms per step."""
    import collections

    import numpy as np

    from minroberta import engine, optim
    from minroberta import model as model_module
    from minroberta.engine import rows, scored
    from minroberta.ops import attention, linear
    engine.install()
    own, inner = collections.Counter(), []

    def timed(label, function):
        def call(*args, **kwargs):
            inner.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                own[label] += elapsed - inner.pop()
                if inner:
                    inner[-1] += elapsed
        return call
    for module in (linear, attention, rows):
        module.matmul = timed("matrix products", module.matmul)
    for name in ("softmax_forward", "softmax_backward"):
        setattr(attention, name, timed(name, getattr(attention, name)))
    for name in PROFILED_OPS:   # where the model and the engine's training step call them
        for module in (model_module, scored):
            if hasattr(module, name):
                setattr(module, name, timed(name, getattr(module, name)))
    optim.AdamW.step = timed("AdamW", optim.AdamW.step)
    model, (ids, mask, labels) = minroberta_model(p), inputs(p, np)
    optimizer = optim.AdamW(model.params) if mode == "train" else None
    per_step = []
    for step in range(warmup + steps):
        own.clear()
        start = time.perf_counter()
        if mode == "infer":
            model(ids, mask).logits
        else:
            _, grads = model.loss_and_grads(ids, mask, labels)
            optimizer.step(model.params, grads, 1e-4)
        total = time.perf_counter() - start
        if step >= warmup:
            per_step.append(dict(own, other=total - sum(own.values()), total=total))
    median = {k: statistics.median(s.get(k, 0.0) for s in per_step) for k in per_step[0]}
    print(f"minroberta {args_summary(p)} {mode}: median of {steps} steps, ms per step (own time of each op)")
    for label, seconds in sorted(median.items(), key=lambda item: -item[1]):
        if label != "total":
            print(f"  {label:24s} {seconds * 1e3:8.1f}  {100 * seconds / median['total']:5.1f}%")
    print(f"  {'step':24s} {median['total'] * 1e3:8.1f}")


def args_summary(p):
    return f"hidden {p['hidden_size']} x {p['num_hidden_layers']} layers, batch {p['batch']} x {p['seq']}"


def device_peak_mib(impl, backend_name):
    """GPU memory the implementation's allocator held at most (None off the GPU): CuPy's pool keeps every block it
    has taken, PyTorch's caching allocator records its high-water mark; both count cached blocks alike."""
    if backend_name != "cupy":
        return None
    if impl == "minroberta":
        import cupy
        return cupy.get_default_memory_pool().total_bytes() / 2**20
    import torch
    return torch.cuda.max_memory_reserved() / 2**20


def run_worker(args):
    p = PRESETS[args.preset]
    if args.impl == "minroberta":
        if args.backend:
            from minroberta import backend
            backend.use(args.backend)
        totals, split, masked, peak = worker_minroberta(p, args.mode, args.steps, args.warmup, args.precision,
                                                        args.fused)
    else:
        device = "cuda" if args.backend == "cupy" else "cpu"   # the same accelerator as minroberta's
        totals, split, masked, peak = worker_reference(p, args.mode, args.steps, args.warmup, args.threads, device,
                                                       args.precision)
    seconds = statistics.median(totals)
    tokens = p["batch"] * p["seq"]
    result = {"impl": args.impl, "preset": args.preset, "mode": args.mode, "precision": args.precision,
              "fused": args.fused, "seconds_per_step": seconds,
              "tokens_per_s": tokens / seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "device_peak_mib": device_peak_mib(args.impl, args.backend),
              "split": {k: statistics.median(v) for k, v in split.items() if v},
              "matrix_gflops": matrix_flops(p, args.mode, masked) / seconds / 1e9, "gemm_peak_gflops": peak}
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), nargs="+", default=["tiny"])
    parser.add_argument("--mode", choices=["train", "infer"], nargs="+", default=["train", "infer"])
    parser.add_argument("--repeats", type=int, default=3, help="processes per implementation and workload")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; minroberta's threads (threads.py)")
    parser.add_argument("--backend", choices=["numpy", "cupy", "standin"], default=None,
                        help="minroberta's array module (standin: for smoke runs of the GPU path on a CPU)")
    parser.add_argument("--precision", choices=["float32", "tf32", "fp16"], default="float32",
                        help="matrix products of both implementations (tf32 needs a GPU)")
    parser.add_argument("--fused", action="store_true", help="minroberta's fused CUDA kernels (cupy backend)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    parser.add_argument("--profile", action="store_true",
                        help="instead: minroberta alone in this process, the time of each op (first preset and mode)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["minroberta", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.preset, args.mode = args.preset[0], args.mode[0]
        return run_worker(args)
    if args.profile:
        from minroberta.engine import threads
        threads.use(args.threads)
        return profile_minroberta(PRESETS[args.preset[0]], args.mode[0], args.steps, args.warmup)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), MINROBERTA_THREADS=str(args.threads))
    measurements = []
    for preset in args.preset:
        for mode in args.mode:
            for repeat in range(args.repeats):
                for impl in ("minroberta", "reference"):
                    command = [sys.executable, __file__, "--worker", "--impl", impl, "--preset", preset, "--mode", mode,
                               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                               "--precision", args.precision] + (["--fused"] if args.fused else [])
                    if args.backend:   # the reference runs on CUDA when minroberta runs on CuPy
                        command += ["--backend", args.backend]
                    done = subprocess.run(command, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{impl} {preset} {mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    measurements.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(f"  {preset} {mode} {impl} #{repeat + 1}: {measurements[-1]['tokens_per_s']:,.0f} tok/s",
                          file=sys.stderr)
    print(f"backend {args.backend or 'numpy'} (reference on {'CUDA' if args.backend == 'cupy' else 'the CPU'}), "
          f"matrix products {args.precision}{', fused kernels' if args.fused else ''}")
    print_table(measurements)
    if args.json:
        from minroberta.atomic import write_text
        write_text(args.json, json.dumps(measurements, indent=2))
    return 0


def print_table(measurements):
    print("| workload | minroberta tok/s | HF PyTorch tok/s | ratio (median, range) | peak RSS MiB (ours / HF) "
          "| split fwd/bwd/opt ms (ours; HF) | matrix GFLOP/s (ours / HF) | GEMM peak GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    workloads = sorted({(m["preset"], m["mode"]) for m in measurements}, key=lambda w: (w[0] != "tiny", w[1]))
    for preset, mode in workloads:
        ours = [m for m in measurements if (m["preset"], m["mode"], m["impl"]) == (preset, mode, "minroberta")]
        ref = [m for m in measurements if (m["preset"], m["mode"], m["impl"]) == (preset, mode, "reference")]
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, ref)]
        med = lambda rows, key: statistics.median(r[key] for r in rows)

        def split(rows):
            if not rows[0]["split"]:
                return "-"
            return "/".join(f"{statistics.median(r['split'][k] for r in rows) * 1e3:.0f}"
                            for k in ("forward", "backward", "optimizer"))
        print(f"| {preset} {mode} | {med(ours, 'tokens_per_s'):,.0f} | {med(ref, 'tokens_per_s'):,.0f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{med(ours, 'peak_rss_mib'):,.0f} / {med(ref, 'peak_rss_mib'):,.0f} | {split(ours)}; {split(ref)} | "
              f"{med(ours, 'matrix_gflops'):.0f} / {med(ref, 'matrix_gflops'):.0f} | "
              f"{med(ours + ref, 'gemm_peak_gflops'):.0f} |")


if __name__ == "__main__":
    sys.exit(main())
