"""A user's Flax NNX model behind the model seam (rainier_jax/model/nnx_adapter.py, docs/OWN_MODEL.md):
loading refuses bad input with one line, the spec reads the module's shapes and logical names,
and the network computes what the module computes — per block or whole, under every remat — and
what the built-in Llama computes from the same weights (scripts/nnx_llama.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rainier_jax.config.errors import ConfigError, setting
from rainier_jax.model import numerics
from rainier_jax.model.builtin import Llama
from rainier_jax.model.nnx_adapter import NnxNetwork, load_own_model
from rainier_jax.model.seam import Context, loss
from rainier_jax.parallel.axis_rules import param_rules
from rainier_jax.parallel.layout import ParallelLayout
from rainier_jax.parity.harness import Bound, EPS32, compare
from rainier_jax.spec.model import load_model
from rainier_jax.spec.own import LOGICAL_AXES
from rainier_jax.spec.precision import PRESETS

ROOT = Path(__file__).resolve().parent.parent
GPT2 = f"{ROOT}/scripts/gpt2_model.py:tiny_gpt2"
LLAMA = f"{ROOT}/scripts/nnx_llama.py:tiny_llama"
SEQ = 16

# A small model without the pipeline contract: an embedding, a list of three dense layers (so its
# depth is the list's length), an untied head with bf16 parameters (the seam still gets fp32
# ones), a non-Param buffer added to the logits. NAMES is replaced per test.
TINY = """
import jax.numpy as jnp
from flax import nnx

NAMES = ("vocab", "embed")

class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.emb = nnx.Embed(32, 8, rngs=rngs,
                             embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), NAMES))
        self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(3)])
        self.out = nnx.Linear(8, 32, use_bias=False, rngs=rngs, param_dtype=jnp.bfloat16,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "vocab")))
        self.offset = nnx.Variable(jnp.full((32,), 2.0))

    def __call__(self, tokens):
        x = self.emb(tokens)
        for layer in self.layers:
            x = x + jnp.tanh(layer(x))
        return OUTPUT

def build(rngs):
    return Tiny(rngs)
"""


def model_file(tmp_path: Path, name: str = "tiny_model.py", names='("vocab", "embed")',
               output="self.out(x) + self.offset[...]", extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(TINY.replace('NAMES = ("vocab", "embed")', f"NAMES = {names}").replace("OUTPUT", output) + extra)
    return path


def refused(text: str, *, seq: int = SEQ) -> str:
    with pytest.raises(ConfigError) as e:
        load_own_model(text, seq=seq)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert e.value.raw.startswith(setting("model")), e.value.raw
    return message


def random_params(shapes: dict, seed: int = 0) -> dict:
    """Fan-in scaled normal weights, norm scales (and biases) near 1 (and 0): a model in a
    sensible state without compiling its init."""
    rng = np.random.default_rng(seed)

    def one(path, shape):
        name = jax.tree_util.keystr(path)
        if len(shape) - (1 if "blocks" in name else 0) <= 1:
            base = 1.0 if "scale" in name or "norm" in name else 0.0
            return jnp.asarray(base + 0.1 * rng.normal(size=shape), jnp.float32)
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1), jnp.float32)
    return jax.tree_util.tree_map_with_path(one, shapes, is_leaf=lambda x: isinstance(x, tuple))


def tokens(batch: int, seq: int, vocab: int = 256, seed: int = 1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, seq)), jnp.int32)


@pytest.fixture(scope="module")
def gpt2():
    spec = load_own_model(GPT2, seq=SEQ)
    return spec, NnxNetwork.of(spec)


# ---- loading: every bad input is one line naming the problem ------------------------------------

def test_the_known_logical_names_are_the_parameter_rules():
    assert set(LOGICAL_AXES) == set(param_rules(ParallelLayout()))
    builtin = load_model("tiny").param_axes()
    used = {n for axes in jax.tree.leaves(builtin, is_leaf=lambda x: isinstance(x, tuple)) for n in axes if n}
    assert used == set(LOGICAL_AXES)


def test_bad_paths_and_factories_are_refused(tmp_path, monkeypatch):
    path = model_file(tmp_path)
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "const.py").write_text("build = 3\n")
    monkeypatch.chdir(tmp_path)
    assert "is not a .py file" in refused("notes.txt:build")
    assert "no such file" in refused("missing.py:build")
    assert "no factory named" in refused("tiny_model.py")
    assert "no factory named after ':'" in refused("tiny_model.py:")
    assert "expected FILE.py:FACTORY" in refused("tiny")
    message = refused("tiny_model.py:nope")
    assert "defines no nope" in message and "Tiny, build" in message
    assert "build is not a function (it is a value of type int)" in refused("const.py:build")
    # A relative path is read from the current directory and stored absolute.
    assert load_own_model("tiny_model.py:build", seq=SEQ).path == str(path)


def test_code_that_raises_is_named_without_a_traceback(tmp_path):
    (tmp_path / "bad_import.py").write_text("raise ImportError('no module named torch')\n")
    assert "importing bad_import.py raised ImportError: no module named torch" in refused(f"{tmp_path}/bad_import.py:build")
    (tmp_path / "syntax.py").write_text("def build(rngs):\n  return (\n")
    assert "importing syntax.py raised SyntaxError" in refused(f"{tmp_path}/syntax.py:build")
    path = model_file(tmp_path, extra="\ndef boom(rngs):\n    raise RuntimeError('width 7 is odd')\n")
    assert "boom(nnx.Rngs(0)) raised RuntimeError: width 7 is odd" in refused(f"{path}:boom")
    path = model_file(tmp_path, "other.py", extra="\ndef number(rngs):\n    return 3\n")
    assert "number(rngs) returned a value of type int, not an nnx.Module" in refused(f"{path}:number")


def test_bad_modules_are_refused(tmp_path):
    path = model_file(tmp_path, "shape.py", output="self.out(x)[..., 0]")
    assert f"returned shape [2, {SEQ}] for int32 tokens [2, {SEQ}]; expected logits [2, {SEQ}, V]" in refused(f"{path}:build")
    path = model_file(tmp_path, "ints.py", output="tokens")
    assert "returned shape [2, 16]" in refused(f"{path}:build")
    path = model_file(tmp_path, "names.py", names='("vocab", "model")')
    message = refused(f"{path}:build")
    assert "parameter emb/embedding: unknown logical axis name 'model'" in message
    assert ", ".join(LOGICAL_AXES) in message
    path = model_file(tmp_path, "count.py", names='("vocab",)')
    assert "has shape [32, 8] but 1 logical names" in refused(f"{path}:build")
    (tmp_path / "empty.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp
        from flax import nnx
        class Empty(nnx.Module):
            def __init__(self):
                self.table = nnx.Variable(jnp.zeros((4, 4)))
            def __call__(self, t):
                return self.table[...][t]
        def build(rngs):
            return Empty()
    """))
    assert "the module has no nnx.Param" in refused(f"{tmp_path}/empty.py:build")


