"""Model sizes as data: `models/*.toml` or a Hugging Face `config.json` → a validated
`ModelConfig`, parameter shapes and the logical name of every parameter dimension. No JAX here:
the CLI validates layouts against a model before JAX starts, and planning code reads shapes
without building anything.

Two architectures: `llama` (what rainier trains: RMSNorm, RoPE, grouped-query attention, SwiGLU)
and `gpt2` (LayerNorm, learned positions, multi-head attention, a GELU MLP, biases, tied
embeddings), which exists for the analytic performance model only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.config.typed import from_mapping, read_text_file, read_toml, resolve_named_file
from rainier_jax.config.values import bounded_int, finite_float, show, size_product

ARCHITECTURES = ("llama", "gpt2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_dim: int
    head_dim: int = 0  # 0 → d_model // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    arch: str = "llama"
    max_positions: int = 0    # the context the model was built for (0: not stated)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch = {self.arch!r}: one of {', '.join(ARCHITECTURES)}")
        # Dimensions index int32 arrays in the compiled program (token ids, positions).
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim"):
            bounded_int(f"{key} =", getattr(self, key), why="dimensions are int32 in the program")
        bounded_int("head_dim =", self.head_dim, lo=0, want="positive (or 0 for d_model/n_heads)")
        bounded_int("max_positions =", self.max_positions, lo=0, want="0 (not stated) or positive")
        finite_float("rope_theta =", self.rope_theta, want="the positive RoPE base, e.g. 10000.0")
        finite_float("norm_eps =", self.norm_eps, want="a small positive epsilon, e.g. 1e-5")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings = {show(self.tie_embeddings)} must be true or false")
        if self.head_dim == 0:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                                 "set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        # A tensor past this has no real model behind it (llama-3.1-405b's largest, the stacked
        # MLP weights, holds 1.1e11 elements) and sizes near 2**63 make XLA abort the process.
        for path, shape in leaves_with_paths(param_shapes(self)):
            size_product(f"parameter {path}", shape, limit=MAX_TENSOR_ELEMENTS,
                         why="elements in one tensor; no real model comes near it")

    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in leaves(param_shapes(self)))

    # The model-spec questions every model answers (rainier_jax/model/seam.py).
    def param_shapes(self) -> dict:
        return param_shapes(self)

    def param_axes(self) -> dict:
        return param_axes(self)

    # Where each parameter sits in the forward pass, for the parity bounds (parity/harness.py):
    # the layer stack, and the depth of the top-level parameters outside it — the embedding
    # below every layer (L + 1), the head and the final norm above them (0).
    stack = "layers"

    def outer_depth(self, key: str) -> int:
        return self.n_layers + 1 if key == "embed" else 0


MAX_TENSOR_ELEMENTS = 2**48


def leaves_with_paths(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves_with_paths(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def leaves(tree: dict):
    for v in tree.values():
        yield from (leaves(v) if isinstance(v, dict) else [v])


def load_model(name_or_path: str, *, setting: str = "model") -> ModelConfig:
    """A built-in model by name (`tiny`), a model TOML by path, or a Hugging Face config.json;
    `setting` names it in messages about the name or path itself."""
    if name_or_path.endswith(".json"):
        return load_hf_config(Path(name_or_path), setting=setting)
    path = resolve_named_file(name_or_path, "models", setting)
    data = read_toml(path)   # its errors name the file already
    try:
        return from_mapping(ModelConfig, data, where="")
    except ConfigError as e:  # one prefix style for every file: "<path>: <key>: <problem>"
        raise ConfigError(f"{path}: {e.raw.removeprefix(': ')}") from None


# Hugging Face config.json keys → ModelConfig fields, per model_type. A tuple gives the key and a
# fallback (a function of the keys read so far) when the file may leave it out.
_HF_KEYS = {
    "llama": {"d_model": "hidden_size", "mlp_dim": "intermediate_size", "n_layers": "num_hidden_layers",
              "n_heads": "num_attention_heads", "n_kv_heads": ("num_key_value_heads", lambda c: c["n_heads"]),
              "vocab_size": "vocab_size", "max_positions": "max_position_embeddings"},
    "gpt2": {"d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head",
             "n_kv_heads": (None, lambda c: c["n_heads"]), "mlp_dim": ("n_inner", lambda c: 4 * c["d_model"]),
             "vocab_size": "vocab_size", "max_positions": "n_positions"},
}


def load_hf_config(path: Path, *, setting: str = "model") -> ModelConfig:
    """A Hugging Face `config.json` (model_type llama or gpt2) → ModelConfig."""
    where = f"{marked(setting)} {path}"
    try:
        raw = json.loads(read_text_file(path, "Hugging Face config.json").decode("utf-8"))
    except ConfigError as e:
        raise ConfigError(f"{marked(setting)} {e.raw}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read (a config.json nests a few levels)") from None
    except (UnicodeDecodeError, ValueError) as e:   # ValueError: bad JSON, or a 4,300+ digit integer
        raise ConfigError(f"{where}: not a readable JSON config ({str(e)[:100]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    kind = raw.get("model_type")
    if kind not in _HF_KEYS:
        raise ConfigError(f"{where}: model_type {kind!r} is not supported (llama or gpt2)")
    fields: dict = {}
    for field, key in _HF_KEYS[kind].items():
        key, fallback = key if isinstance(key, tuple) else (key, None)
        value = raw.get(key) if key else None
        if value is None:
            if fallback is None:
                required = [k for k in _HF_KEYS[kind].values() if isinstance(k, str)]
                raise ConfigError(f"{where}: missing {key} (a {kind} config.json needs {', '.join(required)})")
            value = fallback(fields)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} = {show(value)!r} must be an integer")
        fields[field] = value
    # The optional keys are checked for their type here (a string "false" is not false, "1e-5" is
    # not a number); their ranges by ModelConfig.
    optional = ({"rope_theta": ("rope_theta", 10000.0, float), "norm_eps": ("rms_norm_eps", 1e-5, float),
                 "tie_embeddings": ("tie_word_embeddings", False, bool)} if kind == "llama"
                else {"norm_eps": ("layer_norm_epsilon", 1e-5, float)})
    extra = {} if kind == "llama" else {"tie_embeddings": True}
    for field, (key, default, tp) in optional.items():
        value = raw.get(key, default)
        ok = isinstance(value, bool) if tp is bool else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{where}: {key} = {show(value)!r} must be "
                              + ("true or false (JSON, no quotes)" if tp is bool else "a number (no quotes)"))
        extra[field] = float(value) if tp is float else value
    name = raw.get("_name_or_path") or path.parent.name or path.stem
    try:
        return ModelConfig(name=str(name), arch=kind, **fields, **extra)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def param_shapes(cfg: ModelConfig) -> dict:
    L, D, H, G, K, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                           cfg.mlp_dim, cfg.vocab_size)
    if cfg.arch == "gpt2":
        return {
            "embed": (V, D), "positions": (cfg.max_positions, D),
            "layers": {"ln1": (L, 2 * D), "w_qkv": (L, D, 3 * D), "b_qkv": (L, 3 * D), "wo": (L, D, D), "bo": (L, D),
                       "ln2": (L, 2 * D), "w_up": (L, D, F), "b_up": (L, F), "w_down": (L, F, D), "b_down": (L, D)},
            "final_norm": (2 * D,),
        }
    shapes = {
        "embed": (V, D),
        "layers": {
            "attn_norm": (L, D), "wq": (L, D, H, K), "wk": (L, D, G, K), "wv": (L, D, G, K),
            "wo": (L, H, K, D),
            "mlp_norm": (L, D), "w_gate": (L, D, F), "w_up": (L, D, F), "w_down": (L, F, D),
        },
        "final_norm": (D,),
    }
    if not cfg.tie_embeddings:
        shapes["head"] = (D, V)
    return shapes


def require_trainable(cfg: ModelConfig, setting: str = "model") -> None:
    """rainier's transformer is llama-type; other architectures are for the analytic model only."""
    if cfg.arch != "llama":
        raise ConfigError(f"{marked(setting)} {cfg.name}: a {cfg.arch} model is for the analytic performance model only; "
                          "rainier trains and compiles llama-type models")


