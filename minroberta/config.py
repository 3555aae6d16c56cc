"""The model configuration: the fields of a HuggingFace `config.json`, validated, read and written."""

import dataclasses

from . import atomic, guards
from .errors import MinRobertaError

REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings")
MODEL_TYPES = ("roberta", "bert")
ACTIVATIONS = ("gelu",)  # the exact erf form; tanh approximations would silently change the numbers
SIZE_LIMIT = 1 << 20     # no size field of a sane model reaches this; larger is a damaged file, not a model
NULL_MEANS_DEFAULT = ("bos_token_id", "eos_token_id")   # BERT has neither: transformers writes null


@dataclasses.dataclass
class Config:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    model_type: str = "roberta"
    extra: dict = dataclasses.field(default_factory=dict)   # other config.json keys, kept for the round trip

    def __post_init__(self):
        self.validate()

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self):
        """Outputs of a classification head: from id2label as transformers writes it, else num_labels, else 2."""
        if isinstance(self.extra.get("id2label"), dict):
            return len(self.extra["id2label"])
        return int(self.extra.get("num_labels", 2))

    @property
    def max_sequence_length(self):
        """Longest input the position table allows: RoBERTa positions start at pad + 1."""
        offset = self.pad_token_id + 1 if self.model_type == "roberta" else 0
        return self.max_position_embeddings - offset

    def validate(self, source="config"):
        def fail(message):
            raise MinRobertaError(f"{source}: {message}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is int and (isinstance(value, bool) or not isinstance(value, int)):
                fail(f"{field.name} must be an integer, got {value!r}")
            if field.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                fail(f"{field.name} must be a number, got {value!r}")
            if field.type is str and not isinstance(value, str):
                fail(f"{field.name} must be a string, got {value!r}")
        for name in REQUIRED + ("type_vocab_size",):
            if not 1 <= getattr(self, name) <= SIZE_LIMIT:
                fail(f"{name} = {getattr(self, name)} is outside [1, {SIZE_LIMIT}]")
        labels = self.extra.get("num_labels", 2)   # read by every RoBERTa load, so checked here, not at first use
        if not isinstance(self.extra.get("id2label"), dict) and (isinstance(labels, bool)
                                                                 or not isinstance(labels, int)):
            fail(f"num_labels must be an integer, got {labels!r}")
        if not 1 <= self.num_labels <= SIZE_LIMIT:
            fail(f"num_labels = {self.num_labels} is outside [1, {SIZE_LIMIT}]")
        if self.hidden_size % self.num_attention_heads:
            fail(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.model_type not in MODEL_TYPES:
            fail(f"model_type {self.model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
        if self.hidden_act not in ACTIVATIONS:
            fail(f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                fail(f"{name} = {getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(f"{name} = {getattr(self, name)} must lie in [0, 1)")
        if not 0.0 < self.layer_norm_eps < 1.0:
            fail(f"layer_norm_eps = {self.layer_norm_eps} must lie in (0, 1)")
        if self.max_sequence_length < 1:
            fail(f"max_position_embeddings {self.max_position_embeddings} leaves no room for a token")

    # --- config.json
    @classmethod
    def from_dict(cls, values, source="config"):
        if not isinstance(values, dict):
            raise MinRobertaError(f"{source}: expected a JSON object, got {type(values).__name__}")
        missing = [name for name in REQUIRED + ("model_type",) if name not in values]
        if missing:
            raise MinRobertaError(f"{source}: missing field {missing[0]!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        config = cls.__new__(cls)
        for field in dataclasses.fields(cls):
            if field.name != "extra":
                value = values.get(field.name)
                unset = value is None and field.name in NULL_MEANS_DEFAULT
                setattr(config, field.name, field.default if unset else values.get(field.name, field.default))
        if config.model_type == "bert" and "type_vocab_size" not in values:
            config.type_vocab_size = 2
        config.extra = {k: v for k, v in values.items() if k not in known}
        config.validate(source)
        return config

    def to_dict(self):
        values = dict(self.extra)
        values.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return values

    @classmethod
    def load(cls, path):
        return cls.from_dict(guards.load_json(path), source=path)

    def save(self, path):
        atomic.write_json(path, self.to_dict())

    def replace(self, **changes):
        """A copy with fields changed; num_labels (kept in `extra`, as config.json keeps it) may be one of them.
        An unknown name is a one-line error."""
        if "num_labels" in changes:
            labels = changes.pop("num_labels")
            extra = dict(changes.get("extra", self.extra))
            if len(extra.get("id2label") or ()) != labels:   # names of other labels would override the count
                for key in ("id2label", "label2id"):
                    extra.pop(key, None)
            changes["extra"] = {**extra, "num_labels": labels}
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise MinRobertaError(f"config has no field {unknown[0]!r} (fields: {', '.join(sorted(fields))}, "
                                  "num_labels)")
        return dataclasses.replace(self, **changes)


# Model sizes by name, for `minroberta pretrain --preset` and the benchmark.
PRESETS = {
    # for tests and smoke runs: seconds per hundred steps
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    # the default recipe's: fills masks from context after five minutes on two CPU cores
    "mini": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    # wants longer runs: more capacity, slower steps
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def preset(name):
    """The shape fields of the preset `name` (a fresh dict)."""
    if name not in PRESETS:
        raise MinRobertaError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
