"""Convert a fairseq RoBERTa masked-LM checkpoint (`checkpoint.pt`) to an HF-layout safetensors directory.

This is the one place in the project that reads a pickle, and it does so through torch's restricted
`weights_only=True` loader (which refuses arbitrary code). The library itself never reads pickles.

    python scripts/convert_fairseq.py path/to/checkpoint.pt OUT_DIR

writes OUT_DIR/config.json and OUT_DIR/model.safetensors, which `minroberta.load_pretrained` and
`transformers.RobertaForMaskedLM.from_pretrained` both open. Needs torch (the `parity` extra).
"""

import argparse
import os
import sys

import numpy as np

from minroberta import Config, atomic
from minroberta.errors import MinRobertaError

ENCODER = "decoder.sentence_encoder."

# fairseq layer name -> HF name, per layer
LAYER_NAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}


def read_fairseq(path):
    import torch
    torch.serialization.add_safe_globals([argparse.Namespace])   # fairseq stores its arguments as a Namespace
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise MinRobertaError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    state = {k: v.detach().float().numpy() for k, v in checkpoint["model"].items()}
    args = checkpoint.get("args") or getattr(checkpoint.get("cfg", {}), "model", None)
    return state, args


def convert(state, args, source):
    def take(key):
        if key not in state:
            raise MinRobertaError(f"{source}: missing tensor {key}")
        return state.pop(key)

    if getattr(args, "encoder_normalize_before", False):
        raise MinRobertaError(f"{source}: a pre-LN encoder (encoder_normalize_before) is not RoBERTa's layout")
    activation = getattr(args, "activation_fn", "gelu")
    if activation != "gelu":
        raise MinRobertaError(f"{source}: activation {activation!r} is not supported (gelu only)")
    words = take(ENCODER + "embed_tokens.weight")
    positions = take(ENCODER + "embed_positions.weight")
    layers = 1 + max(int(k[len(ENCODER + "layers."):].split(".")[0]) for k in state if k.startswith(ENCODER + "layers."))
    hidden = words.shape[1]
    config = Config(
        vocab_size=words.shape[0], hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=args.encoder_attention_heads,
        intermediate_size=state[ENCODER + "layers.0.fc1.weight"].shape[0],
        max_position_embeddings=positions.shape[0], type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=float(getattr(args, "dropout", 0.1)),
        attention_probs_dropout_prob=float(getattr(args, "attention_dropout", 0.1)),
        extra={"architectures": ["RobertaForMaskedLM"]})
    params = {
        "roberta.embeddings.word_embeddings.weight": words,
        "roberta.embeddings.position_embeddings.weight": positions,
        # fairseq RoBERTa has no token types; a zero table of one row adds nothing
        "roberta.embeddings.token_type_embeddings.weight": np.zeros((1, hidden), dtype=np.float32),
        "roberta.embeddings.LayerNorm.weight": take(ENCODER + "emb_layer_norm.weight"),
        "roberta.embeddings.LayerNorm.bias": take(ENCODER + "emb_layer_norm.bias"),
    }
    for i in range(layers):
        for fairseq_name, hf_name in LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                params[f"roberta.encoder.layer.{i}.{hf_name}.{kind}"] = take(f"{ENCODER}layers.{i}.{fairseq_name}.{kind}")
    decoder = take("decoder.lm_head.weight")
    if not np.array_equal(decoder, words):
        raise MinRobertaError(f"{source}: the LM head is not tied to the token embeddings; not supported")
    for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias"):
        params[f"lm_head.{name}"] = take(f"decoder.lm_head.{name}")
    params["lm_head.bias"] = take("decoder.lm_head.bias")
    leftover = [k for k in state if not k.endswith("version")]
    if leftover:
        raise MinRobertaError(f"{source}: tensor {leftover[0]} has no place in a RoBERTa masked LM")
    return config, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="fairseq checkpoint.pt")
    parser.add_argument("out", help="output directory (created)")
    args = parser.parse_args(argv)
    from safetensors.numpy import save
    try:
        state, fairseq_args = read_fairseq(args.checkpoint)
        config, params = convert(state, fairseq_args, args.checkpoint)
    except MinRobertaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    atomic.write_bytes(os.path.join(args.out, "model.safetensors"),
                       save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()},
                            metadata={"format": "pt"}))
    config.save(os.path.join(args.out, "config.json"))
    print(f"wrote {len(params)} tensors to {args.out} ({config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, vocab {config.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
