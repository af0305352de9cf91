"""Loading a user's Flax NNX model: `path/to/model.py:FACTORY` → the module's graph and its
`OwnModel` spec.

The file is imported under a name of its own (its directory on `sys.path` while it loads, so it
can import its siblings), `FACTORY(nnx.Rngs(0))` is built abstractly (`nnx.eval_shape`, eager
sharding off: no arrays, no mesh, and JAX's backend is not started), and every `nnx.Param` is read
into the pure-dict tree the rest of rainier uses — keys as strings, a shape and a logical name per
dimension. `Graph` is what `model/nnx_adapter.py` rebuilds the module from, inside the programs.
The contract is docs/OWN_MODEL.md's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rainier_jax.config.errors import ConfigError, setting as marked
from rainier_jax.spec.own import LOGICAL_AXES, OwnModel

# The pipeline contract: the module's embedding, its stack of blocks, its head (docs/OWN_MODEL.md).
BLOCKS = "blocks"
STAGE_METHODS = ("embed", BLOCKS, "head")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _keys(path) -> tuple[str, ...]:
    """A pytree path into an nnx.State → its string keys (a Variable's own `.value` left off)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(str(k.idx))
        elif not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value"):
            out.append(str(k))
    return tuple(out)


def _nest(items) -> dict:
    tree: dict = {}
    for keys, value in items:
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


def _walk(tree: dict, prefix: tuple[str, ...] = ()):
    """(keys, leaf) of a spec tree (nested dicts whose leaves are tuples)."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _walk(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _get(tree: dict, keys: tuple[str, ...]):
    for k in keys:
        tree = tree[k]
    return tree


@dataclasses.dataclass(frozen=True, eq=False)
class StateTree:
    """How an nnx.State of Params and the pure-dict params (string keys) map onto each other."""
    treedef: Any
    paths: tuple[tuple[str, ...], ...]   # one per leaf, in the treedef's order

    @classmethod
    def of(cls, state) -> StateTree:
        flat, treedef = jax.tree_util.tree_flatten_with_path(state)
        return cls(treedef, tuple(_keys(p) for p, _ in flat))

    def state(self, pure: dict):
        return jax.tree_util.tree_unflatten(self.treedef, [_get(pure, p) for p in self.paths])

    def pure(self, state) -> dict:
        return _nest((p, leaf) for p, leaf in zip(self.paths, jax.tree.leaves(state)))


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """A loaded model: its factory and graph, its Params' tree, its other (non-Param) state as
    abstract shapes, and, under the pipeline contract, the same for its stack of blocks."""
    factory: Callable
    graphdef: Any
    params: StateTree
    rest: Any                      # abstract non-Param state of the whole module
    abstract: dict                 # the params as ShapeDtypeStructs (pure dict)
    blocks: tuple | None           # `blocks`' (graphdef, StateTree, other state), or None
    model: Any                     # the abstract module (for reading it; never run)

    def build(self, key):
        """The module, built for real from `key` (inside a program: no eager sharding)."""
        with nnx.use_eager_sharding(False):
            return self.factory(nnx.Rngs(key))

    def init(self, key) -> dict:
        params = self.params.pure(nnx.state(self.build(key), nnx.Param))
        # The seam's parameters are fp32 whatever param_dtype the module uses.
        return jax.tree.map(lambda x: x.astype(jnp.float32), params)

    def constants(self):
        """The module's non-Param state, concrete (from `Rngs(0)`): held as constants by the
        programs, computed outside any trace."""
        if not jax.tree.leaves(self.rest):
            return self.rest
        with jax.ensure_compile_time_eval():
            return jax.jit(lambda: nnx.split(self.build(0), nnx.Param, ...)[2])()

    def module(self, pure: dict, rest):
        return nnx.merge(self.graphdef, self.params.state(pure), rest)

    def block(self, layer: dict):
        """One block of the stack, from one layer's slice of its params (the contract leaves the
        blocks no other state)."""
        graphdef, tree, empty = self.blocks
        return nnx.merge(graphdef, tree.state(layer), empty)


# ---------------------------------------------------------------------------------------------
# Loading

_LOADED: dict[tuple[str, str, str], Graph] = {}   # (path, sha256, factory) → its graph


def parse(text: str, setting: str) -> tuple[Path, str]:
    """`path/to/model.py:FACTORY` → (absolute path, factory name), the file checked to exist."""
    where = f"{marked(setting)} {text}"
    file, colon, factory = text.rpartition(":")
    if not colon:
        if text.endswith(".py"):
            raise ConfigError(f"{where}: no factory named; write FILE.py:FACTORY, the function in the "
                              f"file that builds the nnx.Module (e.g. {text}:build)")
        raise ConfigError(f"{where}: expected FILE.py:FACTORY (a Python file and the function in it "
                          "that builds the nnx.Module)")
    if not factory:
        raise ConfigError(f"{where}: no factory named after ':'; write {file}:FACTORY")
    if not file.endswith(".py"):
        raise ConfigError(f"{where}: {file or 'the file'} is not a .py file; write FILE.py:FACTORY")
    if not factory.isidentifier():
        raise ConfigError(f"{where}: {factory!r} is not a Python name; write FILE.py:FACTORY")
    path = Path(file).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: no such file {path} (a relative path is read from the current directory)")
    return path, factory


def read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path} ({e.strerror or e})") from None


@contextlib.contextmanager
def _folder_on_path(path: Path):
    """The model file's folder first on sys.path meanwhile, so the file can import its siblings."""
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)


