"""Hostile input, by family: values of the wrong type or beyond what the program can hold, in
flags, model and mesh TOML files and Hugging Face config.json files; sizes that ask for unbounded
work; runs that cannot fit in this machine's memory. Each must be refused with exactly one line
naming the setting, exit code 2, quickly and before anything compiles.

The cases run `rainier_jax.cli.main` in this process (validation never starts JAX, so a case takes
milliseconds); tests/test_cli.py runs the first family of bad inputs as real subprocesses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rainier_jax.cli import main as cli
from rainier_jax.config import values
from rainier_jax.config.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TINY = (REPO / "models" / "tiny.toml").read_text()
MINI8 = (REPO / "meshes" / "trn2-mini-8.toml").read_text()
LLAMA_JSON = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256,
              "max_position_embeddings": 128}
DEEP = 3000   # far beyond Python's recursion limit for a nested list


def _sub(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# name → file contents; `{name}` in an argument below is that file's path.
FILES = {
    # model TOML
    "m_bool_string.toml": _sub(TINY, "tie_embeddings = false", 'tie_embeddings = "false"'),
    "m_nan_theta.toml": _sub(TINY, "rope_theta = 10000.0", "rope_theta = nan"),
    "m_inf_eps.toml": _sub(TINY, "norm_eps = 1e-5", "norm_eps = inf"),
    "m_negative_eps.toml": _sub(TINY, "norm_eps = 1e-5", "norm_eps = -1e-5"),
    "m_negative_theta.toml": _sub(TINY, "rope_theta = 10000.0", "rope_theta = -10000.0"),
    "m_deep.toml": TINY + "extra = " + "[" * DEEP + "]" * DEEP + "\n",
    "m_int_beyond_int64.toml": _sub(TINY, "vocab_size = 256", "vocab_size = 99999999999999999999"),
    "m_int_5000_digits.toml": _sub(TINY, "vocab_size = 256", "vocab_size = " + "9" * 5000),
    "m_int_beyond_int32.toml": _sub(TINY, "n_layers = 8", "n_layers = 3000000000"),
    "m_huge_tensor.toml": _sub(_sub(TINY, "vocab_size = 256", "vocab_size = 2000000000"),
                              "d_model = 128", "d_model = 2000000000"),
    # mesh TOML
    "h_instances.toml": _sub(MINI8, "instances = 2 ", "instances = 1000000000000 "),
    "h_nan_hbm.toml": _sub(MINI8, "hbm_gib = 96.0 ", "hbm_gib = nan "),
    "h_inf_tflops.toml": MINI8.replace("bf16 = ", "bf16 = inf #", 1),
    "h_float_instances.toml": _sub(MINI8, "instances = 2 ", "instances = 2.5 "),
    "h_string_bool.toml": MINI8.replace("per_direction = true", 'per_direction = "true"', 1),
    # Hugging Face config.json
    "c_theta_string.json": json.dumps({**LLAMA_JSON, "rope_theta": "abc"}),
    "c_tie_string.json": json.dumps({**LLAMA_JSON, "tie_word_embeddings": "false"}),
    "c_nan_eps.json": json.dumps({**LLAMA_JSON, "rms_norm_eps": float("nan")}),
    "c_bool_for_int.json": json.dumps({**LLAMA_JSON, "hidden_size": True}),
    "c_inf_vocab.json": json.dumps(LLAMA_JSON).replace('"vocab_size": 256', '"vocab_size": 1e400'),
    "c_big_int.json": json.dumps(LLAMA_JSON).replace('"vocab_size": 256', '"vocab_size": ' + "9" * 5000),
    "c_deep.json": json.dumps(LLAMA_JSON)[:-1] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}",
    "c_beyond_int32.json": json.dumps({**LLAMA_JSON, "num_hidden_layers": 2**40}),
}

BIG = str(2**31)          # one past int32
HUGE = "9" * 40           # far past int64

CASES = [
    # flags past the ranges the program holds
    ("steps-past-int32", ["train", "--steps", BIG], ["--steps", "2,147,483,647"]),
    ("steps-huge", ["train", "--steps", HUGE], ["--steps", "digits"]),
    ("seed-past-int32", ["train", "--seed", BIG], ["--seed"]),
    ("batch-times-seq", ["train", "--batch", "100000", "--seq", "100000"], ["--batch", "--seq"]),
    ("eval-every-huge", ["train", "--eval-every", HUGE], ["--eval-every"]),
    ("microbatches-huge", ["train", "--microbatches", BIG], ["--microbatches"]),
    ("lr-inf", ["train", "--lr", "inf"], ["--lr", "inf"]),
    ("lr-overflows-to-inf", ["train", "--lr", "1e400"], ["--lr"]),
    ("checkpoint-every-huge", ["train", "--checkpoint-dir", "{tmp}/ck", "--checkpoint-every", HUGE],
     ["--checkpoint-every"]),
    ("keep-huge", ["train", "--checkpoint-dir", "{tmp}/ck", "--keep", HUGE], ["--keep"]),
    ("layout-axis-huge", ["train", "--parallel", "dp=" + HUGE], ["--parallel"]),
    ("parity-steps-past-int32", ["parity", "--parallel", "dp=8", "--steps", BIG], ["--steps"]),
    ("estimate-nodes-huge", ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver",
                             "--nodes", HUGE, "--batch", "1024", "--parallel", "dp=256"], ["--nodes"]),
    ("estimate-too-many-ranks", ["estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver",
                                 "--nodes", "1000", "--batch", "1024", "--parallel", "dp=256000"], ["--nodes", "65,536"]),
    ("plan-too-many-ranks", ["plan", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes", "128",
                             "--batch", "1024"], ["plan", "16,384"]),
    ("plan-batch-huge", ["plan", "--model", "llama-3.1-70b", "--mesh", "trn2-instance", "--batch", HUGE], ["--batch"]),
    ("schedule-unbounded", ["schedule", "--schedule", "1f1b", "--pp", "100000", "--microbatches", "100000"],
     ["pp 100000", "262,144"]),
    ("schedule-pp-huge", ["schedule", "--schedule", "gpipe", "--pp", HUGE, "--microbatches", "1"], ["--pp"]),
    # runs that cannot fit in this machine's memory (llama-3.1-8b's state alone is 120 GiB)
    ("train-8b", ["train", "--model", "llama-3.1-8b"], ["--model llama-3.1-8b", "GiB", "available"]),
    ("train-8b-fsdp", ["train", "--model", "llama-3.1-8b", "--parallel", "fsdp=8"], ["--model llama-3.1-8b", "GiB"]),
    ("parity-70b", ["parity", "--model", "llama-3.1-70b", "--parallel", "fsdp=8"], ["--model llama-3.1-70b", "GiB"]),
    # model files
    ("model-bool-string", ["train", "--model", "{m_bool_string.toml}"], ["tie_embeddings", "without quotes"]),
    ("model-nan", ["train", "--model", "{m_nan_theta.toml}"], ["rope_theta", "finite"]),
    ("model-inf", ["train", "--model", "{m_inf_eps.toml}"], ["norm_eps", "finite"]),
    ("model-negative-eps", ["train", "--model", "{m_negative_eps.toml}"], ["norm_eps"]),
    ("model-negative-theta", ["estimate", "--model", "{m_negative_theta.toml}", "--mesh", "trn2-mini-8", "--batch", "8"], ["rope_theta"]),
    ("model-deep", ["train", "--model", "{m_deep.toml}"], ["m_deep.toml", "nested"]),
    ("model-int-beyond-int64", ["train", "--model", "{m_int_beyond_int64.toml}"], ["vocab_size", "too large"]),
    ("model-int-5000-digits", ["train", "--model", "{m_int_5000_digits.toml}"], ["m_int_5000_digits.toml"]),
    ("model-int-beyond-int32", ["train", "--model", "{m_int_beyond_int32.toml}"], ["n_layers"]),
    ("model-huge-tensor", ["estimate", "--model", "{m_huge_tensor.toml}", "--mesh", "trn2-mini-8", "--batch", "8"], ["parameter", "embed"]),
    # mesh files
    ("mesh-astronomical", ["train", "--mesh", "{h_instances.toml}"], ["instances", "65,536"]),
    ("mesh-astronomical-show", ["mesh", "show", "{h_instances.toml}"], ["instances"]),
    ("mesh-nan", ["train", "--mesh", "{h_nan_hbm.toml}"], ["hbm_gib", "finite"]),
    ("mesh-inf", ["estimate", "--model", "tiny", "--mesh", "{h_inf_tflops.toml}", "--batch", "8"], ["bf16", "finite"]),
    ("mesh-float-for-int", ["train", "--mesh", "{h_float_instances.toml}"], ["instances"]),
    ("mesh-bool-string", ["train", "--mesh", "{h_string_bool.toml}"], ["per_direction", "without quotes"]),
    # config.json
    ("json-theta-string", ["estimate", "--model", "{c_theta_string.json}", "--mesh", "trn2-mini-8", "--batch", "8"], ["rope_theta"]),
    ("json-tie-string", ["train", "--model", "{c_tie_string.json}"], ["tie_word_embeddings", "true or false"]),
    ("json-nan", ["train", "--model", "{c_nan_eps.json}"], ["norm_eps", "finite"]),
    ("json-bool-for-int", ["train", "--model", "{c_bool_for_int.json}"], ["hidden_size"]),
    ("json-inf", ["train", "--model", "{c_inf_vocab.json}"], ["vocab_size"]),
    ("json-big-int", ["train", "--model", "{c_big_int.json}"], ["c_big_int.json"]),
    ("json-deep", ["train", "--model", "{c_deep.json}"], ["c_deep.json", "nested"]),
    ("json-beyond-int32", ["estimate", "--model", "{c_beyond_int32.json}", "--mesh", "trn2-mini-8", "--batch", "8"], ["n_layers"]),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    for name, text in FILES.items():
        (d / name).write_text(text)
    return d


def _argv(argv: list[str], d: Path) -> list[str]:
    out = []
    for a in argv:
        a = a.replace("{tmp}", str(d))
        if a.startswith("{") and a.endswith("}"):
            a = str(d / a[1:-1])
        out.append(a)
    return out


@pytest.mark.parametrize("argv,names", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_refused_in_one_line_exit_2(argv, names, inputs, capsys):
    args = _argv(argv, inputs)
    t0 = time.perf_counter()
    code = cli.main(args)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    detail = f"rainier {' '.join(a[:80] for a in args)}\nexit {code}\nstderr: {err[:3000]}\nstdout: {out[:2000]}"
    assert code == 2, detail
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rainier: error: "), detail
    assert len(lines[0]) < 600, detail          # a line, not a dump of the input
    for name in names:
        assert name in lines[0], f"should name {name!r}\n{detail}"
    assert out == "", detail
    assert seconds < 10, f"{seconds:.1f} s to refuse\n{detail}"   # a size limit, not minutes of work


def test_no_case_leaves_a_file_or_directory(inputs):
    assert sorted(p.name for p in inputs.iterdir()) == sorted(FILES)   # e.g. no checkpoint dir made


# --- the value checks themselves ---------------------------------------------------------------

def test_show_abbreviates_integers_python_cannot_print():
    n = 10**5000
    assert "5,001 digits" in values.show(n) and len(values.show(n)) < 60
    assert values.show(12345) == "12345"


@pytest.mark.parametrize("value", [0, -1, 2**31, 1.5, True, "3"])
def test_bounded_int_refuses(value):
    with pytest.raises(ConfigError, match="--x"):
        values.bounded_int("--x", value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, "1", None, True])
def test_finite_float_refuses(value):
    with pytest.raises(ConfigError, match="--y"):
        values.finite_float("--y", value)


def test_size_product_names_each_factor():
    assert values.size_product("s", {"a": 4, "b": 8}, limit=32, why="w") == 32
    with pytest.raises(ConfigError, match=r"s: a 4 × b 9 = 36 is above the limit of 32 \(w\)"):
        values.size_product("s", {"a": 4, "b": 9}, limit=32, why="w")


def test_host_memory_check_compares_with_what_is_available():
    from rainier_jax.perf import host_memory
    from rainier_jax.parallel.experiment import resolve
    from rainier_jax.spec.model import load_model
    from rainier_jax.spec.run import RunConfig
    from rainier_jax.hardware.topology import load_topology

    topo = load_topology("trn2-mini-8")
    need = host_memory.need(resolve(topo, load_model("tiny"), None, RunConfig()), what="tiny")
    # tiny's 2.0M parameters at 16 B each, on each of 8 replicas, are part of what it needs
    assert need.per_rank >= 2_033_792 * 16 and need.ranks == 8
    total = need.total + host_memory.RUNTIME_BYTES
    assert host_memory.check([need], subject="s", available=total + host_memory.MARGIN_BYTES) == total
    with pytest.raises(ConfigError, match=r"s: this run needs about 1\.\d GiB .* \d\.\d GiB available"):
        host_memory.check([need], subject="s", available=total + host_memory.MARGIN_BYTES - 1)
    assert host_memory.available_bytes() is None or host_memory.available_bytes() > 0