def test_a_model_file_imports_its_siblings(tmp_path):
    (tmp_path / "nnx_test_sibling_sizes.py").write_text("VOCAB = 32\n")
    path = model_file(tmp_path, extra="\nimport nnx_test_sibling_sizes\nassert nnx_test_sibling_sizes.VOCAB == 32\n")
    assert load_own_model(f"{path}:build", seq=SEQ).vocab_size == 32
    assert str(tmp_path) not in sys.path


def test_loading_starts_no_jax_backend():
    # The CLI loads the model before it sets the emulated device count: that must still take.
    code = (f"from rainier_jax.model.nnx_adapter import load_own_model\n"
            f"load_own_model({GPT2!r}, seq=8)\n"
            "import jax\njax.config.update('jax_num_cpu_devices', 3)\nprint(len(jax.devices()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "3", out.stderr[-2000:]


def test_a_changed_file_is_refused(tmp_path):
    path = model_file(tmp_path)
    spec = load_own_model(f"{path}:build", seq=SEQ)
    NnxNetwork.of(spec)
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(ConfigError, match="the file changed since the model was loaded"):
        NnxNetwork.of(spec)


# ---- the spec -----------------------------------------------------------------------------------

def test_gpt2_spec_reads_shapes_and_logical_names(gpt2):
    spec, _ = gpt2
    assert (spec.vocab_size, spec.n_layers, spec.pipeline, spec.pipeline_problem) == (256, 4, True, "")
    assert spec.shapes["wte"]["embedding"] == (256, 128)
    assert spec.axes["wte"]["embedding"] == ("vocab", "embed")
    assert spec.shapes["blocks"]["qkv"]["kernel"] == (4, 128, 3, 8, 16)
    assert spec.axes["blocks"]["qkv"]["kernel"] == ("layers", "embed", None, "heads", "head_dim")
    assert spec.axes["blocks"]["up"]["kernel"] == ("layers", "embed", "mlp")
    assert spec.axes["blocks"]["down"]["kernel"] == ("layers", "mlp", "embed")
    assert spec.axes["ln_f"]["scale"] == ("norm",)
    assert spec.unnamed() == []
    assert spec.path == str(ROOT / "scripts" / "gpt2_model.py") and len(spec.sha256) == 64


def test_depth_and_pipeline_without_the_contract(tmp_path):
    spec = load_own_model(f"{model_file(tmp_path)}:build", seq=SEQ)
    assert (spec.vocab_size, spec.n_layers, spec.pipeline) == (32, 3, False)
    assert "embed(tokens)" in spec.pipeline_problem
    # The list's dense layers have no logical names: replicated.
    assert spec.unnamed() == [f"layers/{i}/{w}" for i in range(3) for w in ("bias", "kernel")]
    assert NnxNetwork.of(spec).stages is None


STACKED = """
import jax.numpy as jnp
from flax import nnx

class Block(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(8, 8, rngs=rngs, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")),
                             bias_init=BIAS_INIT)
    def __call__(self, x):
        return x + jnp.tanh(self.fc(x))

class Stacked(nnx.Module):
    def __init__(self, rngs):
        self.emb = nnx.Embed(32, 8, rngs=rngs)
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stack(rngs):
            return Block(rngs)
        self.blocks = stack(rngs)
    def embed(self, tokens):
        return self.emb(tokens)
    def head(self, x):
        return self.emb.attend(x)
    def __call__(self, tokens):
        return self.head(self.embed(tokens))   # not the stack: only the shape is checked

def build(rngs):
    return Stacked(rngs)
"""


def test_the_pipeline_contract_needs_every_block_parameter_stacked(tmp_path):
    named = tmp_path / "named.py"
    named.write_text(STACKED.replace("BIAS_INIT", 'nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))'))
    spec = load_own_model(f"{named}:build", seq=SEQ)
    assert (spec.pipeline, spec.n_layers, spec.pipeline_problem) == (True, 3, "")
    assert spec.axes["blocks"]["fc"]["bias"] == ("layers", "mlp")
    # nnx.vmap adds `layers` only to parameters that carry names: an unnamed bias breaks the stack.
    unnamed = tmp_path / "unnamed.py"
    unnamed.write_text(STACKED.replace("BIAS_INIT", "nnx.initializers.zeros_init()"))
    spec = load_own_model(f"{unnamed}:build", seq=SEQ)
    assert not spec.pipeline and spec.n_layers == 3
    assert "parameter blocks/fc/bias has no leading 'layers' axis" in spec.pipeline_problem
    assert NnxNetwork.of(spec).stages is None


# ---- the network --------------------------------------------------------------------------------

def test_init_is_deterministic_fp32_and_the_spec_tree(tmp_path):
    spec = load_own_model(f"{model_file(tmp_path)}:build", seq=SEQ)
    init = jax.jit(NnxNetwork.of(spec).init)
    a, b, c = init(jax.random.key(0)), init(jax.random.key(0)), init(jax.random.key(1))
    assert jax.tree.map(lambda x: x.shape, a) == spec.shapes
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(a))   # the module's are bf16
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["emb"]["embedding"], c["emb"]["embedding"])
    assert jax.eval_shape(NnxNetwork.of(spec).init, jax.random.key(0)) == jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), spec.shapes, is_leaf=lambda x: isinstance(x, tuple))