def _import(path: Path, data: bytes, sha: str, where: str):
    """The file's bytes (those hashed) run as a module of its own; its folder on sys.path meanwhile."""
    name = f"_rainier_model_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}_{sha[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses and pickling look their module up here
    try:
        with _folder_on_path(path):
            exec(compile(data, str(path), "exec"), module.__dict__)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        raise ConfigError(f"{where}: importing {path.name} raised {_one_line(e)}") from None
    return module


class _NotAModule(Exception):
    pass


class _Refused(Exception):
    pass


def graph_of(path: Path, factory_name: str, data: bytes, sha: str, where: str) -> Graph:
    """The graph of FACTORY in the file whose bytes are `data` (cached per path, sha256, factory)."""
    key = (str(path), sha, factory_name)
    if key in _LOADED:
        return _LOADED[key]
    module = _import(path, data, sha, where)
    factory = getattr(module, factory_name, None)
    if factory is None:
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"{where}: {path.name} defines no {factory_name} "
                          f"(its functions and classes: {', '.join(defined) or 'none'})")
    if not callable(factory):
        raise ConfigError(f"{where}: {factory_name} is not a function (it is a value of type "
                          f"{type(factory).__name__}); FACTORY(rngs) must build the nnx.Module")

    def build():
        out = factory(nnx.Rngs(0))
        if not isinstance(out, nnx.Module):
            raise _NotAModule(type(out).__name__)
        return out
    try:
        # A factory may import siblings lazily, so the folder is on the path here too.
        with _folder_on_path(path), nnx.use_eager_sharding(False):
            model = nnx.eval_shape(build)
    except _NotAModule as e:
        raise ConfigError(f"{where}: {factory_name}(rngs) returned a value of type {e}, not an nnx.Module") from None
    except Exception as e:
        raise ConfigError(f"{where}: {factory_name}(nnx.Rngs(0)) raised {_one_line(e)}") from None
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tree = StateTree.of(params)
    blocks = None
    if _has_stage_methods(model):
        b_graphdef, b_params, b_rest = nnx.split(getattr(model, BLOCKS), nnx.Param, ...)
        blocks = (b_graphdef, StateTree.of(b_params), b_rest)
    graph = Graph(factory, graphdef, tree, rest, tree.pure(params), blocks, model)
    _LOADED[key] = graph
    return graph


