"""What a run is made of, without JAX: model sizes, run settings, precision policies."""