def test_logits_hold_the_module_state_and_take_the_precision(tmp_path):
    spec = load_own_model(f"{model_file(tmp_path)}:build", seq=SEQ)
    net = NnxNetwork.of(spec)
    params = jax.jit(net.init)(jax.random.key(0))
    x = tokens(2, SEQ, vocab=32)
    plain = jax.jit(lambda p, t: net.logits(p, t, Context()))(params, x)
    assert plain.shape == (2, SEQ, 32) and plain.dtype == jnp.float32
    # The same function of the params, written out; the buffer (non-Param state, held as a
    # constant) adds its 2.0.
    np.testing.assert_allclose(plain, _tiny_forward(params, x) @ params["out"]["kernel"] + 2.0, atol=1e-5)
    ctx = Context(compute=numerics.Compute(PRESETS["bf16-mixed"]))
    low = jax.jit(lambda p, t: net.logits(p, t, ctx))(params, x)
    assert low.dtype == jnp.float32 and not np.array_equal(low, plain)
    assert np.allclose(low, plain, atol=0.1)
    assert net.with_fp8(params, None) is params


def _tiny_forward(params, x):
    h = params["emb"]["embedding"][x]
    for i in range(3):
        layer = params["layers"][str(i)]
        h = h + jnp.tanh(h @ layer["kernel"] + layer["bias"])
    return h


def test_decay_mask(gpt2):
    spec, net = gpt2
    mask = net.decay_mask(random_params(spec.shapes))
    assert mask["wte"]["embedding"] and mask["wpe"]["embedding"]
    assert mask["blocks"]["qkv"]["kernel"] and mask["blocks"]["down"]["kernel"]
    # Vectors (the stacked layers axis not counted) and anything with a norm dimension are not.
    assert not mask["blocks"]["up"]["bias"] and not mask["blocks"]["qkv"]["bias"]
    assert not mask["blocks"]["ln1"]["scale"] and not mask["ln_f"]["bias"]