def _has_stage_methods(model) -> bool:
    blocks = getattr(model, BLOCKS, None)
    return (callable(getattr(model, "embed", None)) and callable(getattr(model, "head", None))
            and isinstance(blocks, nnx.Module) and not isinstance(blocks, nnx.List))


def load_own_model(text: str, *, seq: int, setting: str = "model") -> OwnModel:
    """`path/to/model.py:FACTORY` (a relative path read from the current directory) → its OwnModel spec,
    the module checked to map int32 tokens [2, seq] to floating logits [2, seq, V]. `setting`
    names it in messages (each a ConfigError of one line)."""
    where = f"{marked(setting)} {text}"
    path, factory_name = parse(text, setting)
    data = read(path, where)
    sha = hashlib.sha256(data).hexdigest()
    graph = graph_of(path, factory_name, data, sha, where)
    shapes, axes = read_params(graph.model, where)
    vocab = _check_output(graph, seq, where)
    pipeline, problem = _pipeline(graph, axes, shapes)
    if pipeline:
        _check_stages(graph, seq, vocab, where)
    return OwnModel(path=str(path), factory=factory_name, sha256=sha, vocab_size=vocab,
                    n_layers=_depth(graph.model, axes, shapes), shapes=shapes, axes=axes,
                    pipeline=pipeline, pipeline_problem=problem)


