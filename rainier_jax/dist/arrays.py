"""Moving data between host memory and global arrays the same way in one process and in several.

With several processes (`rainier launch`, dist/cluster.py) a global array spans devices this process
cannot reach: `jax.device_put` of a host array, `jax.device_get` and `float(x)` all need every
device to be local. Every host holds the whole batch (a pure function of seed and step), so
placing data is always possible locally; reading results back needs either this process's copy
of a replicated value or an all-gather over processes.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Sharding


def to_devices(host: np.ndarray, sharding: Sharding) -> jax.Array:
    """A global array from a host array every process holds in full: each process fills only its
    own devices' shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError(f"local_value: a {x.shape} array split across processes has no local copy; "
                             "use host_copy")
        return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))


def local_value(tree):
    """Host copies of replicated results (metrics, the step counter), from this process's shard."""
    return jax.tree.map(_local, tree)


def host_copy(tree):
    """Full host copies of any arrays, split across processes or not. With several processes this
    is a collective: every process must call it, in the same order."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return _local(x)
    return jax.tree.map(one, tree)