def test_stages_compute_the_logits_and_the_module(gpt2):
    spec, net = gpt2
    params = random_params(spec.shapes)
    x = tokens(2, SEQ)
    stages = net.stages
    assert stages.layers == "blocks"

    @jax.jit
    def three(p, t):
        ctx = Context()
        outer = {k: v for k, v in p.items() if k != stages.layers}
        by_stages = stages.head(outer, stages.blocks(p[stages.layers], stages.embed(outer, t, ctx), ctx), ctx)
        return by_stages, net.logits(p, t, ctx), net.graph.module(p, net.rest)(t)   # the module's own scan
    by_stages, logits, module = three(params, x)
    assert logits.shape == (2, SEQ, 256) and logits.dtype == jnp.float32
    np.testing.assert_array_equal(by_stages, logits)
    # The module's own nnx.scan over its blocks: another program, so only fp32 rounding apart.
    np.testing.assert_allclose(module, logits, rtol=0, atol=Bound("derived", EPS32).limit(0) * float(jnp.abs(logits).max()))


def _grads_agree(ref, cand, model):
    bad = [e for e in compare(jax.device_get(ref), jax.device_get(cand), model,
                              Bound("derived", EPS32).limit, 1) if not e.ok]
    assert not bad, bad[:3]


@pytest.mark.parametrize("which", ["blocks", "whole"])
def test_remat_variants_agree(which, gpt2, tmp_path):
    # Per block under the pipeline contract (gpt2), the whole forward pass without it (tiny).
    if which == "blocks":
        spec, net = gpt2
        params, batch = random_params(spec.shapes), tokens(2, SEQ + 1)
    else:
        spec = load_own_model(f"{model_file(tmp_path)}:build", seq=SEQ)
        net = NnxNetwork.of(spec)
        params, batch = jax.jit(net.init)(jax.random.key(0)), tokens(2, SEQ + 1, vocab=32)
    runs = {r: jax.jit(jax.value_and_grad(lambda p, b, r=r: loss(net, p, b, Context(remat=r))))(params, batch)
            for r in ("full", "selective", "none")}
    limit = Bound("derived", EPS32).limit(spec.n_layers + 1)
    for remat in ("selective", "none"):
        assert abs(runs[remat][0] - runs["full"][0]) <= limit * abs(runs["full"][0])
        _grads_agree(runs["full"][1], runs[remat][1], spec)


def test_nnx_llama_port_matches_the_builtin_model():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import nnx_llama
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    cfg = load_model("tiny")
    spec = load_own_model(LLAMA, seq=SEQ)
    net = NnxNetwork.of(spec)
    assert (spec.n_layers, spec.vocab_size, spec.pipeline) == (cfg.n_layers, cfg.vocab_size, True)
    builtin_params = random_params(cfg.param_shapes())
    params = nnx_llama.from_builtin(builtin_params)
    assert jax.tree.map(lambda x: x.shape, params) == spec.shapes
    # The port names its parameters with the built-in model's logical names.
    assert jax.tree.leaves(nnx_llama.to_builtin(spec.axes), is_leaf=lambda x: isinstance(x, tuple)) == \
        jax.tree.leaves(cfg.param_axes(), is_leaf=lambda x: isinstance(x, tuple))
    batch = tokens(4, SEQ + 1)
    grad = lambda n: jax.jit(jax.value_and_grad(lambda p, b: loss(n, p, b, Context())))  # noqa: E731
    loss_ref, g_ref = grad(Llama(cfg))(builtin_params, batch)
    loss_port, g_port = grad(net)(params, batch)
    # Same math, other programs: the two differ only in how XLA orders fp32 sums, the case the
    # parity harness's derived bound covers (rainier_jax/parity/harness.py, docs/PARITY.md):
    # rel_l2 <= k·C^d·eps with k = 64, C = 1.1, eps = fp32's, at depth d = L+1 for the loss
    # (1.8e-5 relative for the 8-layer tiny model) and per gradient tensor at its own depth.
    bound = Bound.for_precisions(PRESETS["fp32"], PRESETS["fp32"], n_layers=cfg.n_layers, identical=False)
    assert bound.kind == "derived"
    assert abs(float(loss_port) - float(loss_ref)) <= bound.limit(cfg.n_layers + 1) * abs(float(loss_ref))
    _grads_agree(g_ref, nnx_llama.to_builtin(g_port), cfg)