def read_params(model, where: str) -> tuple[dict, dict]:
    """(shapes, logical axes) of a module's nnx.Params as pure-dict trees (the module may be
    abstract, from `nnx.eval_shape`); a ConfigError naming `where` for names rainier cannot use."""
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    if not flat:
        raise ConfigError(f"{where}: the module has no nnx.Param; rainier trains nnx.Param variables "
                          "(nnx.Linear, nnx.Embed, ... or nnx.Param(...) of your own)")
    shapes, axes = [], []
    for raw_path, var in flat:
        keys = tuple(str(k) for k in raw_path)
        name = "/".join(keys)
        shape = tuple(int(d) for d in var.shape)
        if not jnp.issubdtype(var.dtype, jnp.floating):
            raise ConfigError(f"{where}: parameter {name} is {var.dtype}; an nnx.Param must be floating "
                              "(keep other state in an nnx.Variable)")
        names = var.get_metadata().get("out_sharding")
        if names is None:
            names = (None,) * len(shape)
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise ConfigError(f"{where}: parameter {name}: logical names {names!r} must be a tuple, one per dimension")
        names = tuple(names)
        if len(names) != len(shape):
            raise ConfigError(f"{where}: parameter {name} has shape {list(shape)} but {len(names)} logical "
                              f"names {names}; give one per dimension (None for a replicated one)")
        for n in names:
            if n is not None and (not isinstance(n, str) or n not in LOGICAL_AXES):
                raise ConfigError(f"{where}: parameter {name}: unknown logical axis name {n!r}; name each "
                                  f"dimension with one of {', '.join(LOGICAL_AXES)} (or None)")
        repeated = sorted({n for n in names if n is not None and names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{where}: parameter {name}: logical name {repeated[0]!r} on two dimensions "
                              f"{names}; a name may split one dimension of a tensor")
        shapes.append((keys, shape))
        axes.append((keys, names))
    return _nest(shapes), _nest(axes)


def _check_output(graph: Graph, seq: int, where: str) -> int:
    tokens = jax.ShapeDtypeStruct((2, seq), jnp.int32)
    try:
        out = jax.eval_shape(lambda p, r, t: graph.module(p, r)(t), graph.abstract, graph.rest, tokens)
    except Exception as e:
        raise ConfigError(f"{where}: calling the module on int32 tokens [2, {seq}] raised {_one_line(e)}") from None
    return _logits_vocab(out, seq, where, "the module")


def _logits_vocab(out, seq: int, where: str, what: str) -> int:
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ConfigError(f"{where}: {what} returned a {type(out).__name__} for int32 tokens [2, {seq}]; "
                          f"expected one array of logits [2, {seq}, V]")
    if len(out.shape) != 3 or out.shape[:2] != (2, seq):
        raise ConfigError(f"{where}: {what} returned shape {list(out.shape)} for int32 tokens [2, {seq}]; "
                          f"expected logits [2, {seq}, V]")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ConfigError(f"{where}: {what} returned {out.dtype} logits; expected a floating dtype")
    return int(out.shape[2])


def _pipeline(graph: Graph, axes: dict, shapes: dict) -> tuple[bool, str]:
    """Whether the module meets the pipeline contract, and why not (docs/OWN_MODEL.md)."""
    if graph.blocks is None:
        return False, f"the module has no embed(tokens), nnx.Module {BLOCKS} and head(x)"
    if BLOCKS not in axes:
        return False, f"{BLOCKS} holds no nnx.Param"
    sizes = set()
    for keys, names in _walk(axes[BLOCKS], (BLOCKS,)):
        if not names or names[0] != "layers":
            return False, (f"parameter {'/'.join(keys)} has no leading 'layers' axis (stack the blocks with "
                           f"nnx.vmap(..., transform_metadata={{nnx.PARTITION_NAME: 'layers'}}) and name "
                           "every parameter of a block)")
        sizes.add(_get(shapes, keys)[0])
    if len(sizes) > 1:
        return False, f"the parameters of {BLOCKS} stack different numbers of layers {sorted(sizes)}"
    if jax.tree.leaves(graph.blocks[2]):
        # A pipeline stage gets its slice of the parameters only.
        return False, f"{BLOCKS} holds state other than nnx.Param (RNG keys, buffers)"
    return True, ""


def _check_stages(graph: Graph, seq: int, vocab: int, where: str) -> None:
    """The contract's three stages compose to the module's logits (eval_shape, nothing computed)."""
    tokens = jax.ShapeDtypeStruct((2, seq), jnp.int32)

    def stages(p, r, t):
        x = graph.module(p, r).embed(t)
        if not isinstance(x, jax.Array) or x.ndim != 3 or x.shape[:2] != (2, seq):
            raise _Refused(f"embed returned {getattr(x, 'shape', type(x).__name__)}; expected [2, {seq}, D]")
        x, _ = jax.lax.scan(lambda h, layer: (graph.block(layer)(h).astype(h.dtype), None), x, p[BLOCKS])
        return graph.module(p, r).head(x)
    try:
        out = jax.eval_shape(stages, graph.abstract, graph.rest, tokens)
    except _Refused as e:
        raise ConfigError(f"{where}: pipeline contract: {e}") from None
    except Exception as e:
        raise ConfigError(f"{where}: pipeline contract: head({BLOCKS}(embed(tokens))) on int32 tokens "
                          f"[2, {seq}] raised {_one_line(e)}") from None
    got = _logits_vocab(out, seq, where, f"head({BLOCKS}(embed(tokens)))")
    if got != vocab:
        raise ConfigError(f"{where}: pipeline contract: head({BLOCKS}(embed(tokens))) gives {got} logits, "
                          f"the module {vocab}; they must be the same computation")


def _depth(model, axes: dict, shapes: dict) -> int:
    """n_layers, for the parity bounds: the size of a `layers` axis (the largest, if several);
    else the length of the longest list of blocks of one class directly in the module; else 1."""
    stacked = [_get(shapes, keys)[names.index("layers")] for keys, names in _walk(axes) if "layers" in names]
    if stacked:
        return max(stacked)
    lists = [len(v) for k, v in vars(model).items() if not k.startswith("_")
             and isinstance(v, (list, tuple, nnx.List)) and len(v) > 0
             and all(isinstance(b, nnx.Module) for b in v) and len({type(b) for b in v}) == 1]
    return max(lists, default=1)
