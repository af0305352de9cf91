"""`--model config.json`: Hugging Face configs of llama and gpt2 type."""

import json

import pytest

from cli_runner import rainier
from rainier_jax.perf import flops
from rainier_jax.config.errors import ConfigError
from rainier_jax.spec.model import load_model

# meta-llama/Llama-3.1-8B config.json (the fields rainier reads, as published)
LLAMA_31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
               "tie_word_embeddings": False, "_name_or_path": "meta-llama/Llama-3.1-8B"}
# openai-community/gpt2 config.json (n_inner is null: 4·n_embd)
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None, "vocab_size": 50257,
        "n_positions": 1024, "layer_norm_epsilon": 1e-05}


def write(tmp_path, cfg, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


def test_llama_config_matches_the_builtin_model(tmp_path):
    hf = load_model(write(tmp_path, LLAMA_31_8B))
    builtin = load_model("llama-3.1-8b")
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim", "head_dim",
                  "rope_theta", "norm_eps", "tie_embeddings"):
        assert getattr(hf, field) == getattr(builtin, field), field
    assert hf.arch == "llama" and hf.max_positions == 131072 and hf.name == "meta-llama/Llama-3.1-8B"
    assert hf.num_params() == builtin.num_params() == 8_030_261_248   # the published 8.03B


def test_gpt2_config(tmp_path):
    cfg = load_model(write(tmp_path, GPT2))
    assert (cfg.arch, cfg.d_model, cfg.mlp_dim, cfg.n_kv_heads, cfg.max_positions) == ("gpt2", 768, 3072, 12, 1024)
    assert cfg.tie_embeddings
    assert cfg.num_params() == 124_439_808   # GPT-2 small, biases and LayerNorms included
    # One up projection, not gate and up: 6·N-style model FLOPs per token without attention.
    per_token = flops.model_flops(cfg, batch=1, seq=1) - 12 * 12 * 1 * 768
    assert per_token == 6 * (12 * (3 * 768 * 768 + 768 * 768 + 2 * 768 * 3072) + 768 * 50257)


@pytest.mark.parametrize("cfg,problem", [
    ({k: v for k, v in LLAMA_31_8B.items() if k != "intermediate_size"}, "missing intermediate_size"),
    ({k: v for k, v in GPT2.items() if k != "n_positions"}, "missing n_positions"),
    ({**LLAMA_31_8B, "num_attention_heads": 30}, "not divisible"),
    ({**LLAMA_31_8B, "hidden_size": "4096"}, "hidden_size = '4096' must be an integer"),
    ({**LLAMA_31_8B, "model_type": "mistral"}, "model_type 'mistral' is not supported"),
])
def test_bad_configs_are_one_line(tmp_path, cfg, problem):
    with pytest.raises(ConfigError, match=problem):
        load_model(write(tmp_path, cfg))


def test_cli_refuses_bad_json_and_gpt2_training(tmp_path):
    bad = write(tmp_path, {k: v for k, v in LLAMA_31_8B.items() if k != "vocab_size"})
    r = rainier("train", "--model", bad, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing vocab_size" in r.stderr
    (tmp_path / "broken.json").write_text("{not json")
    r = rainier("train", "--model", str(tmp_path / "broken.json"), timeout=60)
    assert r.returncode == 2 and "not a readable JSON config" in r.stderr
    r = rainier("train", "--model", write(tmp_path, GPT2, "gpt2.json"), timeout=60)
    assert r.returncode == 2 and "analytic performance model only" in r.stderr