def param_axes(cfg: ModelConfig) -> dict:
    """Logical name of every parameter dimension (same tree as `param_shapes`). gpt2's are for the
    performance model's byte counts (Megatron's split: fused qkv and up column-parallel, out and
    down row-parallel); rainier never builds a gpt2 program."""
    if cfg.arch == "gpt2":
        return {
            "embed": ("vocab", "embed"), "positions": (None, "embed"),
            "layers": {"ln1": ("layers", "norm"), "w_qkv": ("layers", "embed", "heads"), "b_qkv": ("layers", "heads"),
                       "wo": ("layers", "heads", "embed"), "bo": ("layers", "norm"), "ln2": ("layers", "norm"),
                       "w_up": ("layers", "embed", "mlp"), "b_up": ("layers", "mlp"),
                       "w_down": ("layers", "mlp", "embed"), "b_down": ("layers", "norm")},
            "final_norm": ("norm",),
        }
    axes = {
        "embed": ("vocab", "embed"),
        "layers": {
            "attn_norm": ("layers", "norm"),
            "wq": ("layers", "embed", "heads", "head_dim"),
            "wk": ("layers", "embed", "kv_heads", "head_dim"),
            "wv": ("layers", "embed", "kv_heads", "head_dim"),
            "wo": ("layers", "heads", "head_dim", "embed"),
            "mlp_norm": ("layers", "norm"),
            "w_gate": ("layers", "embed", "mlp"),
            "w_up": ("layers", "embed", "mlp"),
            "w_down": ("layers", "mlp", "embed"),
        },
        "final_norm": ("norm",),
    }
    if not cfg.tie_embeddings:
        axes["head"] = ("embed", "vocab")
    return axes
