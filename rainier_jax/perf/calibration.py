"""Efficiency constants of the performance model, per chip generation — few, derived, documented.

* `links` — the fraction of a link's one-direction bandwidth a large collective achieves. From
  AWS's *measured* nccom-test output (Neuron SDK documentation): a 16-rank all-reduce of 512 MiB reaches a
  bus bandwidth of 103.89 GB/s on trn2, where one direction of a NeuronLink-v3 torus link is
  128 GB/s (meshes/trn2-instance.toml): 103.89 / 128 = 0.81. Trainium1 has no published
  measurement; the same fraction is assumed.
* `compute` — the fraction of peak matmul FLOP/s a training step sustains, which also absorbs the
  non-matmul work (norms, softmax, optimizer) the model does not count. Derived from ONE published
  run, `llama2-7b` on 16 trn1 nodes (rainier_jax/reference/published_trn1_training.csv): the value for
  which the `nxd` model's step time equals the published one (`derive_compute`). The other
  published row is not used: it validates. Trainium2 has no published training throughput with a
  layout, so the Trainium1 value is assumed for it (docs/PERFMODEL.md says what that means).

`tests/test_calibration.py` re-derives both numbers and checks the constants equal them, rounded.
"""

from __future__ import annotations

import dataclasses

from rainier_jax.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Efficiency:
    compute: float
    links: float


NCCOM_BUSBW_GBPS = 103.89        # trn2, 16 ranks, all-reduce 512 MiB (measured by AWS)
TORUS_ONE_WAY_GBPS = 128.0       # one direction of a trn2 torus link (meshes/trn2-instance.toml)
LINKS = round(NCCOM_BUSBW_GBPS / TORUS_ONE_WAY_GBPS, 2)
CALIBRATION_ROW = "llama2-7b"
COMPUTE = 0.36                   # = round(published.derive_compute(), 2); see the module docstring

EFFICIENCY = {
    "trainium1": Efficiency(compute=COMPUTE, links=LINKS),
    "trainium2": Efficiency(compute=COMPUTE, links=LINKS),   # assumed equal to Trainium1's
}


def for_generation(generation: str) -> Efficiency:
    try:
        return EFFICIENCY[generation]
    except KeyError:
        raise ConfigError(f"chip generation {generation!r} has no calibrated efficiency "
                          f"(known: {', '.join(EFFICIENCY)}); the performance model cannot price it") from None
